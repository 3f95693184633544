//! The idle timeout of client connections (memcached's `-o idle_timeout=N`).
//!
//! A connection that has sent no command for more than N seconds while the server waits for
//! its next request is closed and counted in `idle_kicks`. As in memcached, only TCP
//! connections are subject to it (not the unix socket), and a connection whose answers are
//! still being written (a client slow to read) is not idle.
//!
//! Cost on the hot path: a command only stores the time it was seen; the timer is not reset
//! per request. When the timer fires it compares with that time and either closes the
//! connection or sleeps for what is left, as memcached's idle thread does. The workers get a
//! time driver only when the option is on.

use std::pin::Pin;
use std::time::Duration;

use tokio::time::Sleep;

/// One connection's idle deadline.
pub struct IdleTimer {
    /// The limit in milliseconds; 0 when off.
    limit_ms: u64,
    /// When the last command was seen (the server clock's milliseconds).
    last_ms: u64,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl IdleTimer {
    /// A timer for a limit of `limit_secs` (0: never fires), the connection opened at
    /// `now_ms`. With a limit it must be created inside a runtime with a time driver.
    pub fn new(limit_secs: u32, now_ms: u64) -> IdleTimer {
        let limit_ms = u64::from(limit_secs) * 1000;
        let sleep = (limit_ms > 0).then(|| Box::pin(tokio::time::sleep(wait(limit_ms))));
        IdleTimer {
            limit_ms,
            last_ms: now_ms,
            sleep,
        }
    }

    pub fn enabled(&self) -> bool {
        self.sleep.is_some()
    }

    /// A command was seen at `now_ms`.
    pub fn touch(&mut self, now_ms: u64) {
        self.last_ms = self.last_ms.max(now_ms);
    }

    /// Resolves when the timer fires; never when the limit is off. Cancel safe.
    pub async fn fired(&mut self) {
        match &mut self.sleep {
            Some(s) => s.as_mut().await,
            None => std::future::pending().await,
        }
    }

    /// After [`IdleTimer::fired`]: true when the connection has been idle for more than the
    /// limit (close it); otherwise the timer is re-armed for the time left.
    pub fn expired(&mut self, now_ms: u64) -> bool {
        match remaining_ms(self.limit_ms, self.last_ms, now_ms) {
            None => true,
            Some(left) => {
                if let Some(s) = &mut self.sleep {
                    s.as_mut().reset(tokio::time::Instant::now() + wait(left));
                }
                false
            }
        }
    }
}

/// How long a connection whose last command was at `last_ms` may still stay idle at
/// `now_ms`; `None` once it has been idle for more than `limit_ms`.
fn remaining_ms(limit_ms: u64, last_ms: u64, now_ms: u64) -> Option<u64> {
    let idle = now_ms.saturating_sub(last_ms);
    (idle <= limit_ms).then(|| limit_ms - idle)
}

/// The sleep for `ms` left: one millisecond past it, so that "more than the limit" holds
/// when the timer fires.
fn wait(ms: u64) -> Duration {
    Duration::from_millis(ms + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_means_more_than_the_limit_since_the_last_command() {
        assert_eq!(remaining_ms(1000, 5000, 5000), Some(1000));
        assert_eq!(remaining_ms(1000, 5000, 5600), Some(400));
        assert_eq!(remaining_ms(1000, 5000, 6000), Some(0));
        assert_eq!(remaining_ms(1000, 5000, 6001), None);
        // A clock that stepped back does not kick anyone.
        assert_eq!(remaining_ms(1000, 5000, 4000), Some(1000));
    }
}
