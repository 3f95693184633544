//! The real binary as a process, for what an operator sets up around the client port:
//! the idle timeout (`-o idle_timeout`), the unix socket (`-s`, `-a`).

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{binary, eventually, run_to_exit, Client, Node, TempDir, DEADLINE};

/// `stats settings` as name/value pairs.
fn settings(c: &mut Client) -> std::collections::HashMap<String, String> {
    let out = c.call(b"stats settings\r\n", b"END\r\n");
    out.lines()
        .filter_map(|l| l.strip_prefix("STAT "))
        .filter_map(|l| l.split_once(' '))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// With `-o idle_timeout=1`, a client that sends nothing for more than a second is
/// disconnected and counted in `idle_kicks`; one that keeps sending commands is not.
#[test]
fn idle_clients_are_disconnected_busy_ones_are_not() {
    let node = Node::start(&["-o", "idle_timeout=1", "-t", "1"]);
    let mut busy = node.client();
    assert_eq!(settings(&mut busy)["idle_timeout"], "1");
    assert_eq!(busy.stats()["idle_kicks"], "0");

    let mut idle = node.client();
    assert!(idle.line("version").starts_with("VERSION "));
    let idle_since = Instant::now();
    idle.stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    // The busy client sends a command every 100 ms (the idle one's read time-out) until the
    // idle one is closed, which must happen within the deadline.
    let mut buf = [0u8; 64];
    loop {
        match idle.stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => panic!("unexpected bytes for an idle client: {:?}", &buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => panic!("read: {e}"),
        }
        assert!(
            idle_since.elapsed() < DEADLINE,
            "the idle client was never closed"
        );
        assert!(busy.line("version").starts_with("VERSION "));
    }
    let idle_for = idle_since.elapsed();
    assert!(
        idle_for > Duration::from_secs(1),
        "closed after {idle_for:?}, before the timeout"
    );
    // The busy client was active longer than the timeout and is still served.
    assert!(busy.line("version").starts_with("VERSION "));
    assert_eq!(busy.stats()["idle_kicks"], "1");
}

/// Without `-o idle_timeout` there is no limit: memcached shows 0 and no `idle_kicks`.
#[test]
fn idle_timeout_is_off_by_default_and_bad_options_are_refused() {
    let node = Node::start(&[]);
    let mut c = node.client();
    assert_eq!(settings(&mut c)["idle_timeout"], "0");
    assert!(!c.stats().contains_key("idle_kicks"));

    let (code, text) = run_to_exit(&["-o", "idle_timeout=soon"]);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("idle_timeout=SECONDS"), "{text}");
    let (code, text) = run_to_exit(&["-o", "slab_reassign"]);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("-o slab_reassign: not supported"), "{text}");
    let (code, text) = run_to_exit(&["-a", "0999"]);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("octal access mask"), "{text}");
}

/// A node serving on a unix socket, killed on drop.
struct UnixNode {
    child: Child,
}

impl UnixNode {
    /// Starts the binary with `-s path` and `extra`, and waits until the socket answers.
    fn start(path: &str, extra: &[&str]) -> UnixNode {
        let child = Command::new(binary())
            .args(["-s", path, "-t", "1"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn meshcached");
        let mut node = UnixNode { child };
        eventually(DEADLINE, "the unix socket answers", || {
            assert!(
                node.child.try_wait().unwrap().is_none(),
                "meshcached exited"
            );
            UnixStream::connect(path).is_ok_and(|mut s| version(&mut s))
        });
        node
    }
}

impl Drop for UnixNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether `version` is answered on `s`.
fn version(s: &mut UnixStream) -> bool {
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    if s.write_all(b"version\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 8];
    s.read_exact(&mut buf).is_ok() && &buf == b"VERSION "
}

/// `-s` replaces only a stale socket file: a regular file at the path is refused and left
/// as it was, a socket another process accepts on is not taken, and the file a killed node
/// left behind is replaced. `-a` sets the socket file's permissions.
#[test]
fn unix_socket_replaces_only_a_stale_socket_and_applies_the_mask() {
    let dir = TempDir::new("unix-socket");
    let path = dir.at("mc.sock");

    std::fs::write(&path, b"not a socket").unwrap();
    let (code, text) = run_to_exit(&["-s", &path]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("is not a socket"), "{text}");
    assert_eq!(std::fs::read(&path).unwrap(), b"not a socket");
    std::fs::remove_file(&path).unwrap();

    let mut first = UnixNode::start(&path, &["-a", "0660"]);
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o660, "the socket file has -a's permissions");
    let mut c = UnixStream::connect(&path).unwrap();
    c.write_all(b"stats settings\r\n").unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.ends_with(b"END\r\n") {
        let n = c.read(&mut buf).unwrap();
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
    }
    let got = String::from_utf8_lossy(&got);
    assert!(got.contains("STAT umask 660\r\n"), "{got}");
    assert!(
        got.contains(&format!("STAT domain_socket {path}\r\n")),
        "{got}"
    );

    // A second node must not steal the live socket.
    let (code, text) = run_to_exit(&["-s", &path]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("another process is accepting"), "{text}");
    assert!(version(&mut UnixStream::connect(&path).unwrap()));

    // kill -9 leaves the socket file behind; the next start replaces it.
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    assert!(
        std::fs::symlink_metadata(&path).is_ok(),
        "the stale file stays"
    );
    let _second = UnixNode::start(&path, &[]);
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700, "memcached's default mask");
}

/// The `Uid:`/`Gid:`/`Groups:` lines of a process, from /proc.
fn ids(pid: u32) -> (String, String, String) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
            .unwrap_or_default()
    };
    (field("Uid:"), field("Gid:"), field("Groups:"))
}

