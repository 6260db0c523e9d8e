//! The members' names as DNS, sans-IO: `<name>.p2p` answered with the member's tunnel
//! addresses. The service runs it on a UDP socket on the node's tunnel IPv4 address, port
//! 53; here are only bytes in and bytes out.
//!
//! What it answers, to one question per query of at most [`MAX_MESSAGE`] bytes:
//! - `A` and `AAAA` of `<name>.p2p`, a member's name, with the member's lease (one answer
//!   of [`TTL_SECS`]); other types of a known name get no answer (NOERROR, no data);
//! - NXDOMAIN for any other name under `p2p`;
//! - REFUSED for the rest: names outside `p2p`, another class than IN, an opcode other
//!   than QUERY, no question or more than one;
//! - FORMERR when the question cannot be read (truncated, or a compressed name, which
//!   queries do not use).
//!
//! Nothing at all is sent back for a message over [`MAX_MESSAGE`] bytes, shorter than a
//! header, or that is itself a response (so two responders never answer each other).
//! Names compare case-insensitively; the question goes back as it came (its case kept,
//! for resolvers that randomise it).
//!
//! [`query`] and [`read_response`] are the client's side, for tests and the lab.

use std::net::IpAddr;

use crate::Lease;

/// The largest message taken or sent: plain DNS over UDP, no EDNS.
pub const MAX_MESSAGE: usize = 512;
/// The domain the members' names live under.
pub const DOMAIN: &str = "p2p";
/// How long resolvers may keep an answer: names and leases change rarely, and a short
/// time keeps a renamed member from resolving to the old name for long.
pub const TTL_SECS: u32 = 10;
/// Record type A.
pub const TYPE_A: u16 = 1;
/// Record type AAAA.
pub const TYPE_AAAA: u16 = 28;
/// Class IN.
const CLASS_IN: u16 = 1;
const HEADER: usize = 12;
/// The longest name on the wire (RFC 1035).
const MAX_NAME: usize = 255;
/// The longest label, and so the longest member name that resolves.
pub const MAX_LABEL: usize = 63;

/// Response codes this responder sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rcode {
    /// The name exists (with or without data of the type asked).
    NoError = 0,
    /// The question could not be read.
    FormErr = 1,
    /// No such name under `p2p`.
    NxDomain = 3,
    /// Not ours to answer.
    Refused = 5,
}

impl Rcode {
    fn of(code: u8) -> Option<Self> {
        Some(match code {
            0 => Self::NoError,
            1 => Self::FormErr,
            3 => Self::NxDomain,
            5 => Self::Refused,
            _ => return None,
        })
    }
}

/// The DNS label a member name (or host name) resolves as: the part before the first dot,
/// lower case, each character other than a letter, digit or `-` made a `-`, no `-` at
/// either end, at most [`MAX_LABEL`] bytes. `None` when nothing is left.
pub fn label_of(name: &str) -> Option<String> {
    let first = name.split('.').next().unwrap_or_default();
    let mapped: String = first
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(MAX_LABEL)
        .collect();
    let label = mapped.trim_matches('-');
    (!label.is_empty()).then(|| label.to_string())
}

/// The question of a query: where it ends in the message, its labels, type and class.
struct Question {
    end: usize,
    labels: Vec<String>,
    qtype: u16,
    qclass: u16,
}

/// Reads the question that starts at [`HEADER`]; `None` when it is cut short, longer than
/// a name may be, or compressed.
fn read_question(msg: &[u8]) -> Option<Question> {
    let mut at = HEADER;
    let mut labels = Vec::new();
    loop {
        let len = usize::from(*msg.get(at)?);
        if len == 0 {
            at += 1;
            break;
        }
        // 0xC0 is a compression pointer, 0x40 and 0x80 reserved: none belongs in a query.
        if len > MAX_LABEL || at + 1 + len - HEADER >= MAX_NAME {
            return None;
        }
        let label = msg.get(at + 1..at + 1 + len)?;
        labels.push(String::from_utf8_lossy(label).to_ascii_lowercase());
        at += 1 + len;
    }
    let fixed = msg.get(at..at + 4)?;
    Some(Question {
        end: at + 4,
        labels,
        qtype: u16::from_be_bytes([fixed[0], fixed[1]]),
        qclass: u16::from_be_bytes([fixed[2], fixed[3]]),
    })
}

