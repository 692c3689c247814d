//! Serf's `-snapshot` and `-rejoin`: the members this node last knew, kept
//! in a file so that a restarted agent rejoins them even when its `--join`
//! names do not resolve (yet), and is synced (so lbgen serves its backends)
//! after one push-pull instead of after DNS comes back.
//!
//! The file is JSON (`{"version":1,"left":false,"members":[{"name","addr"}]}`),
//! rewritten atomically at most once a [`WRITE_EVERY`] while the member list
//! changes, and bounded to [`MAX_MEMBERS`] alive members. A graceful leave
//! is recorded (`"left": true`): like Serf, the next start then does not
//! rejoin unless `--rejoin` is given.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use shoal_contract::Status;
use tracing::{info, warn};

use crate::agent::Handle;

/// The snapshot file's format version.
pub const VERSION: u32 = 1;
/// At most this many members are kept (and read back).
pub const MAX_MEMBERS: usize = 4096;
/// A snapshot file larger than this is refused (about 100 bytes a member).
pub const MAX_BYTES: u64 = 1 << 20;
/// Least time between two writes while members keep changing.
pub const WRITE_EVERY: Duration = Duration::from_secs(1);

/// One remembered member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    pub name: String,
    pub addr: SocketAddr,
}

/// The file's content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotFile {
    pub version: u32,
    /// The node left gracefully last time (and was not started since).
    pub left: bool,
    pub members: Vec<Peer>,
}

impl SnapshotFile {
    /// The join targets a start takes from the snapshot: none after a
    /// graceful leave unless `rejoin`.
    pub fn rejoin_targets(&self, rejoin: bool) -> Vec<(String, u16)> {
        if self.left && !rejoin {
            return Vec::new();
        }
        // A hand-edited file may hold what no agent advertises.
        self.members
            .iter()
            .filter(|p| p.addr.port() != 0 && !p.addr.ip().is_unspecified())
            .map(|p| (p.addr.ip().to_string(), p.addr.port()))
            .collect()
    }
}

/// Reads a snapshot file; a missing one is `None`.
pub fn load(path: &Path) -> Result<Option<SnapshotFile>, String> {
    let what = || format!("snapshot file {}", path.display());
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", what())),
        Ok(m) if m.len() > MAX_BYTES => {
            return Err(format!(
                "{} is {} bytes, more than {MAX_BYTES}: not a snapshot shoal wrote; remove it",
                what(),
                m.len()
            ))
        }
        Ok(_) => {}
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", what()))?;
    let mut snap: SnapshotFile = serde_json::from_str(&text).map_err(|e| {
        format!(
            "{} is not a shoal snapshot ({e}); a Serf snapshot cannot be read (no wire compatibility): remove it",
            what()
        )
    })?;
    if snap.version != VERSION {
        return Err(format!(
            "{} has version {}, this agent reads {VERSION}",
            what(),
            snap.version
        ));
    }
    snap.members.truncate(MAX_MEMBERS);
    Ok(Some(snap))
}

/// Writes a snapshot atomically (mode 0644).
pub fn save(path: &Path, snap: &SnapshotFile) -> std::io::Result<()> {
    let body = serde_json::to_vec(snap).map_err(std::io::Error::other)?;
    crate::atomic::write(path, &body, 0o644)
}

/// The alive members of the table, this node excluded, bounded.
fn alive_peers(handle: &Handle) -> Vec<Peer> {
    let snap = handle.snapshot();
    let me = &snap.local.name;
    let mut peers: Vec<Peer> = snap
        .members
        .iter()
        .filter(|m| m.status == Status::Alive && &m.name != me)
        .filter_map(|m| {
            Some(Peer {
                name: m.name.clone(),
                addr: m.addr.parse().ok()?,
            })
        })
        .collect();
    peers.sort_by(|a, b| a.name.cmp(&b.name));
    peers.truncate(MAX_MEMBERS);
    peers
}

/// Keeps the snapshot file up to date while the agent runs.
pub struct Writer {
    path: PathBuf,
    handle: Handle,
    task: tokio::task::JoinHandle<()>,
}

impl Writer {
    /// Starts writing `path` on every change of the member table (at most
    /// once a [`WRITE_EVERY`]); the first write marks the node as started
    /// (`"left": false`).
    pub fn start(handle: Handle, path: PathBuf) -> Writer {
        let task = tokio::spawn(keep_written(handle.clone(), path.clone()));
        Writer { path, handle, task }
    }

    /// After a graceful leave: stops the updates and records the leave with
    /// the last members, so a restart without `--rejoin` stays out.
    pub fn record_leave(self) {
        self.task.abort();
        let snap = SnapshotFile {
            version: VERSION,
            left: true,
            members: alive_peers(&self.handle),
        };
        match save(&self.path, &snap) {
            Ok(()) => info!(file = %self.path.display(), "snapshot: leave recorded"),
            Err(e) => {
                warn!(file = %self.path.display(), error = %e, "snapshot: cannot record the leave")
            }
        }
    }

    /// Stops the updates, the file keeps the last members (an exit without
    /// a leave: the next start rejoins them).
    pub fn stop(self) {
        self.task.abort();
    }
}

async fn keep_written(handle: Handle, path: PathBuf) {
    let mut changes = handle.snapshots();
    let mut last: Option<Vec<Peer>> = None;
    loop {
        let peers = alive_peers(&handle);
        // An empty table at start (not synced yet) must not erase the
        // members the last run knew: only the left flag is cleared then.
        let keep_old = peers.is_empty() && last.is_none();
        let members = if keep_old {
            load(&path)
                .ok()
                .flatten()
                .map(|s| s.members)
                .unwrap_or_default()
        } else {
            peers.clone()
        };
        if last.as_ref() != Some(&members) {
            let snap = SnapshotFile {
                version: VERSION,
                left: false,
                members: members.clone(),
            };
            if let Err(e) = save(&path, &snap) {
                warn!(file = %path.display(), error = %e, "snapshot: cannot write");
            }
            last = Some(members);
        }
        tokio::time::sleep(WRITE_EVERY).await;
        if changes.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(left: bool) -> SnapshotFile {
        SnapshotFile {
            version: VERSION,
            left,
            members: vec![Peer {
                name: "lb".into(),
                addr: "10.0.0.2:7946".parse().unwrap(),
            }],
        }
    }

    #[test]
    fn a_snapshot_round_trips_and_garbage_is_refused_with_the_file_named() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("snap.json");
        assert_eq!(load(&path).unwrap(), None);
        save(&path, &snap(false)).unwrap();
        assert_eq!(load(&path).unwrap(), Some(snap(false)));
        std::fs::write(&path, "alive: lb 10.0.0.2:7946\n").unwrap();
        let e = load(&path).unwrap_err();
        assert!(
            e.contains("snap.json") && e.contains("Serf snapshot"),
            "{e}"
        );
    }

    #[test]
    fn after_a_graceful_leave_only_rejoin_rejoins() {
        assert_eq!(
            snap(false).rejoin_targets(false),
            [("10.0.0.2".to_string(), 7946)]
        );
        assert!(snap(true).rejoin_targets(false).is_empty());
        assert_eq!(snap(true).rejoin_targets(true).len(), 1);
        let mut odd = snap(false);
        odd.members[0].addr = "0.0.0.0:7946".parse().unwrap();
        assert!(odd.rejoin_targets(false).is_empty(), "never a join target");
    }

    #[test]
    fn an_oversized_snapshot_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("snap.json");
        std::fs::write(&path, vec![b' '; MAX_BYTES as usize + 1]).unwrap();
        assert!(load(&path).unwrap_err().contains("more than"));
    }
}