/// The `Uid:` line of every thread of `pid` (real, effective, saved, filesystem): setuid
/// acts on one thread, so each must show the drop.
fn thread_uids(pid: u32) -> Vec<String> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
    let uids: Vec<String> = tasks
        .map(|t| {
            let status = std::fs::read_to_string(t.unwrap().path().join("status")).unwrap();
            let uid = status.lines().find_map(|l| l.strip_prefix("Uid:")).unwrap();
            uid.split_whitespace().collect::<Vec<_>>().join(" ")
        })
        .collect();
    assert!(uids.len() > 1, "the node runs several threads");
    uids
}

fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Started as root with `-u nobody`, the node runs as nobody and nobody's group (real,
/// effective, saved and filesystem ids; no supplementary group), still serves, and the
/// unix socket file belongs to nobody. Without `-u` it says it runs as root.
#[test]
fn minus_u_drops_root_after_binding() {
    if !running_as_root() {
        eprintln!("skipped: -u needs root (.ci/run runs as root)");
        return;
    }
    let nobody = meshcached::privileges::lookup("nobody").expect("user nobody");
    let node = Node::start(&["-u", "nobody", "-t", "2"]);
    let (uid, gid, groups) = ids(node.child.id());
    let four = |id: u32| vec![id.to_string(); 4].join(" ");
    assert_eq!(uid, four(nobody.uid));
    for thread in thread_uids(node.child.id()) {
        assert_eq!(thread, four(nobody.uid), "every thread dropped root");
    }
    assert_eq!(gid, four(nobody.gid));
    assert_eq!(groups, "");
    let mut c = node.client();
    assert_eq!(c.line("set k 0 0 1\r\nv"), "STORED\r\n");
    assert!(c.call(b"get k\r\n", b"END\r\n").starts_with("VALUE k 0 1"));

    let dir = TempDir::new("minus-u");
    let path = dir.at("mc.sock");
    let node = UnixNode::start(&path, &["-u", "nobody"]);
    let owner = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&path).unwrap());
    assert_eq!(owner, nobody.uid, "the socket file belongs to the user");
    assert!(ids(node.child.id()).0.starts_with(&nobody.uid.to_string()));

    let (code, text) = run_to_exit(&["-u", "no-such-user-here", "-p", "0"]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("no such user"), "{text}");

    let log = dir.join("root.log");
    let root = Node::start_logged(&["-t", "1"], &log);
    assert!(ids(root.child.id()).0.starts_with("0 "));
    common::wait_log(&log, "running as root");
}

/// A cluster member dropped to nobody after binding keeps replicating both ways: its
/// cluster runtime's threads changed identity with the rest of the process (every thread
/// shows it), and the state file it writes at shutdown belongs to nobody.
#[test]
fn minus_u_on_a_cluster_member_keeps_it_replicating() {
    if !running_as_root() {
        eprintln!("skipped: -u needs root (.ci/run runs as root)");
        return;
    }
    let dir = TempDir::new("minus-u-cluster");
    // A directory nobody may write to, for the state file.
    let states = dir.join("states");
    std::fs::create_dir(&states).unwrap();
    std::fs::set_permissions(&states, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let state = states.join("a.state");
    let state_flag = state.display().to_string();
    let (mut a, b) = common::procs::pair(&dir, &["-u", "nobody", "--state-file", &state_flag]);
    let nobody = meshcached::privileges::lookup("nobody").unwrap();
    let four = vec![nobody.uid.to_string(); 4].join(" ");
    for thread in thread_uids(a.pid()) {
        assert_eq!(thread, four, "every thread dropped root");
    }
    common::procs::set(&mut a.client(), "from-a", "1");
    common::procs::wait_value(&b, "from-a", "1");
    common::procs::set(&mut b.client(), "from-b", "2");
    common::procs::wait_value(&a, "from-b", "2");
    a.node.signal(libc::SIGTERM);
    assert!(a.node.wait_exit().success(), "{}", a.log());
    let owner = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&state).unwrap());
    assert_eq!(owner, nobody.uid, "the state file belongs to the user");
}

/// `-P`: a symbolic link in the pid file's place is refused (it is written as root, before
/// `-u`), and the file is removed on an early exit after it was written too.
#[test]
fn the_pid_file_follows_no_link_and_goes_on_every_exit() {
    let dir = TempDir::new("pidfile");
    let target = dir.join("target");
    std::fs::write(&target, "keep").unwrap();
    let link = dir.at("link.pid");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let (code, text) = run_to_exit(&["-p", "0", "-P", &link]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("not a regular file"), "{text}");
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");

    if !running_as_root() {
        eprintln!("skipped the -u part: -u needs root (.ci/run runs as root)");
        return;
    }
    // -u fails after the pid file is written: it is removed all the same.
    let pid = dir.join("m.pid");
    let pid_flag = pid.display().to_string();
    let (code, text) = run_to_exit(&["-p", "0", "-P", &pid_flag, "-u", "no-such-user-here"]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("no such user"), "{text}");
    assert!(!pid.exists(), "the pid file was left behind");
}
