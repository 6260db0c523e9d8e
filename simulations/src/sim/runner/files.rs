//! The run's files: node data directories, the planned identities in them, and the disk
//! they use.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

use crate::sim::SimError;
use crate::sim::plan::Plan;
use crate::sim::scenario::Scenario;

pub(super) fn node_dir(i: usize) -> String {
    format!("n{i:05}")
}

/// Writes node `i`'s identity where [`p2pnode_node::Node::start_with`] looks for it, so
/// the node runs with the planned key instead of making a random one.
pub(super) fn write_identity(dir: &Path, plan: &Plan, i: usize) -> Result<(), SimError> {
    std::fs::DirBuilder::new()
        .mode(0o700)
        .recursive(true)
        .create(dir)
        .map_err(SimError::io(format!("cannot create {}", dir.display())))?;
    let bytes = plan
        .keypair(i)?
        .to_protobuf_encoding()
        .map_err(|e| SimError::Identity(e.to_string()))?;
    let path = dir.join(p2pnode_node::identity::IDENTITY_FILE);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .and_then(|mut f| f.write_all(&bytes))
        .map_err(SimError::io(format!("cannot write {}", path.display())))
}

/// A fresh directory for the run's node data, deleted when dropped.
pub(super) fn data_root(scenario: &Scenario) -> Result<tempfile::TempDir, SimError> {
    let shm = Path::new("/dev/shm");
    let parent = match &scenario.data_dir {
        Some(dir) => dir.clone(),
        None if shm.is_dir() => shm.to_path_buf(),
        None => std::env::temp_dir(),
    };
    tempfile::Builder::new()
        .prefix(&format!("p2pnode-sim-{}-", scenario.name))
        .tempdir_in(&parent)
        .map_err(SimError::io(format!(
            "cannot create a data directory in {}",
            parent.display()
        )))
}

/// Bytes the files under `dir` occupy.
pub(super) fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else {
                continue;
            };
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                total += meta.blocks() * 512;
            }
        }
    }
    total
}
