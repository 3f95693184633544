//! foca's side effects, collected rather than performed: datagrams to send to a member,
//! and timers to give back later. foca asks for timers as "after this long"; the queue
//! turns them into absolute due times (time is passed in) and hands them back in due
//! order, ties in the order they were asked for: one queue, so a probe's timeout can never
//! overtake the probe that started it.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use foca::{Notification, Runtime, Timer};

use super::identity::MemberId;

/// Timers by (due ms, arrival order).
#[derive(Debug, Default)]
pub struct TimerQueue {
    queue: BTreeMap<(u64, u64), Timer<MemberId>>,
    next_seq: u64,
}

impl TimerQueue {
    pub fn push(&mut self, due_ms: u64, timer: Timer<MemberId>) {
        self.queue.insert((due_ms, self.next_seq), timer);
        self.next_seq += 1;
    }

    /// The earliest timer due at or before `now_ms`, if any.
    pub fn pop_due(&mut self, now_ms: u64) -> Option<Timer<MemberId>> {
        let entry = self.queue.first_entry()?;
        if entry.key().0 > now_ms {
            return None;
        }
        Some(entry.remove())
    }

    /// When the next timer is due.
    pub fn next_due(&self) -> Option<u64> {
        self.queue.keys().next().map(|k| k.0)
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

/// What one call into foca produced.
#[derive(Debug, Default)]
pub struct Effects {
    pub now_ms: u64,
    pub timers: TimerQueue,
    pub sends: Vec<(MemberId, Bytes)>,
    /// foca's own notices that this node became idle (no live member) or was declared
    /// down; verdicts about other members are derived from foca's member list instead.
    pub idle: bool,
    pub defunct: bool,
}

impl Runtime<MemberId> for Effects {
    fn notify(&mut self, notification: Notification<'_, MemberId>) {
        match notification {
            Notification::Idle => self.idle = true,
            Notification::Defunct => self.defunct = true,
            Notification::Active | Notification::Rejoin(_) => {
                self.idle = false;
                self.defunct = false;
            }
            _ => {}
        }
    }

    fn send_to(&mut self, to: MemberId, data: &[u8]) {
        self.sends.push((to, Bytes::copy_from_slice(data)));
    }

    fn submit_after(&mut self, event: Timer<MemberId>, after: Duration) {
        let due = self
            .now_ms
            .saturating_add(u64::try_from(after.as_millis()).unwrap_or(u64::MAX));
        self.timers.push(due, event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timers_come_back_in_due_order_then_arrival_order() {
        let mut q = TimerQueue::default();
        q.push(20, Timer::PeriodicGossip(1));
        q.push(10, Timer::PeriodicAnnounce(2));
        q.push(10, Timer::ProbeRandomMember(3));
        assert_eq!(q.pop_due(5), None);
        assert_eq!(q.next_due(), Some(10));
        assert_eq!(q.pop_due(30), Some(Timer::PeriodicAnnounce(2)));
        assert_eq!(q.pop_due(30), Some(Timer::ProbeRandomMember(3)));
        assert_eq!(q.pop_due(15), None);
        assert_eq!(q.pop_due(30), Some(Timer::PeriodicGossip(1)));
        assert!(q.is_empty());
    }
}
