//! The bytes of SWIM's messages: foca hands us headers and member updates and we lay them
//! out ourselves (no serde), so every field is bounded and decoding garbage is an error,
//! never a panic or an allocation bigger than the datagram.
//!
//! ```text
//! header  version:u8 (=1)  src:identity  src_incarnation:u16  dst:identity  message
//! message kind:u8, then per kind: probe:u8 | target/origin:identity probe:u8 | nothing
//! identity name_len:u8 name (UTF-8, 1..=253)  node_id:u16  family:u8 (4|6)  ip  port:u16  run:u64  process:u64
//! member  identity  incarnation:u16  state:u8 (0 alive, 1 suspect, 2 down, 3 left)
//! ```
//!
//! *Left* is foca's `Down` said by the member itself (`leave_cluster`). foca has no word
//! for it, so the codec keeps it: a member decoded as left goes into a shared
//! [`LeftLog`], and every node that passes the update on encodes it as left again. That is
//! how a node stopped on purpose is told apart from one that failed, everywhere.

use std::collections::{HashSet, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::{Buf, BufMut};
use foca::{Header, Member, Message, State};

use super::identity::MemberId;

/// The layout's version, first byte of every message.
pub const GOSSIP_VERSION: u8 = 1;
const MAX_NAME_LEN: usize = 253;
/// How many left identities are remembered (the most members a node keeps).
const LEFT_LOG_CAP: usize = 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    #[error("gossip message truncated")]
    Truncated,
    #[error("gossip layout version {0} (this node speaks {GOSSIP_VERSION})")]
    Version(u8),
    #[error("bad member name in gossip")]
    BadName,
    #[error("bad address family {0} in gossip")]
    BadFamily(u8),
    #[error("unknown gossip message kind {0}")]
    BadKind(u8),
    #[error("unknown member state {0} in gossip")]
    BadState(u8),
    #[error("no room in the gossip packet")]
    NoRoom,
    #[error("gossip names more than {MAX_GOSSIP_MEMBERS} members")]
    TooManyMembers,
}

/// The most members SWIM keeps (node ids have 10 bits): an update about a member beyond
/// them is refused with the datagram that carries it, so that an authenticated but
/// broken or hostile peer cannot make foca's member list grow without bound.
pub const MAX_GOSSIP_MEMBERS: usize = 1024;

/// The names of the members foca holds, shared between the codec inside foca (which
/// refuses an update about a new name once there are [`MAX_GOSSIP_MEMBERS`]) and the
/// membership wrapper (which refreshes it from foca's list after every change, so that
/// members foca dropped make room again).
#[derive(Debug, Default, Clone)]
pub struct KnownNames(Arc<Mutex<HashSet<String>>>);

impl KnownNames {
    fn lock(&self) -> MutexGuard<'_, HashSet<String>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether an update about `name` may be taken in.
    pub fn admits(&self, name: &str) -> bool {
        let names = self.lock();
        names.len() < MAX_GOSSIP_MEMBERS || names.contains(name)
    }

    /// The names foca holds now.
    pub fn set<'a>(&self, names: impl Iterator<Item = &'a str>) {
        let mut held = self.lock();
        held.clear();
        held.extend(names.map(str::to_string));
    }
}

/// Identities known to have left the cluster (rather than failed), shared between the
/// codec inside foca and the membership wrapper that reports verdicts.
#[derive(Debug, Default, Clone)]
pub struct LeftLog(Arc<Mutex<VecDeque<MemberId>>>);

impl LeftLog {
    fn lock(&self) -> MutexGuard<'_, VecDeque<MemberId>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn insert(&self, id: &MemberId) {
        let mut log = self.lock();
        if !log.contains(id) {
            if log.len() >= LEFT_LOG_CAP {
                log.pop_front();
            }
            log.push_back(id.clone());
        }
    }

    pub fn contains(&self, id: &MemberId) -> bool {
        self.lock().contains(id)
    }
}

/// foca's [`foca::Codec`] over the layout above.
#[derive(Debug, Default, Clone)]
pub struct WireCodec {
    pub left: LeftLog,
    pub names: KnownNames,
}

fn identity_len(id: &MemberId) -> usize {
    let ip = if id.addr.is_ipv4() { 4 } else { 16 };
    1 + id.name.len() + 2 + 1 + ip + 2 + 8 + 8
}

