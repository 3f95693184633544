//! The journal: how local changes leave the store for the replication log.

use super::write::{Found, Slotted};
use super::Store;
use crate::clock::Version;

/// A local change as replicated: the key's resulting state (DESIGN.md section 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change<'a> {
    Put {
        value: &'a [u8],
        flags: u32,
        exptime: u32,
        version: Version,
    },
    Delete {
        version: Version,
    },
}

/// Receives every local change; see [`Store::set_journal`].
pub type Journal = Box<dyn Fn(&[u8], Change<'_>) + Send + Sync>;

impl Store {
    /// Has every local change (not remote ones applied by [`Store::apply`]) reported to
    /// `journal` as the key's resulting state, under the key's lock, so the report order per
    /// key is the write order. For replication; set once, before serving.
    pub fn set_journal(&self, journal: Journal) -> Result<(), Journal> {
        self.journal.set(journal)
    }

    /// Reports the state `at` points to, if a journal is set.
    pub(super) fn journal(&self, at: &Slotted<'_, '_>) {
        let Some(journal) = self.journal.get() else {
            return;
        };
        let change = match at.found {
            Found::Item(i) => {
                let s = at.shard.slot(i);
                Change::Put {
                    value: s.value(),
                    flags: s.flags,
                    exptime: s.exptime,
                    version: Version(s.version),
                }
            }
            Found::Tombstone(i) => Change::Delete {
                version: Version(at.shard.slot(i).version),
            },
            // Without tombstones there is nothing to tell (a standalone node).
            Found::Absent => return,
        };
        journal(at.key, change);
    }
}
