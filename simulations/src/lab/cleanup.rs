//! Removing what crashed labs left behind: namespaces (and work directories) whose
//! name carries the lab prefix and whose owner process is gone. A lab whose owner still
//! runs is never touched, so cleanup is safe while other labs run.

use std::path::PathBuf;

use super::topology::{PREFIX_TAG, kill_namespace_processes};
use super::{LabError, cmd};

/// What [`cleanup_leftovers`] removed.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Cleanup {
    /// Namespaces deleted.
    pub namespaces: Vec<String>,
    /// Work directories deleted.
    pub workdirs: Vec<PathBuf>,
    /// Lab namespaces left alone because their owner runs.
    pub live: Vec<String>,
}

/// The owner pid of a lab name (`p2l<pid>x<n>-...`), if the name is a lab's.
pub fn owner_pid(name: &str) -> Option<i32> {
    let rest = name.strip_prefix(PREFIX_TAG)?;
    let (pid, rest) = rest.split_once('x')?;
    let (counter, _) = rest.split_once('-')?;
    if counter.is_empty() || !counter.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    pid.parse().ok()
}

fn is_alive(pid: i32) -> bool {
    // Signal 0 checks existence; EPERM would mean it exists (we are root, so no).
    if nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_err() {
        return false;
    }
    // A killed process stays a zombie until its parent reaps it; it owns nothing.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    !matches!(process_state(&stat), Some('Z' | 'X'))
}

/// The state letter of a `/proc/<pid>/stat` line: the field after the `(comm)`, which
/// may itself contain spaces and parentheses.
fn process_state(stat: &str) -> Option<char> {
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// Deletes leftover lab namespaces and work directories whose owner pid is dead.
pub fn cleanup_leftovers() -> Result<Cleanup, LabError> {
    super::require_root()?;
    let mut done = Cleanup::default();
    let listing = cmd::run_blocking("ip", &["netns", "list"])?;
    for line in listing.lines() {
        // `ip netns list` prints "name" or "name (id: N)".
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(pid) = owner_pid(name) else {
            continue;
        };
        if is_alive(pid) {
            done.live.push(name.to_string());
            continue;
        }
        kill_namespace_processes(name);
        cmd::run_blocking("ip", &["netns", "del", name])?;
        tracing::info!(namespace = name, "deleted leftover namespace");
        done.namespaces.push(name.to_string());
    }
    let tmp = std::env::temp_dir();
    for entry in std::fs::read_dir(&tmp)?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(pid) = owner_pid(&name)
            && !is_alive(pid)
            && entry.file_type().is_ok_and(|t| t.is_dir())
        {
            std::fs::remove_dir_all(entry.path())?;
            done.workdirs.push(entry.path());
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_process_state() {
        assert_eq!(process_state("4159 (p2pnode-sim) Z 1 4159"), Some('Z'));
        assert_eq!(process_state("12 (a (b) c) S 1 12"), Some('S'));
        assert_eq!(process_state(""), None);
    }

    #[test]
    fn parses_lab_names() {
        assert_eq!(owner_pid("p2l1234x0-relay"), Some(1234));
        assert_eq!(owner_pid("p2l1234x17-r1"), Some(1234));
        assert_eq!(owner_pid("p2l1234x-r1"), None);
        assert_eq!(owner_pid("p2lx1-r1"), None);
        assert_eq!(owner_pid("netns1"), None);
        assert_eq!(owner_pid("p2l12a4x1-r1"), None);
    }
}
