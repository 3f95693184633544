//! `--ack-replicas N` (DESIGN.md section 7) between real processes: a write answered
//! `STORED` is on the peer, also when its node is killed right after; with the peer
//! stopped, every mutating command of every dialect (noreply and quiet forms too) answers
//! an error once `--ack-timeout` has passed, and commands that wrote nothing answer as
//! usual.

use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::*;

const ACK: [&str; 4] = ["--ack-replicas", "1", "--ack-timeout", "1s"];
const ERR: &str = "SERVER_ERROR not acknowledged by --ack-replicas peers within --ack-timeout\r\n";

/// node-a (`--ack-replicas 1`) takes a burst of pipelined sets; node-b is stopped in the
/// middle of it and node-a is killed (`kill -9`) a little later, while writes are still
/// coming. Once node-b runs again, it holds every key node-a answered `STORED`: without
/// replicated acknowledgement the sets answered while node-b was stopped would be lost.
#[test]
fn every_write_answered_stored_before_a_kill_is_on_the_peer() {
    let dir = TempDir::new("ack-kill");
    let (a, b) = pair(&dir, &ACK);
    let stored = Arc::new(Mutex::new(Vec::new()));
    let batches = Arc::new(AtomicU64::new(0));
    let writer = {
        let (addr, stored, batches) = (a.node.addr, stored.clone(), batches.clone());
        std::thread::spawn(move || write_until_closed(addr, &stored, &batches))
    };
    eventually(DEADLINE, "node-a answers sets", || {
        stored.lock().unwrap().len() >= 500
    });
    stop(&b);
    let at_stop = batches.load(Ordering::SeqCst);
    eventually(DEADLINE, "two more batches answered", || {
        batches.load(Ordering::SeqCst) >= at_stop + 2
    });
    a.node.signal(libc::SIGKILL);
    writer.join().expect("the writer ends with the connection");
    drop(a);
    resume(&b);
    let stored = stored.lock().unwrap();
    let mut cb = b.client();
    let missing: Vec<&String> = stored
        .iter()
        .filter(|k| get(&mut cb, k).as_deref() != Some("v"))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} keys answered STORED are not on node-b, e.g. {:?}",
        missing.len(),
        stored.len(),
        &missing[..missing.len().min(5)]
    );
}

/// Sends batches of 20 pipelined sets to `addr` until the connection ends; records the
/// keys answered `STORED` and counts the batches answered.
fn write_until_closed(
    addr: std::net::SocketAddr,
    stored: &Mutex<Vec<String>>,
    batches: &AtomicU64,
) {
    let Ok(mut stream) = TcpStream::connect(addr) else {
        return;
    };
    let Ok(read) = stream.try_clone() else { return };
    let mut lines = BufReader::new(read);
    for batch in 0.. {
        let keys: Vec<String> = (0..20).map(|i| format!("w-{batch}-{i}")).collect();
        let req: String = keys
            .iter()
            .map(|k| format!("set {k} 0 0 1\r\nv\r\n"))
            .collect();
        if std::io::Write::write_all(&mut stream, req.as_bytes()).is_err() {
            return;
        }
        let mut answered = Vec::new();
        for key in keys {
            let mut line = String::new();
            if lines.read_line(&mut line).map_or(true, |n| n == 0) {
                return;
            }
            if line == "STORED\r\n" {
                answered.push(key);
            }
        }
        stored.lock().unwrap().extend(answered);
        batches.fetch_add(1, Ordering::SeqCst);
    }
}

/// One pipelined request: its bytes, its answer when its peers acknowledge it, and
/// whether it writes (then that answer turns into the error when they do not).
struct Step {
    req: String,
    answer: String,
    writes: bool,
}

fn write(req: &str, answer: &str) -> Step {
    Step {
        req: req.into(),
        answer: answer.into(),
        writes: true,
    }
}

fn read(req: &str, answer: &str) -> Step {
    Step {
        req: req.into(),
        answer: answer.into(),
        writes: false,
    }
}

