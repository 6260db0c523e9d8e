//! The node's long-term Ed25519 identity, created on first start and kept in the data
//! directory with file mode 0600.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use libp2p::identity::Keypair;

/// File name of the identity key inside the data directory.
pub const IDENTITY_FILE: &str = "identity.key";

/// Errors loading or creating the identity.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The data directory could not be created or the key file not written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The key file exists but could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The key file does not hold a valid key.
    #[error("{path} does not hold a valid identity key: {reason}")]
    Corrupt {
        /// The path.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// The key file is readable by other users; refuse to use a key that may have leaked.
    #[error("{path} is readable by other users (mode {mode:o}); run `chmod 600 {path}`")]
    Permissions {
        /// The path.
        path: PathBuf,
        /// The file's mode bits.
        mode: u32,
    },
    /// Other users may write to the data directory: they could swap the identity, the
    /// database or the control socket.
    #[error("{path} is writable by other users (mode {mode:o}); run `chmod go-w {path}`")]
    DirWritable {
        /// The directory.
        path: PathBuf,
        /// Its mode bits.
        mode: u32,
    },
}

/// Creates the data directory (mode 0700) when missing; refuses one other users may
/// write to.
pub fn ensure_data_dir(dir: &Path) -> Result<(), IdentityError> {
    let write_err = |source| IdentityError::Write {
        path: dir.to_path_buf(),
        source,
    };
    if !dir.exists() {
        std::fs::create_dir_all(dir).map_err(write_err)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(write_err)?;
    }
    let mode = std::fs::metadata(dir)
        .map_err(write_err)?
        .permissions()
        .mode()
        & 0o7777;
    // Sticky directories (/tmp itself) are never a data directory; group or world write
    // on ours is refused.
    if mode & 0o022 != 0 {
        return Err(IdentityError::DirWritable {
            path: dir.to_path_buf(),
            mode,
        });
    }
    // Probe writability now, so a read-only directory fails with a clear message at start
    // instead of somewhere deep in the database or socket code.
    let probe = dir.join(".write-test");
    std::fs::write(&probe, b"").map_err(write_err)?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// Loads the identity from `dir`, creating it (and the directory) on first use.
pub fn load_or_create(dir: &Path) -> Result<Keypair, IdentityError> {
    if !dir.is_dir() {
        ensure_data_dir(dir)?;
    }
    let path = dir.join(IDENTITY_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => {
            let mode = std::fs::metadata(&path)
                .map_err(|source| IdentityError::Read {
                    path: path.clone(),
                    source,
                })?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                return Err(IdentityError::Permissions {
                    path,
                    mode: mode & 0o777,
                });
            }
            Keypair::from_protobuf_encoding(&bytes).map_err(|e| IdentityError::Corrupt {
                path,
                reason: e.to_string(),
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            ensure_data_dir(dir)?;
            let keypair = Keypair::generate_ed25519();
            write_new(&path, &keypair)?;
            tracing::info!(peer = %keypair.public().to_peer_id(), path = %path.display(), "created a new identity");
            Ok(keypair)
        }
        Err(source) => Err(IdentityError::Read { path, source }),
    }
}

/// Writes the key to a temp file with mode 0600, fsyncs it and renames it into place, so a
/// crash never leaves a half-written identity.
fn write_new(path: &Path, keypair: &Keypair) -> Result<(), IdentityError> {
    let write_err = |source| IdentityError::Write {
        path: path.to_path_buf(),
        source,
    };
    let bytes = keypair
        .to_protobuf_encoding()
        .map_err(|e| IdentityError::Corrupt {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    let tmp = path.with_extension("key.tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(write_err)?;
    file.write_all(&bytes).map_err(write_err)?;
    file.sync_all().map_err(write_err)?;
    std::fs::rename(&tmp, path).map_err(write_err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_then_reloaded_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("node");
        let a = load_or_create(&home).unwrap();
        let b = load_or_create(&home).unwrap();
        assert_eq!(a.public().to_peer_id(), b.public().to_peer_id());
        let mode = std::fs::metadata(home.join(IDENTITY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn corrupt_key_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(IDENTITY_FILE);
        std::fs::write(&path, b"garbage").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let err = load_or_create(dir.path()).unwrap_err();
        assert!(matches!(err, IdentityError::Corrupt { .. }), "{err}");
    }

    #[test]
    fn world_readable_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        load_or_create(dir.path()).unwrap();
        let path = dir.path().join(IDENTITY_FILE);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = load_or_create(dir.path()).unwrap_err();
        assert!(matches!(err, IdentityError::Permissions { .. }), "{err}");
    }
}
