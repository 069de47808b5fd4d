//! Linearizability checker for the history of ONE key of a key-value store.
//!
//! [`check`] decides whether the operations several concurrent clients ran on
//! the key can be put in one total order that (a) respects real time (if `a`
//! completed before `b` was invoked, `a` comes first) and (b) is a legal run of
//! the model. It is the Wing & Gong search with Lowe's memoisation (as in
//! Knossos and Porcupine), iterative, over states (placed ops, model value).
//!
//! Model: the key holds an `Option<u64>` (`None` = absent). `Read` returns it;
//! `Write(v)` sets `Some(v)` (clients write unique values); `Incr(d)` treats
//! absent as 0, stores `old + d` and returns it (overflow is illegal); `Delete`
//! sets `None`. A return of the wrong kind for its call is illegal.
//!
//! Outcomes: an `Ok` op takes effect once within `[invoked, completed]`. An
//! `Unknown` op (timeout, or an error that does not prove failure) takes effect
//! once at any point after `invoked`, even after everything else, or never; its
//! return is unconstrained, and Unknown reads are dropped. Ops known to have
//! FAILED must not be passed in. Equal timestamps count as concurrent.
//!
//! Unknown ops: any valid order can be rewritten so that each run of Unknown
//! ops is at most one Write/Delete then Incrs, sits right before an Ok Read or
//! Incr that observes it, and uses same-call ops lowest-index first; anything
//! else is unobservable. So each search step places one Ok op together with
//! such a run producing exactly the value it needs. A state is skipped if a
//! visited one had the same placed Ok ops and value and a subset of its placed
//! Unknown ops (it had every option this one has). Both reductions are exact.
//!
//! Bound: each placement attempt and each step spent enumerating runs counts;
//! after `max_steps` steps [`check`] returns [`Verdict::TooHard`] rather than
//! guessing. Memory grows with the steps taken. Many pending Unknown Incrs
//! with varied deltas can make the search exponential; `Incr(1)` only cannot.

use std::cmp::Reverse;
use std::collections::HashMap;

/// An operation on the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Call {
    Read,
    Write(u64),
    Incr(u64),
    Delete,
}

/// What a completed operation returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Ret {
    Read(Option<u64>),
    Written,
    Incremented(u64),
    Deleted,
}

/// Whether the client learned the result of its operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Succeeded, returning `ret`, at `completed` (microseconds, same clock as `invoked`).
    Ok { ret: Ret, completed: u64 },
    /// Timed out / indeterminate error: took effect once after `invoked`, or never.
    Unknown,
}

/// One recorded operation. `client` is informational only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    pub client: usize,
    pub call: Call,
    pub invoked: u64,
    pub outcome: Outcome,
}

/// Result of [`check`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    /// No order exists. `prefix` = the largest number of completed operations any
    /// candidate order managed to linearize; `stuck_at` = index (into `ops`) of the
    /// earliest-completing op the search could not place at its deepest point.
    Violation {
        prefix: usize,
        stuck_at: usize,
    },
    /// The search gave up after `steps` steps: nothing is claimed either way.
    TooHard {
        steps: u64,
    },
}

/// Applies one op to the model; `None` if the op (with its return) is illegal here.
fn apply(state: Option<u64>, call: Call, ret: Option<Ret>) -> Option<Option<u64>> {
    match (call, ret) {
        (Call::Read, Some(Ret::Read(seen))) => (seen == state).then_some(state),
        (Call::Write(v), Some(Ret::Written) | None) => Some(Some(v)),
        (Call::Incr(d), None | Some(Ret::Incremented(_))) => {
            let new = state.unwrap_or(0).checked_add(d)?;
            (ret.is_none() || ret == Some(Ret::Incremented(new))).then_some(Some(new))
        }
        (Call::Delete, Some(Ret::Deleted) | None) => Some(None),
        _ => None,
    }
}

struct Op {
    call: Call,
    ret: Option<Ret>,
    invoked: u64,
    completed: u64,
    orig: usize,
}

/// The prepared history: `ops[..n_ok]` are the Ok ops and `ops[n_ok..]` the
/// Unknown ones, each part sorted by invocation. The set of placed ops is a
/// bitset: Ok op `i` is bit `i`, Unknown op `n_ok + u` is bit `64 * ok_words + u`.
struct History {
    ops: Vec<Op>,
    n_ok: usize,
    ok_words: usize,
    by_completion: Vec<usize>,
    ok_inv: Vec<u64>,
    unk_inv: Vec<u64>,
}