fn put_identity(id: &MemberId, buf: &mut impl BufMut) {
    // Names are checked on the way in (certificates, decode), so this never truncates;
    // a longer one would be cut, never written past its length byte.
    let name = &id.name.as_bytes()[..id.name.len().min(MAX_NAME_LEN)];
    buf.put_u8(name.len() as u8);
    buf.put_slice(name);
    buf.put_u16(id.node_id);
    match id.addr.ip() {
        IpAddr::V4(ip) => {
            buf.put_u8(4);
            buf.put_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            buf.put_u8(6);
            buf.put_slice(&ip.octets());
        }
    }
    buf.put_u16(id.addr.port());
    buf.put_u64(id.run);
    buf.put_u64(id.process);
}

fn need(buf: &impl Buf, n: usize) -> Result<(), CodecError> {
    if buf.remaining() < n {
        return Err(CodecError::Truncated);
    }
    Ok(())
}

fn get_u8(buf: &mut impl Buf) -> Result<u8, CodecError> {
    need(buf, 1)?;
    Ok(buf.get_u8())
}

fn get_u16(buf: &mut impl Buf) -> Result<u16, CodecError> {
    need(buf, 2)?;
    Ok(buf.get_u16())
}

fn get_u64(buf: &mut impl Buf) -> Result<u64, CodecError> {
    need(buf, 8)?;
    Ok(buf.get_u64())
}

fn get_array<const N: usize>(buf: &mut impl Buf) -> Result<[u8; N], CodecError> {
    need(buf, N)?;
    let mut out = [0u8; N];
    buf.copy_to_slice(&mut out);
    Ok(out)
}

fn get_identity(buf: &mut impl Buf) -> Result<MemberId, CodecError> {
    let len = get_u8(buf)? as usize;
    if len == 0 || len > MAX_NAME_LEN {
        return Err(CodecError::BadName);
    }
    need(buf, len)?;
    let mut name = vec![0u8; len];
    buf.copy_to_slice(&mut name);
    let name = String::from_utf8(name).map_err(|_| CodecError::BadName)?;
    let node_id = get_u16(buf)?;
    let ip = match get_u8(buf)? {
        4 => IpAddr::V4(Ipv4Addr::from(get_array::<4>(buf)?)),
        6 => IpAddr::V6(Ipv6Addr::from(get_array::<16>(buf)?)),
        f => return Err(CodecError::BadFamily(f)),
    };
    let port = get_u16(buf)?;
    let run = get_u64(buf)?;
    let process = get_u64(buf)?;
    Ok(MemberId {
        name,
        node_id,
        addr: SocketAddr::new(ip, port),
        run,
        process,
    })
}

/// Message kinds on the wire.
const PING: u8 = 1;
const ACK: u8 = 2;
const PING_REQ: u8 = 3;
const INDIRECT_PING: u8 = 4;
const INDIRECT_ACK: u8 = 5;
const FORWARDED_ACK: u8 = 6;
const ANNOUNCE: u8 = 7;
const FEED: u8 = 8;
const GOSSIP: u8 = 9;
const BROADCAST: u8 = 10;
const TURN_UNDEAD: u8 = 11;

/// The kind byte, and the identity and probe number a kind carries.
fn message_parts(m: &Message<MemberId>) -> (u8, Option<&MemberId>, Option<u8>) {
    match m {
        Message::Ping(p) => (PING, None, Some(*p)),
        Message::Ack(p) => (ACK, None, Some(*p)),
        Message::PingReq {
            target,
            probe_number,
        } => (PING_REQ, Some(target), Some(*probe_number)),
        Message::IndirectPing {
            origin,
            probe_number,
        } => (INDIRECT_PING, Some(origin), Some(*probe_number)),
        Message::IndirectAck {
            target,
            probe_number,
        } => (INDIRECT_ACK, Some(target), Some(*probe_number)),
        Message::ForwardedAck {
            origin,
            probe_number,
        } => (FORWARDED_ACK, Some(origin), Some(*probe_number)),
        Message::Announce => (ANNOUNCE, None, None),
        Message::Feed => (FEED, None, None),
        Message::Gossip => (GOSSIP, None, None),
        Message::Broadcast => (BROADCAST, None, None),
        Message::TurnUndead => (TURN_UNDEAD, None, None),
    }
}

