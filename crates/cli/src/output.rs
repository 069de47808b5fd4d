//! Terminal output: colour only on a TTY, tables, timestamps.

use std::io::IsTerminal as _;

pub fn error(message: &str) {
    if std::io::stderr().is_terminal() {
        eprintln!("\x1b[31merror\x1b[0m: {message}");
    } else {
        eprintln!("error: {message}");
    }
}

/// A mistake in how a command was called: exits 2, like clap's own.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Usage(pub String);

pub fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// A spinner with elapsed time on stderr while long work runs; shown only
/// when stderr is a terminal. Cleared when dropped.
pub struct Progress {
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Progress {
    pub fn start(message: String) -> Self {
        if !std::io::stderr().is_terminal() {
            return Self { task: None };
        }
        let task = tokio::spawn(async move {
            let frames = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];
            let started = std::time::Instant::now();
            for i in 0.. {
                eprint!(
                    "\r{} {message} {:.1}s",
                    frames[i % frames.len()],
                    started.elapsed().as_secs_f64()
                );
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        });
        Self { task: Some(task) }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            eprint!("\r\x1b[2K");
        }
    }
}

/// Prints rows as left-aligned columns under a header.
pub fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            }
        }
        println!("{}", out.trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

/// Formats Unix milliseconds as an RFC 3339 UTC timestamp.
pub fn timestamp(ms: u64) -> String {
    gust_core::time::rfc3339(ms)
}

/// Text from a function (its output, a key's value) made safe to print on
/// a terminal: control characters (escape sequences that could move the
/// cursor, rewrite the screen or the window title) become `\u{fffd}`;
/// tabs stay.
pub fn sanitize(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(|c| c.is_control() && c != '\t') {
        return std::borrow::Cow::Borrowed(text);
    }
    text.chars()
        .map(|c| {
            if c.is_control() && c != '\t' {
                '\u{fffd}'
            } else {
                c
            }
        })
        .collect::<String>()
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_do_not_reach_the_terminal() {
        assert_eq!(sanitize("plain\ttext"), "plain\ttext");
        assert_eq!(sanitize("\x1b[2Jgone\x07"), "\u{fffd}[2Jgone\u{fffd}");
        assert_eq!(sanitize("a\rb"), "a\u{fffd}b");
    }
}