/// Every mutating text command, one noreply, one that stores nothing and a read,
/// pipelined; keys under `t`. Needs `{t}:d` (CAS `cas`) and `{t}:n` = 5 to exist.
fn text_steps(t: &str, cas: &str) -> Vec<Step> {
    vec![
        write(&format!("set {t}:a 0 0 1\r\nx\r\n"), "STORED\r\n"),
        write(&format!("add {t}:b 0 0 1\r\ny\r\n"), "STORED\r\n"),
        write(&format!("replace {t}:a 0 0 1\r\nz\r\n"), "STORED\r\n"),
        write(&format!("append {t}:a 0 0 1\r\nq\r\n"), "STORED\r\n"),
        write(&format!("prepend {t}:a 0 0 1\r\np\r\n"), "STORED\r\n"),
        write(&format!("cas {t}:d 0 0 1 {cas}\r\nc\r\n"), "STORED\r\n"),
        write(&format!("incr {t}:n 2\r\n"), "7\r\n"),
        write(&format!("decr {t}:n 1\r\n"), "6\r\n"),
        write(&format!("touch {t}:a 100\r\n"), "TOUCHED\r\n"),
        write(
            &format!("gat 100 {t}:a\r\n"),
            &format!("VALUE {t}:a 0 3\r\npzq\r\nEND\r\n"),
        ),
        write(&format!("delete {t}:b\r\n"), "DELETED\r\n"),
        write(&format!("set {t}:c 0 0 1 noreply\r\nc\r\n"), ""),
        read(&format!("add {t}:a 0 0 1\r\nx\r\n"), "NOT_STORED\r\n"),
        read(
            &format!("get {t}:c\r\n"),
            &format!("VALUE {t}:c 0 1\r\nc\r\nEND\r\n"),
        ),
        write("flush_all\r\n", "OK\r\n"),
        read("mn\r\n", "MN\r\n"),
    ]
}

/// Every mutating meta command, quiet forms too; needs `{t}:mn` = 5.
fn meta_steps(t: &str) -> Vec<Step> {
    vec![
        write(&format!("ms {t}:m 1\r\nv\r\n"), "HD\r\n"),
        write(&format!("ms {t}:m 1 q\r\nw\r\n"), ""),
        write(&format!("ma {t}:mn\r\n"), "HD\r\n"),
        write(&format!("mg {t}:m T30 v\r\n"), "VA 1\r\nw\r\n"),
        read(&format!("mg {t}:m v\r\n"), "VA 1\r\nw\r\n"),
        read(&format!("ms {t}:m 1 ME\r\nx\r\n"), "NS\r\n"),
        write(&format!("md {t}:m q\r\n"), ""),
        read("mn\r\n", "MN\r\n"),
    ]
}

/// Sends `steps` in one write; returns the whole answer, read up to `last`.
fn run(c: &mut Client, steps: &[Step], acked: bool, last: &str) -> (String, String) {
    let req: String = steps.iter().map(|s| s.req.as_str()).collect();
    let want: String = steps
        .iter()
        .map(|s| if s.writes && !acked { ERR } else { &s.answer })
        .collect();
    let got = c.call(req.as_bytes(), last.as_bytes());
    (got, want)
}

/// Setup a batch needs, written while the peer runs; returns the CAS of `{t}:d`.
fn prepare(c: &mut Client, t: &str) -> String {
    set(c, &format!("{t}:d"), "d");
    set(c, &format!("{t}:n"), "5");
    set(c, &format!("{t}:mn"), "5");
    set(c, &format!("{t}:k"), "k");
    let gets = c.call(format!("gets {t}:d\r\n").as_bytes(), b"END\r\n");
    gets.split_whitespace().nth(4).expect("a CAS").to_string()
}

/// A binary request (magic, opcode, key, extras, value, opaque).
fn bin(opcode: u8, key: &str, extras: &[u8], value: &[u8], opaque: u32) -> Vec<u8> {
    let body = extras.len() + key.len() + value.len();
    let mut r = vec![0x80, opcode];
    r.extend_from_slice(&(key.len() as u16).to_be_bytes());
    r.extend_from_slice(&[extras.len() as u8, 0, 0, 0]);
    r.extend_from_slice(&(body as u32).to_be_bytes());
    r.extend_from_slice(&opaque.to_be_bytes());
    r.extend_from_slice(&[0; 8]);
    r.extend_from_slice(extras);
    r.extend_from_slice(key.as_bytes());
    r.extend_from_slice(value);
    r
}

