//! What the sync lab tests share: a document's state as a node holds it, read over its
//! control socket, and the wait until every node holds the same.

use std::time::Duration;

use p2pnode_node::control::ControlClient;
use p2pnode_sim::lab::Node;
use p2pnode_sim::lab::poll::{Poll, wait_for};
use serde_json::{Value, json};

/// A document as one node holds it: its heads (sorted) and its JSON.
pub type DocState = (Vec<String>, Value);

/// `doc`'s heads (sorted) as `node` holds it, or `None` when the node does not answer or
/// lacks it. Cheap: it reads no content.
pub async fn heads(node: &Node, doc: &str) -> Option<Vec<String>> {
    let control = ControlClient::new(node.data_dir());
    let list: Vec<Value> = control.get("db/list").await.ok()?;
    let info = list.into_iter().find(|d| d["doc"] == doc)?;
    let mut heads: Vec<String> = serde_json::from_value(info["heads"].clone()).ok()?;
    heads.sort();
    Some(heads)
}

/// `doc` as `node` holds it, or `None` when the node does not answer or lacks it.
pub async fn state(node: &Node, doc: &str) -> Option<DocState> {
    let heads = heads(node, doc).await?;
    let control = ControlClient::new(node.data_dir());
    let value: Value = control.post("db/get", &json!({ "doc": doc })).await.ok()?;
    Some((heads, value))
}

/// Waits until every node holds `doc` with the same heads and JSON, and returns it. On a
/// timeout the error says how many nodes still differ. The JSON is read only once the
/// heads agree: reading a large document from every node every poll would slow the very
/// nodes being waited for.
pub async fn wait_same(nodes: &[&Node], doc: &str, timeout: Duration) -> Result<DocState, String> {
    wait_for(
        "every node on the same heads and JSON",
        timeout,
        Duration::from_millis(100),
        || async {
            let mut all = Vec::new();
            for n in nodes {
                match heads(n, doc).await {
                    Some(h) => all.push(h),
                    None => return Poll::seen(format!("{} lacks the document", n.name())),
                }
            }
            let distinct = all.iter().filter(|h| **h != all[0]).count();
            if distinct > 0 {
                return Poll::seen(format!(
                    "{distinct} of {} differ in heads from the first",
                    all.len()
                ));
            }
            let mut states = Vec::new();
            for n in nodes {
                match state(n, doc).await {
                    Some(s) => states.push(s),
                    None => return Poll::seen(format!("{} did not answer", n.name())),
                }
            }
            let first = states[0].clone();
            if states.iter().all(|s| *s == first) {
                Poll::Ready(first)
            } else {
                Poll::seen("same heads, different JSON")
            }
        },
    )
    .await
    .map_err(|e| e.to_string())
}
