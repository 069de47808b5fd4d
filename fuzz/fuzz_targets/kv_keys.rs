//! Key-value names: a key that passes the checks maps to a storage key that
//! parses back to the same tenant, bucket and key, and never into another
//! bucket's range.
#![no_main]

use gust_core::TenantId;
use gust_core::kv::{BucketName, bucket_prefix, check_key, parse_storage_key, storage_key};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (&str, &str)| {
    let (bucket, key) = input;
    let (Ok(bucket), Ok(())) = (BucketName::new(bucket), check_key(key)) else {
        return;
    };
    let tenant = TenantId::default_tenant();
    let stored = storage_key(&tenant, &bucket, key);
    assert!(stored.starts_with(&bucket_prefix(&tenant, &bucket)));
    let (t, b, k) = parse_storage_key(&stored).expect("a storage key parses");
    assert_eq!((t, b, k), (tenant, bucket, key));
});
