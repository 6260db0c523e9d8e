//! Networks on real nodes over the memory transport: create, invite and join through the
//! issuer, revocations pushed to connected members, a revoked node refused when it comes
//! back, records kept across restarts, bad invites refused with nothing stored.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use crate::common::{Named, addr_of, start_memory_with, wait_for};
use p2pnode_node::networks::{NetError, NetInfo};
use p2pnode_node::{Multiaddr, Node, PeerId};

async fn node(dir: &std::path::Path) -> Node {
    start_memory_with(dir, Named("test")).await
}

/// A ticket for `network` issued by `admin`, carrying its address.
async fn ticket(admin: &Node, network: &str, uses: u32, expires: Duration) -> String {
    let addrs: Vec<Multiaddr> = vec![addr_of(admin).await];
    admin
        .client()
        .networks()
        .invite(network, expires, uses, false, &addrs)
        .unwrap()
        .ticket
}

/// `joiner` joins `network` of `admin` with a fresh one-use ticket.
async fn join(admin: &Node, joiner: &Node, network: &str) -> NetInfo {
    let t = ticket(admin, network, 1, Duration::from_secs(3600)).await;
    joiner.client().join_network(&t, None).await.unwrap()
}

fn is_member(node: &Node, network: &str, peer: PeerId) -> bool {
    node.client().networks().is_member(network, &peer)
}

fn revoked_in(node: &Node, network: &str, peer: PeerId) -> bool {
    node.client()
        .networks()
        .members(network)
        .map(|m| m.iter().any(|x| x.peer_id == peer.to_string() && x.revoked))
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_invite_join_and_membership_survives_restart() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = node(da.path()).await;
    let b = node(db.path()).await;
    let (pa, pb) = (a.client().peer_id(), b.client().peer_id());
    let created = a.client().networks().create("home").unwrap();
    assert_eq!((created.role.as_str(), created.members), ("admin", 1));
    assert!(matches!(
        a.client().networks().create("home"),
        Err(NetError::Exists(_))
    ));

    let joined = join(&a, &b, "home").await;
    assert_eq!(
        (joined.name.as_str(), joined.role.as_str()),
        ("home", "member")
    );
    assert_eq!(joined.id, created.id);
    assert!(is_member(&a, "home", pb) && is_member(&b, "home", pa));
    let members = b.client().networks().members("home").unwrap();
    let entry = members
        .iter()
        .find(|m| m.peer_id == pb.to_string())
        .unwrap();
    assert_eq!(entry.added_by.as_deref(), Some(pa.to_string().as_str()));
    assert!(entry.added_at_ms.is_some() && !entry.revoked);

    // Both restart: the records come back from the database.
    a.shutdown().await;
    b.shutdown().await;
    let a = node(da.path()).await;
    let b = node(db.path()).await;
    assert!(is_member(&a, "home", pb) && is_member(&b, "home", pa));
    assert_eq!(b.client().networks().list()[0].role, "member");
    assert_eq!(a.client().networks().list()[0].role, "admin");
    // And they still exchange: a promotion made now reaches b once connected.
    a.client().connect_addr(addr_of(&b).await).await.unwrap();
    a.client().networks().promote("home", pb).unwrap();
    wait_for(|| async { (b.client().networks().list()[0].role == "admin").then_some(()) }).await;
    a.shutdown().await;
    b.shutdown().await;
}

