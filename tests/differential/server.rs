//! The two servers under comparison, run as child processes.
//!
//! Both get the same command line (`-U 0 -l 127.0.0.1 -p PORT -t 1 -m 64` plus the
//! script's `# flags:`), on a port found by binding `127.0.0.1:0`. Readiness is
//! "accepts a TCP connection", polled until a deadline: never a fixed sleep. The
//! [`ServerProc`] guard kills the child when dropped, so a failing (panicking) test
//! never leaves a server behind.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a freshly started server may take to accept connections.
const START_DEADLINE: Duration = Duration::from_secs(10);

/// How long a one-off request (`version`, `stats`) may take.
const REQUEST_DEADLINE: Duration = Duration::from_secs(5);

/// The command line both servers share: no UDP, loopback only, one worker thread
/// (cheap; many tests run in parallel), memcached's default 64 MB.
const BASE_ARGS: [&str; 8] = ["-U", "0", "-l", "127.0.0.1", "-t", "1", "-m", "64"];

/// A running server, killed on drop.
pub struct ServerProc {
    pub port: u16,
    child: Child,
    stderr_path: PathBuf,
}

impl ServerProc {
    /// Starts `bin` with the common flags plus `extra`, and waits until it accepts
    /// connections. Panics (failing the test) with the child's stderr if it exits
    /// or never listens.
    pub fn start(
        name: &'static str,
        bin: &Path,
        extra: &[String],
        run_as_root: bool,
    ) -> ServerProc {
        // The port is free when we pick it but another process could take it before
        // the server binds; a server that exits at start-up is retried on a new port.
        let mut last_error = String::new();
        for _attempt in 0..3 {
            match Self::try_start(name, bin, extra, run_as_root) {
                Ok(server) => return server,
                Err(err) => last_error = err,
            }
        }
        panic!("{name} ({}) did not start: {last_error}", bin.display());
    }

    fn try_start(
        name: &'static str,
        bin: &Path,
        extra: &[String],
        run_as_root: bool,
    ) -> Result<ServerProc, String> {
        let port = free_port();
        let stderr_path = stderr_file_path(name, port);
        let stderr = File::create(&stderr_path).map_err(|e| format!("stderr file: {e}"))?;
        let mut cmd = Command::new(bin);
        cmd.args(BASE_ARGS).arg("-p").arg(port.to_string());
        if run_as_root {
            // memcached refuses to run as root without naming a user.
            cmd.args(["-u", "root"]);
        }
        cmd.args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        let child = cmd.spawn().map_err(|e| format!("spawn: {e}"))?;
        let mut server = ServerProc {
            port,
            child,
            stderr_path,
        };
        server.wait_until_listening()?;
        Ok(server)
    }

    fn wait_until_listening(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!(
                    "exited with {status} before accepting connections; stderr:\n{}",
                    self.stderr()
                ));
            }
            let addr = ("127.0.0.1", self.port);
            if TcpStream::connect(addr).is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "not accepting connections on 127.0.0.1:{} after {START_DEADLINE:?}; stderr:\n{}",
                    self.port,
                    self.stderr()
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// What the server wrote to stderr so far (for failure messages).
    pub fn stderr(&self) -> String {
        let mut text = String::new();
        if let Ok(mut file) = File::open(&self.stderr_path) {
            let _ = file.read_to_string(&mut text);
        }
        text
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.stderr_path);
    }
}

/// A port nobody listens on. Ports handed out before are never reused by this
/// test process: a server that failed to bind one must not be mistaken for
/// another test's server that got it next.
fn free_port() -> u16 {
    static HANDED_OUT: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let mut handed_out = HANDED_OUT
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener
            .local_addr()
            .expect("local_addr of a bound listener")
            .port();
        if !handed_out.contains(&port) {
            handed_out.push(port);
            return port;
        }
    }
}

fn stderr_file_path(name: &str, port: u16) -> PathBuf {
    // Unique per process and per server so that parallel tests never share a file.
    static SEQ: AtomicUsize = AtomicUsize::new(0);
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!(
        "differential-{}-{name}-{port}-{seq}.stderr",
        std::process::id()
    ))
}

/// Whether this test process runs as root (memcached then needs `-u root`).
pub fn running_as_root() -> bool {
    // Read from /proc rather than calling libc so the test has no extra dependency;
    // elsewhere than Linux we assume an ordinary user.
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1).map(|euid| euid == "0"))
        .unwrap_or(false)
}

/// The reference memcached: `$MEMCACHED_BIN`, else `/usr/bin/memcached`.
pub fn reference_binary() -> PathBuf {
    let path = std::env::var_os("MEMCACHED_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/memcached"));
    assert!(
        path.exists(),
        "the differential test needs a real memcached at {} (install the `memcached` package or set \
         MEMCACHED_BIN); it is the reference every answer is compared with",
        path.display()
    );
    path
}

/// The server under test: `$MESHCACHED_BIN`, else the binary cargo built.
pub fn subject_binary() -> PathBuf {
    std::env::var_os("MESHCACHED_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_meshcached")))
}

/// Sends one request on a fresh connection and reads until the reply ends with
/// `end`, the server closes, or [`REQUEST_DEADLINE`] passes.
pub fn request(port: u16, req: &[u8], end: &[u8]) -> Result<String, String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    stream.write_all(req).map_err(|e| e.to_string())?;
    let deadline = Instant::now() + REQUEST_DEADLINE;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    while !buf.ends_with(end) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!(
                "no complete reply within {REQUEST_DEADLINE:?}: {:?}",
                String::from_utf8_lossy(&buf)
            ));
        }
        stream
            .set_read_timeout(Some(left))
            .map_err(|e| e.to_string())?;
        match stream.read(&mut chunk) {
            Ok(0) => {
                return Err(format!(
                    "connection closed after {:?}",
                    String::from_utf8_lossy(&buf)
                ))
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(format!("{e} after {:?}", String::from_utf8_lossy(&buf))),
        }
    }
    String::from_utf8(buf).map_err(|e| e.to_string())
}

/// The `x` of `VERSION x`, or None if the server does not answer it.
pub fn version_of(port: u16) -> Option<String> {
    let text = request(port, b"version\r\n", b"\r\n").ok()?;
    text.strip_prefix("VERSION ")
        .map(|v| v.trim_end().to_string())
}
