//! msg2 decoding and the initiator's processing of it: only the recorded msg2 may succeed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use p2pnode_secure::wire::Msg2;
use p2pnode_secure::{Initiator, SessionConfig};
use p2pnode_secure_fuzz::{INITIATOR_SEED, initiator_config, overlay, recorded, rng};

fuzz_target!(|data: &[u8]| {
    let valid = &recorded().msg2;
    let msg = overlay(valid, data);
    if let Ok(decoded) = Msg2::decode(&msg) {
        assert_eq!(decoded.encode(), msg, "decode/encode must round-trip");
    }
    let (initiator, _) = Initiator::start(
        initiator_config(SessionConfig::default()),
        &mut rng(INITIATOR_SEED),
    );
    let finished = initiator.finish(&msg);
    assert_eq!(
        finished.is_ok(),
        msg == *valid,
        "only the genuine msg2 may complete"
    );
});