/// A member records its own lease (the tunnel's bytes, opaque to the node): it is stored,
/// reaches the admin, and shows in both rosters under the same network id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_members_lease_reaches_the_other_members_roster() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = node(da.path()).await;
    let b = node(db.path()).await;
    a.client().networks().create("vpn").unwrap();
    join(&a, &b, "vpn").await;
    let pb = b.client().peer_id();
    let lease = vec![1, 100, 70, 0, 9];
    b.client()
        .networks()
        .set_lease("vpn", lease.clone())
        .unwrap();
    let lease_of = |n: &Node| {
        let roster = n.client().networks().roster("vpn").unwrap();
        let m = roster.members.iter().find(|m| m.peer == pb).cloned();
        (
            roster.id,
            m.and_then(|m| m.lease).map(|l| l.as_bytes().to_vec()),
        )
    };
    let (id_b, on_b) = lease_of(&b);
    assert_eq!(on_b.as_deref(), Some(&lease[..]));
    let id_a = wait_for(|| async {
        let (id, on_a) = lease_of(&a);
        (on_a.as_deref() == Some(&lease[..])).then_some(id)
    })
    .await;
    assert_eq!(id_a, id_b);
    assert!(matches!(
        b.client().networks().set_lease("vpn", vec![0; 64]),
        Err(NetError::Refused { .. })
    ));
    assert!(matches!(
        b.client().networks().roster("nope"),
        Err(NetError::UnknownNetwork(_))
    ));
    a.shutdown().await;
    b.shutdown().await;
}

