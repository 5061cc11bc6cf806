//! Who `webhookd webhooks …` runs as when it opens the store itself.
//!
//! With the daemon stopped, `webhooks` opens the store directly, and operators run it with `sudo`
//! because the state directory is closed to them. As root it would create files (sled's segments,
//! attempt logs) owned by root inside a directory the daemon's user owns, and the daemon, started
//! again as that user, could no longer open its own store. Refusing would make the common
//! `sudo webhookd webhooks add …` fail; acting as the store's owner makes it do what the daemon
//! would have done. So, run as root on a store that another user owns (or, before the first
//! start, whose nearest existing parent directory another user owns, as systemd's
//! `StateDirectory=` creates it), the command becomes that user — its uid, its gid and no
//! supplementary groups — before anything is opened. That happens before the async runtime
//! starts any thread, and through libc's process-wide calls. Run as any other user, nothing
//! changes: the file system's permissions decide, as for any program.

use std::io;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use nix::unistd::{Gid, Uid};

/// The user and group the command now runs as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error("cannot tell who owns the store {}: {source}", path.display())]
    Inspect { path: PathBuf, source: io::Error },
    #[error("cannot act as uid {uid} / gid {gid}, the owner of the store {}: {source}", path.display())]
    Drop {
        path: PathBuf,
        uid: u32,
        gid: u32,
        source: nix::Error,
    },
    #[error("still able to become root after dropping to uid {uid}; refusing to go on")]
    StillRoot { uid: u32 },
}

/// Run as root, becomes the owner of `store` (see the module documentation) and returns it;
/// `None` when the process is not root or root owns the store already.
pub fn act_as_store_owner(store: &Path) -> Result<Option<Owner>, PrivilegeError> {
    if !Uid::effective().is_root() {
        return Ok(None);
    }
    let (path, owner) = owner_of(store)?;
    if owner.uid == 0 {
        return Ok(None);
    }
    let failed = |source| PrivilegeError::Drop {
        path: path.clone(),
        uid: owner.uid,
        gid: owner.gid,
        source,
    };
    // Groups first: only root may change them, and the uid last, which gives root up.
    let gid = Gid::from_raw(owner.gid);
    nix::unistd::setgroups(&[gid]).map_err(failed)?;
    nix::unistd::setgid(gid).map_err(failed)?;
    nix::unistd::setuid(Uid::from_raw(owner.uid)).map_err(failed)?;
    if nix::unistd::setuid(Uid::from_raw(0)).is_ok() {
        return Err(PrivilegeError::StillRoot { uid: owner.uid });
    }
    Ok(Some(owner))
}

/// The owner of `store`, or of its nearest existing ancestor when it does not exist yet, with
/// the path that was looked at.
fn owner_of(store: &Path) -> Result<(PathBuf, Owner), PrivilegeError> {
    // Absolute, so that a relative path's last ancestor is the working directory, not "".
    let store = std::path::absolute(store).map_err(|source| PrivilegeError::Inspect {
        path: store.to_owned(),
        source,
    })?;
    let mut last_error = None;
    for path in store.ancestors() {
        match std::fs::metadata(path) {
            Ok(metadata) => {
                let owner = Owner {
                    uid: metadata.uid(),
                    gid: metadata.gid(),
                };
                return Ok((path.to_owned(), owner));
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => last_error = Some(error),
            Err(source) => {
                return Err(PrivilegeError::Inspect {
                    path: path.to_owned(),
                    source,
                })
            }
        }
    }
    Err(PrivilegeError::Inspect {
        path: store,
        source: last_error.unwrap_or_else(|| io::Error::from(io::ErrorKind::NotFound)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_not_made_yet_belongs_to_its_nearest_existing_parent() {
        let dir = tempfile::tempdir().expect("temp dir");
        let metadata = std::fs::metadata(dir.path()).expect("metadata");
        let want = Owner {
            uid: metadata.uid(),
            gid: metadata.gid(),
        };
        let deep = dir.path().join("state/store");
        assert_eq!(
            owner_of(&deep).ok(),
            Some((dir.path().to_owned(), want)),
            "{deep:?}"
        );
        assert_eq!(
            owner_of(dir.path()).ok(),
            Some((dir.path().to_owned(), want))
        );
    }

    #[test]
    fn a_relative_store_path_is_looked_up_from_the_working_directory() {
        let (path, _) = owner_of(Path::new("no-such-store-here/store")).expect("owner");
        assert_eq!(Some(path), std::env::current_dir().ok());
    }
}
