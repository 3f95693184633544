//! Command counters and the `stats` reply.
//!
//! Each connection counts into a plain array ([`LocalCounters`]) and adds it to the shared
//! atomics once per batch of requests, so the hot path touches no shared cache line per
//! command, while `stats` stays exact as soon as a reply has been written.

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($($name:ident => $stat:literal,)*) => {
        /// Every per-command counter, named as in memcached's `stats`.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        #[repr(usize)]
        pub enum Counter { $($name,)* }

        impl Counter {
            pub const ALL: &'static [Counter] = &[$(Counter::$name,)*];

            pub fn stat_name(self) -> &'static str {
                match self { $(Counter::$name => $stat,)* }
            }
        }
    };
}

counters! {
    CmdGet => "cmd_get",
    CmdSet => "cmd_set",
    CmdFlush => "cmd_flush",
    CmdTouch => "cmd_touch",
    CmdMeta => "cmd_meta",
    GetHits => "get_hits",
    GetMisses => "get_misses",
    DeleteMisses => "delete_misses",
    DeleteHits => "delete_hits",
    IncrMisses => "incr_misses",
    IncrHits => "incr_hits",
    DecrMisses => "decr_misses",
    DecrHits => "decr_hits",
    CasMisses => "cas_misses",
    CasHits => "cas_hits",
    CasBadval => "cas_badval",
    TouchHits => "touch_hits",
    TouchMisses => "touch_misses",
    StoreTooLarge => "store_too_large",
    StoreNoMemory => "store_no_memory",
    BytesRead => "bytes_read",
    BytesWritten => "bytes_written",
    IdleKicks => "idle_kicks",
}

const N: usize = Counter::ALL.len();

/// One connection's counts since its last [`Counters::absorb`].
#[derive(Debug, Default, Clone)]
pub struct LocalCounters {
    counts: [u64; N],
    dirty: bool,
}

impl LocalCounters {
    #[inline]
    pub fn bump(&mut self, c: Counter) {
        self.add(c, 1);
    }

    #[inline]
    pub fn add(&mut self, c: Counter, n: u64) {
        self.counts[c as usize] += n;
        self.dirty = true;
    }
}

/// The process-wide totals.
#[derive(Debug, Default)]
pub struct Counters {
    counts: [AtomicU64; N],
}

impl Counters {
    /// Moves a connection's counts into the totals and zeroes them.
    pub fn absorb(&self, local: &mut LocalCounters) {
        if !local.dirty {
            return;
        }
        for (total, n) in self.counts.iter().zip(local.counts.iter_mut()) {
            if *n != 0 {
                total.fetch_add(*n, Ordering::Relaxed);
                *n = 0;
            }
        }
        local.dirty = false;
    }

    pub fn get(&self, c: Counter) -> u64 {
        self.counts[c as usize].load(Ordering::Relaxed)
    }

    /// `stats reset`.
    pub fn reset(&self) {
        for c in &self.counts {
            c.store(0, Ordering::Relaxed);
        }
    }
}

/// Connection gauges and totals, shared by the listener and the connections.
#[derive(Debug, Default)]
pub struct ConnStats {
    pub curr: AtomicU64,
    pub total: AtomicU64,
    pub rejected: AtomicU64,
}

/// CPU time used by the process, as `(user, system)` seconds.
pub fn rusage() -> (f64, f64) {
    // SAFETY: getrusage only writes into the struct we hand it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF with a valid pointer is always accepted.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return (0.0, 0.0);
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (secs(ru.ru_utime), secs(ru.ru_stime))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absorb_moves_counts() {
        let totals = Counters::default();
        let mut local = LocalCounters::default();
        local.bump(Counter::CmdGet);
        local.add(Counter::BytesRead, 10);
        totals.absorb(&mut local);
        totals.absorb(&mut local);
        assert_eq!(totals.get(Counter::CmdGet), 1);
        assert_eq!(totals.get(Counter::BytesRead), 10);
        assert_eq!(Counter::CasBadval.stat_name(), "cas_badval");
    }
}
