//! The owner's state with its real tables in a real node's database, driven one batch at
//! a time: inputs go through `Service::apply` and the batch through `ChatDb::commit`, as
//! in the owner's loop, without the loop's timing.

use std::collections::HashSet;

use p2pnode_node::control::{ControlReply, ControlRequest};
use p2pnode_node::{Config, Node, TransportKind};
use rand::rngs::OsRng;
use redb::ReadableTableMetadata;

use super::strangers::{MAX_REQUESTERS, REQUEST_BYTES, REQUEST_MESSAGES};
use super::*;
use crate::{Hello, Message, MessageId};

/// How long a test waits for any one event.
const WAIT: Duration = Duration::from_secs(30);

/// The service's state, built on a node but not running: the test hands it its inputs.
struct Parts {
    service: Service,
    listener: SecureListener,
}

/// A protocol named `chat` (so the trust store and the stream protocol are chat's) that
/// builds the service's state and hands it to the test instead of running it.
struct Probe(Arc<Mutex<Option<Parts>>>);

struct Idle;

impl ProtocolHandler for Idle {
    fn route_prefixes(&self) -> &[&'static str] {
        &[]
    }

    fn handle(&self, req: ControlRequest) -> futures::future::BoxFuture<'static, ControlReply> {
        let reply = ControlReply::unknown(req.route());
        Box::pin(async move { reply })
    }

    fn shutdown(&self) -> futures::future::BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

impl Protocol for Probe {
    type Handler = Idle;

    fn name(&self) -> &'static str {
        crate::PROTOCOL
    }

    fn start(self, ctx: Context) -> Result<Idle, ProtocolError> {
        let listener = ctx
            .listen(StreamProtocol::new(crate::STREAM_PROTOCOL))
            .unwrap();
        let (inbound_tx, _) = mpsc::channel(1);
        let (opened_tx, _) = mpsc::channel(1);
        let (room_tx, _) = mpsc::channel(1);
        let service = Service {
            client: ctx.client().clone(),
            db: ChatDb::open(ctx.database().clone()).unwrap(),
            me: ctx.client().peer_id(),
            signer: ctx.signing_key().clone(),
            peers: HashMap::new(),
            requesters: VecDeque::new(),
            trust: TrustDb::open(ctx.database().clone()).unwrap(),
            rooms: HashMap::new(),
            events: Events::default(),
            inbound_tx,
            opened_tx,
            room_tx,
            next_link: 1,
        };
        *self.0.lock().unwrap() = Some(Parts { service, listener });
        Ok(Idle)
    }
}

fn config() -> p2pnode_node::Config {
    Config {
        listen: vec!["/memory/0".parse().unwrap()],
        mdns: false,
        ..Config::default()
    }
}

/// A node whose chat service the test drives.
async fn probe(dir: &std::path::Path) -> (Node, Parts) {
    let slot = Arc::new(Mutex::new(None));
    let node = Node::builder(dir, config())
        .transport(TransportKind::Memory)
        .protocol(Probe(slot.clone()))
        .start()
        .await
        .unwrap();
    let parts = slot.lock().unwrap().take().unwrap();
    (node, parts)
}

/// One batch through the owner's path: applied, committed, acted on.
async fn step(s: &mut Service, inputs: Vec<Input>) {
    let (batch, after, _) = s.apply(inputs).await;
    s.db.commit(&batch).unwrap();
    s.finish(Ok(()), after).await;
}

/// A link with no stream behind it: what the service writes to the peer lands in the
/// returned receiver.
fn fake_link(s: &mut Service) -> (Link, mpsc::Receiver<Frame>) {
    let id = s.next_link;
    s.next_link += 1;
    let (writer, rx) = mpsc::channel(WRITER_QUEUE);
    let reader = tokio::spawn(std::future::pending::<()>()).abort_handle();
    let link = Link {
        id,
        preferred: false,
        opened: Instant::now(),
        writer,
        reader,
    };
    (link, rx)
}

