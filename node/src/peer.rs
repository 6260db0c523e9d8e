//! Peer ids and keys in one place: reading a peer id or address as a user typed it, the
//! Ed25519 key a peer id carries (and back), the node's signing key, and short forms for
//! logs. Every p2pnode identity is an Ed25519 key embedded in its peer id, so the secure
//! layer and the protocols get a peer's key from its id alone.

use libp2p::{Multiaddr, PeerId};
use p2pnode_secure::{PeerKey, SigningKey, VerifyingKey};

use crate::error::NodeError;

/// A peer id or an address, as a user typed it.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    /// A bare peer id.
    Peer(PeerId),
    /// A multiaddr.
    Addr(Multiaddr),
}

/// Reads `s` as a multiaddr (starts with `/`) or a peer id, with a clear error for either.
pub fn parse_target(s: &str) -> Result<Target, NodeError> {
    let s = s.trim();
    if s.starts_with('/') {
        s.parse::<Multiaddr>()
            .map(Target::Addr)
            .map_err(|e| NodeError::InvalidInput(format!("invalid multiaddr {s:?}: {e}")))
    } else {
        parse_peer_id(s).map(Target::Peer)
    }
}

/// Reads a peer id, with a clear error. Only ids that embed an Ed25519 public key are
/// accepted: every p2pnode has one, and the secure layer needs the key from the id, so a
/// truncated or hashed id is a typo, not a peer.
pub fn parse_peer_id(s: &str) -> Result<PeerId, NodeError> {
    let invalid = || {
        NodeError::InvalidInput(format!(
            "invalid peer id {s:?} (expected a base58 id such as 12D3KooW...)"
        ))
    };
    let peer = s.trim().parse::<PeerId>().map_err(|_| invalid())?;
    ed25519_key_of(&peer).ok_or_else(invalid)?;
    Ok(peer)
}

/// The Ed25519 public key a peer id embeds (identity multihash), if it does.
pub fn ed25519_key_of(peer: &PeerId) -> Option<libp2p::identity::ed25519::PublicKey> {
    let hash: &libp2p::multihash::Multihash<64> = peer.as_ref();
    if hash.code() != 0 {
        return None;
    }
    libp2p::identity::PublicKey::try_decode_protobuf(hash.digest())
        .ok()?
        .try_into_ed25519()
        .ok()
}

/// The Ed25519 key a peer id embeds, as the secure layer wants it.
pub fn verifying_key_of(peer: &PeerId) -> Result<VerifyingKey, NodeError> {
    ed25519_key_of(peer)
        .and_then(|k| VerifyingKey::from_bytes(&k.to_bytes()).ok())
        .ok_or_else(|| NodeError::InvalidInput(format!("peer id {peer} holds no Ed25519 key")))
}

/// The peer id that carries an Ed25519 public key (the signer of a published message, say).
pub fn peer_id_of_key(key: &PeerKey) -> Option<PeerId> {
    let public = libp2p::identity::ed25519::PublicKey::try_from_bytes(key).ok()?;
    Some(libp2p::identity::PublicKey::from(public).to_peer_id())
}

/// The secure layer's signing key for a node's identity (its Ed25519 key).
pub fn signing_key_of(keypair: &libp2p::identity::Keypair) -> Option<SigningKey> {
    let secret = keypair.clone().try_into_ed25519().ok()?.secret();
    let bytes: [u8; 32] = secret.as_ref().try_into().ok()?;
    Some(SigningKey::from_bytes(&bytes))
}

/// The last characters of a peer id, for log spans.
pub fn short_id(peer: &str) -> &str {
    let start = peer.len().saturating_sub(8);
    &peer[start..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_or_explain() {
        let peer = libp2p::identity::Keypair::generate_ed25519()
            .public()
            .to_peer_id();
        assert_eq!(parse_target(&peer.to_string()).unwrap(), Target::Peer(peer));
        assert!(matches!(
            parse_target("/ip4/127.0.0.1/tcp/1").unwrap(),
            Target::Addr(_)
        ));
        let e = parse_target("/ip4/999.1.1.1/tcp/1").unwrap_err();
        assert!(e.to_string().contains("invalid multiaddr"), "{e}");
        let e = parse_peer_id("12D3KooWnope").unwrap_err();
        assert!(e.to_string().contains("invalid peer id"), "{e}");
        let e = parse_target("not-a-peer").unwrap_err();
        assert!(e.to_string().contains("invalid peer id"), "{e}");
    }

    #[test]
    fn keys_round_trip_through_peer_ids() {
        let keypair = libp2p::identity::Keypair::generate_ed25519();
        let peer = keypair.public().to_peer_id();
        let key = verifying_key_of(&peer).unwrap().to_bytes();
        assert_eq!(peer_id_of_key(&key), Some(peer));
        let signing = signing_key_of(&keypair).unwrap();
        assert_eq!(signing.verifying_key().to_bytes(), key);
    }
}
