//! The usage ledger's on-disk forms: journal segments (frames) and binary
//! records, as a crash or a damaged disk may leave them. Parsing arbitrary
//! bytes never panics; a record that decodes reads the same through a
//! `View`, and encodes back to the same bytes; pricing it in place keeps
//! it decodable.
#![no_main]

use gust_meter::codec::{self, View};
use gust_meter::journal::parse_frames;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    for (end, frame) in parse_frames(bytes, 1) {
        assert!(end <= bytes.len());
        let _ = codec::decode(&frame.payload);
    }
    let Ok(record) = codec::decode(bytes) else {
        return;
    };
    if bytes.first() == Some(&b'{') {
        return;
    }
    let mut again = Vec::new();
    codec::encode(&record, &mut again).expect("a decoded record encodes");
    assert_eq!(again, bytes);
    assert_eq!(
        codec::tenant_and_start(bytes),
        Some((record.tenant.as_str(), record.start_ms))
    );
    let view = View::new(bytes).expect("a decoded record has a view");
    assert_eq!(view.key(), record.key());
    assert_eq!(view.tenant(), record.tenant);
    let priced = codec::decode(&view.priced(1, 2, 3, "plan")).expect("a priced record decodes");
    assert_eq!(
        (priced.billed_ms, priced.cost_micros, priced.plan.as_str()),
        (1, 3, "plan")
    );
});
