//! `--state-file` at the server's edges: loaded before the cluster starts (its positions
//! decide whether the node asks for deltas or a snapshot), saved after the shutdown drain.

use std::path::PathBuf;

use crate::clock::Hlc;
use crate::cluster::core::DRAINED;
use crate::cluster::sync::Phase;
use crate::replication::frame::Position;
use crate::replication::log::RunId;
use crate::state::{self, Expect, StateError, StateHeader};
use crate::store::Store;

/// A node's `--state-file`, and whose state it holds.
#[derive(Debug, Clone)]
pub struct StateFile {
    pub path: PathBuf,
    pub cluster_id: u64,
    pub node_name: String,
    /// `--tombstone-ttl` in seconds: a file older than that is not used.
    pub tombstone_ttl: u32,
}

/// What a graceful stop hands to [`StateFile::save`].
pub struct Saving<'a> {
    pub store: &'a Store,
    pub now_ms: u64,
    /// The node's sync phase: only a synced node's file is consistent.
    pub phase: Phase,
    /// What the node holds of every peer's log.
    pub positions: Vec<Position>,
    /// This node's run, and the last sequence of it every member acknowledged, or
    /// [`DRAINED`] when they all have all of it. Below `DRAINED`, some of its own writes
    /// are only here, and the next run must hand them to its peers by snapshot (DESIGN.md
    /// section 6). The run also dates the file: a later run of this node that peers know
    /// of makes the file stale (see [`crate::cluster::core`]'s `file_run`).
    pub own: (RunId, u64),
}

impl StateFile {
    /// Saves the store and the node's log positions, once clients and peers are gone
    /// (nothing changes the store any more).
    pub fn save(&self, s: Saving<'_>) {
        if s.phase != Phase::Ready {
            // Half a snapshot, with positions that only the whole of it makes true: such a
            // file would later claim writes this node never got. The previous file (if
            // any) still describes a consistent state.
            tracing::warn!(node = %self.node_name, path = %self.path.display(), "not saving the state file: this node's sync was not complete");
            return;
        }
        let started = std::time::Instant::now();
        let mut positions = s.positions;
        // Our own name among the positions: the run that wrote the file, and how much of
        // it peers hold. (Releases before 0.7 wrote it only when undrained, and read any
        // own entry as "undrained": reading a newer file, they hand their writes to peers
        // by snapshot once more than needed, which is safe.)
        let (run_id, seq) = s.own;
        positions.push(Position {
            origin: self.node_name.clone(),
            run_id,
            seq,
        });
        let header = StateHeader {
            cluster_id: self.cluster_id,
            node_name: self.node_name.clone(),
            written_ms: s.now_ms,
            positions,
        };
        let now = (s.now_ms / 1000) as u32;
        match state::save(&self.path, &header, s.store, now) {
            Ok(saved) => tracing::info!(
                node = %self.node_name,
                path = %self.path.display(),
                items = saved.items,
                tombstones = saved.tombstones,
                bytes = saved.bytes,
                undrained = seq != DRAINED,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "state file saved"
            ),
            Err(e) => {
                tracing::error!(node = %self.node_name, "{e}; the next start will resync by snapshot")
            }
        }
    }

    /// Loads the file into the store, if it is one this node may use; returns the log
    /// positions it holds (the node then asks its peers only for what it missed), or
    /// `None` when the node starts without data. The file stays until [`Self::invalidate`],
    /// which the server calls once its start-up can no longer fail, before it serves a
    /// client: a start that fails after the load (a metrics port taken, a `-u` typo) leaves
    /// the file for the next start, instead of a cold node.
    pub fn load(&self, store: &Store, hlc: &Hlc) -> Option<Vec<Position>> {
        let path = &self.path;
        let started = std::time::Instant::now();
        let expect = Expect {
            cluster_id: self.cluster_id,
            node_name: &self.node_name,
        };
        let now_ms = hlc.clock().now_ms();
        match state::load(path, &expect, store, hlc, hlc.clock().now_secs()) {
            Ok(loaded) => {
                let age_ms = now_ms.saturating_sub(loaded.header.written_ms);
                if age_ms > u64::from(self.tombstone_ttl) * 1000 {
                    // Deletes made since may have left no tombstone anywhere: serving this
                    // file could bring deleted data back.
                    let dropped = store.clear();
                    tracing::warn!(node = %self.node_name, path = %path.display(), age_s = age_ms / 1000, dropped, "the state file is older than --tombstone-ttl, so it is not used (deletes made since could come back); this node resyncs by snapshot");
                    return None;
                }
                tracing::info!(
                    node = %self.node_name,
                    path = %path.display(),
                    items = loaded.items,
                    tombstones = loaded.tombstones,
                    expired = loaded.expired,
                    bytes = loaded.bytes,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "state file loaded"
                );
                Some(loaded.header.positions)
            }
            Err(StateError::NotFound { .. }) => {
                tracing::info!(node = %self.node_name, path = %path.display(), "no state file yet; starting without data");
                None
            }
            Err(e) => {
                tracing::error!(node = %self.node_name, "{e}; ignoring it: this node resyncs by snapshot");
                None
            }
        }
    }

    /// Removes the loaded file: it is trusted only for the run that wrote it (DESIGN.md
    /// section 6), and this run is about to change the store. On failure the node must not
    /// serve: a crash later would reload the file as if it were current.
    pub fn invalidate(&self) -> Result<(), StateError> {
        state::invalidate(&self.path)?;
        tracing::info!(node = %self.node_name, path = %self.path.display(), "state file removed: it is trusted only for the run that wrote it");
        Ok(())
    }
}