/// A search node: its model value, how to undo the step that led here, which
/// ops may go next, and what to try next.
struct Frame {
    state: Option<u64>,
    trail_len: usize,
    lo: [usize; 3],
    ok_end: usize,
    unk_end: usize,
    next: usize,
    cur: usize,
    runs: Vec<Vec<usize>>,
}

/// Steps used so far, and the budget.
struct Steps(u64, u64);

impl Steps {
    fn take(&mut self) -> Option<()> {
        (self.0 < self.1).then(|| self.0 += 1)
    }
}

/// Every way to take `c <= ids.len()` ops from each group `(d, ids)` of Incr(d)
/// (lowest indices first) so the deltas add up to `target`; `None` if out of steps.
fn incr_runs(
    groups: &[(u64, Vec<usize>)],
    target: u64,
    steps: &mut Steps,
) -> Option<Vec<Vec<usize>>> {
    let mut reach = vec![0u64; groups.len() + 1];
    for (i, (d, ids)) in groups.iter().enumerate().rev() {
        reach[i] = reach[i + 1].saturating_add(d.saturating_mul(ids.len() as u64));
    }
    let (mut out, mut counts, mut rem) = (Vec::new(), Vec::<usize>::new(), target);
    loop {
        steps.take()?;
        let i = counts.len();
        if i == groups.len() && rem == 0 {
            let pick = |((_, ids), &c): (&(u64, Vec<usize>), &usize)| ids[..c].to_vec();
            out.push(groups.iter().zip(&counts).flat_map(pick).collect());
        } else if i < groups.len() && reach[i] >= rem {
            let (d, ids) = &groups[i];
            let c = ids
                .len()
                .min(usize::try_from(rem / d).unwrap_or(usize::MAX));
            counts.push(c);
            rem -= d * c as u64;
            continue;
        }
        // Backtrack: lower the deepest count that is still positive.
        loop {
            let Some(c) = counts.pop() else {
                return Some(out);
            };
            let d = groups[counts.len()].0;
            rem += d * c as u64;
            if c > 0 {
                counts.push(c - 1);
                rem -= d * (c - 1) as u64;
                break;
            }
        }
    }
}

impl History {
    fn new(ops: &[Operation]) -> History {
        let (mut ok, mut unk) = (Vec::new(), Vec::new());
        for (orig, o) in ops.iter().enumerate() {
            let (call, invoked) = (o.call, o.invoked);
            let op = |ret, completed| Op {
                call,
                ret,
                invoked,
                completed,
                orig,
            };
            match o.outcome {
                Outcome::Ok { ret, completed } => ok.push(op(Some(ret), completed.max(invoked))),
                Outcome::Unknown if call == Call::Read => {}
                Outcome::Unknown => unk.push(op(None, u64::MAX)),
            }
        }
        ok.sort_by_key(|o| (o.invoked, o.completed, o.orig));
        unk.sort_by_key(|o| (o.invoked, o.orig));
        let (n_ok, ok_words) = (ok.len(), ok.len().div_ceil(64));
        let ok_inv = ok.iter().map(|o| o.invoked).collect();
        let unk_inv = unk.iter().map(|o| o.invoked).collect();
        let mut by_completion: Vec<usize> = (0..n_ok).collect();
        by_completion.sort_by_key(|&i| (ok[i].completed, i));
        ok.extend(unk);
        History {
            ops: ok,
            n_ok,
            ok_words,
            by_completion,
            ok_inv,
            unk_inv,
        }
    }

    fn bit(&self, i: usize) -> usize {
        if i < self.n_ok {
            i
        } else {
            64 * self.ok_words + i - self.n_ok
        }
    }

    fn placed(&self, bits: &[u64], i: usize) -> bool {
        let b = self.bit(i);
        bits[b / 64] >> (b % 64) & 1 == 1
    }

    fn mark(&self, bits: &mut [u64], i: usize, on: bool) {
        let b = self.bit(i);
        bits[b / 64] = bits[b / 64] & !(1 << (b % 64)) | u64::from(on) << (b % 64);
    }

