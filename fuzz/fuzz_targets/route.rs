//! Route matching: any request path either names no function or splits
//! into a tenant, a valid-looking function segment and an absolute guest path.
#![no_main]

use gust_core::path::{guest_path, split_target};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|path: &str| {
    if let Some(target) = split_target(path) {
        assert!(!target.name.is_empty());
        assert!(!target.name.contains(['/', '?']));
        if let Some(tenant) = target.tenant {
            assert!(!tenant.is_empty() && !tenant.contains(['/', '?']));
        }
        assert!(guest_path(target.tail).starts_with('/'));
        assert!(path.ends_with(target.tail));
    }
});
