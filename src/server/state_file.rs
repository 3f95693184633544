//! `--state-file` at the server's edges: loaded before the cluster starts (its positions
//! decide whether the node asks for deltas or a snapshot), saved after the shutdown drain.

use std::path::PathBuf;

use super::Shared;
use crate::clock::Hlc;
use crate::cluster::sync::Phase;
use crate::cluster::Cluster;
use crate::config::ClusterConfig;
use crate::replication::frame::Position;
use crate::state::{self, Expect, StateError, StateHeader};
use crate::store::Store;

/// A node's `--state-file`, and whose state it holds.
pub(super) struct StateFile {
    pub path: PathBuf,
    pub cluster_id: u64,
    pub node_name: String,
}

/// Saves the store and this node's log positions to the state file, once clients and peers
/// are gone (nothing changes the store any more).
pub(super) fn save_state(sf: &StateFile, shared: &Shared, cluster: &Cluster) {
    if cluster.phase() != Phase::Ready {
        // Half a snapshot, with positions that only the whole of it makes true: such a
        // file would later claim writes this node never got. The previous file (if any)
        // still describes a consistent state.
        tracing::warn!(path = %sf.path.display(), "not saving the state file: this node's sync was not complete");
        return;
    }
    let started = std::time::Instant::now();
    let header = StateHeader {
        cluster_id: sf.cluster_id,
        node_name: sf.node_name.clone(),
        written_ms: shared.clock().now_ms(),
        positions: cluster.positions(),
    };
    let now = shared.clock().now_secs();
    match state::save(&sf.path, &header, &shared.store, now) {
        Ok(saved) => tracing::info!(
            path = %sf.path.display(),
            items = saved.items,
            tombstones = saved.tombstones,
            bytes = saved.bytes,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "state file saved"
        ),
        Err(e) => tracing::error!("{e}; the next start will resync by snapshot"),
    }
}

/// Loads `--state-file` into the store, if there is one this node may use; returns the
/// log positions it holds (the node then asks its peers only for what it missed), or
/// `None` when the node starts without data.
pub(super) fn load_state(
    path: &std::path::Path,
    cc: &ClusterConfig,
    cluster_id: u64,
    store: &Store,
    hlc: &Hlc,
) -> Option<Vec<Position>> {
    let started = std::time::Instant::now();
    let expect = Expect {
        cluster_id,
        node_name: &cc.node_name,
    };
    let now_ms = hlc.clock().now_ms();
    match state::load(path, &expect, store, hlc, hlc.clock().now_secs()) {
        Ok(loaded) => {
            let age_ms = now_ms.saturating_sub(loaded.header.written_ms);
            if age_ms > u64::from(cc.tombstone_ttl) * 1000 {
                // Deletes made since may have left no tombstone anywhere: serving this
                // file could bring deleted data back.
                let dropped = store.clear();
                tracing::warn!(path = %path.display(), age_s = age_ms / 1000, dropped, "the state file is older than --tombstone-ttl, so it is not used (deletes made since could come back); this node resyncs by snapshot");
                return None;
            }
            if let Err(e) = state::invalidate(path) {
                // Left in place, the file would be reloaded after a crash as if it were
                // current: not using it is the safe side.
                let dropped = store.clear();
                tracing::error!(
                    dropped,
                    "{e}; so it is not used: this node resyncs by snapshot"
                );
                return None;
            }
            tracing::info!(
                path = %path.display(),
                items = loaded.items,
                tombstones = loaded.tombstones,
                expired = loaded.expired,
                bytes = loaded.bytes,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "state file loaded (and removed: it is trusted only for the run that wrote it)"
            );
            Some(loaded.header.positions)
        }
        Err(StateError::NotFound { .. }) => {
            tracing::info!(path = %path.display(), "no state file yet; starting without data");
            None
        }
        Err(e) => {
            tracing::error!("{e}; ignoring it: this node resyncs by snapshot");
            None
        }
    }
}
