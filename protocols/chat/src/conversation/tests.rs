use super::*;
use rand::rngs::OsRng;

fn sends(out: &[Output]) -> Vec<Frame> {
    out.iter()
        .filter_map(|o| match o {
            Output::Send(f) => Some(f.clone()),
            _ => None,
        })
        .collect()
}

/// The bodies of the messages `out` delivers to the user, in order.
fn delivered_bodies(out: &[Output]) -> Vec<String> {
    out.iter()
        .filter_map(|o| match o {
            Output::Deliver(m) => Some(m.body.clone()),
            _ => None,
        })
        .collect()
}

/// Connects a and b over a perfect link, exchanging hellos; returns their follow-ups.
fn connect(a: &mut Conversation, b: &mut Conversation, now: u64) -> (Vec<Output>, Vec<Output>) {
    let ha = sends(&a.connected(now));
    let hb = sends(&b.connected(now));
    let mut out_b = Vec::new();
    for f in ha {
        out_b.extend(b.handle_frame(f, now));
    }
    let mut out_a = Vec::new();
    for f in hb {
        out_a.extend(a.handle_frame(f, now));
    }
    (out_a, out_b)
}

#[test]
fn queued_offline_then_sent_on_connect_and_acknowledged() {
    let mut a = Conversation::new(Config::default(), &mut OsRng);
    let mut b = Conversation::new(Config::default(), &mut OsRng);
    let (m1, out) = a.send("one", 10, &mut OsRng).unwrap();
    assert!(out.is_empty(), "offline: nothing to send");
    a.send("two", 11, &mut OsRng).unwrap();

    let (out_a, _) = connect(&mut a, &mut b, 20);
    let frames = sends(&out_a);
    // a answers b's hello and sends both messages.
    let msgs: Vec<_> = frames
        .iter()
        .filter(|f| matches!(f, Frame::Message(_)))
        .cloned()
        .collect();
    assert_eq!(msgs.len(), 2);
    let mut receipts = Vec::new();
    let mut delivered = Vec::new();
    for f in msgs {
        for o in b.handle_frame(f, 21) {
            match o {
                Output::Deliver(m) => delivered.push(m.body),
                Output::Send(r @ Frame::Receipt(_)) => receipts.push(r),
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    assert_eq!(delivered, ["one", "two"]);
    let mut marked = Vec::new();
    for r in receipts {
        for o in a.handle_frame(r, 22) {
            if let Output::Delivered { ids, .. } = o {
                marked.extend(ids);
            }
        }
    }
    assert_eq!(marked[0], m1.id);
    assert_eq!(marked.len(), 2);
    assert_eq!(a.outbox().len(), 0);
    assert_eq!(a.cursor().acked_up_to, 2);
}

#[test]
fn oversize_and_full_outbox_are_refused() {
    let mut a = Conversation::new(Config::default().with_max_outbox(2), &mut OsRng);
    let err = a
        .send("x".repeat(MAX_BODY_LEN + 1), 0, &mut OsRng)
        .unwrap_err();
    assert!(err.to_string().contains("limit is 16384 bytes"), "{err}");
    a.send("1", 0, &mut OsRng).unwrap();
    a.send("2", 0, &mut OsRng).unwrap();
    assert_eq!(
        a.send("3", 0, &mut OsRng).unwrap_err(),
        SendError::OutboxFull { limit: 2 }
    );
}

#[test]
fn duplicates_are_receipted_not_redelivered() {
    let mut a = Conversation::new(Config::default(), &mut OsRng);
    let mut b = Conversation::new(Config::default(), &mut OsRng);
    connect(&mut a, &mut b, 0);
    let (m, _) = a.send("hi", 1, &mut OsRng).unwrap();
    let first = b.handle_frame(Frame::Message(m.clone()), 2);
    assert!(matches!(first[0], Output::Deliver(_)));
    let again = b.handle_frame(Frame::Message(m), 3);
    assert_eq!(again.len(), 1);
    assert!(matches!(
        again[0],
        Output::Send(Frame::Receipt(Receipt { up_to: 1, .. }))
    ));
}

#[test]
fn out_of_order_is_buffered_and_bounded() {
    let mut a = Conversation::new(Config::default(), &mut OsRng);
    let mut b = Conversation::new(Config::default().with_max_reorder(2), &mut OsRng);
    let msgs: Vec<_> = (0..4)
        .map(|i| a.send(format!("{i}"), i, &mut OsRng).unwrap().0)
        .collect();
    connect(&mut a, &mut b, 0);
    // seq 4 is 4 ahead of delivered 0: beyond the bound, dropped.
    assert!(
        b.handle_frame(Frame::Message(msgs[3].clone()), 1)
            .is_empty()
    );
    // seq 2 buffered, nothing delivered yet.
    assert!(
        b.handle_frame(Frame::Message(msgs[1].clone()), 1)
            .is_empty()
    );
    let out = b.handle_frame(Frame::Message(msgs[0].clone()), 1);
    assert_eq!(delivered_bodies(&out), ["0", "1"]);
    assert_eq!(b.cursor().delivered_up_to, 2);
}

#[test]
fn lost_hello_is_asked_again_after_timeout() {
    let config = Config::default().with_retransmit_after_ms(100);
    let mut a = Conversation::new(config, &mut OsRng);
    let mut b = Conversation::new(config, &mut OsRng);
    a.send("queued", 0, &mut OsRng).unwrap();
    let _lost = a.connected(0);
    let hb = sends(&b.connected(0));
    // b's hello reaches a: a is ready, answers and sends, but all of it is lost too.
    let out = sends(&a.handle_frame(hb[0].clone(), 1));
    assert!(matches!(
        out[0],
        Frame::Hello(Hello {
            want_reply: false,
            ..
        })
    ));
    assert!(matches!(out[1], Frame::Message(_)));
    // A message arriving before a's hello is dropped, not delivered.
    assert!(b.handle_frame(out[1].clone(), 2).is_empty());
    let mut b_fresh = b.clone();
    b_fresh.disconnected();
    assert!(b_fresh.handle_frame(out[1].clone(), 2).is_empty());
    assert_eq!(b.poll_timeout(), Some(100));
    let again = sends(&b.handle_timeout(100));
    assert!(matches!(
        again[..],
        [Frame::Hello(Hello {
            want_reply: true,
            ..
        })]
    ));
    let reply = a.handle_frame(again[0].clone(), 101);
    let reply = sends(&reply);
    assert!(matches!(
        reply[0],
        Frame::Hello(Hello {
            want_reply: false,
            ..
        })
    ));
    let mut delivered = 0;
    for f in reply {
        delivered += b
            .handle_frame(f, 102)
            .iter()
            .filter(|o| matches!(o, Output::Deliver(_)))
            .count();
    }
    // a re-sends its message only after its own timeout (it was already in flight).
    for f in sends(&a.handle_timeout(10_000)) {
        delivered += b
            .handle_frame(f, 10_001)
            .iter()
            .filter(|o| matches!(o, Output::Deliver(_)))
            .count();
    }
    assert_eq!(delivered, 1);
}

/// Delivers every frame in `out_a`/`out_b` to the other side, and the answers, until
/// neither has anything more to send. Returns the bodies each side delivered.
fn pump(
    a: &mut Conversation,
    b: &mut Conversation,
    mut out_a: Vec<Output>,
    mut out_b: Vec<Output>,
) -> (Vec<String>, Vec<String>) {
    let (mut got_a, mut got_b) = (Vec::new(), Vec::new());
    while !(out_a.is_empty() && out_b.is_empty()) {
        let (to_b, to_a) = (sends(&out_a), sends(&out_b));
        out_a.clear();
        out_b.clear();
        for f in to_b {
            let out = b.handle_frame(f, 1);
            got_b.extend(delivered_bodies(&out));
            out_b.extend(out);
        }
        for f in to_a {
            let out = a.handle_frame(f, 1);
            got_a.extend(delivered_bodies(&out));
            out_a.extend(out);
        }
    }
    (got_a, got_b)
}

#[test]
fn numbers_sent_before_a_crash_are_never_reused() {
    let mut a = Conversation::new(Config::default(), &mut OsRng);
    let mut b = Conversation::new(Config::default(), &mut OsRng);
    let (oa, ob) = connect(&mut a, &mut b, 0);
    pump(&mut a, &mut b, oa, ob);
    let (_, out) = a.send("one", 1, &mut OsRng).unwrap();
    let (_, got) = pump(&mut a, &mut b, out, vec![]);
    assert_eq!(got, ["one"]);
    assert_eq!(a.cursor().reserved_up_to, SEQ_RESERVATION);
    // The last committed state: "one" sent and acknowledged.
    let committed = a.snapshot();
    // "two" and "three" go out before their commit, and a dies before it.
    let (_, out) = a.send("two", 2, &mut OsRng).unwrap();
    let (_, out2) = a.send("three", 2, &mut OsRng).unwrap();
    let (_, got) = pump(&mut a, &mut b, [out, out2].concat(), vec![]);
    assert_eq!(got, ["two", "three"]);

    let mut a = Conversation::restore(Config::default(), committed).unwrap();
    assert_eq!(a.cursor().next_seq, SEQ_RESERVATION + 1);
    assert_eq!(
        a.outbox().len(),
        1,
        "one placeholder for the skipped numbers"
    );
    let (m, _) = a.send("four", 3, &mut OsRng).unwrap();
    assert_eq!(m.seq, SEQ_RESERVATION + 1);
    b.disconnected();
    let (oa, ob) = connect(&mut a, &mut b, 4);
    let (_, got) = pump(&mut a, &mut b, oa, ob);
    assert_eq!(got, ["four"], "delivered once, not taken for a duplicate");
    assert_eq!(a.outbox().len(), 0, "skip and message acknowledged");
    assert_eq!(b.cursor().delivered_up_to, SEQ_RESERVATION + 1);

    // "four" took a fresh reservation; a restart now skips just that one.
    let again = Conversation::restore(Config::default(), a.snapshot()).unwrap();
    assert_eq!(again.outbox().len(), 1);
    assert_eq!(again.cursor().next_seq, 2 * SEQ_RESERVATION + 1);
}

#[test]
fn skip_reaches_a_peer_that_saw_none_of_it() {
    let mut a = Conversation::new(Config::default(), &mut OsRng);
    let mut b = Conversation::new(Config::default(), &mut OsRng);
    a.send("queued", 0, &mut OsRng).unwrap();
    // Restarted while offline: "queued" (committed) then the skip, then "later".
    let mut a = Conversation::restore(Config::default(), a.snapshot()).unwrap();
    a.send("later", 1, &mut OsRng).unwrap();
    let (oa, ob) = connect(&mut a, &mut b, 2);
    let (_, got) = pump(&mut a, &mut b, oa, ob);
    assert_eq!(got, ["queued", "later"]);
    assert_eq!(a.outbox().len(), 0);
}

#[test]
fn restore_checks_consistency() {
    let mut a = Conversation::new(Config::default(), &mut OsRng);
    a.send("1", 0, &mut OsRng).unwrap();
    a.send("2", 0, &mut OsRng).unwrap();
    let snap = Snapshot::decode(&a.snapshot().encode()).unwrap();
    assert_eq!(snap, a.snapshot());
    Conversation::restore(Config::default(), snap.clone()).unwrap();

    let mut gap = snap.clone();
    gap.outbox.remove(0);
    assert!(matches!(
        Conversation::restore(Config::default(), gap),
        Err(RestoreError::OutboxSequence { .. })
    ));
    let mut short = snap;
    short.cursor.next_seq = 7;
    assert!(matches!(
        Conversation::restore(Config::default(), short),
        Err(RestoreError::NextSeq { .. })
    ));
    assert!(Snapshot::decode(b"nonsense").is_err());
}

#[test]
fn peer_that_lost_its_state_is_followed() {
    let mut a = Conversation::new(Config::default(), &mut OsRng);
    let mut b = Conversation::new(Config::default(), &mut OsRng);
    connect(&mut a, &mut b, 0);
    for i in 0..5 {
        let (m, _) = b.send(format!("{i}"), i, &mut OsRng).unwrap();
        for o in a.handle_frame(Frame::Message(m), i) {
            if let Output::Send(f) = o {
                b.handle_frame(f, i);
            }
        }
    }
    assert_eq!(a.cursor().delivered_up_to, 5);
    a.disconnected();
    // b's database is wiped: a fresh state with a new epoch.
    let mut b = Conversation::new(Config::default(), &mut OsRng);
    b.send("after wipe", 100, &mut OsRng).unwrap();
    let (out_a, out_b) = connect(&mut a, &mut b, 100);
    let mut got = Vec::new();
    for f in sends(&out_b) {
        for o in a.handle_frame(f, 101) {
            if let Output::Deliver(m) = o {
                got.push(m.body);
            }
        }
    }
    assert!(
        sends(&out_a)
            .iter()
            .all(|f| !matches!(f, Frame::Message(_)))
    );
    assert_eq!(got, ["after wipe"]);
}