/// Binary writes of every kind (SETQ quiet), an ADD that stores nothing, then NOOP; the
/// answers as (opcode, status, opaque) up to the NOOP's. Needs `{t}:k` to exist.
fn binary_batch(c: &mut Client, t: &str) -> Vec<(u8, u16, u32)> {
    let store_extras = [0u8; 8];
    let mut arith = 1u64.to_be_bytes().to_vec();
    arith.extend_from_slice(&10u64.to_be_bytes());
    arith.extend_from_slice(&0u32.to_be_bytes());
    let exptime = 100u32.to_be_bytes();
    let reqs = [
        bin(0x01, &format!("{t}:b1"), &store_extras, b"x", 1),
        bin(0x11, &format!("{t}:b2"), &store_extras, b"y", 2),
        bin(0x05, &format!("{t}:b3"), &arith, b"", 3),
        bin(0x04, &format!("{t}:b1"), &[], b"", 4),
        bin(0x1c, &format!("{t}:k"), &exptime, b"", 5),
        bin(0x1d, &format!("{t}:k"), &exptime, b"", 6),
        bin(0x02, &format!("{t}:k"), &store_extras, b"z", 7),
        bin(0x0a, "", &[], b"", 9),
    ];
    c.send(&reqs.concat());
    let mut answers = Vec::new();
    loop {
        let header = c.read_exact(24);
        let body = u32::from_be_bytes(header[8..12].try_into().unwrap()) as usize;
        c.read_exact(body);
        let status = u16::from_be_bytes([header[6], header[7]]);
        let opaque = u32::from_be_bytes(header[12..16].try_into().unwrap());
        answers.push((header[1], status, opaque));
        if opaque == 9 {
            return answers;
        }
    }
}

/// The binary answers expected: writes succeed, or (not `acked`) fail with ETMPFAIL, the
/// quiet SETQ included; the ADD of an existing key is EEXISTS either way.
fn binary_want(acked: bool) -> Vec<(u8, u16, u32)> {
    let w = |op, opaque| (op, if acked { 0 } else { 0x86 }, opaque);
    let mut want = vec![w(0x01, 1)];
    if !acked {
        want.push(w(0x11, 2));
    }
    want.extend([
        w(0x05, 3),
        w(0x04, 4),
        w(0x1c, 5),
        w(0x1d, 6),
        (0x02, 2, 7),
        (0x0a, 0, 9),
    ]);
    want
}

/// All three dialects against node-a (`--ack-replicas 1`): with node-b running every
/// write answers as it would without the flag; with node-b stopped, every write (noreply,
/// quiet, touches and flush_all included) answers the error after the wait, in its place
/// among pipelined answers, while commands that wrote nothing answer as usual. Counted in
/// `stats`, shown in `stats settings`; writes succeed again once node-b runs.
#[test]
fn with_the_peer_stopped_every_dialects_writes_answer_an_error_after_the_wait() {
    let dir = TempDir::new("ack-dialects");
    let (a, b) = pair(&dir, &ACK);
    let (mut text, mut meta, mut binary) = (a.client(), a.client(), a.client());
    let settings = text.call(b"stats settings\r\n", b"END\r\n");
    assert!(settings.contains("STAT ack_replicas 1\r\n"), "{settings}");
    assert!(
        settings.contains("STAT ack_timeout_ms 1000\r\n"),
        "{settings}"
    );

    for (t, acked) in [("up", true), ("down", false)] {
        let cas = prepare(&mut text, t);
        if !acked {
            stop(&b);
        }
        let (got, want) = run(&mut meta, &meta_steps(t), acked, "MN\r\n");
        assert_eq!(got, want, "meta, peer {t}");
        assert_eq!(
            binary_batch(&mut binary, t),
            binary_want(acked),
            "binary, peer {t}"
        );
        let end: &[u8] = if acked { b"END\r\n" } else { b"\r\n" };
        let gats = text.call(format!("gats 100 {t}:k\r\n").as_bytes(), end);
        if acked {
            assert!(gats.starts_with(&format!("VALUE {t}:k 0 1 ")), "{gats}");
        } else {
            assert_eq!(gats, ERR);
        }
        let (got, want) = run(&mut text, &text_steps(t, &cas), acked, "MN\r\n");
        assert_eq!(got, want, "text, peer {t}");
    }
    let timeouts = stat(&mut text, "ack_timeouts");
    assert!(timeouts >= 20, "ack_timeouts {timeouts}");
    assert!(stat(&mut text, "ack_waits") > timeouts);

    resume(&b);
    eventually(DEADLINE, "writes are acknowledged again", || {
        text.line("set again 0 0 1\r\nx") == "STORED\r\n"
    });
}
