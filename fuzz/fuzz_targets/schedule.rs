//! Schedule expressions and offsets: parsing never panics, and a parsed
//! schedule's next tick is strictly later than the time asked about.
#![no_main]

use gust_core::schedule::{Offset, Schedule};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (&str, &str, u64)| {
    let (expr, tz, after) = input;
    // Keep the instant within the years a schedule is used in.
    let after = after % 4_102_444_800_000;
    let offset = Offset::parse(tz).unwrap_or_default();
    if let Ok(schedule) = Schedule::parse(expr)
        && let Some(next) = schedule.next_after(after, &offset)
    {
        assert!(next > after);
    }
});
