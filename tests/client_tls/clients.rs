//! The TLS clients the tests drive: `openssl s_client` (one-shot, or a session kept open
//! across a certificate refresh), Python's pymemcache with `tls_context`, and a rustls
//! client for what the others cannot do (send a broken record after the handshake).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

use super::common::DEADLINE;

/// `openssl s_client` to 127.0.0.1:`port`, trusting only `ca`, failing on a bad server
/// certificate; `extra` adds flags (`-tls1_2`, `-cert`, `-key`, ...).
fn s_client(port: u16, ca: &Path, extra: &[&str]) -> Command {
    let mut cmd = Command::new("openssl");
    cmd.args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
        .arg("-CAfile")
        .arg(ca)
        .args(["-verify_return_error", "-quiet"])
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Sends `input` through a fresh `s_client` and returns what the server answered (stdout)
/// and what s_client said (stderr). `input` should end with `quit`: with `-quiet` s_client
/// runs until the server closes. Killed at the deadline.
pub fn s_client_run(port: u16, ca: &Path, extra: &[&str], input: &str) -> (String, String) {
    let mut child = s_client(port, ca, extra)
        .spawn()
        .expect("run openssl s_client (install openssl)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write to s_client");
    let end = Instant::now() + DEADLINE;
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() > end {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().expect("s_client output");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The common name of the certificate a new connection to `port` is served (the handshake
/// must succeed, checked against `ca`).
pub fn served_cn(port: u16, ca: &Path) -> String {
    let out = Command::new("openssl")
        .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
        .arg("-CAfile")
        .arg(ca)
        .arg("-verify_return_error")
        .stdin(Stdio::null())
        .output()
        .expect("run openssl s_client");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("Verify return code: 0 (ok)"),
        "handshake failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text.lines()
        .find_map(|l| l.strip_prefix("subject="))
        .and_then(|s| s.split("CN = ").nth(1))
        .map(|cn| cn.split(',').next().unwrap_or(cn).trim().to_string())
        .unwrap_or_else(|| panic!("no subject in {text}"))
}

/// An `openssl s_client` session kept open: lines in, answers out.
pub struct Session {
    child: Child,
    stdin: ChildStdin,
    out: mpsc::Receiver<Vec<u8>>,
    buf: Vec<u8>,
}

impl Session {
    pub fn open(port: u16, ca: &Path, extra: &[&str]) -> Session {
        let mut child = s_client(port, ca, extra)
            .stderr(Stdio::null())
            .spawn()
            .expect("run openssl s_client");
        let stdin = child.stdin.take().expect("stdin");
        let mut stdout = child.stdout.take().expect("stdout");
        let (tx, out) = mpsc::channel();
        std::thread::spawn(move || {
            let mut chunk = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut chunk) {
                if n == 0 || tx.send(chunk[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        Session {
            child,
            stdin,
            out,
            buf: Vec::new(),
        }
    }

    /// Sends `req` and returns the answer up to and including `end`; `None` if the
    /// connection ended first or nothing came within the deadline.
    pub fn call(&mut self, req: &str, end: &str) -> Option<String> {
        self.stdin.write_all(req.as_bytes()).ok()?;
        self.stdin.flush().ok()?;
        let deadline = Instant::now() + DEADLINE;
        while !self.buf.ends_with(end.as_bytes()) {
            let left = deadline.checked_duration_since(Instant::now())?;
            self.buf.extend(self.out.recv_timeout(left).ok()?);
        }
        Some(String::from_utf8_lossy(&std::mem::take(&mut self.buf)).into_owned())
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Python interpreter that has pymemcache: the one on PATH, or Debian's (where
/// `python3-pymemcache` installs it). `.ci/run` installs it; without it the test fails.
fn python_with_pymemcache() -> &'static str {
    for python in ["python3", "/usr/bin/python3"] {
        let ok = Command::new(python)
            .args(["-c", "import pymemcache"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return python;
        }
    }
    panic!("no python3 with pymemcache: install python3-pymemcache (.ci/run does)");
}

/// Runs a Python `script` (with pymemcache) with `args`; returns its stdout, or panics with
/// its stderr if it fails or outlives the deadline.
pub fn python(script: &str, args: &[&str]) -> String {
    let mut child = Command::new(python_with_pymemcache())
        .arg("-c")
        .arg(script)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run python3");
    let end = Instant::now() + DEADLINE * 3;
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() > end {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().expect("python output");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "python failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Completes a TLS handshake with rustls (trusting `ca_pem`), checks the node answers,
/// then writes a forged application-data record straight to the socket: a record no key
/// made, which the server must refuse (and count) without a panic.
pub fn send_forged_record(port: u16, ca_pem: &str) {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.expect("CA PEM")).expect("CA cert");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").expect("name");
    let conn = rustls::ClientConnection::new(Arc::new(config), name).expect("client");
    let tcp = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    tcp.set_read_timeout(Some(DEADLINE)).expect("timeout");
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    tls.write_all(b"version\r\n").expect("write");
    let mut answer = [0u8; 64];
    let n = tls.read(&mut answer).expect("read");
    assert!(answer[..n].starts_with(b"VERSION "), "{answer:?}");
    // Content type 23 (application data), TLS 1.2 on the wire, 32 bytes of nonsense.
    let mut forged = vec![23, 3, 3, 0, 32];
    forged.extend([0xa5u8; 32]);
    tls.sock
        .write_all(&forged)
        .expect("write the forged record");
    // The server closes (after an alert); reading sees the end or an error, never a reply.
    let mut rest = Vec::new();
    let _ = tls.sock.read_to_end(&mut rest);
}
