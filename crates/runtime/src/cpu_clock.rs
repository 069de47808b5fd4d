//! The calling thread's CPU time, read without a system call on most polls.
//!
//! Metering reads the thread's CPU clock before and after every poll of a
//! guest. `clock_gettime(CLOCK_THREAD_CPUTIME_ID)` is a system call (the
//! vDSO does not serve it: 0.4 µs each on a 2-core VM), while the
//! monotonic clock comes from the vDSO in tens of nanoseconds. A thread
//! that has not been switched out since an exact reading has had the CPU
//! all along, so its CPU time is that reading plus the monotonic time
//! since. Each thread keeps such an *anchor*: an exact reading, when it was
//! taken, and the thread's switch count then.
//!
//! **The switch count** is the sequence lock of a perf event's mapped
//! page. The event is a software "dummy" on this thread alone (it counts
//! nothing, user space only, so `perf_event_paranoid` 2 allows it); Linux
//! rewrites its page, moving the lock, each time it switches the thread
//! out (checked once per process: a thread that sleeps must see it move).
//! A reading is anchor + elapsed only when the lock is the anchor's
//! and even (no update under way), read *after* the monotonic clock; any
//! other reading is the system call, which becomes the new anchor.
//!
//! **The bound.** The thread's CPU clock leaves out time the hypervisor
//! took from the whole virtual CPU (steal), and where the kernel accounts
//! it apart, interrupt time; the monotonic clock counts both, and neither
//! is a switch. An anchor is therefore used for at most [`ANCHOR_MAX`]: no
//! reading leans on more than that of monotonic time, and steal and
//! interrupts in that window are all it can add. On a
//! 2-core VM under contention, 0.01 % of intervals of up to 0.1 ms
//! differed from the exact clock by over 5 µs.
//!
//! Where perf events are refused (`perf_event_paranoid` 3, a seccomp
//! filter, not Linux), or with `GUST_THREAD_CLOCK=syscall` in the
//! environment, every reading is the system call.

use std::cell::Cell;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The longest an anchor stands in for the thread's clock.
const ANCHOR_MAX: Duration = Duration::from_micros(200);

/// The calling thread's CPU time in nanoseconds (user and system).
pub(crate) fn thread_cpu_ns() -> u64 {
    CLOCK
        .try_with(ThreadClock::now_ns)
        .unwrap_or_else(|_| exact_ns())
}

/// The thread's CPU clock, read with the system call.
fn exact_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    (t.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(t.tv_nsec as u64)
}

thread_local! {
    static CLOCK: ThreadClock = ThreadClock::open();
}

/// One thread's switch counter (if it has one) and anchor.
struct ThreadClock {
    switches: Option<switches::Counter>,
    anchor: Cell<Option<Anchor>>,
}

/// An exact reading of the thread's CPU clock.
#[derive(Debug, Clone, Copy)]
struct Anchor {
    /// The switch count read just before it.
    switches: u32,
    cpu_ns: u64,
    /// The monotonic time just after it.
    at: Instant,
}

impl Anchor {
    /// The CPU time at `now` from this anchor, if the thread was not
    /// switched out since (`switches` read after `now`) and the anchor is
    /// recent enough.
    fn reading(&self, switches: u32, now: Instant) -> Option<u64> {
        if switches != self.switches || !switches.is_multiple_of(2) {
            return None;
        }
        let since = now.checked_duration_since(self.at)?;
        (since <= ANCHOR_MAX).then(|| self.cpu_ns + since.as_nanos() as u64)
    }
}

impl ThreadClock {
    fn open() -> Self {
        static ALLOWED: OnceLock<bool> = OnceLock::new();
        let allowed = *ALLOWED.get_or_init(|| {
            std::env::var("GUST_THREAD_CLOCK").map_or(true, |v| v != "syscall")
                && switches_are_counted()
        });
        ThreadClock {
            switches: allowed.then(switches::Counter::open).flatten(),
            anchor: Cell::new(None),
        }
    }