    /// The frame for a state just entered, advancing the parent's cursors `lo`
    /// (first unplaced op: by completion, Ok by invocation, Unknown by invocation).
    fn frame(
        &self,
        bits: &[u64],
        mut lo: [usize; 3],
        trail_len: usize,
        state: Option<u64>,
    ) -> Frame {
        let n = self.ops.len();
        let ends = [self.n_ok, self.n_ok, n];
        let op_at = |k: usize, j: usize| if k == 0 { self.by_completion[j] } else { j };
        for k in 0..3 {
            while lo[k] < ends[k] && self.placed(bits, op_at(k, lo[k])) {
                lo[k] += 1;
            }
        }
        // Real time: only ops invoked no later than the earliest completion among
        // the Ok ops still to be placed may go next.
        let min_c = self
            .by_completion
            .get(lo[0])
            .map_or(u64::MAX, |&i| self.ops[i].completed);
        let ok_end = self.ok_inv.partition_point(|&t| t <= min_c);
        let unk_end = self.n_ok + self.unk_inv.partition_point(|&t| t <= min_c);
        Frame {
            state,
            trail_len,
            lo,
            ok_end,
            unk_end,
            next: lo[1],
            cur: 0,
            runs: Vec::new(),
        }
    }

    /// Runs of Unknown ops (shortest last) after which Ok op `o` accepts the value.
    fn runs_for(
        &self,
        o: usize,
        f: &Frame,
        bits: &[u64],
        steps: &mut Steps,
    ) -> Option<Vec<Vec<usize>>> {
        let v = f.state;
        let wanted = match (self.ops[o].call, self.ops[o].ret) {
            (Call::Read, Some(Ret::Read(r))) => vec![r],
            (Call::Incr(d), Some(Ret::Incremented(n))) => match n.checked_sub(d) {
                Some(0) => vec![Some(0), None],
                t => t.map(Some).into_iter().collect(),
            },
            _ => vec![],
        };
        let (mut writes, mut delete, mut zero, mut incrs) = (Vec::new(), None, None, Vec::new());
        for i in (f.lo[2]..f.unk_end).filter(|&i| !self.placed(bits, i)) {
            match self.ops[i].call {
                Call::Write(w) => writes.push((w, i)),
                Call::Delete => _ = delete.get_or_insert(i),
                Call::Incr(0) => _ = zero.get_or_insert(i),
                Call::Incr(d) => incrs.push((d, i)),
                Call::Read => {}
            }
        }
        incrs.sort_unstable();
        let mut groups: Vec<(u64, Vec<usize>)> = Vec::new();
        for (d, i) in incrs {
            match groups.last_mut() {
                Some((gd, ids)) if *gd == d => ids.push(i),
                _ => groups.push((d, vec![i])),
            }
        }
        let reach = groups.iter().fold(0u64, |a, (d, ids)| {
            a.saturating_add(d.saturating_mul(ids.len() as u64))
        });
        let mut out = Vec::new();
        for w in wanted {
            let Some(x) = w else {
                out.extend(if v.is_none() {
                    Some(Vec::new())
                } else {
                    delete.map(|d| vec![d])
                });
                continue;
            };
            // At most one blind op first (none that leaves the value as it is)...
            let mut bases = vec![(None, v)];
            bases.extend(delete.filter(|_| v.is_some()).map(|d| (Some(d), None)));
            let fits = |&&(u, _): &&(u64, usize)| u <= x && x - u <= reach && Some(u) != v;
            bases.extend(writes.iter().filter(fits).map(|&(u, i)| (Some(i), Some(u))));
            for (blind, b) in bases {
                let pre: Vec<usize> = blind.into_iter().collect();
                // ...then Incrs making up the gap (an Incr(0) only turns None into 0).
                match x.checked_sub(b.unwrap_or(0)) {
                    _ if b == Some(x) => out.push(pre),
                    Some(0) => out.extend(zero.map(|z| [&pre[..], &[z]].concat())),
                    Some(gap) if gap <= reach => {
                        let runs = incr_runs(&groups, gap, steps)?;
                        out.extend(runs.into_iter().map(|r| [&pre[..], &r[..]].concat()));
                    }
                    _ => {}
                }
            }
        }
        out.sort_by_key(|r| Reverse(r.len()));
        Some(out)
    }
}

/// Placed Ok ops -> (value, placed Unknown ops) of the states entered, minus
/// those a later one dominates.
type Memo = HashMap<Vec<u64>, Vec<(Option<u64>, Vec<u64>)>>;

/// `a` ⊆ `b`.
fn subset(a: &[u64], b: &[u64]) -> bool {
    a.iter().zip(b).all(|(x, y)| x & !y == 0)
}

