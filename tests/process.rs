//! The real binary as a process: flags, signals, connection and memory limits, hostile
//! clients.

mod common;

use std::io::{Read, Write};
use std::process::Command;
use std::time::Duration;

use common::{binary, eventually, Client, Node, DEADLINE};

fn run_flags(args: &[&str]) -> (i32, String) {
    let out = Command::new(binary())
        .args(args)
        .output()
        .expect("run meshcached");
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn bad_flags_exit_2_with_a_clear_error() {
    let (code, text) = run_flags(&["-U", "11211"]);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("does not serve UDP"), "{text}");
    let (code, text) = run_flags(&["--no-such-flag"]);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("--no-such-flag"), "{text}");
    let (code, text) = run_flags(&["-m", "lots"]);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("invalid size"), "{text}");
    let (code, text) = run_flags(&["-p", "notaport"]);
    assert_eq!(code, 2, "{text}");
    let (code, text) = run_flags(&["-I", "2g"]);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("between 1k and 1g"), "{text}");
}

#[test]
fn help_lists_memcached_flags() {
    let (code, text) = run_flags(&["--help"]);
    assert_eq!(code, 0);
    for flag in [
        "-p", "-l", "-s", "-m", "-c", "-t", "-I", "-M", "-C", "-F", "-U", "-v", "-u",
    ] {
        assert!(
            text.contains(&format!("{flag},")),
            "--help lacks {flag}: {text}"
        );
    }
}

#[test]
fn sigterm_and_sigint_exit_cleanly() {
    for sig in [libc::SIGTERM, libc::SIGINT] {
        let mut node = Node::start(&["-t", "2"]);
        let mut c = node.client();
        assert_eq!(c.line("set k 0 0 1\r\nv"), "STORED\r\n");
        node.signal(sig);
        let status = node.wait_exit();
        assert!(
            status.success(),
            "exit status {status:?} after signal {sig}"
        );
        assert!(c.closed(), "the idle client is disconnected");
        let log = node.stderr();
        assert!(log.contains("shutting down"), "{log}");
    }
}

#[test]
fn shutdown_command_is_refused_unless_enabled() {
    let node = Node::start(&[]);
    let mut c = node.client();
    assert_eq!(c.line("shutdown"), "SERVER_ERROR: shutdown not enabled\r\n");
    let mut node = Node::start(&["-A"]);
    let mut c = node.client();
    c.send(b"shutdown\r\n");
    assert!(c.closed());
    assert!(node.wait_exit().success());
}

#[test]
fn connection_limit_refuses_cleanly() {
    let node = Node::start(&["-c", "2"]);
    let mut a = node.client();
    // The start-up probe's connection may not have been reaped yet.
    eventually(DEADLINE, "only one client connected", || {
        a.stats()["curr_connections"] == "1"
    });
    let mut b = node.client();
    assert!(a.line("version").starts_with("VERSION "));
    assert!(b.line("version").starts_with("VERSION "));
    let mut c = node.client();
    let mut refused = String::new();
    c.stream.read_to_string(&mut refused).expect("read refusal");
    assert_eq!(refused, "ERROR Too many open connections\r\n");
    assert_eq!(a.stats()["rejected_connections"], "1");
    drop(b);
    // The freed slot becomes usable again.
    eventually(DEADLINE, "a new connection is admitted", || {
        let mut d = node.client();
        d.send(b"version\r\n");
        let mut buf = [0u8; 8];
        matches!(d.stream.read(&mut buf), Ok(8)) && &buf == b"VERSION "
    });
}

