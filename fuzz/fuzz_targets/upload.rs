//! Upload validation: any bytes sent as a component are compiled or
//! refused with a reason, never a panic (what a compile worker runs).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    if let Err(e) = gust_runtime::compile_upload(bytes) {
        assert!(!e.to_string().is_empty());
    }
});