/// Checks whether `ops` (in any order) is a linearizable history of one key whose
/// value was `initial` before any of them. Ops known to have failed must be left out.
/// Gives up with [`Verdict::TooHard`] after `max_steps` steps.
pub fn check(initial: Option<u64>, ops: &[Operation], max_steps: u64) -> Verdict {
    let h = History::new(ops);
    let Some(&first) = h.by_completion.first() else {
        return Verdict::Linearizable;
    };
    let (w, mut steps) = (h.ok_words, Steps(0, max_steps));
    let mut bits = vec![0u64; w + h.unk_inv.len().div_ceil(64)];
    let (mut placed_ok, mut trail) = (0usize, Vec::<usize>::new());
    let (mut prefix, mut stuck_at) = (0usize, h.ops[first].orig);
    let mut memo: Memo = HashMap::new();
    memo.insert(bits[..w].to_vec(), vec![(initial, bits[w..].to_vec())]);
    let mut stack = vec![h.frame(&bits, [0, 0, h.n_ok], 0, initial)];

    while let Some(top) = stack.last_mut() {
        let run = match top.runs.pop() {
            Some(run) => run,
            None => {
                // Next Ok candidate not yet placed, in invocation order.
                while top.next < top.ok_end && h.placed(&bits, top.next) {
                    top.next += 1;
                }
                if top.next >= top.ok_end {
                    // Exhausted: undo the step that led here.
                    for i in trail.drain(top.trail_len..) {
                        h.mark(&mut bits, i, false);
                    }
                    placed_ok = placed_ok.saturating_sub(1);
                    stack.pop();
                    continue;
                }
                (top.cur, top.next) = (top.next, top.next + 1);
                if !matches!(h.ops[top.cur].call, Call::Write(_) | Call::Delete) {
                    let Some(runs) = h.runs_for(top.cur, top, &bits, &mut steps) else {
                        return Verdict::TooHard { steps: steps.0 };
                    };
                    top.runs = runs;
                    continue;
                }
                Vec::new()
            }
        };
        if steps.take().is_none() {
            return Verdict::TooHard { steps: steps.0 };
        }
        let (o, lo) = (top.cur, top.lo);
        let mut state = Some(top.state);
        for &i in run.iter().chain([&o]) {
            state = state.and_then(|s| apply(s, h.ops[i].call, h.ops[i].ret));
        }
        let Some(state) = state else { continue };
        let trail_len = trail.len();
        for &i in run.iter().chain([&o]) {
            h.mark(&mut bits, i, true);
            trail.push(i);
        }
        placed_ok += 1;
        if placed_ok == h.n_ok {
            return Verdict::Linearizable;
        }
        let (key, unk) = bits.split_at(w);
        let covers = |(v, u): &(Option<u64>, Vec<u64>), v2, u2: &[u64]| *v == v2 && subset(u, u2);
        let dominated = match memo.get_mut(key) {
            Some(seen) if seen.iter().any(|e| covers(e, state, unk)) => true,
            Some(seen) => {
                let new = (state, unk.to_vec());
                seen.retain(|(v, u)| !covers(&new, *v, u));
                seen.push(new);
                false
            }
            None => {
                memo.insert(key.to_vec(), vec![(state, unk.to_vec())]);
                false
            }
        };
        if dominated {
            for i in trail.drain(trail_len..) {
                h.mark(&mut bits, i, false);
            }
            placed_ok -= 1;
            continue;
        }
        let child = h.frame(&bits, lo, trail_len, state);
        if placed_ok > prefix {
            prefix = placed_ok;
            stuck_at = h.ops[h.by_completion[child.lo[0]]].orig;
        }
        stack.push(child);
    }
    Verdict::Violation { prefix, stuck_at }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STEPS: u64 = 10_000_000;

    /// Parses a history like `"W1 0 10, R1 20 30, I2:3 5 ?, R_ 40 50, D 1 2"`:
    /// op (`W`rite v, `R`ead v or `_` for absent, `I`ncr d:returned, `D`elete),
    /// invoked, completed (`?` = Unknown outcome).
    fn h(s: &str) -> Vec<Operation> {
        let num = |s: &str| s.parse::<u64>().ok();
        let parse = |op: &str| {
            let f: Vec<&str> = op.split_whitespace().collect();
            let (kind, arg) = f[0].split_at(1);
            let (d, n) = arg.split_once(':').unwrap_or((arg, "0"));
            let (call, ret) = match kind {
                "R" => (Call::Read, Ret::Read(num(arg))),
                "W" => (Call::Write(num(arg).unwrap()), Ret::Written),
                "I" => (
                    Call::Incr(num(d).unwrap()),
                    Ret::Incremented(num(n).unwrap()),
                ),
                _ => (Call::Delete, Ret::Deleted),
            };
            let outcome =
                num(f[2]).map_or(Outcome::Unknown, |completed| Outcome::Ok { ret, completed });
            Operation {
                client: 0,
                call,
                invoked: num(f[1]).unwrap(),
                outcome,
            }
        };
        s.split(',')
            .filter(|op| !op.trim().is_empty())
            .map(parse)
            .collect()
    }

    fn lin(initial: Option<u64>, s: &str) -> bool {
        match check(initial, &h(s), STEPS) {
            Verdict::Linearizable => true,
            Verdict::Violation { .. } => false,
            v @ Verdict::TooHard { .. } => panic!("{s}: {v:?}"),
        }
    }

    #[test]
    fn sequential() {
        assert!(lin(None, "W1 0 10, R1 20 30"));
        assert!(!lin(None, "W1 0 10, R2 20 30"));
        let v = check(None, &h("R2 20 30, W1 0 10"), STEPS);
        assert_eq!(
            v,
            Verdict::Violation {
                prefix: 1,
                stuck_at: 0
            }
        );
        assert!(lin(None, "") && lin(Some(3), "R3 0 1") && !lin(None, "R3 0 1"));
    }

    #[test]
    fn concurrent_writes() {
        assert!(
            !lin(None, "W1 0 10, W2 5 15, R2 20 30, R1 40 50"),
            "stale read"
        );
        assert!(lin(None, "W1 0 10, W2 5 15, R2 6 20, R1 12 30"));
    }

    #[test]
    fn increments() {
        assert!(!lin(None, "I1:1 0 10, I1:1 0 10"), "lost update");
        assert!(lin(None, "I1:1 0 10, I1:2 0 10"));
        assert!(!lin(Some(0), "I1:1 0 10, R0 11 12") && !lin(None, "I1:2 0 10"));
    }

    #[test]
    fn unknown_write() {
        assert!(lin(None, "W7 0 ?, R7 20 30"));
        assert!(!lin(None, "W7 0 ?, R9 20 30"), "nobody wrote 9");
        // It may never happen, or happen after everything else was invoked...
        assert!(lin(None, "W7 0 ?, R_ 20 30") && lin(None, "W7 0 ?, R_ 20 30, R7 40 50"));
        // ...but not before it was invoked, nor twice.
        assert!(!lin(None, "R7 0 10, W7 20 ?"));
        assert!(!lin(None, "W1 0 ?, W2 0 ?, R2 10 20, R1 30 40, R2 50 60"));
        assert!(lin(None, "W1 0 ?, W2 0 ?, R2 10 20, R1 30 40"));
        assert!(lin(None, "D 0 ?, W4 0 5, R_ 10 20, R_ 30 40"));
        // Only an order that saves the Unknown write for the last read works (the
        // search meets the same Ok ops and value with it spent first).
        assert!(lin(None, "W5 0 ?, R5 0 2, W5 1 2, W7 3 100, R5 200 300"));
    }

    #[test]
    fn unknown_incr() {
        assert!(lin(Some(0), "I5 0 ?, R0 10 20, R5 30 40"));
        assert!(lin(Some(0), "I5 0 ?, R0 10 20, R0 30 40"));
        assert!(!lin(Some(0), "I5 0 ?, R5 10 20, R0 30 40"));
        assert!(
            !lin(Some(0), "I5 0 ?, R5 10 20, R10 30 40"),
            "applied twice"
        );
        assert!(!lin(Some(0), "I1 0 ?, I5 0 ?, R5 10 20, R10 30 40"));
        // Combinations of pending increments: 1+4 and 1+2+4 reachable, 8 not.
        assert!(lin(Some(0), "I1 0 ?, I2 0 ?, I4 0 ?, R5 10 20, R7 30 40"));
        assert!(!lin(Some(0), "I1 0 ?, I2 0 ?, I4 0 ?, R5 10 20, R8 30 40"));
        assert!(!lin(Some(0), "I1 0 ?, I2 0 ?, I4 0 ?, R6 10 20, R5 30 40"));
        // Runs mixing blind ops and increments; Incr(0) turns absent into 0.
        assert!(lin(None, "W10 0 ?, I3 0 ?, R13 10 20") && lin(Some(8), "I3 0 ?, D 0 ?, R3 10 20"));
        assert!(lin(None, "W10 0 ?, I2:12 5 20") && !lin(None, "W10 0 ?, I2:13 5 20"));
        assert!(lin(None, "I0 0 ?, R0 10 20") && !lin(None, "R0 10 20"));
    }

    #[test]
    fn deletes() {
        assert!(!lin(None, "W1 0 10, R_ 20 30"));
        assert!(lin(None, "W1 0 10, D 15 25, R_ 20 30"));
    }

    #[test]
    fn real_time_order() {
        assert!(!lin(None, "W1 0 10, W2 20 30, R1 40 50"));
        assert!(lin(None, "W1 0 10, W2 20 30, R1 25 50"));
        // Equal timestamps count as concurrent; zero-length ops are fine.
        assert!(lin(None, "W1 0 10, W2 10 10, R1 10 10"));
    }

    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }

    /// A random sequential run of `n` ops by 8 clients, op k taking effect at
    /// 1000 + 100k inside a random interval; ~5% Unknown (half never applied).
    fn random_history(rng: &mut Rng, n: u64, mut state: Option<u64>) -> Vec<Operation> {
        let (mut free, mut ops) = ([0u64; 8], Vec::new());
        for k in 0..n {
            let p = 1000 + 100 * k;
            let start = rng.below(8) as usize;
            let client = (0..8).map(|j| (start + j) % 8).find(|&c| free[c] < p);
            let client = client.unwrap_or(start);
            let lo = free[client].min(p).max(p.saturating_sub(350));
            let invoked = lo + rng.below(p - lo + 1);
            let completed = p + rng.below(350);
            free[client] = completed + 1;
            let sum = state.unwrap_or(0) + 1 + k % 5;
            let (call, next, ret) = match rng.below(20) {
                0..=7 => (Call::Read, state, Ret::Read(state)),
                8..=12 => (Call::Write(1000 + k), Some(1000 + k), Ret::Written),
                13..=17 => (Call::Incr(1 + k % 5), Some(sum), Ret::Incremented(sum)),
                _ => (Call::Delete, None, Ret::Deleted),
            };
            let roll = rng.below(100);
            if roll >= 2 {
                state = next;
            }
            let outcome = if roll < 5 {
                Outcome::Unknown
            } else {
                Outcome::Ok { ret, completed }
            };
            ops.push(Operation {
                client,
                call,
                invoked,
                outcome,
            });
        }
        for i in (1..ops.len()).rev() {
            ops.swap(i, rng.below(i as u64 + 1) as usize);
        }
        ops
    }

    #[test]
    fn randomized() {
        for seed in 1..=30u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
            let initial = if seed % 2 == 0 { Some(0) } else { None };
            let mut ops = random_history(&mut rng, 300, initial);
            assert_eq!(
                check(initial, &ops, STEPS),
                Verdict::Linearizable,
                "seed {seed}"
            );
            let is_ok_read = |o: &Operation| o.call == Call::Read && o.outcome != Outcome::Unknown;
            let reads: Vec<usize> = (0..ops.len()).filter(|&i| is_ok_read(&ops[i])).collect();
            let victim = reads[rng.below(reads.len() as u64) as usize];
            if let Outcome::Ok { ret, .. } = &mut ops[victim].outcome {
                *ret = Ret::Read(Some(u64::MAX));
            }
            match check(initial, &ops, STEPS) {
                Verdict::Violation { prefix, stuck_at } => assert!(prefix < 300 && stuck_at < 300),
                v => panic!("seed {seed}: expected a violation, got {v:?}"),
            }
        }
    }

    #[test]
    fn many_pending_unknowns_stay_cheap() {
        // 40 Unknown ops that never applied, 400 sequential ops, then a stale read.
        let mut s: String = (0..40)
            .map(|i| ["I1", "W99999", "D", "I2"][i % 4].to_string() + " 0 ?,")
            .collect();
        for j in 0..200 {
            let t = 1000 + 200 * j;
            s += &format!("W{j} {t} {}, R{j} {} {},", t + 50, t + 100, t + 150);
        }
        assert!(lin(None, &s));
        let stale = h(&(s + "R150 100000 100001"));
        assert!(matches!(
            check(None, &stale, 1_000_000),
            Verdict::Violation { .. }
        ));
    }

    #[test]
    fn too_hard() {
        let ops = random_history(&mut Rng(42), 50, None);
        assert_eq!(check(None, &ops, 1), Verdict::TooHard { steps: 1 });
        let small = h("W1 0 10, W2 5 15, R2 20 30");
        assert_eq!(check(None, &small, 1), Verdict::TooHard { steps: 1 });
    }
}