fn get_message(buf: &mut impl Buf) -> Result<Message<MemberId>, CodecError> {
    let kind = get_u8(buf)?;
    Ok(match kind {
        PING => Message::Ping(get_u8(buf)?),
        ACK => Message::Ack(get_u8(buf)?),
        PING_REQ | INDIRECT_PING | INDIRECT_ACK | FORWARDED_ACK => {
            let id = get_identity(buf)?;
            let probe_number = get_u8(buf)?;
            match kind {
                PING_REQ => Message::PingReq {
                    target: id,
                    probe_number,
                },
                INDIRECT_PING => Message::IndirectPing {
                    origin: id,
                    probe_number,
                },
                INDIRECT_ACK => Message::IndirectAck {
                    target: id,
                    probe_number,
                },
                _ => Message::ForwardedAck {
                    origin: id,
                    probe_number,
                },
            }
        }
        ANNOUNCE => Message::Announce,
        FEED => Message::Feed,
        GOSSIP => Message::Gossip,
        BROADCAST => Message::Broadcast,
        TURN_UNDEAD => Message::TurnUndead,
        k => return Err(CodecError::BadKind(k)),
    })
}

/// Decodes just the header of a datagram: what the shell checks the sender against.
pub fn decode_header(mut data: &[u8]) -> Result<Header<MemberId>, CodecError> {
    decode_header_from(&mut data)
}

fn decode_header_from(buf: &mut impl Buf) -> Result<Header<MemberId>, CodecError> {
    let version = get_u8(buf)?;
    if version != GOSSIP_VERSION {
        return Err(CodecError::Version(version));
    }
    let src = get_identity(buf)?;
    let src_incarnation = get_u16(buf)?;
    let dst = get_identity(buf)?;
    let message = get_message(buf)?;
    Ok(Header {
        src,
        src_incarnation,
        dst,
        message,
    })
}

impl foca::Codec<MemberId> for WireCodec {
    type Error = CodecError;

    fn encode_header(
        &mut self,
        header: &Header<MemberId>,
        mut buf: impl BufMut,
    ) -> Result<(), CodecError> {
        let (kind, id, probe) = message_parts(&header.message);
        let len = 1
            + identity_len(&header.src)
            + 2
            + identity_len(&header.dst)
            + 1
            + id.map_or(0, identity_len)
            + usize::from(probe.is_some());
        if buf.remaining_mut() < len {
            return Err(CodecError::NoRoom);
        }
        buf.put_u8(GOSSIP_VERSION);
        put_identity(&header.src, &mut buf);
        buf.put_u16(header.src_incarnation);
        put_identity(&header.dst, &mut buf);
        buf.put_u8(kind);
        if let Some(id) = id {
            put_identity(id, &mut buf);
        }
        if let Some(p) = probe {
            buf.put_u8(p);
        }
        Ok(())
    }

    fn decode_header(&mut self, mut buf: impl Buf) -> Result<Header<MemberId>, CodecError> {
        decode_header_from(&mut buf)
    }

    fn encode_member(
        &mut self,
        member: &Member<MemberId>,
        mut buf: impl BufMut,
    ) -> Result<(), CodecError> {
        if buf.remaining_mut() < identity_len(member.id()) + 3 {
            return Err(CodecError::NoRoom);
        }
        let state = match member.state() {
            State::Alive => 0,
            State::Suspect => 1,
            State::Down if self.left.contains(member.id()) => 3,
            State::Down => 2,
        };
        put_identity(member.id(), &mut buf);
        buf.put_u16(member.incarnation());
        buf.put_u8(state);
        Ok(())
    }

