//! Invite tickets as text: the token, `.`, then the base32 CBOR of where to find members.

use libp2p::Multiaddr;

use super::{MAX_TICKET_ADDR_LEN, MAX_TICKET_ADDRS, MAX_TICKET_TEXT, NetError};
use crate::network::{InviteToken, OpError};

/// A ticket's text: the invite token, `.`, the base32 CBOR of the issuer's addresses.
pub(super) fn ticket_text(token: &InviteToken, addrs: &[Multiaddr]) -> String {
    let addrs: Vec<String> = addrs
        .iter()
        .map(|a| a.to_string())
        .filter(|a| a.len() <= MAX_TICKET_ADDR_LEN)
        .take(MAX_TICKET_ADDRS)
        .collect();
    format!(
        "{}.{}",
        token.to_text(),
        crate::network::base32_encode(&crate::network::cbor(&addrs))
    )
}

/// A ticket read back: the token (its invite's signature checked) and the addresses.
pub fn parse_ticket(text: &str) -> Result<(InviteToken, Vec<Multiaddr>), NetError> {
    let text = text.trim();
    let invalid = |e: OpError| NetError::Refused {
        what: "invalid invite",
        source: e,
    };
    if text.len() > MAX_TICKET_TEXT {
        return Err(invalid(OpError::TooLarge { len: text.len() }));
    }
    let (token, addrs) = text.split_once('.').unwrap_or((text, ""));
    let token = InviteToken::from_text(token).map_err(invalid)?;
    let addrs: Vec<String> = if addrs.is_empty() {
        Vec::new()
    } else {
        let bytes = crate::network::base32_decode(addrs)
            .ok_or(invalid(OpError::Malformed("ticket addresses")))?;
        ciborium::from_reader(bytes.as_slice())
            .map_err(|_| invalid(OpError::Malformed("ticket addresses")))?
    };
    let addrs = addrs
        .iter()
        .take(MAX_TICKET_ADDRS)
        .filter_map(|a| a.parse().ok())
        .collect();
    Ok((token, addrs))
}