/// A peer whose stream was accepted with `admission`; returns its link id and what we
/// write to it. Goes through the attach path's decision (`admit_link`) and install.
fn connect(
    s: &mut Service,
    peer: PeerId,
    admission: Admission,
) -> Option<(u64, mpsc::Receiver<Frame>)> {
    let mut batch = Batch::default();
    let mut after = After::default();
    let mut dirty = HashSet::new();
    s.admit_link(peer, false, admission, &mut batch, &mut after)?;
    let (link, rx) = fake_link(s);
    let id = link.id;
    s.install_link(peer, link, 0, &mut after, &mut dirty);
    s.db.commit(&batch).unwrap();
    Some((id, rx))
}

fn frame(peer: PeerId, link: u64, frame: Frame) -> Input {
    Input::Inbound(Inbound::Frame { peer, link, frame })
}

fn hello() -> Frame {
    Frame::Hello(Hello {
        epoch: rand::random(),
        your_epoch: None,
        received_up_to: 0,
        acked_up_to: 0,
        want_reply: false,
    })
}

fn message(seq: u64, len: usize) -> Frame {
    Frame::Message(Message {
        id: MessageId::new(seq, &mut OsRng),
        seq,
        sent_at: seq,
        body: "x".repeat(len),
        skip_to: None,
    })
}

/// The highest receipt among the frames written so far.
fn acked(rx: &mut mpsc::Receiver<Frame>) -> u64 {
    let mut up_to = 0;
    while let Ok(f) = rx.try_recv() {
        if let Frame::Receipt(r) = f {
            up_to = up_to.max(r.up_to);
        }
    }
    up_to
}

/// Stored incoming rows per peer: (messages, body bytes, of which requests).
fn stored(s: &Service) -> HashMap<String, (u64, u64, u64)> {
    let txn = s.db.db.begin_read().unwrap();
    let history = txn.open_table(HISTORY).unwrap();
    let mut out: HashMap<String, (u64, u64, u64)> = HashMap::new();
    for entry in history.iter().unwrap() {
        let (k, v) = entry.unwrap();
        let row: Row = ciborium::from_reader(v.value()).unwrap();
        let e = out.entry(k.value().0.to_string()).or_default();
        e.0 += 1;
        e.1 += row.body.len() as u64;
        e.2 += u64::from(row.request);
    }
    out
}

fn table_len(s: &Service, table: TableDefinition<&str, impl redb::Value + 'static>) -> u64 {
    let txn = s.db.db.begin_read().unwrap();
    txn.open_table(table).unwrap().len().unwrap()
}

fn fresh_peer() -> PeerId {
    libp2p::identity::Keypair::generate_ed25519()
        .public()
        .to_peer_id()
}

