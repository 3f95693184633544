//! `--state-file`: a node shutting down gracefully saves its whole store (items and
//! tombstones with their versions), its flushes, the highest version it forgot, and how far
//! it had applied each peer's replication log; the next start loads it. A restarted node then serves warm at
//! once, and its peers need only send what it missed rather than a full snapshot.
//!
//! Saving is atomic: the file is written beside its final path as `PATH.tmp` (mode 0600:
//! it holds every value in the cache), synced, renamed over `PATH`, and the directory is
//! synced, so a crash at any point leaves either the old file or the new one. The store
//! is streamed through its bounded [`Store::export`] walk, never copied whole.
//!
//! Loading never half-loads: the whole file is read into memory and checked (checksum,
//! format version, every entry's shape, then cluster id and node name) before anything
//! touches the store or the clock. A file from another cluster or another node would
//! resurrect keys this node has no business holding, so it is refused like a damaged one.
//! Every refusal is a [`StateError`] whose message names the file and says, in one
//! sentence, what is wrong with it: the caller logs it and starts cold.
//!
//! Loaded entries go through [`Store::apply`], the same last-writer-wins merge as
//! replication, so loading into a store that already holds newer writes is harmless; then
//! the clock is moved past the newest loaded version, so that later local writes win over
//! everything loaded even if the wall clock went backwards across the restart. Applying
//! is most of a warm restart's time, so a large file is applied by one thread per core,
//! each taking a run of the file's entries (keys are distinct, so order does not matter).
//! A tombstone's lifetime starts over at load time (the export does not carry it).
//! The byte layout is in [`format`], the checks in [`decode`].

pub mod decode;
pub mod format;

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::Duration;

use crate::clock::{Hlc, Version};
use crate::store::{Applied, ExportCursor, FlushState, Remote, Store};
use decode::DecodeError;
use format::{EncodeError, Encoder};
pub use format::{Position, SaveStats, StateHeader, FORMAT};

/// Keys and values per export piece, and about the size of each write to the file.
const PIECE: usize = 1 << 20;

/// A stable 64-bit identity of a cluster: FNV-1a of its CA certificate (DER). Written by
/// hand because std's hashers may change between releases, and this one is kept in files.
pub fn cluster_id(ca_cert_der: &[u8]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    ca_cert_der
        .iter()
        .fold(OFFSET, |h, &b| (h ^ u64::from(b)).wrapping_mul(PRIME))
}

/// Why a state file was not saved or not loaded. On a failed save the previous file (if
/// any) is untouched and no temporary file is left, except when only the final sync of the
/// directory failed (the new file is in place, maybe not durably); on a failed load
/// nothing was applied.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("no state file at {}", .path.display())]
    NotFound { path: PathBuf },
    #[error("could not {action} {}: {source}", .path.display())]
    Io {
        path: PathBuf,
        action: &'static str,
        source: io::Error,
    },
    #[error("{} is not a meshcached state file (it does not start with the state file magic)", .path.display())]
    NotAStateFile { path: PathBuf },
    #[error(
        "state file {} is in format version {found}, and this build reads only version {supported}",
        .path.display()
    )]
    Format {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    #[error("state file {} was cut short ({len} bytes, and no end marker)", .path.display())]
    Truncated { path: PathBuf, len: usize },
    #[error("state file {} is damaged: its checksum does not match its contents", .path.display())]
    Checksum { path: PathBuf },
    #[error("state file {} is malformed although its checksum matches: {reason}", .path.display())]
    Malformed { path: PathBuf, reason: String },
    #[error(
        "state file {} belongs to another cluster (its cluster id is {found:016x}, this \
         cluster's CA certificate gives {expected:016x})",
        .path.display()
    )]
    ForeignCluster {
        path: PathBuf,
        found: u64,
        expected: u64,
    },
    #[error("state file {} was saved by node {found:?}, not by this node ({expected:?})", .path.display())]
    OtherNode {
        path: PathBuf,
        found: String,
        expected: String,
    },
    #[error("cannot save state file {}: {reason}", .path.display())]
    Unsavable { path: PathBuf, reason: EncodeError },
}

impl StateError {
    fn io(action: &'static str, path: &Path, source: io::Error) -> Self {
        StateError::Io {
            path: path.to_path_buf(),
            action,
            source,
        }
    }

    fn decode(path: &Path, e: DecodeError) -> Self {
        let path = path.to_path_buf();
        match e {
            DecodeError::NotAStateFile => StateError::NotAStateFile { path },
            DecodeError::Format { found, supported } => StateError::Format {
                path,
                found,
                supported,
            },
            DecodeError::Truncated { len } => StateError::Truncated { path, len },
            DecodeError::Checksum => StateError::Checksum { path },
            DecodeError::Malformed(reason) => StateError::Malformed { path, reason },
        }
    }
}

