//! A small PostgreSQL client for logical replication: the startup with its
//! authentication (trust, password, MD5, SCRAM-SHA-256), simple queries
//! whose rows come back as text, and the copy-both stream that
//! `START_REPLICATION` opens. TLS as `sslmode` asks (`require` and
//! `verify-full` check the certificate and its host name, `verify-ca` its
//! chain alone; see [`crate::tls`]), after the protocol's `SSLRequest`.
//! The message framing is the protocol's own: a type byte, a
//! big-endian length that counts itself, the body.

use std::time::Duration;

use bytes::{Buf as _, BufMut as _, Bytes, BytesMut};
use postgres_protocol::authentication::sasl::{self, ChannelBinding, ScramSha256};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::SourceError;
use crate::tls::Check;

/// The connection's byte stream: plain TCP, or TLS over it.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// The parts of a `postgres://user:password@host:port/database` address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Address {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Option<String>,
    pub database: String,
    /// TLS, and what the certificate must prove (`sslmode`).
    pub tls: Option<Check>,
    /// A private CA's certificates (PEM) beside the public roots.
    pub ca: Option<String>,
}

impl Address {
    pub fn parse(url: &str, ca: Option<&str>) -> Result<Address, SourceError> {
        let (host, port) = crate::supervisor::host_port(url, 5432)?;
        let rest = url.split_once("://").map_or(url, |(_, r)| r);
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        let (user, password) = match authority.rsplit_once('@') {
            Some((info, _)) => match info.split_once(':') {
                Some((u, p)) => (decode(u), Some(decode(p))),
                None => (decode(info), None),
            },
            None => ("postgres".to_string(), None),
        };
        let path = tail.strip_prefix('/').unwrap_or(tail);
        let (database, query) = path.split_once('?').unwrap_or((path, ""));
        let mut tls = None;
        for mode in query
            .split('&')
            .filter_map(|kv| kv.strip_prefix("sslmode="))
        {
            tls = match mode {
                "disable" | "allow" | "prefer" => None,
                "require" | "verify-full" => Some(Check::Full),
                "verify-ca" => Some(Check::ChainOnly),
                other => {
                    return Err(SourceError::Config(format!(
                        "no sslmode `{other}`: use disable, require, verify-ca or verify-full"
                    )));
                }
            };
        }
        let database = if database.is_empty() {
            user.clone()
        } else {
            decode(database)
        };
        Ok(Address {
            host,
            port,
            user,
            password,
            database,
            tls,
            ca: ca.map(str::to_string),
        })
    }
}

fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(b) = text
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One connection, in the replication mode `replication=database` (which
/// also takes SQL).
pub(crate) struct Conn {
    stream: Box<dyn Io>,
    read: BytesMut,
}

fn broker(e: impl std::fmt::Display) -> SourceError {
    SourceError::Broker(format!("postgres: {e}"))
}

/// The `M` (message) field of an ErrorResponse, with its hint.
fn error_text(body: &[u8]) -> String {
    let mut message = String::new();
    let mut hint = String::new();
    let mut fields = body;
    while let Some((&kind, rest)) = fields.split_first() {
        if kind == 0 {
            break;
        }
        let end = rest.iter().position(|b| *b == 0).unwrap_or(rest.len());
        let value = String::from_utf8_lossy(&rest[..end]).into_owned();
        match kind {
            b'M' => message = value,
            b'H' => hint = value,
            _ => {}
        }
        fields = rest.get(end + 1..).unwrap_or_default();
    }
    if hint.is_empty() {
        message
    } else {
        format!("{message} ({hint})")
    }
}

fn cstring(buf: &mut BytesMut, text: &str) {
    buf.put_slice(text.as_bytes());
    buf.put_u8(0);
}

/// A message of `kind` with `body`.
fn frame(kind: u8, body: &[u8]) -> BytesMut {
    let mut buf = BytesMut::with_capacity(body.len() + 5);
    buf.put_u8(kind);
    buf.put_i32(i32::try_from(body.len() + 4).unwrap_or(i32::MAX));
    buf.put_slice(body);
    buf
}

impl Conn {
    /// A replication connection (`replication=database`).
    pub async fn connect(address: &Address) -> Result<Conn, SourceError> {
        Self::connect_as(address, true).await
    }

    /// A connection for SQL alone (catalog lookups beside a stream).
    pub async fn connect_sql(address: &Address) -> Result<Conn, SourceError> {
        Self::connect_as(address, false).await
    }

    async fn connect_as(address: &Address, replication: bool) -> Result<Conn, SourceError> {
        let stream = tokio::time::timeout(
            Duration::from_secs(5),
            TcpStream::connect((address.host.as_str(), address.port)),
        )
        .await
        .map_err(|_| broker(format!("{}:{} did not answer", address.host, address.port)))?
        .map_err(|e| broker(format!("{}:{}: {e}", address.host, address.port)))?;
        let _ = stream.set_nodelay(true);
        let stream: Box<dyn Io> = match address.tls {
            None => Box::new(stream),
            Some(check) => Box::new(Self::tls(stream, address, check).await?),
        };
        let mut conn = Conn {
            stream,
            read: BytesMut::with_capacity(64 * 1024),
        };
        let mut body = BytesMut::new();
        body.put_i32(196_608); // protocol 3.0
        let mode = if replication { "database" } else { "false" };
        for (k, v) in [
            ("user", address.user.as_str()),
            ("database", address.database.as_str()),
            ("replication", mode),
            ("application_name", "gust"),
            ("client_encoding", "UTF8"),
        ] {
            cstring(&mut body, k);
            cstring(&mut body, v);
        }
        body.put_u8(0);
        let mut startup = BytesMut::new();
        startup.put_i32(i32::try_from(body.len() + 4).unwrap_or(i32::MAX));
        startup.put_slice(&body);
        conn.write(&startup).await?;
        match conn.authenticate(address).await {
            Err(SourceError::Broker(e)) if e.contains("replication role") => {
                Err(SourceError::Config(format!(
                    "the role `{0}` may not replicate: ALTER ROLE \"{0}\" WITH REPLICATION",
                    address.user
                )))
            }
            Err(e) => Err(e),
            Ok(()) => Ok(conn),
        }
    }

    /// `SSLRequest`, then the handshake, checked as `check` says.
    async fn tls(
        mut stream: TcpStream,
        address: &Address,
        check: Check,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, SourceError> {
        let mut request = BytesMut::with_capacity(8);
        request.put_i32(8);
        request.put_i32(80_877_103);
        stream.write_all(&request).await.map_err(broker)?;
        let answer = tokio::time::timeout(Duration::from_secs(5), stream.read_u8())
            .await
            .map_err(|_| broker("the SSLRequest was not answered"))?;
        match answer.map_err(broker)? {
            b'S' => {}
            b'N' => {
                return Err(SourceError::Config(format!(
                    "{}:{} does not accept TLS (its `ssl` is off): drop `sslmode` or turn it on",
                    address.host, address.port
                )));
            }
            other => return Err(broker(format!("an SSLRequest answered with {other:#x}"))),
        }
        let config = crate::tls::client_config(address.ca.as_deref(), check)?;
        crate::tls::handshake(stream, &address.host, std::sync::Arc::new(config)).await
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), SourceError> {
        self.stream.write_all(bytes).await.map_err(broker)
    }

    /// The next message: its type and body.
    pub async fn next(&mut self) -> Result<(u8, Bytes), SourceError> {
        loop {
            if self.read.len() >= 5 {
                let len =
                    i32::from_be_bytes([self.read[1], self.read[2], self.read[3], self.read[4]]);
                let len = usize::try_from(len).map_err(|_| broker("a bad message length"))?;
                if !(4..=(1 << 30)).contains(&len) {
                    return Err(broker("a bad message length"));
                }
                if self.read.len() > len {
                    let kind = self.read[0];
                    self.read.advance(5);
                    let body = self.read.split_to(len - 4).freeze();
                    return Ok((kind, body));
                }
                self.read.reserve(len + 1 - self.read.len());
            }
            let n = self.stream.read_buf(&mut self.read).await.map_err(broker)?;
            if n == 0 {
                return Err(broker("the server closed the connection"));
            }
        }
    }

    async fn authenticate(&mut self, address: &Address) -> Result<(), SourceError> {
        let password = || {
            address.password.clone().ok_or_else(|| {
                SourceError::Config(format!(
                    "the server asks a password for `{}`: put it in the source's url",
                    address.user
                ))
            })
        };
        let mut scram: Option<ScramSha256> = None;
        loop {
            let (kind, body) = self.next().await?;
            match kind {
                b'R' => {
                    let code = body
                        .get(..4)
                        .map_or(-1, |b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]));
                    let rest = body.get(4..).unwrap_or_default();
                    match code {
                        0 => {}
                        3 => {
                            let mut msg = BytesMut::new();
                            cstring(&mut msg, &password()?);
                            self.write(&frame(b'p', &msg)).await?;
                        }
                        5 => {
                            let salt: [u8; 4] = rest
                                .get(..4)
                                .and_then(|s| s.try_into().ok())
                                .ok_or_else(|| broker("an MD5 request without its salt"))?;
                            let hash = postgres_protocol::authentication::md5_hash(
                                address.user.as_bytes(),
                                password()?.as_bytes(),
                                salt,
                            );
                            let mut msg = BytesMut::new();
                            cstring(&mut msg, &hash);
                            self.write(&frame(b'p', &msg)).await?;
                        }
                        10 => {
                            let offers = String::from_utf8_lossy(rest);
                            if !offers.split('\0').any(|m| m == sasl::SCRAM_SHA_256) {
                                return Err(broker(format!(
                                    "no SASL mechanism Gust knows in {offers:?}"
                                )));
                            }
                            let client = ScramSha256::new(
                                password()?.as_bytes(),
                                ChannelBinding::unsupported(),
                            );
                            let mut msg = BytesMut::new();
                            cstring(&mut msg, sasl::SCRAM_SHA_256);
                            msg.put_i32(i32::try_from(client.message().len()).unwrap_or(0));
                            msg.put_slice(client.message());
                            self.write(&frame(b'p', &msg)).await?;
                            scram = Some(client);
                        }
                        11 => {
                            let client =
                                scram.as_mut().ok_or_else(|| broker("SASL out of turn"))?;
                            client.update(rest).map_err(broker)?;
                            let reply = client.message().to_vec();
                            self.write(&frame(b'p', &reply)).await?;
                        }
                        12 => {
                            let client =
                                scram.as_mut().ok_or_else(|| broker("SASL out of turn"))?;
                            client.finish(rest).map_err(broker)?;
                        }
                        other => {
                            return Err(broker(format!(
                                "authentication method {other} is not supported"
                            )));
                        }
                    }
                }
                b'E' => {
                    return Err(SourceError::Broker(format!(
                        "postgres: {}",
                        error_text(&body)
                    )));
                }
                b'Z' => return Ok(()),
                _ => {} // parameter status, backend key, notices
            }
        }
    }

    /// Runs `sql` (simple query protocol); the rows of its last result, as text.
    pub async fn query(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>, SourceError> {
        let mut msg = BytesMut::new();
        cstring(&mut msg, sql);
        self.write(&frame(b'Q', &msg)).await?;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            let (kind, body) = self.next().await?;
            match kind {
                b'T' => rows.clear(),
                b'D' => rows.push(data_row(&body)?),
                b'E' => error = Some(error_text(&body)),
                b'Z' => break,
                _ => {}
            }
        }
        match error {
            Some(e) => Err(SourceError::Broker(format!("postgres: {e}"))),
            None => Ok(rows),
        }
    }

    /// Sends `START_REPLICATION` and waits for the copy-both stream.
    pub async fn start_replication(&mut self, command: &str) -> Result<(), SourceError> {
        let mut msg = BytesMut::new();
        cstring(&mut msg, command);
        self.write(&frame(b'Q', &msg)).await?;
        loop {
            let (kind, body) = self.next().await?;
            match kind {
                b'W' => return Ok(()),
                b'E' => {
                    return Err(SourceError::Broker(format!(
                        "postgres: {}",
                        error_text(&body)
                    )));
                }
                _ => {}
            }
        }
    }

    /// Tells the server what is durably handled: it may drop WAL before
    /// `flushed`, and a restart resumes from there.
    pub async fn standby_status(&mut self, flushed: u64, reply: bool) -> Result<(), SourceError> {
        let mut msg = BytesMut::with_capacity(34);
        msg.put_u8(b'r');
        msg.put_u64(flushed);
        msg.put_u64(flushed);
        msg.put_u64(flushed);
        msg.put_i64(pg_now_micros());
        msg.put_u8(u8::from(reply));
        self.write(&frame(b'd', &msg)).await
    }
}

