//! Feeds arbitrary bytes to the envelope decoder, which reads every message body webhookd
//! consumes before anything else does: it must never panic, overflow its stack or hang, and what
//! it accepts must be an event it can route.
//!
//! Run from the repository root (cargo-fuzz uses nightly flags; on a stable toolchain
//! `RUSTC_BOOTSTRAP=1` unlocks them):
//!
//! ```sh
//! mkdir -p fuzz/corpus/decode_envelope && cp tests/fixtures/*.json fuzz/corpus/decode_envelope/
//! cargo fuzz run decode_envelope -- -max_total_time=60
//! ```

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    if let Ok(envelope) = webhookd::event::decode_envelope(body) {
        assert!(!envelope.event.is_empty(), "accepted an empty event name");
        assert!(envelope.account_id > 0, "accepted account id 0");
        assert!(
            serde_json::from_slice::<serde_json::Value>(body).is_ok(),
            "accepted a body that is not JSON"
        );
    }
});
