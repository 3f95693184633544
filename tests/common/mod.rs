//! Shared test harness: the real `meshcached` binary as a child process on a free loopback
//! port, a small blocking client, and `eventually` for bounded polling (never fixed sleeps).

#![allow(dead_code)]

pub mod cluster;
pub mod netns;
pub mod procs;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub const DEADLINE: Duration = Duration::from_secs(10);

/// One GET over HTTP/1.1; `None` while nothing accepts on `addr`.
pub fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(DEADLINE)).ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    let (head, body) = raw.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

/// Polls `cond` until it holds or `deadline` passes; panics with `what` on time-out.
pub fn eventually(deadline: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + deadline;
    let mut pause = Duration::from_millis(1);
    while Instant::now() < end {
        if cond() {
            return;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
    panic!("timed out after {deadline:?} waiting for: {what}");
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_meshcached")
}

/// A running `meshcached` process, killed on drop.
pub struct Node {
    pub child: Child,
    pub addr: SocketAddr,
}

impl Node {
    /// Starts the binary on a free port with extra flags and waits until it accepts.
    pub fn start(extra: &[&str]) -> Node {
        Node::launch(extra, &|| Stdio::piped())
            .unwrap_or_else(|| panic!("meshcached did not start with {extra:?}"))
    }

    /// [`Node::start`] with `--metrics-listen` on a free port too, returned with the node.
    /// The node exits if another process took that port first: then another one is tried,
    /// as for the client port.
    pub fn start_with_metrics(extra: &[&str]) -> (Node, SocketAddr) {
        for _ in 0..5 {
            let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
            let listen = metrics.to_string();
            let flags: Vec<&str> = extra
                .iter()
                .copied()
                .chain(["--metrics-listen", &listen])
                .collect();
            // Serving its client port means it bound the metrics port: that comes first.
            if let Some(node) = Node::launch(&flags, &|| Stdio::piped()) {
                return (node, metrics);
            }
        }
        panic!("meshcached did not start with {extra:?} and a metrics port");
    }

    /// Spawns the binary on a free port (five tries, in case another process takes the
    /// port first) with `stderr` as its standard error; `None` if it never accepted.
    fn launch(extra: &[&str], stderr: &dyn Fn() -> Stdio) -> Option<Node> {
        Node::launch_wrapped(&[], extra, stderr)
    }

    /// [`Node::launch`] with the binary run by `wrapper` (a command that execs it, such as
    /// `faketime -f +1h`, so that the process keeps its PID); empty for none.
    fn launch_wrapped(
        wrapper: &[&str],
        extra: &[&str],
        stderr: &dyn Fn() -> Stdio,
    ) -> Option<Node> {
        for _ in 0..5 {
            let port = free_port();
            let mut cmd = match wrapper.split_first() {
                Some((program, args)) => {
                    let mut c = Command::new(program);
                    c.args(args).arg(binary());
                    c
                }
                None => Command::new(binary()),
            };
            let mut child = cmd
                .args(["-p", &port.to_string(), "-l", "127.0.0.1", "-U", "0"])
                .args(extra)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(stderr())
                .spawn()
                .expect("spawn meshcached");
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let end = Instant::now() + DEADLINE;
            while Instant::now() < end {
                if let Ok(Some(_)) = child.try_wait() {
                    break; // lost the port race, or bad flags: try another port
                }
                if let Ok(probe) = TcpStream::connect(addr) {
                    // Another process may take the port between free_port and the node's
                    // bind (tests run in parallel, other suites too): then a stranger
                    // answers and our node exits. Only our own child counts.
                    match serving_pid(probe) {
                        Some(pid) if pid == child.id() => return Some(Node { child, addr }),
                        Some(_) => break,
                        None => {}
                    }
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        None
    }

    pub fn client(&self) -> Client {
        Client::connect(self.addr)
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    /// Waits for the process to exit, within the deadline.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let end = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(Instant::now() < end, "meshcached did not exit in time");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn stderr(&mut self) -> String {
        let mut s = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut s);
        }
        s
    }
}

/// The `pid` in the `stats` of the server behind `stream`; `None` if it does not answer.
fn serving_pid(mut stream: TcpStream) -> Option<u32> {
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream.write_all(b"stats\r\n").ok()?;
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    while !got.ends_with(b"END\r\n") {
        let n = match stream.read(&mut chunk) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            r => r.ok()?,
        };
        if n == 0 {
            return None;
        }
        got.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8_lossy(&got)
        .lines()
        .find_map(|l| l.strip_prefix("STAT pid "))
        .and_then(|pid| pid.trim().parse().ok())
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A blocking client with read time-outs, for exact byte-level exchanges.
pub struct Client {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(DEADLINE)).expect("timeout");
        stream.set_nodelay(true).expect("nodelay");
        Client {
            stream,
            buf: Vec::new(),
        }
    }

    /// A client over a connection made elsewhere (e.g. inside a network namespace).
    pub fn from_stream(stream: TcpStream) -> Client {
        stream.set_read_timeout(Some(DEADLINE)).expect("timeout");
        stream.set_nodelay(true).expect("nodelay");
        Client {
            stream,
            buf: Vec::new(),
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write");
    }

    /// Reads until the accumulated input ends with `end`; returns it all.
    pub fn read_until(&mut self, end: &[u8]) -> Vec<u8> {
        let mut chunk = [0u8; 64 * 1024];
        while !self.buf.ends_with(end) {
            let n = match self.stream.read(&mut chunk) {
                // A socket read with a time-out is not restarted after a signal.
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                r => r.expect("read (timed out?)"),
            };
            assert!(
                n > 0,
                "connection closed; got so far: {:?}",
                String::from_utf8_lossy(&self.buf)
            );
            self.buf.extend_from_slice(&chunk[..n]);
        }
        std::mem::take(&mut self.buf)
    }

    /// Reads exactly `n` bytes.
    pub fn read_exact(&mut self, n: usize) -> Vec<u8> {
        let mut out = std::mem::take(&mut self.buf);
        let have = out.len().min(n);
        self.buf = out.split_off(have);
        let start = out.len();
        out.resize(n, 0);
        self.stream
            .read_exact(&mut out[start..])
            .expect("read_exact (timed out?)");
        out
    }

    /// Sends a request and returns its reply up to and including the line `end`.
    pub fn call(&mut self, req: &[u8], end: &[u8]) -> String {
        self.send(req);
        String::from_utf8_lossy(&self.read_until(end)).into_owned()
    }

    /// Sends one line and returns the one-line reply.
    pub fn line(&mut self, req: &str) -> String {
        self.call(format!("{req}\r\n").as_bytes(), b"\r\n")
    }

    /// `stats` as name/value pairs.
    pub fn stats(&mut self) -> std::collections::HashMap<String, String> {
        let out = self.call(b"stats\r\n", b"END\r\n");
        out.lines()
            .filter_map(|l| l.strip_prefix("STAT "))
            .filter_map(|l| l.split_once(' '))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// Reads to end of stream; true if the server closed the connection.
    pub fn closed(&mut self) -> bool {
        let mut rest = Vec::new();
        self.stream.read_to_end(&mut rest).is_ok()
    }
}

/// A UDP port that was free a moment ago on 127.0.0.1 (for a `--cluster-listen` endpoint).
pub fn free_udp_port() -> u16 {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind udp 127.0.0.1:0");
    s.local_addr().expect("local addr").port()
}

/// Two distinct such ports: both sockets are held until both are chosen (two calls to
/// [`free_udp_port`] may return the same port).
#[allow(dead_code)] // not every test binary that includes this module needs a pair
pub fn free_udp_pair() -> (u16, u16) {
    let bind = || std::net::UdpSocket::bind("127.0.0.1:0").expect("bind udp 127.0.0.1:0");
    let (a, b) = (bind(), bind());
    let port = |s: &std::net::UdpSocket| s.local_addr().expect("local addr").port();
    (port(&a), port(&b))
}

impl Node {
    /// Like [`Node::start`], but the node's stderr goes to the file `log` (truncated first),
    /// so that a test can read the log while the node runs (see [`wait_log`]).
    pub fn start_logged(extra: &[&str], log: &std::path::Path) -> Node {
        Node::start_logged_wrapped(&[], extra, log)
    }

    /// [`Node::start_logged`] under `wrapper` (see [`Node::launch_wrapped`]).
    pub fn start_logged_wrapped(wrapper: &[&str], extra: &[&str], log: &std::path::Path) -> Node {
        let stderr = || Stdio::from(std::fs::File::create(log).expect("create the log file"));
        Node::launch_wrapped(wrapper, extra, &stderr).unwrap_or_else(|| {
            panic!(
                "meshcached did not start with {extra:?}; its log:\n{}",
                read_log(log)
            )
        })
    }

    /// Whether the process has not exited (a stopped process is still running).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

/// What a log file holds so far (empty if it does not exist yet).
pub fn read_log(log: &std::path::Path) -> String {
    std::fs::read(log)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// Waits until the log file contains `needle`; returns the whole log.
pub fn wait_log(log: &std::path::Path, needle: &str) -> String {
    let mut text = String::new();
    let end = Instant::now() + DEADLINE;
    while Instant::now() < end {
        text = read_log(log);
        if text.contains(needle) {
            return text;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!(
        "timed out after {DEADLINE:?} waiting for {needle:?} in {}:\n{text}",
        log.display()
    );
}

/// Runs the binary with `args` until it exits, which must happen within the deadline (it is
/// killed otherwise, and the test fails). Returns its exit code (None if killed by a signal)
/// and what it wrote to stderr then stdout.
pub fn run_to_exit(args: &[&str]) -> (Option<i32>, String) {
    let mut child = Command::new(binary())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn meshcached");
    let end = Instant::now() + DEADLINE;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() >= end {
            let _ = child.kill();
            let _ = child.wait();
            panic!("meshcached {args:?} did not exit within {DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut text = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut text);
    }
    if let Some(mut o) = child.stdout.take() {
        let _ = o.read_to_string(&mut text);
    }
    (status.code(), text)
}

/// A directory for one test's files, removed on drop.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("meshcached-test-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create a temporary directory");
        TempDir(path)
    }

    pub fn join(&self, rel: &str) -> std::path::PathBuf {
        self.0.join(rel)
    }

    /// A path inside the directory, as a string for a command line.
    pub fn at(&self, rel: &str) -> String {
        self.join(rel)
            .to_str()
            .expect("utf-8 temp path")
            .to_string()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        // MESHCACHED_KEEP_TEST_DIRS=1 keeps the logs of a failing test to read.
        if std::env::var_os("MESHCACHED_KEEP_TEST_DIRS").is_some() {
            return;
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