/// Issue #18, finding 4. Driven at the owner, with each stranger's stream replaced by a
/// fake link: 1,000 real handshakes (ML-KEM, signatures, the handshake gate's stranger
/// budget and rate limit) would take minutes in a debug build and test the node's gate,
/// not chat's storage; from the frame on, the path is the real one (admission, the
/// conversation, the batch, the redb commit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_messages_from_a_thousand_strangers_stay_under_the_quota() {
    const STRANGERS: usize = 1_000;
    const EACH: u64 = 10;
    let dir = tempfile::tempdir().unwrap();
    let (node, mut parts) = probe(dir.path()).await;
    let s = &mut parts.service;

    // A contact (accepted) writes big messages throughout the flood.
    let contact = fresh_peer();
    let (contact_link, mut contact_rx) = connect(s, contact, Admission::Accept).unwrap();
    step(s, vec![frame(contact, contact_link, hello())]).await;
    let mut contact_seq = 0;

    let mut writers = HashMap::new();
    let mut last = Vec::new();
    for chunk in 0..STRANGERS / 10 {
        let mut inputs = Vec::new();
        for i in 0..10 {
            let peer = fresh_peer();
            let Some((link, rx)) = connect(s, peer, Admission::Request) else {
                continue;
            };
            writers.insert(peer, rx);
            inputs.push(frame(peer, link, hello()));
            // Short messages (the message count binds), middling ones (the bytes bind),
            // and full-size ones among short ones; each stranger sends in order.
            for seq in 1..=EACH {
                let len = match i % 3 {
                    0 => 300,
                    1 => 1_000,
                    _ if seq % 3 == 0 => MAX_BODY_LEN,
                    _ => 300,
                };
                inputs.push(frame(peer, link, message(seq, len)));
            }
            last.push((peer, link));
        }
        contact_seq += 1;
        inputs.push(frame(
            contact,
            contact_link,
            message(contact_seq, MAX_BODY_LEN),
        ));
        step(s, inputs).await;
        if chunk % 10 == 0 {
            // Nothing kept for a forgotten stranger, not even its writer's receiver.
            writers.retain(|p, _| s.peers.contains_key(p));
        }
    }

    let rows = stored(s);
    let requests: Vec<(u64, u64, u64)> = rows
        .iter()
        .filter(|(p, _)| **p != contact.to_string())
        .map(|(_, v)| *v)
        .collect();
    let stranger_messages: u64 = requests.iter().map(|r| r.0).sum();
    let stranger_bytes: u64 = requests.iter().map(|r| r.1).sum();
    let pending = table_len(s, REQUESTS);
    let requesters = s
        .peers
        .values()
        .filter(|p| p.admission == Admission::Request)
        .count();
    eprintln!(
        "strangers: {stranger_messages} messages, {stranger_bytes} bytes stored from {} peers; \
         {pending} pending requests, {requesters} requesters in memory, {} conversations \
         stored, {} peers in memory",
        requests.len(),
        table_len(s, CONVERSATIONS),
        s.peers.len(),
    );
    let max = MAX_REQUESTERS as u64;
    assert!(pending <= max, "{pending} pending requests");
    assert!(
        requesters <= MAX_REQUESTERS,
        "{requesters} requesters in memory"
    );
    assert!(
        s.peers.len() <= MAX_REQUESTERS + 1,
        "{} peers in memory",
        s.peers.len()
    );
    assert!(table_len(s, CONVERSATIONS) <= max + 1);
    assert!(requests.len() as u64 <= max);
    for (messages, bytes, as_request) in &requests {
        assert!(*messages <= REQUEST_MESSAGES && *bytes <= REQUEST_BYTES);
        assert_eq!(messages, as_request);
    }
    assert!(stranger_messages <= max * REQUEST_MESSAGES);
    assert!(stranger_bytes <= max * REQUEST_BYTES);

    // What was refused was never acknowledged: each remaining stranger's receipts cover
    // exactly what is stored of it.
    writers.retain(|p, _| s.peers.contains_key(p));
    assert!(!writers.is_empty());
    for (peer, rx) in &mut writers {
        let kept = rows.get(&peer.to_string()).map_or(0, |r| r.0);
        assert_eq!(acked(rx), kept, "receipts of {peer}");
    }

    // The contact lost nothing and got every receipt.
    let contact_rows = rows[&contact.to_string()];
    assert_eq!(contact_rows.0, contact_seq);
    assert_eq!(contact_rows.1, contact_seq * MAX_BODY_LEN as u64);
    assert_eq!(contact_rows.2, 0, "a contact's messages are no requests");
    assert_eq!(acked(&mut contact_rx), contact_seq);

    // Accepting a requester lifts its quota: the sender's resends now go in.
    let (peer, link) = *last.last().unwrap();
    let (reply, _answer) = oneshot::channel();
    let before = stored(s)[&peer.to_string()].0;
    let mut inputs = vec![Input::Command(Command::Admission {
        peer,
        admission: Admission::Accept,
        reply,
    })];
    for seq in before + 1..=before + EACH {
        inputs.push(frame(peer, link, message(seq, MAX_BODY_LEN)));
    }
    step(s, inputs).await;
    assert_eq!(stored(s)[&peer.to_string()].0, before + EACH);
    assert_eq!(acked(writers.get_mut(&peer).unwrap()), before + EACH);
    node.shutdown().await;
}