/// Writes `header`, the store's flush barrier and every item and tombstone it holds to
/// `path`, atomically (see the module doc). Writes made to the store meanwhile may or may
/// not be in the file; the caller saves once clients and peers are stopped.
pub fn save(
    path: &Path,
    header: &StateHeader,
    store: &Store,
    now: u32,
) -> Result<SaveStats, StateError> {
    let tmp = temp_path(path);
    let saved = write_temp(path, &tmp, header, store, now).and_then(|stats| {
        fs::rename(&tmp, path)
            .map_err(|e| StateError::io("move the finished temporary file over", path, e))?;
        Ok(stats)
    });
    if saved.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    let stats = saved?;
    // The rename is only durable once the directory entry is.
    sync_dir(path)?;
    Ok(stats)
}

/// Checks, at start, that a state file can later be saved at `path`: its temporary file can
/// be created beside it, and an existing file there can be replaced. Discovering an
/// unwritable path only at shutdown would lose the warm restart the operator asked for.
pub fn check_writable(path: &Path) -> Result<(), StateError> {
    let tmp = temp_path(path);
    let _ = fs::remove_file(&tmp);
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| StateError::io("create a file beside", path, e))?;
    fs::remove_file(&tmp).map_err(|e| StateError::io("remove a test file beside", path, e))?;
    if path.is_dir() {
        return Err(StateError::io(
            "use",
            path,
            io::Error::other("it is a directory"),
        ));
    }
    Ok(())
}

/// Removes the state file once it has been loaded: a file is trusted only for the run that
/// wrote it. After the load this node's store moves on (client writes, replication), so
/// the file no longer describes it; were the node to crash later, reloading the file would
/// serve values it has since overwritten and bring back keys it has since deleted, while
/// claiming log positions that make peers send only what followed them. The next graceful
/// stop writes a new one.
pub fn invalidate(path: &Path) -> Result<(), StateError> {
    fs::remove_file(path).map_err(|e| StateError::io("remove the loaded state file", path, e))?;
    sync_dir(path)
}

/// Makes a change to `path`'s directory entry durable.
fn sync_dir(path: &Path) -> Result<(), StateError> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StateError::io("sync the directory of", path, e))
}

/// `PATH.tmp`: in the same directory, so that the rename cannot cross file systems.
fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".tmp");
    PathBuf::from(name)
}

fn write_temp(
    path: &Path,
    tmp: &Path,
    header: &StateHeader,
    store: &Store,
    now: u32,
) -> Result<SaveStats, StateError> {
    // One left by a save that crashed: removed, so that the new one is created with our
    // mode rather than opened with its old one.
    let _ = fs::remove_file(tmp);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(tmp)
        .map_err(|e| StateError::io("create the temporary state file", tmp, e))?;
    let unsavable = |reason| StateError::Unsavable {
        path: path.to_path_buf(),
        reason,
    };
    let write_error = |e| StateError::io("write the temporary state file", tmp, e);
    // Taken before the walk: every entry exported is at least as new as this floor.
    let flush = store.flush_state(now);
    let mut enc = Encoder::new(header, &flush, store.forgotten_floor()).map_err(unsavable)?;
    let mut cursor = Some(ExportCursor::default());
    let mut refused = None;
    while let Some(at) = cursor {
        cursor = store.export(at, now, PIECE, |e| {
            if refused.is_none() {
                refused = enc.entry(&e).err();
            }
        });
        if let Some(reason) = refused {
            return Err(unsavable(reason));
        }
        // The encoder's buffer is the write buffer: pieces are written whole once large.
        if enc.buffered() >= PIECE {
            enc.write_to(&mut file).map_err(write_error)?;
        }
    }
    let stats = enc.finish(&mut file).map_err(write_error)?;
    file.sync_all()
        .map_err(|e| StateError::io("sync the temporary state file", tmp, e))?;
    Ok(stats)
}

/// Whose state file this node may load.
#[derive(Debug, Clone, Copy)]
pub struct Expect<'a> {
    pub cluster_id: u64,
    pub node_name: &'a str,
}

/// What [`load`] found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded {
    pub header: StateHeader,
    /// The flushes saved (now merged into the store).
    pub flush: FlushState,
    /// The highest version the saving run forgot (now the store's forgotten floor).
    pub forgotten: Version,
    /// Items and tombstones the store took.
    pub items: u64,
    pub tombstones: u64,
    /// Items whose expiry time had passed by the time of loading; skipped.
    pub expired: u64,
    /// Entries the store already held at the same or a newer version.
    pub superseded: u64,
    /// Items this node cannot hold: larger than its `-I`, or out of memory with `-M`.
    pub not_stored: u64,
    /// The newest version in the file; the clock is now past it.
    pub max_version: Version,
    /// The file's size.
    pub bytes: u64,
}

