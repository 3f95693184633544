//! Runs a script against one server over TCP and records each step's reply.
//!
//! Replies are read without timing guesses: every step is followed, in the same
//! write, by a sentinel request whose reply is known (`mn` -> `MN` on text
//! connections, a NOOP with a distinctive opaque on binary ones), and the reply is
//! everything before the sentinel's answer. A step that closes the connection is
//! read to EOF. Every read has a deadline; a timeout is recorded and ends the run
//! for that server (the comparison then fails with a clear message, never hangs).

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::binary;
use crate::reply::{self, escape, Normaliser, Record};
use crate::script::{Item, Piece, Script, Step, StepKind, Template};

/// The longest any single step may take to be answered.
pub const STEP_DEADLINE: Duration = Duration::from_secs(5);

/// Opaque values of binary sentinels: high bits unlikely to appear in scripts.
const SENTINEL_OPAQUE_BASE: u32 = 0x5E47_0000;

pub const CLOSED: &str = "<closed>";
pub const NOT_CONNECTED: &str = "<connection already closed: step not sent>";

/// One server's answers to one script, step by step (in script order).
pub struct Run {
    pub replies: Vec<Vec<String>>,
    /// Lines of steps that needed a CAS the server never returned (`{cas:KEY}`).
    pub missing_cas: Vec<usize>,
    /// Set when a step timed out; later steps were not run.
    pub timed_out_at: Option<usize>,
}

pub fn run(script: &Script, port: u16, now: i64) -> Run {
    let mut session = Session {
        port,
        conn: None,
        closed: false,
        norm: Normaliser::default(),
        last_cas: None,
        cas_by_key: HashMap::new(),
        now,
        sentinel_seq: 0,
        missing_cas: Vec::new(),
    };
    session.connect();
    let mut run = Run {
        replies: Vec::new(),
        missing_cas: Vec::new(),
        timed_out_at: None,
    };
    for item in &script.items {
        match item {
            Item::Reconnect => session.connect(),
            Item::Step(step) => {
                let (reply, timed_out) = session.step(step);
                run.replies.push(reply);
                if timed_out {
                    run.timed_out_at = Some(step.line);
                    break;
                }
            }
        }
    }
    run.missing_cas = session.missing_cas;
    run
}

struct Session {
    port: u16,
    conn: Option<TcpStream>,
    closed: bool,
    norm: Normaliser,
    last_cas: Option<u64>,
    cas_by_key: HashMap<Vec<u8>, u64>,
    now: i64,
    sentinel_seq: u32,
    missing_cas: Vec<usize>,
}

enum Ending {
    /// The sentinel's answer arrived; `extra` is anything after it.
    Sentinel {
        extra: Vec<u8>,
    },
    Closed,
    TimedOut,
}

impl Session {
    fn connect(&mut self) {
        let stream = TcpStream::connect(("127.0.0.1", self.port))
            .unwrap_or_else(|e| panic!("cannot connect to 127.0.0.1:{}: {e}", self.port));
        stream.set_nodelay(true).expect("set TCP_NODELAY");
        stream
            .set_write_timeout(Some(STEP_DEADLINE))
            .expect("set write timeout");
        self.conn = Some(stream);
        self.closed = false;
    }

    /// Runs one step; returns the rendered reply and whether it timed out.
    fn step(&mut self, step: &Step) -> (Vec<String>, bool) {
        if self.closed {
            return (vec![NOT_CONNECTED.to_string()], false);
        }
        match &step.kind {
            StepKind::Text {
                bytes, sentinel, ..
            } => self.text_step(step.line, bytes, *sentinel),
            StepKind::Binary(requests) => {
                let mut wire = Vec::new();
                let mut keys = HashMap::new();
                for request in requests {
                    let mut resolve = |t: &Template| self.resolve(step.line, t);
                    let encoded = request
                        .encode(&mut resolve)
                        .unwrap_or_else(|e| panic!("line {}: {e}", step.line));
                    keys.insert(encoded.opaque, encoded.key.clone());
                    wire.extend_from_slice(&encoded.bytes);
                }
                self.binary_step(wire, &keys)
            }
            StepKind::Hex(bytes) => self.binary_step(bytes.clone(), &HashMap::new()),
        }
    }

