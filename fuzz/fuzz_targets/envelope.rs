//! CloudEvents envelopes as stored in the queue: decoding arbitrary bytes
//! never panics, and whatever decodes encodes back to something that
//! decodes to the same envelope.
#![no_main]

use gust_core::Envelope;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(envelope) = Envelope::decode(bytes) {
        let again = Envelope::decode(&envelope.encode()).expect("an encoded envelope decodes");
        assert_eq!(again.encode(), envelope.encode());
    }
});
