//! Message requests: what to do with a chat stream from a peer, given the trust decision.
//!
//! The node runs [`p2pnode_secure::decide`] (or `TrustStore::check`) with
//! [`PROTOCOL`](crate::PROTOCOL) after the handshake, then [`admit`] tells it how to treat
//! the conversation.

use p2pnode_secure::TrustDecision;

/// How the node treats an incoming chat conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// A contact: run the conversation and show its messages.
    Accept,
    /// First contact (or chat not yet granted): run the conversation, keep its messages,
    /// but show them as a request the user accepts (allow `chat`) or blocks (revoke).
    Request,
    /// Blocked: close the stream without reading; nothing is stored or acknowledged.
    Block,
    /// The peer presented a different key than the one stored or verified: close the
    /// stream, store nothing, and raise the key-change alarm.
    KeyChanged,
}

/// Classifies an incoming chat conversation from the peer's trust decision.
pub fn admit(decision: TrustDecision) -> Admission {
    match decision {
        TrustDecision::Allow => Admission::Accept,
        TrustDecision::UnknownPeer | TrustDecision::NotAllowed => Admission::Request,
        TrustDecision::Revoked => Admission::Block,
        TrustDecision::KeyChanged => Admission::KeyChanged,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use p2pnode_secure::{TrustEntry, decide};

    #[test]
    fn first_contact_is_a_request_and_blocked_peers_are_dropped() {
        let key = [1u8; 32];
        let proto = crate::PROTOCOL;
        assert_eq!(admit(decide(None, &key, proto)), Admission::Request);
        let contact = TrustEntry::new(key).allow(proto);
        assert_eq!(
            admit(decide(Some(&contact), &key, proto)),
            Admission::Accept
        );
        let files_only = TrustEntry::new(key).allow("files");
        assert_eq!(
            admit(decide(Some(&files_only), &key, proto)),
            Admission::Request
        );
        let mut blocked = contact.clone();
        blocked.revoked = true;
        assert_eq!(admit(decide(Some(&blocked), &key, proto)), Admission::Block);
        assert_eq!(
            admit(decide(Some(&contact), &[2u8; 32], proto)),
            Admission::KeyChanged
        );
    }
}