    fn text_step(
        &mut self,
        line: usize,
        template: &Template,
        sentinel: bool,
    ) -> (Vec<String>, bool) {
        let mut bytes = self.resolve(line, template);
        let lines: Vec<&[u8]> = bytes.split(|&b| b == b'\n').collect();
        // The step's own `mn` commands answer `MN` too; the sentinel's is the last.
        let own_mn = lines
            .iter()
            .filter(|l| l.split(|&b| b == b' ' || b == b'\r').next() == Some(&b"mn"[..]))
            .count();
        let meta_key = lines
            .iter()
            .rev()
            .find(|l| l.len() > 3 && l[0] == b'm' && l[2] == b' ')
            .and_then(|l| l.split(|&b| b == b' ').nth(1))
            .map(|k| k.strip_suffix(b"\r").unwrap_or(k).to_vec());
        // CAS values the client chooses (meta `E<n>`) are deterministic and shown
        // verbatim; they must not be confusable with memcached's counter values.
        for meta_line in lines
            .iter()
            .filter(|l| l.len() > 3 && l[0] == b'm' && l[2] == b' ')
        {
            let chosen = meta_line
                .split(|&b| b == b' ' || b == b'\r')
                .filter_map(|word| {
                    std::str::from_utf8(word.strip_prefix(b"E")?)
                        .ok()?
                        .parse::<u64>()
                        .ok()
                });
            for cas in chosen {
                assert!(
                    cas >= 1_000_000,
                    "line {line}: use E values >= 1000000 (got E{cas}), see since_1_6_18.txt"
                );
                self.norm.client_chosen.insert(cas);
            }
        }
        if sentinel {
            bytes.extend_from_slice(b"mn\r\n");
        }
        let wanted_mn = own_mn + 1;
        let (buf, ending) = self.exchange(&bytes, |buf| {
            if !sentinel {
                return None;
            }
            let (records, used) = reply::split_records(buf);
            let mut seen = 0;
            let mut pos = 0;
            for record in &records {
                pos += match record {
                    Record::Line(l) | Record::Data(l) => l.len(),
                };
                if reply::is_mn(record) {
                    seen += 1;
                    if seen == wanted_mn {
                        return Some(pos);
                    }
                }
            }
            debug_assert!(pos == used);
            None
        });
        let (mut records, used) = reply::split_records(&buf);
        if matches!(ending, Ending::Sentinel { .. }) {
            records.pop(); // the sentinel's MN
        }
        for (key, cas) in reply::captured_cas(&records, meta_key.as_deref()) {
            self.remember_cas(key, cas);
        }
        let mut out = reply::render_records(&records, &mut self.norm);
        let rest = &buf[used..];
        self.finish(&mut out, rest, ending)
    }

    fn binary_step(
        &mut self,
        mut wire: Vec<u8>,
        keys: &HashMap<u32, Vec<u8>>,
    ) -> (Vec<String>, bool) {
        self.sentinel_seq += 1;
        let opaque = SENTINEL_OPAQUE_BASE + self.sentinel_seq;
        wire.extend_from_slice(&binary::sentinel(opaque));
        let (buf, ending) = self.exchange(&wire, |buf| {
            let mut pos = 0;
            while let Some((response, used)) = binary::split_response(&buf[pos..]) {
                pos += used;
                if response.opcode == binary::OP_NOOP && response.opaque == opaque {
                    return Some(pos);
                }
            }
            None
        });
        let mut out = Vec::new();
        let mut pos = 0;
        let mut stats_elided = false;
        while let Some((response, used)) = binary::split_response(&buf[pos..]) {
            pos += used;
            if response.opcode == binary::OP_NOOP && response.opaque == opaque {
                break;
            }
            if response.cas != 0 {
                let key = keys
                    .get(&response.opaque)
                    .cloned()
                    .or_else(|| keys.values().last().cloned());
                self.remember_cas(key, response.cas);
            }
            if binary::is_stat_entry(&response) {
                if !stats_elided {
                    out.push("RES stat <entries elided>".to_string());
                    stats_elided = true;
                }
                continue;
            }
            out.push(binary::render(&response, &mut self.norm));
        }
        let rest = buf[pos..].to_vec();
        self.finish(&mut out, &rest, ending)
    }