    fn now_ns(&self) -> u64 {
        let Some(counter) = &self.switches else {
            return exact_ns();
        };
        let now = Instant::now();
        std::sync::atomic::compiler_fence(std::sync::atomic::Ordering::SeqCst);
        let switches = counter.read();
        if let Some(cpu_ns) = self.anchor.get().and_then(|a| a.reading(switches, now)) {
            return cpu_ns;
        }
        let cpu_ns = exact_ns();
        self.anchor.set(Some(Anchor {
            switches,
            cpu_ns,
            at: Instant::now(),
        }));
        cpu_ns
    }
}

/// Whether this kernel moves the counter when a thread is switched out:
/// checked once, on a thread of its own that sleeps for a millisecond.
fn switches_are_counted() -> bool {
    std::thread::Builder::new()
        .name("gust-cpu-clock".into())
        .spawn(|| {
            let Some(counter) = switches::Counter::open() else {
                return false;
            };
            let before = counter.read();
            std::thread::sleep(Duration::from_millis(1));
            counter.read() != before
        })
        .is_ok_and(|check| check.join().unwrap_or(false))
}

#[cfg(all(target_os = "linux", target_endian = "little"))]
mod switches {
    //! The perf event whose page counts the thread's switches.

    use std::os::fd::{FromRawFd as _, OwnedFd};
    use std::ptr::NonNull;

    /// `PERF_TYPE_SOFTWARE`, `PERF_COUNT_SW_DUMMY`.
    const SOFTWARE: u64 = 1;
    const DUMMY: u64 = 9;
    /// `exclude_kernel` and `exclude_hv`: what an unprivileged process may ask.
    const USER_ONLY: u64 = 1 << 5 | 1 << 6;
    /// `PERF_ATTR_SIZE_VER0`: the first 64 bytes of `perf_event_attr`.
    const ATTR_SIZE: u64 = 64;
    /// `PERF_FLAG_FD_CLOEXEC`.
    const FD_CLOEXEC: libc::c_ulong = 1 << 3;
    /// The offset of `lock` in `perf_event_mmap_page`.
    const LOCK_OFFSET: usize = 8;

    /// A perf event on the calling thread and its mapped first page.
    pub(super) struct Counter {
        page: NonNull<u8>,
        len: usize,
        _event: OwnedFd,
    }

    impl Counter {
        /// `None` when the kernel refuses the event or its page.
        pub(super) fn open() -> Option<Counter> {
            // perf_event_attr, version 0: type and size, config, then
            // zeroes but for the flag bits (at byte 40).
            // (Little-endian: `size` is the high half of the first word.)
            let mut attr: [u64; 8] = [SOFTWARE | ATTR_SIZE << 32, DUMMY, 0, 0, 0, USER_ONLY, 0, 0];
            // SAFETY: perf_event_open reads `ATTR_SIZE` bytes of `attr`,
            // which has them (and may write its size back); pid 0 and cpu
            // -1 is this thread on any CPU.
            let fd = unsafe {
                libc::syscall(
                    libc::SYS_perf_event_open,
                    attr.as_mut_ptr(),
                    0 as libc::pid_t,
                    -1 as libc::c_int,
                    -1 as libc::c_int,
                    FD_CLOEXEC,
                )
            };
            let fd = libc::c_int::try_from(fd).ok().filter(|fd| *fd >= 0)?;
            // SAFETY: a file descriptor just returned to us, owned by nobody else.
            let event = unsafe { OwnedFd::from_raw_fd(fd) };
            // SAFETY: sysconf has no preconditions.
            let len = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).ok()?;
            // SAFETY: a new read-only shared mapping of the event's first
            // page (its header), which the kernel allows for any event.
            let page = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ,
                    libc::MAP_SHARED,
                    fd,
                    0,
                )
            };
            if page == libc::MAP_FAILED {
                return None;
            }
            Some(Counter {
                page: NonNull::new(page.cast())?,
                len,
                _event: event,
            })
        }

        /// The page's sequence lock, as it is now.
        pub(super) fn read(&self) -> u32 {
            // SAFETY: the page is mapped for as long as `self` lives, and
            // `lock` is an aligned u32 within it, which only the kernel writes.
            unsafe {
                self.page
                    .as_ptr()
                    .add(LOCK_OFFSET)
                    .cast::<u32>()
                    .read_volatile()
            }
        }
    }

    impl Drop for Counter {
        fn drop(&mut self) {
            // SAFETY: the mapping made in `open`, unmapped once.
            unsafe {
                libc::munmap(self.page.as_ptr().cast(), self.len);
            }
        }
    }
}

