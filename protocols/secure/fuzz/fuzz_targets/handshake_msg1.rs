//! msg1 decoding and the responder's processing of it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use p2pnode_secure::wire::Msg1;
use p2pnode_secure::{Responder, SessionConfig};
use p2pnode_secure_fuzz::{RESPONDER_SEED, overlay, recorded, responder_config, rng};

fuzz_target!(|data: &[u8]| {
    let valid = &recorded().msg1;
    let msg = overlay(valid, data);
    if let Ok(decoded) = Msg1::decode(&msg) {
        assert_eq!(decoded.encode(), msg, "decode/encode must round-trip");
    }
    let accepted = Responder::accept(
        responder_config(SessionConfig::default()),
        &msg,
        &mut rng(RESPONDER_SEED),
    );
    // Anything but the recorded message yields another transcript; it may still be
    // accepted (msg1 is unsigned), but only a well-formed one.
    if accepted.is_ok() {
        assert!(Msg1::decode(&msg).is_ok());
    }
});