/// Answers `query` into `out`: returns the response's length, or `None` when nothing is to
/// be sent (see the module docs). `lookup` takes a lower-case label and gives the lease of
/// the member with that name.
pub fn answer(
    query: &[u8],
    lookup: impl Fn(&str) -> Option<Lease>,
    out: &mut [u8; MAX_MESSAGE],
) -> Option<usize> {
    if query.len() > MAX_MESSAGE || query.len() < HEADER || query[2] & 0x80 != 0 {
        return None;
    }
    let opcode = (query[2] >> 3) & 0x0f;
    let qdcount = u16::from_be_bytes([query[4], query[5]]);
    // The header: the query's id and RD bit; QR and AA set; counts filled in below.
    out[..HEADER].fill(0);
    out[..2].copy_from_slice(&query[..2]);
    out[2] = 0x80 | 0x04 | (query[2] & 0x01);
    let reply = |out: &mut [u8; MAX_MESSAGE], rcode: Rcode, question: Option<&[u8]>, an: u16| {
        out[3] = rcode as u8;
        let qd = u16::from(question.is_some());
        out[4..6].copy_from_slice(&qd.to_be_bytes());
        out[6..8].copy_from_slice(&an.to_be_bytes());
        match question {
            Some(q) => {
                out[HEADER..HEADER + q.len()].copy_from_slice(q);
                HEADER + q.len()
            }
            None => HEADER,
        }
    };
    if opcode != 0 || qdcount != 1 {
        return Some(reply(out, Rcode::Refused, None, 0));
    }
    let Some(q) = read_question(query) else {
        return Some(reply(out, Rcode::FormErr, None, 0));
    };
    let raw = &query[HEADER..q.end];
    let ours = q.labels.last().is_some_and(|l| l == DOMAIN);
    if q.qclass != CLASS_IN || !ours {
        return Some(reply(out, Rcode::Refused, Some(raw), 0));
    }
    let lease = match q.labels.as_slice() {
        [name, _] => lookup(name),
        _ => None,
    };
    let Some(lease) = lease else {
        return Some(reply(out, Rcode::NxDomain, Some(raw), 0));
    };
    let data: Vec<u8> = match q.qtype {
        TYPE_A => lease.v4.octets().to_vec(),
        TYPE_AAAA => lease.v6.octets().to_vec(),
        _ => return Some(reply(out, Rcode::NoError, Some(raw), 0)),
    };
    let mut at = reply(out, Rcode::NoError, Some(raw), 1);
    // The answer: the question's name by pointer, its type, IN, the TTL and the address.
    // At most 12 + 255 + 4 + 28 bytes: within the buffer.
    let mut record = Vec::with_capacity(12 + data.len());
    record.extend_from_slice(&[0xc0, HEADER as u8]);
    record.extend_from_slice(&q.qtype.to_be_bytes());
    record.extend_from_slice(&CLASS_IN.to_be_bytes());
    record.extend_from_slice(&TTL_SECS.to_be_bytes());
    record.extend_from_slice(&u16::try_from(data.len()).unwrap_or(0).to_be_bytes());
    record.extend_from_slice(&data);
    out[at..at + record.len()].copy_from_slice(&record);
    at += record.len();
    Some(at)
}

/// A query for `name` of type `qtype` (recursion desired, as stub resolvers send).
pub fn query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut q = Vec::with_capacity(HEADER + name.len() + 6);
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        q.push(u8::try_from(label.len()).unwrap_or(0));
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&CLASS_IN.to_be_bytes());
    q
}