#[cfg(not(all(target_os = "linux", target_endian = "little")))]
mod switches {
    pub(super) enum Counter {}

    impl Counter {
        pub(super) fn open() -> Option<Counter> {
            None
        }

        pub(super) fn read(&self) -> u32 {
            match *self {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_anchor_stands_only_for_an_unswitched_recent_thread() {
        let at = Instant::now();
        let anchor = Anchor {
            switches: 4,
            cpu_ns: 1_000,
            at,
        };
        let later = at + Duration::from_micros(50);
        assert_eq!(anchor.reading(4, later), Some(51_000));
        assert_eq!(anchor.reading(4, at), Some(1_000));
        // Switched out since, or the kernel mid-update.
        assert_eq!(anchor.reading(6, later), None);
        assert_eq!(anchor.reading(5, later), None);
        // Too old: steal in the window would count.
        assert_eq!(
            anchor.reading(4, at + ANCHOR_MAX + Duration::from_nanos(1)),
            None
        );
        assert_eq!(anchor.reading(4, at + ANCHOR_MAX), Some(201_000));
        // A clock read before the anchor.
        let odd = Anchor {
            switches: 5,
            ..anchor
        };
        assert_eq!(odd.reading(5, later), None);
    }

    /// Busy work between readings counts as the exact clock counts it,
    /// and time asleep does not count.
    #[test]
    fn the_clock_follows_the_threads_cpu_time() {
        let spin = |d: Duration| {
            let until = Instant::now() + d;
            let mut polls = 0u64;
            while Instant::now() < until {
                // Readings as a worker takes them: many, each short.
                std::hint::black_box(thread_cpu_ns());
                polls += 1;
            }
            polls
        };
        let (c0, e0) = (thread_cpu_ns(), exact_ns());
        assert!(spin(Duration::from_millis(30)) > 0);
        let (c1, e1) = (thread_cpu_ns(), exact_ns());
        std::thread::sleep(Duration::from_millis(50));
        let (c2, e2) = (thread_cpu_ns(), exact_ns());
        let (busy, exact_busy) = (c1 - c0, e1 - e0);
        let diff = busy.abs_diff(exact_busy);
        assert!(
            diff < exact_busy / 10,
            "busy: {busy} ns read, {exact_busy} ns exact"
        );
        // Asleep: the thread was switched out, so no anchor spans it.
        assert!(c2 - c1 < 5_000_000, "asleep: {} ns read", c2 - c1);
        assert!(e2 - e1 < 5_000_000);
        // Never backwards by more than the steal an anchor can hold.
        let slack = ANCHOR_MAX.as_nanos() as u64;
        let mut last = thread_cpu_ns();
        for _ in 0..100_000 {
            let now = thread_cpu_ns();
            assert!(now + slack >= last, "{now} after {last}");
            last = last.max(now);
        }
    }

    /// Without a switch counter (perf events refused, or
    /// `GUST_THREAD_CLOCK=syscall`) every reading is the exact clock.
    #[test]
    fn without_a_counter_every_reading_is_the_system_call() {
        let clock = ThreadClock {
            switches: None,
            anchor: Cell::new(None),
        };
        let (a, e) = (clock.now_ns(), exact_ns());
        let until = Instant::now() + Duration::from_millis(20);
        while Instant::now() < until {
            std::hint::black_box(clock.now_ns());
        }
        let (b, f) = (clock.now_ns(), exact_ns());
        assert!(clock.anchor.get().is_none(), "no anchor is kept");
        assert!(a <= e && b <= f, "{a} {e} {b} {f}");
        assert!(
            (b - a).abs_diff(f - e) < 1_000_000,
            "{a} {b} against {e} {f}"
        );
    }

    #[cfg(all(target_os = "linux", target_endian = "little"))]
    #[test]
    fn the_switch_count_moves_when_the_thread_sleeps() {
        // Where perf events are refused there is nothing to check.
        let Some(counter) = switches::Counter::open() else {
            eprintln!("skipped: perf events refused here");
            return;
        };
        let before = counter.read();
        std::thread::sleep(Duration::from_millis(2));
        assert_ne!(counter.read(), before);
    }
}