/// Loads the state file at `path` into `store` and moves `hlc` past every version in it,
/// or, if the file is missing, damaged, of another format, cluster or node, returns why
/// and changes nothing.
pub fn load(
    path: &Path,
    expect: &Expect<'_>,
    store: &Store,
    hlc: &Hlc,
    now: u32,
) -> Result<Loaded, StateError> {
    let data = fs::read(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => StateError::NotFound {
            path: path.to_path_buf(),
        },
        _ => StateError::io("read state file", path, e),
    })?;
    let file = decode::decode(&data).map_err(|e| StateError::decode(path, e))?;
    if file.header.cluster_id != expect.cluster_id {
        return Err(StateError::ForeignCluster {
            path: path.to_path_buf(),
            found: file.header.cluster_id,
            expected: expect.cluster_id,
        });
    }
    if file.header.node_name != expect.node_name {
        return Err(StateError::OtherNode {
            path: path.to_path_buf(),
            found: file.header.node_name,
            expected: expect.node_name.to_string(),
        });
    }

    // Everything is checked: from here on nothing can fail.
    store.merge_flush_state(&file.flush, now);
    // Room for every entry up front: the tables do not grow step by step under the load.
    store.reserve_entries(file.items + file.tombstones);
    let parts = file.parts(loaders(file.items + file.tombstones));
    // Shards are locked one entry at a time, so loaders on several cores rarely meet, and
    // last-writer-wins makes the order in which entries land irrelevant.
    let tally = thread::scope(|s| {
        let mut tally = Tally::default();
        let mut loaders = Vec::new();
        for part in parts {
            let mine = part.clone();
            let spawned = thread::Builder::new()
                .name("state-load".into())
                .spawn_scoped(s, move || apply(store, mine, now));
            match spawned {
                Ok(loader) => loaders.push(loader),
                // No thread to be had: this one does the work.
                Err(_) => tally = tally.add(apply(store, part, now)),
            }
        }
        for loader in loaders {
            let done = loader.join();
            tally = tally.add(done.unwrap_or_else(|panic| std::panic::resume_unwind(panic)));
        }
        tally
    });
    // Only now: the entries are what the saving run held, not what it forgot, and most of
    // them are older than the newest thing it forgot.
    store.raise_forgotten_floor(file.forgotten);
    // These are old versions, possibly ahead of a wall clock that went back across the
    // restart: no skew limit. With a limit of u64::MAX ms `observe` cannot refuse.
    let _ = hlc.observe(file.max_version, Duration::from_millis(u64::MAX));
    Ok(Loaded {
        header: file.header,
        flush: file.flush,
        forgotten: file.forgotten,
        items: tally.items,
        tombstones: tally.tombstones,
        expired: tally.expired,
        superseded: tally.superseded,
        not_stored: tally.not_stored,
        max_version: file.max_version,
        bytes: data.len() as u64,
    })
}

/// How many threads load `entries`: applying is most of a warm restart's time, and the
/// store takes writes on every core; one thread per 64K entries, up to the cores there are.
fn loaders(entries: u64) -> usize {
    let cores = thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(8);
    (entries / (64 << 10)).clamp(1, cores as u64) as usize
}

/// What applying a run of entries did, as counted in [`Loaded`].
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    items: u64,
    tombstones: u64,
    expired: u64,
    superseded: u64,
    not_stored: u64,
}

impl Tally {
    fn add(self, o: Tally) -> Tally {
        Tally {
            items: self.items + o.items,
            tombstones: self.tombstones + o.tombstones,
            expired: self.expired + o.expired,
            superseded: self.superseded + o.superseded,
            not_stored: self.not_stored + o.not_stored,
        }
    }
}

/// Applies loaded entries by last-writer-wins, skipping items already expired at `now`.
fn apply(store: &Store, entries: decode::Entries<'_>, now: u32) -> Tally {
    let mut t = Tally::default();
    for e in entries {
        let (applied, count) = match e.value {
            Some(_) if e.exptime != 0 && e.exptime <= now => {
                t.expired += 1;
                continue;
            }
            Some(value) => {
                let put = Remote::Put {
                    value,
                    flags: e.flags,
                    exptime: e.exptime,
                    version: e.version,
                };
                (store.apply(e.key, &put, now), &mut t.items)
            }
            None => {
                let delete = Remote::Delete { version: e.version };
                (store.apply(e.key, &delete, now), &mut t.tombstones)
            }
        };
        match applied {
            Ok(Applied::Accepted) => *count += 1,
            Ok(Applied::Behind | Applied::Identical | Applied::Forgotten) => t.superseded += 1,
            // Keys were checked by the decoder; sizes and memory are this node's limits.
            Ok(Applied::BadKey) | Err(_) => t.not_stored += 1,
        }
    }
    t
}

#[cfg(test)]
mod tests;