/// Issue #18, finding 10 (chat side). The node checks trust before the handshake and
/// after it; the stream then waits in the listener's queue until the owner attaches it.
/// A peer revoked in that gap is not attached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_revoked_before_its_stream_is_attached_is_dropped() {
    let dir_a = tempfile::tempdir().unwrap();
    let dir_b = tempfile::tempdir().unwrap();
    let (a, mut parts) = probe(dir_a.path()).await;
    let b = Node::builder(dir_b.path(), config())
        .transport(TransportKind::Memory)
        .start()
        .await
        .unwrap();
    let a_id = a.client().peer_id();
    let b_id = b.client().peer_id();
    let addr = tokio::time::timeout(WAIT, async {
        loop {
            if let Some(addr) = a.client().status().await.unwrap().listen_addrs.first() {
                break addr.clone();
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("a listens");
    b.client()
        .connect_addr(format!("{addr}/p2p/{a_id}").parse().unwrap())
        .await
        .unwrap();

    // b opens a chat stream; a's node admits it (b is a stranger: a request) and queues it.
    let opener = {
        let client = b.client().clone();
        tokio::spawn(async move {
            client
                .open_secure(
                    a_id,
                    StreamProtocol::new(crate::STREAM_PROTOCOL),
                    crate::PROTOCOL,
                )
                .await
        })
    };
    let accepted = tokio::time::timeout(WAIT, parts.listener.next())
        .await
        .expect("the stream reaches a's chat queue")
        .unwrap();
    assert_eq!(accepted.peer, b_id);
    let _stream = opener.await.unwrap().unwrap();

    // The user blocks b before the owner gets to the stream.
    a.client().revoke(b_id).await.unwrap();
    let s = &mut parts.service;
    step(s, vec![Input::Accepted(Box::new(accepted))]).await;
    assert!(
        s.peers.get(&b_id).is_none_or(|p| p.link.is_none()),
        "a stream of a revoked peer was attached"
    );
    b.shutdown().await;
    a.shutdown().await;
}

/// The quota and the cap hold across restarts: a requester's stored messages count
/// against it after a restart, and a database holding more requesters than the cap (one
/// written before it) keeps only the newest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_the_quota_and_the_cap() {
    let dir = tempfile::tempdir().unwrap();
    let (node, mut parts) = probe(dir.path()).await;
    let s = &mut parts.service;
    // More requesters than the cap, as an older version stored them.
    let mut batch = Batch::default();
    let mut strangers = Vec::new();
    for i in 0..MAX_REQUESTERS as u64 + 10 {
        let peer = fresh_peer();
        let key = peer.to_string();
        let mut snap = Conversation::new(ConvConfig::default(), &mut OsRng).snapshot();
        snap.cursor.delivered_up_to = REQUEST_MESSAGES - 2;
        batch.snapshots.push((key.clone(), snap.encode()));
        for index in 0..REQUEST_MESSAGES - 2 {
            let row = Row {
                id: format!("{i}-{index}"),
                seq: index + 1,
                outgoing: false,
                sent_at: i,
                body: "hello".into(),
                request: true,
            };
            batch.rows.push((key.clone(), index, cbor(&row)));
        }
        batch.requests_add.push((key, 1_000 + i));
        strangers.push(peer);
    }
    s.db.commit(&batch).unwrap();
    drop(parts);
    node.shutdown().await;

    let (node, mut parts) = probe(dir.path()).await;
    let s = &mut parts.service;
    s.restore().await;
    assert_eq!(s.requesters.len(), MAX_REQUESTERS);
    assert_eq!(table_len(s, REQUESTS), MAX_REQUESTERS as u64);
    let rows = stored(s);
    for (i, peer) in strangers.iter().enumerate() {
        let kept = rows.contains_key(&peer.to_string());
        assert_eq!(kept, i >= 10, "stranger {i}: the oldest are dropped");
    }
    // The newest stranger had 3 messages stored: 2 more fit its quota, not 3.
    let peer = *strangers.last().unwrap();
    let (link, mut rx) = connect(s, peer, Admission::Request).unwrap();
    let mut inputs = vec![frame(peer, link, hello())];
    for seq in REQUEST_MESSAGES - 1..=REQUEST_MESSAGES + 1 {
        inputs.push(frame(peer, link, message(seq, 10)));
    }
    step(s, inputs).await;
    assert_eq!(stored(s)[&peer.to_string()].0, REQUEST_MESSAGES);
    assert_eq!(acked(&mut rx), REQUEST_MESSAGES);
    drop(parts);
    node.shutdown().await;
}
