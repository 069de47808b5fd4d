//! The JSON the control API reads into core types (limits, delivery
//! policies, quotas, roles): any input is refused or accepted without a
//! panic, and what is accepted validates or is refused cleanly.
#![no_main]

use gust_core::LimitsPatch;
use gust_core::access::{Quotas, Role};
use gust_core::delivery::DeliveryPolicy;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(patch) = serde_json::from_slice::<LimitsPatch>(bytes) {
        let _ = patch.resolve();
    }
    if let Ok(policy) = serde_json::from_slice::<DeliveryPolicy>(bytes) {
        let _ = policy.validate();
    }
    let _ = serde_json::from_slice::<Quotas>(bytes);
    let _ = serde_json::from_slice::<Role>(bytes);
});