    fn decode_member(&mut self, mut buf: impl Buf) -> Result<Member<MemberId>, CodecError> {
        let id = get_identity(&mut buf)?;
        if !self.names.admits(&id.name) {
            return Err(CodecError::TooManyMembers);
        }
        let incarnation = get_u16(&mut buf)?;
        let state = match get_u8(&mut buf)? {
            0 => State::Alive,
            1 => State::Suspect,
            2 => State::Down,
            3 => {
                self.left.insert(&id);
                State::Down
            }
            s => return Err(CodecError::BadState(s)),
        };
        Ok(Member::new(id, incarnation, state))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use foca::Codec;
    use proptest::prelude::*;

    fn id(name: &str, v6: bool) -> MemberId {
        let addr = if v6 { "[::1]:7" } else { "10.0.0.1:7" };
        MemberId::new(name, 3, addr.parse().unwrap(), 1_700_000_000_000)
    }

    fn all_messages() -> Vec<Message<MemberId>> {
        let t = id("t", true);
        vec![
            Message::Ping(1),
            Message::Ack(2),
            Message::PingReq {
                target: t.clone(),
                probe_number: 3,
            },
            Message::IndirectPing {
                origin: t.clone(),
                probe_number: 4,
            },
            Message::IndirectAck {
                target: t.clone(),
                probe_number: 5,
            },
            Message::ForwardedAck {
                origin: t,
                probe_number: 6,
            },
            Message::Announce,
            Message::Feed,
            Message::Gossip,
            Message::Broadcast,
            Message::TurnUndead,
        ]
    }

    #[test]
    fn every_header_and_member_round_trips() {
        let mut codec = WireCodec::default();
        for message in all_messages() {
            let h = Header {
                src: id("node-a", false),
                src_incarnation: 9,
                dst: id("node-b", true),
                message,
            };
            let mut buf = Vec::new();
            codec.encode_header(&h, &mut buf).unwrap();
            assert_eq!(codec.decode_header(&buf[..]).unwrap(), h);
        }
        for state in [State::Alive, State::Suspect, State::Down] {
            let m = Member::new(id("node-c", false), 4, state);
            let mut buf = Vec::new();
            codec.encode_member(&m, &mut buf).unwrap();
            assert_eq!(codec.decode_member(&buf[..]).unwrap(), m);
        }
    }

    /// Once foca holds MAX_GOSSIP_MEMBERS names, an update about another name is refused
    /// (the datagram with it); names already held still get through.
    #[test]
    fn updates_about_members_beyond_the_bound_are_refused() {
        let mut codec = WireCodec::default();
        let names: Vec<String> = (0..MAX_GOSSIP_MEMBERS).map(|i| format!("n{i}")).collect();
        codec.names.set(names.iter().map(String::as_str));
        let encoded = |name: &str| {
            let mut buf = Vec::new();
            let m = Member::new(id(name, false), 1, State::Alive);
            codec.clone().encode_member(&m, &mut buf).unwrap();
            buf
        };
        let (held, new) = (encoded("n7"), encoded("node-new"));
        assert!(codec.decode_member(&held[..]).is_ok());
        assert_eq!(
            codec.decode_member(&new[..]),
            Err(CodecError::TooManyMembers)
        );
        codec.names.set(names[1..].iter().map(String::as_str));
        assert!(codec.decode_member(&new[..]).is_ok(), "room again");
    }

    #[test]
    fn a_left_member_stays_left_through_another_codec() {
        let leaver = id("node-l", false);
        let mut sender = WireCodec::default();
        sender.left.insert(&leaver);
        let mut buf = Vec::new();
        sender
            .encode_member(&Member::down(leaver.clone()), &mut buf)
            .unwrap();
        let mut relay = WireCodec::default();
        let m = relay.decode_member(&buf[..]).unwrap();
        assert_eq!(m.state(), State::Down);
        assert!(relay.left.contains(&leaver));
        let mut again = Vec::new();
        relay.encode_member(&m, &mut again).unwrap();
        assert_eq!(again, buf);
        // A plain down is not a leave.
        let mut plain = Vec::new();
        WireCodec::default()
            .encode_member(&Member::down(id("node-x", false)), &mut plain)
            .unwrap();
        assert_eq!(plain.last(), Some(&2));
    }

    #[test]
    fn too_little_room_leaves_the_buffer_untouched() {
        let mut codec = WireCodec::default();
        let mut small = [0u8; 8];
        let mut window = &mut small[..];
        let m = Member::alive(id("node-a", false));
        assert_eq!(
            codec.encode_member(&m, &mut window),
            Err(CodecError::NoRoom)
        );
        assert_eq!(small, [0u8; 8]);
    }

    fn encoded_header(message: Message<MemberId>) -> Vec<u8> {
        let h = Header {
            src: id("node-a", true),
            src_incarnation: 1,
            dst: id("node-b", false),
            message,
        };
        let mut buf = Vec::new();
        WireCodec::default().encode_header(&h, &mut buf).unwrap();
        buf
    }

    proptest! {
        #[test]
        fn garbage_is_an_error_or_a_value_never_a_panic(data in proptest::collection::vec(any::<u8>(), 0..400)) {
            let mut codec = WireCodec::default();
            let _ = codec.decode_header(&data[..]);
            let _ = codec.decode_member(&data[..]);
        }

        #[test]
        fn every_truncation_of_a_valid_header_is_an_error(cut in 0usize..200) {
            let mut codec = WireCodec::default();
            let buf = encoded_header(Message::PingReq { target: id("node-c", true), probe_number: 7 });
            let cut = cut.min(buf.len() - 1);
            prop_assert!(codec.decode_header(&buf[..cut]).is_err());
        }

        #[test]
        fn flipped_bytes_never_panic(pos in 0usize..120, byte in any::<u8>()) {
            let mut codec = WireCodec::default();
            let mut buf = encoded_header(Message::IndirectAck { target: id("node-c", false), probe_number: 7 });
            let pos = pos % buf.len();
            buf[pos] = byte;
            let _ = codec.decode_header(&buf[..]);
        }
    }
}