/// What a response says: its id, code and the addresses of its A and AAAA answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The id of the query it answers.
    pub id: u16,
    /// Its response code.
    pub rcode: Rcode,
    /// The addresses it gives.
    pub addrs: Vec<IpAddr>,
}

/// Skips a name (labels, ending in a zero or a pointer) at `at`; where the name ends.
fn skip_name(msg: &[u8], mut at: usize) -> Option<usize> {
    loop {
        let len = *msg.get(at)?;
        match len {
            0 => return Some(at + 1),
            l if l & 0xc0 == 0xc0 => return Some(at + 2),
            l => at += 1 + usize::from(l),
        }
    }
}

/// Reads a response to [`query`]; `None` when it is not a well-formed response.
pub fn read_response(msg: &[u8]) -> Option<Response> {
    if msg.len() < HEADER || msg[2] & 0x80 == 0 {
        return None;
    }
    let count = |i: usize| usize::from(u16::from_be_bytes([msg[i], msg[i + 1]]));
    let mut at = HEADER;
    for _ in 0..count(4) {
        at = skip_name(msg, at)? + 4;
    }
    let mut addrs = Vec::new();
    for _ in 0..count(6) {
        at = skip_name(msg, at)?;
        let fixed = msg.get(at..at + 10)?;
        let rtype = u16::from_be_bytes([fixed[0], fixed[1]]);
        let len = usize::from(u16::from_be_bytes([fixed[8], fixed[9]]));
        let data = msg.get(at + 10..at + 10 + len)?;
        match (rtype, <[u8; 4]>::try_from(data), <[u8; 16]>::try_from(data)) {
            (TYPE_A, Ok(v4), _) => addrs.push(IpAddr::from(v4)),
            (TYPE_AAAA, _, Ok(v6)) => addrs.push(IpAddr::from(v6)),
            _ => {}
        }
        at += 10 + len;
    }
    Some(Response {
        id: u16::from_be_bytes([msg[0], msg[1]]),
        rcode: Rcode::of(msg[3] & 0x0f)?,
        addrs,
    })
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    fn lease() -> Lease {
        Lease {
            v4: Ipv4Addr::new(100, 77, 1, 2),
            v6: "fd00:1:2::3".parse::<Ipv6Addr>().unwrap(),
        }
    }

    fn lookup(name: &str) -> Option<Lease> {
        (name == "laptop").then(lease)
    }

    fn ask(q: &[u8]) -> Option<Vec<u8>> {
        let mut out = [0u8; MAX_MESSAGE];
        answer(q, lookup, &mut out).map(|n| out[..n].to_vec())
    }

    fn rcode(r: &[u8]) -> u8 {
        r[3] & 0x0f
    }

    /// A query as a stub resolver sends it, written out byte by byte.
    const LAPTOP_A: &[u8] = &[
        0xab, 0xcd, // id
        0x01, 0x00, // RD
        0, 1, 0, 0, 0, 0, 0, 0, // one question
        6, b'L', b'a', b'p', b't', b'o', b'p', 3, b'p', b'2', b'p', 0, // Laptop.p2p
        0, 1, 0, 1, // A, IN
    ];

    #[test]
    fn a_member_name_gets_its_addresses() {
        let r = ask(LAPTOP_A).unwrap();
        assert_eq!(&r[..2], &[0xab, 0xcd], "the id goes back");
        assert_eq!(r[2], 0x85, "QR, AA and RD");
        assert_eq!(rcode(&r), 0);
        assert_eq!(&r[4..8], &[0, 1, 0, 1], "one question, one answer");
        assert_eq!(
            &r[12..LAPTOP_A.len()],
            &LAPTOP_A[12..],
            "the question as asked"
        );
        assert_eq!(
            &r[LAPTOP_A.len()..],
            &[
                0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 10, 0, 4, 100, 77, 1, 2 // A 100.77.1.2, TTL 10
            ]
        );
        let got = read_response(&r).unwrap();
        assert_eq!(got.addrs, vec![IpAddr::V4(lease().v4)]);

        let r = ask(&query(7, "laptop.P2P.", TYPE_AAAA)).unwrap();
        let got = read_response(&r).unwrap();
        assert_eq!((got.id, got.rcode), (7, Rcode::NoError));
        assert_eq!(got.addrs, vec![IpAddr::V6(lease().v6)]);
    }

    #[test]
    fn unknown_names_under_p2p_do_not_exist() {
        for name in ["desktop.p2p", "p2p", "a.laptop.p2p"] {
            let r = ask(&query(1, name, TYPE_A)).unwrap();
            assert_eq!(rcode(&r), 3, "{name}");
            assert_eq!(&r[4..8], &[0, 1, 0, 0]);
        }
    }

    #[test]
    fn other_types_of_a_known_name_get_no_data() {
        let r = ask(&query(1, "laptop.p2p", 15)).unwrap();
        assert_eq!(read_response(&r).unwrap().rcode, Rcode::NoError);
        assert_eq!(&r[6..8], &[0, 0]);
    }

    #[test]
    fn anything_else_is_refused() {
        assert_eq!(rcode(&ask(&query(1, "example.com", TYPE_A)).unwrap()), 5);
        // Class CH.
        let mut q = query(1, "laptop.p2p", TYPE_A);
        let n = q.len();
        q[n - 1] = 3;
        assert_eq!(rcode(&ask(&q).unwrap()), 5);
        // Opcode 2 (status).
        let mut q = query(1, "laptop.p2p", TYPE_A);
        q[2] |= 2 << 3;
        assert_eq!(rcode(&ask(&q).unwrap()), 5);
        // Two questions.
        let mut q = query(1, "laptop.p2p", TYPE_A);
        q[5] = 2;
        let r = ask(&q).unwrap();
        assert_eq!((rcode(&r), r.len()), (5, 12), "a bare header");
    }

    #[test]
    fn broken_questions_are_format_errors() {
        let q = query(1, "laptop.p2p", TYPE_A);
        assert_eq!(rcode(&ask(&q[..q.len() - 2]).unwrap()), 1, "cut short");
        let mut q = q.clone();
        q[12] = 0xc0;
        assert_eq!(rcode(&ask(&q).unwrap()), 1, "a compressed name");
        let long = vec!["a"; 130].join(".") + ".p2p";
        assert_eq!(
            rcode(&ask(&query(1, &long, TYPE_A)).unwrap()),
            1,
            "over 255 bytes"
        );
    }

    #[test]
    fn no_reply_to_responses_oversized_or_headerless_messages() {
        let mut r = LAPTOP_A.to_vec();
        r[2] |= 0x80;
        assert_eq!(ask(&r), None, "a response");
        assert_eq!(ask(&LAPTOP_A[..11]), None, "shorter than a header");
        let mut big = LAPTOP_A.to_vec();
        big.resize(MAX_MESSAGE + 1, 0);
        assert_eq!(ask(&big), None, "over 512 bytes");
    }

    #[test]
    fn host_names_become_labels() {
        assert_eq!(
            label_of("Build-Box.example.org").as_deref(),
            Some("build-box")
        );
        assert_eq!(label_of("my laptop").as_deref(), Some("my-laptop"));
        assert_eq!(label_of("-x_").as_deref(), Some("x"));
        assert_eq!(label_of("..."), None);
        assert_eq!(label_of(&"a".repeat(100)).unwrap().len(), MAX_LABEL);
    }

    /// Whatever the bytes, no panic and never more than the buffer.
    #[test]
    fn any_bytes_are_safe() {
        use proptest::prelude::*;
        proptest!(|(q in proptest::collection::vec(any::<u8>(), 0..600))| {
            let mut out = [0u8; MAX_MESSAGE];
            if let Some(n) = answer(&q, lookup, &mut out) {
                prop_assert!(n <= MAX_MESSAGE);
            }
            let _ = read_response(&q);
        });
    }
}