#[test]
fn memory_limit_evicts_and_minus_m_refuses() {
    let node = Node::start(&["-m", "1"]);
    let mut c = node.client();
    let value = "x".repeat(1000);
    for i in 0..3000 {
        assert_eq!(
            c.line(&format!("set key{i} 0 0 1000\r\n{value}")),
            "STORED\r\n"
        );
    }
    let stats = c.stats();
    assert_eq!(stats["limit_maxbytes"], "1048576");
    let evictions: u64 = stats["evictions"].parse().unwrap();
    assert!(evictions > 1500, "evictions {evictions}");
    assert!(stats["bytes"].parse::<u64>().unwrap() <= 1 << 20);
    assert!(c
        .call(b"get key2999\r\n", b"END\r\n")
        .starts_with("VALUE key2999 0 1000"));
    assert_eq!(c.call(b"get key0\r\n", b"END\r\n"), "END\r\n");

    let node = Node::start(&["-m", "1", "-M"]);
    let mut c = node.client();
    assert_eq!(c.line("set small 0 0 1\r\nx"), "STORED\r\n");
    let mut refused = 0;
    for i in 0..3000 {
        match c.line(&format!("set key{i} 0 0 1000\r\n{value}")).as_str() {
            "STORED\r\n" => {}
            "SERVER_ERROR out of memory storing object\r\n" => refused += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(refused > 1500, "refused {refused}");
    assert_eq!(c.stats()["evictions"], "0");
    assert!(c
        .call(b"get key0\r\n", b"END\r\n")
        .starts_with("VALUE key0 0 1000"));
    // A set that fails for memory drops the old value, as memcached does.
    assert_eq!(
        c.line(&format!("set small 0 0 1000\r\n{value}")),
        "SERVER_ERROR out of memory storing object\r\n"
    );
    assert_eq!(c.call(b"get small\r\n", b"END\r\n"), "END\r\n");
}

#[test]
fn unix_socket() {
    let dir = std::env::temp_dir().join(format!("meshcached-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("mc.sock");
    let mut child = Command::new(binary())
        .args(["-s", path.to_str().unwrap()])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut sock = None;
    eventually(DEADLINE, "unix socket accepts", || {
        sock = std::os::unix::net::UnixStream::connect(&path).ok();
        sock.is_some()
    });
    let mut sock = sock.unwrap();
    sock.set_read_timeout(Some(DEADLINE)).unwrap();
    sock.write_all(b"set u 0 0 2\r\nhi\r\nget u\r\n").unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while !got.ends_with(b"END\r\n") {
        let n = sock.read(&mut buf).unwrap();
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(got, b"STORED\r\nVALUE u 0 2\r\nhi\r\nEND\r\n");
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
}

/// memcached closes a connection whose line runs past 2048 bytes without a newline (other
/// than a multi-key get), without a reply; so do we.
#[test]
fn overlong_line_closes_without_a_reply() {
    let node = Node::start(&[]);
    let mut c = node.client();
    c.send(&vec![b'x'; 5000]);
    let mut got = String::new();
    c.stream.read_to_string(&mut got).unwrap();
    assert_eq!(got, "");
    // The server is fine.
    assert!(node.client().line("version").starts_with("VERSION "));
}

#[test]
fn oversized_value_is_refused_and_its_data_consumed() {
    let node = Node::start(&["-I", "1k"]);
    let mut c = node.client();
    assert_eq!(c.line("set big 0 0 1\r\nx"), "STORED\r\n");
    let value = "y".repeat(5000);
    assert_eq!(
        c.line(&format!("set big 0 0 5000\r\n{value}")),
        "SERVER_ERROR object too large for cache\r\n"
    );
    // The data block was swallowed (not parsed as commands) and the old value is gone, as in
    // memcached.
    assert_eq!(c.call(b"get big\r\n", b"END\r\n"), "END\r\n");
}

/// A client that pipelines requests for large values and never reads must not make the
/// server buffer without bound or stall anyone else.
#[test]
fn a_client_that_never_reads_stalls_only_itself() {
    let mut node = Node::start(&["-m", "64", "-t", "1"]);
    let mut c = node.client();
    let value = "z".repeat(500_000);
    assert_eq!(
        c.line(&format!("set big 0 0 500000\r\n{value}")),
        "STORED\r\n"
    );
    let mut hog = std::net::TcpStream::connect(node.addr).unwrap();
    hog.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
    let req = b"get big\r\n".repeat(1000);
    // 500 MB of answers are asked for; writes stop being accepted once buffers fill.
    for _ in 0..20 {
        if hog.write_all(&req).is_err() {
            break;
        }
    }
    let mut other = node.client();
    for i in 0..100 {
        assert_eq!(other.line(&format!("set k{i} 0 0 1\r\nv")), "STORED\r\n");
    }
    let rss = rss_kb(node.child.id());
    assert!(rss < 200_000, "server RSS grew to {rss} kB");
    drop(hog);
    assert!(
        node.child.try_wait().unwrap().is_none(),
        "server still running"
    );
}

fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn trickled_bytes_are_assembled() {
    let node = Node::start(&[]);
    let mut c = node.client();
    for b in b"set slow 0 0 4\r\nabcd\r\nget slow\r\n" {
        c.send(&[*b]);
    }
    assert_eq!(
        String::from_utf8(c.read_until(b"END\r\n")).unwrap(),
        "STORED\r\nVALUE slow 0 4\r\nabcd\r\nEND\r\n"
    );
    let _ = Client::connect(node.addr);
}

#[test]
fn binary_garbage_closes_only_that_connection() {
    let node = Node::start(&[]);
    let mut c = node.client();
    // First byte 0x80 selects the binary protocol; the next frame has a bad magic byte.
    let mut noop = vec![0u8; 24];
    noop[0] = 0x80;
    noop[1] = 0x0a;
    c.send(&noop);
    let reply = c.read_exact(24);
    assert_eq!(&reply[..2], &[0x81, 0x0a], "a NOOP response");
    c.send(b"\x13garbage that is not a binary header at all........");
    assert!(c.closed());
    assert!(node.client().line("version").starts_with("VERSION "));
}

/// One multi-key get whose answer is far larger than memory: the server writes it out as it
/// goes instead of building it whole.
#[test]
fn a_huge_multi_get_is_answered_in_bounded_memory() {
    let node = Node::start(&["-m", "64", "-I", "1m", "-t", "1"]);
    let mut c = node.client();
    let value = "v".repeat(1_000_000);
    assert_eq!(
        c.line(&format!("set big 0 0 1000000\r\n{value}")),
        "STORED\r\n"
    );
    let n = 600; // 600 MB of answer
    let line = format!("get{}\r\n", " big".repeat(n));
    c.send(line.as_bytes());
    // Once the first bytes arrive the server is writing; had it built the whole answer
    // first, it would now hold 600 MB.
    let first = c.read_exact(16);
    assert!(first.starts_with(b"VALUE big 0 "));
    let rss = rss_kb(node.child.id());
    assert!(rss < 200_000, "server RSS grew to {rss} kB");
    // Count the answers: "VALUE " can straddle two reads, so keep its length minus one.
    let mut seen = 1;
    let mut total = first.len();
    let mut buf = vec![0u8; 1 << 20];
    let mut tail = Vec::new();
    loop {
        let got = std::io::Read::read(&mut c.stream, &mut buf).expect("read");
        assert!(got > 0, "closed early");
        total += got;
        tail.extend_from_slice(&buf[..got]);
        seen += tail.windows(6).filter(|w| w == b"VALUE ").count();
        if tail.ends_with(b"END\r\n") {
            break;
        }
        let keep = tail.len().min(5);
        tail.drain(..tail.len() - keep);
    }
    assert_eq!(seen, n);
    assert_eq!(
        total,
        n * (b"VALUE big 0 1000000\r\n".len() + 1_000_000 + 2) + 5
    );
}