    /// Appends what follows the complete records: leftovers, `<closed>`, timeouts.
    fn finish(
        &mut self,
        out: &mut Vec<String>,
        rest: &[u8],
        ending: Ending,
    ) -> (Vec<String>, bool) {
        let mut timed_out = false;
        match ending {
            Ending::Sentinel { extra } => {
                if !extra.is_empty() {
                    out.push(format!(
                        "<unexpected bytes after the sentinel: {}>",
                        escape(&extra)
                    ));
                }
            }
            Ending::Closed | Ending::TimedOut => {
                if !rest.is_empty() {
                    out.push(format!("<incomplete: {}>", escape(rest)));
                }
                if matches!(ending, Ending::Closed) {
                    out.push(CLOSED.to_string());
                    self.closed = true;
                    self.conn = None;
                } else {
                    out.push(format!(
                        "<timeout: no complete reply within {STEP_DEADLINE:?}>"
                    ));
                    timed_out = true;
                }
            }
        }
        (std::mem::take(out), timed_out)
    }

    /// Sends `bytes` in one write and reads until `done` reports the end of the
    /// sentinel's reply (returning its offset), the server closes, or the deadline.
    fn exchange(
        &mut self,
        bytes: &[u8],
        mut done: impl FnMut(&[u8]) -> Option<usize>,
    ) -> (Vec<u8>, Ending) {
        let stream = self
            .conn
            .as_mut()
            .expect("a step only runs on an open connection");
        // A server that closes while we write (EPIPE/ECONNRESET) has still answered
        // what it read before; that is read below.
        let _ = stream.write_all(bytes);
        let deadline = Instant::now() + STEP_DEADLINE;
        let mut buf = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            if let Some(end) = done(&buf) {
                let extra = buf.split_off(end);
                return (buf, Ending::Sentinel { extra });
            }
            let now = Instant::now();
            if now >= deadline {
                return (buf, Ending::TimedOut);
            }
            stream
                .set_read_timeout(Some(deadline - now))
                .expect("set read timeout");
            match stream.read(&mut chunk) {
                Ok(0) => return (buf, Ending::Closed),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return (buf, Ending::TimedOut)
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                // Reset or aborted: the server closed with our bytes unread.
                Err(_) => return (buf, Ending::Closed),
            }
        }
    }

    fn remember_cas(&mut self, key: Option<Vec<u8>>, cas: u64) {
        self.last_cas = Some(cas);
        if let Some(key) = key {
            self.cas_by_key.insert(key, cas);
        }
    }

    /// Resolves placeholders for this server. A CAS it never returned becomes a
    /// visible marker (the reply will show the problem) and is reported.
    fn resolve(&mut self, line: usize, template: &Template) -> Vec<u8> {
        let mut out = Vec::new();
        for piece in &template.0 {
            match piece {
                Piece::Lit(bytes) => out.extend_from_slice(bytes),
                Piece::Now(offset) => {
                    out.extend_from_slice((self.now + offset).to_string().as_bytes())
                }
                Piece::Cas { key, delta } => {
                    let cas = match key {
                        Some(key) => self.cas_by_key.get(key).copied(),
                        None => self.last_cas,
                    };
                    match cas {
                        Some(cas) => out.extend_from_slice(
                            cas.wrapping_add_signed(*delta).to_string().as_bytes(),
                        ),
                        None => {
                            self.missing_cas.push(line);
                            out.extend_from_slice(b"<no-cas-seen>");
                        }
                    }
                }
            }
        }
        out
    }
}
