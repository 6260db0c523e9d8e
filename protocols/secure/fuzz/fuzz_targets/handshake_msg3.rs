//! msg3 decoding and the responder's processing of it: only the recorded msg3 may succeed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use p2pnode_secure::wire::Msg3;
use p2pnode_secure::{Responder, SessionConfig};
use p2pnode_secure_fuzz::{RESPONDER_SEED, overlay, recorded, responder_config, rng};

fuzz_target!(|data: &[u8]| {
    let recorded = recorded();
    let msg = overlay(&recorded.msg3, data);
    if let Ok(decoded) = Msg3::decode(&msg) {
        assert_eq!(decoded.encode(), msg, "decode/encode must round-trip");
    }
    let (responder, _) = Responder::accept(
        responder_config(SessionConfig::default()),
        &recorded.msg1,
        &mut rng(RESPONDER_SEED),
    )
    .expect("recorded msg1");
    let finished = responder.finish(&msg);
    assert_eq!(
        finished.is_ok(),
        msg == recorded.msg3,
        "only the genuine msg3 may complete"
    );
});