/// A member names itself: the name reaches the admin's roster; a name another member
/// holds is refused, and so is an empty one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_names_itself_once_and_a_taken_name_is_refused() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = node(da.path()).await;
    let b = node(db.path()).await;
    a.client().networks().create("vpn").unwrap();
    join(&a, &b, "vpn").await;
    let pb = b.client().peer_id();
    a.client().networks().set_name("vpn", "desk").unwrap();
    b.client().networks().set_name("vpn", "laptop").unwrap();
    let name_of = |n: &Node, p: PeerId| {
        let roster = n.client().networks().roster("vpn").unwrap();
        roster
            .members
            .iter()
            .find(|m| m.peer == p)
            .and_then(|m| m.name.clone())
    };
    assert_eq!(name_of(&b, pb).as_deref(), Some("laptop"));
    wait_for(|| async { (name_of(&a, pb).as_deref() == Some("laptop")).then_some(()) }).await;
    wait_for(|| async {
        (name_of(&b, a.client().peer_id()).as_deref() == Some("desk")).then_some(())
    })
    .await;
    let taken = b.client().networks().set_name("vpn", "desk").unwrap_err();
    assert!(taken.to_string().contains("already taken"), "{taken}");
    assert!(matches!(
        b.client().networks().set_name("vpn", ""),
        Err(NetError::Refused { .. })
    ));
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_reaches_four_connected_members_within_two_seconds() {
    let dirs: Vec<_> = (0..6).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut nodes = Vec::new();
    for d in &dirs {
        nodes.push(node(d.path()).await);
    }
    let admin = &nodes[0];
    admin.client().networks().create("team").unwrap();
    for n in &nodes[1..] {
        join(admin, n, "team").await;
    }
    let revoked = nodes[5].client().peer_id();
    let members = &nodes[1..5];
    // Every member knows the revoked one as a member before (so the change is news).
    for m in members {
        wait_for(|| async { is_member(m, "team", revoked).then_some(()) }).await;
    }
    let start = Instant::now();
    admin.client().networks().revoke("team", revoked).unwrap();
    let mut waits = Vec::new();
    for m in members {
        wait_for(|| async { revoked_in(m, "team", revoked).then_some(()) }).await;
        waits.push(start.elapsed());
    }
    let slowest = *waits.iter().max().unwrap();
    eprintln!("revocation reached the 4 members after {waits:?} (slowest {slowest:?})");
    assert!(slowest < Duration::from_secs(2), "{slowest:?}");
    for n in nodes {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_revoked_while_offline_is_refused_when_it_comes_back() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let a = node(dirs[0].path()).await;
    let b = node(dirs[1].path()).await;
    let r = node(dirs[2].path()).await;
    let (pb, pr) = (b.client().peer_id(), r.client().peer_id());
    a.client().networks().create("home").unwrap();
    join(&a, &b, "home").await;
    join(&a, &r, "home").await;
    r.shutdown().await;
    a.client().networks().revoke("home", pr).unwrap();
    wait_for(|| async { revoked_in(&b, "home", pr).then_some(()) }).await;

    // A change made after the revocation, while r is away.
    a.client().networks().promote("home", pb).unwrap();
    let b_is_admin = |n: &Node| {
        n.client()
            .networks()
            .members("home")
            .unwrap()
            .iter()
            .any(|m| m.peer_id == pb.to_string() && m.role == "admin")
    };
    wait_for(|| async { b_is_admin(&b).then_some(()) }).await;

    // r comes back believing it is a member, and connects to both; its exchanges (opened
    // on connect) are answered with nothing.
    let r = node(dirs[2].path()).await;
    assert!(is_member(&r, "home", pr), "r never heard of its revocation");
    let ops_before = r.client().networks().list()[0].ops;
    r.client().connect_addr(addr_of(&a).await).await.unwrap();
    r.client().connect_addr(addr_of(&b).await).await.unwrap();
    for n in [&a, &b] {
        wait_for(|| async { (n.client().networks().refused_exchanges() > 0).then_some(()) }).await;
    }
    assert_eq!(r.client().networks().list()[0].ops, ops_before);
    assert!(
        !b_is_admin(&r),
        "r received an op made after its revocation"
    );
    assert!(!is_member(&a, "home", pr) && !is_member(&b, "home", pr));
    for n in [a, b, r] {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_invites_are_refused_and_store_nothing() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let a = node(dirs[0].path()).await;
    let b = node(dirs[1].path()).await;
    let c = node(dirs[2].path()).await;
    a.client().networks().create("home").unwrap();
    let nothing = |n: &Node| n.client().networks().list().is_empty();

    // Forged: one character of the signed part changed.
    let good = ticket(&a, "home", 1, Duration::from_secs(3600)).await;
    let mut forged: Vec<char> = good.chars().collect();
    let i = 40;
    forged[i] = if forged[i] == 'a' { 'b' } else { 'a' };
    let forged: String = forged.into_iter().collect();
    let e = c.client().join_network(&forged, None).await.unwrap_err();
    assert!(e.to_string().starts_with("invalid invite"), "{e}");
    assert!(nothing(&c));
    let e = c.client().join_network("hello", None).await.unwrap_err();
    assert!(e.to_string().starts_with("invalid invite"), "{e}");

    // Used up: one use, taken by b.
    b.client().join_network(&good, None).await.unwrap();
    let e = c.client().join_network(&good, None).await.unwrap_err();
    assert!(e.to_string().contains("invite used up"), "{e}");
    assert!(nothing(&c));

    // Expired: checked by the joiner before it contacts anyone.
    let short = ticket(&a, "home", 5, Duration::from_millis(1)).await;
    let until = std::time::SystemTime::now() + Duration::from_millis(5);
    wait_for(|| async { (std::time::SystemTime::now() > until).then_some(()) }).await;
    let e = c.client().join_network(&short, None).await.unwrap_err();
    assert!(e.to_string().contains("invite expired"), "{e}");
    assert!(nothing(&c));
    // The admin's record holds a and b only.
    assert_eq!(a.client().networks().members("home").unwrap().len(), 2);
    for n in [a, b, c] {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ticket_admits_through_another_member_while_its_issuer_is_offline() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let a = node(dirs[0].path()).await;
    let b = node(dirs[1].path()).await;
    let c = node(dirs[2].path()).await;
    let (pb, pc) = (b.client().peer_id(), c.client().peer_id());
    a.client().networks().create("home").unwrap();
    join(&a, &b, "home").await;
    // The ticket names the issuer and another member, as `net invite` does with the
    // members it is connected to; then the issuer goes offline.
    let addrs = vec![addr_of(&a).await, addr_of(&b).await];
    let t = a
        .client()
        .networks()
        .invite("home", Duration::from_secs(3600), 1, false, &addrs)
        .unwrap()
        .ticket;
    a.shutdown().await;

    let joined = c.client().join_network(&t, None).await.unwrap();
    assert_eq!(joined.name, "home");
    assert!(is_member(&b, "home", pc) && is_member(&c, "home", pb));
    let members = c.client().networks().members("home").unwrap();
    let entry = members
        .iter()
        .find(|m| m.peer_id == pc.to_string())
        .unwrap();
    assert_eq!(
        entry.added_by.as_deref(),
        Some(pb.to_string().as_str()),
        "the member that answered wrote the add"
    );
    b.shutdown().await;
    c.shutdown().await;
}