/// Microseconds since 2000-01-01, PostgreSQL's epoch.
fn pg_now_micros() -> i64 {
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64);
    unix - 946_684_800_000_000
}

fn data_row(body: &[u8]) -> Result<Vec<Option<String>>, SourceError> {
    let mut b = body;
    if b.len() < 2 {
        return Err(broker("a short data row"));
    }
    let n = b.get_i16();
    let mut row = Vec::with_capacity(usize::try_from(n).unwrap_or(0));
    for _ in 0..n {
        if b.len() < 4 {
            return Err(broker("a short data row"));
        }
        let len = b.get_i32();
        if len < 0 {
            row.push(None);
            continue;
        }
        let len = usize::try_from(len).map_err(broker)?;
        if b.len() < len {
            return Err(broker("a short data row"));
        }
        row.push(Some(String::from_utf8_lossy(&b[..len]).into_owned()));
        b.advance(len);
    }
    Ok(row)
}

/// `text` as an SQL string literal.
pub(crate) fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        let a = Address::parse("postgres://app:p%40ss@db:5433/shop", None).unwrap();
        assert_eq!(
            a,
            Address {
                host: "db".into(),
                port: 5433,
                user: "app".into(),
                password: Some("p@ss".into()),
                database: "shop".into(),
                tls: None,
                ca: None,
            }
        );
        let b = Address::parse("postgresql://127.0.0.1", None).unwrap();
        assert_eq!(
            (b.user.as_str(), b.database.as_str(), b.port),
            ("postgres", "postgres", 5432)
        );
        let tls = |url: &str| Address::parse(url, None).map(|a| a.tls);
        assert_eq!(
            tls("postgres://u@h/db?sslmode=require").unwrap(),
            Some(Check::Full)
        );
        assert_eq!(
            tls("postgres://u@h/db?application_name=x&sslmode=verify-ca").unwrap(),
            Some(Check::ChainOnly)
        );
        assert_eq!(tls("postgres://u@h/db?sslmode=prefer").unwrap(), None);
        let e = tls("postgres://u@h/db?sslmode=sure").unwrap_err();
        assert!(e.to_string().contains("no sslmode `sure`"), "{e}");
    }

    #[test]
    fn errors_and_rows_decode() {
        let body = b"SERROR\0C42P01\0Mno table\0Hmake it\0\0";
        assert_eq!(error_text(body), "no table (make it)");
        let mut row = BytesMut::new();
        row.put_i16(2);
        row.put_i32(2);
        row.put_slice(b"ok");
        row.put_i32(-1);
        assert_eq!(data_row(&row).unwrap(), vec![Some("ok".into()), None]);
        assert_eq!(literal("it's"), "'it''s'");
    }
}
