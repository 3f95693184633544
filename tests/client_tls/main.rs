//! Client TLS (memcached's `-Z`) with real clients against the real binary: pymemcache's
//! `tls_context`, `openssl s_client`, client certificates required and refused, and
//! `refresh_certs` / SIGHUP swapping the served certificate under open connections.
//!
//! Each node also has a `notls:` listener, through which the tests read `stats` and send
//! `refresh_certs` in plaintext (itself a check of the per-listener prefixes). Certificates
//! are made with meshcached's own CA code (`meshcached certs`): node certificates carry
//! 127.0.0.1 and serve both as server and as client certificates.

mod clients;
#[path = "../common/mod.rs"]
mod common;
mod refresh;
mod resume;

use std::collections::HashMap;
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clients::{python, s_client_run, send_forged_record, served_cn, Session};
use common::{binary, eventually, free_port, read_log, run_to_exit, Client, TempDir, DEADLINE};
use meshcached::certs::{generate_ca, Ca};

/// A node with one plaintext listener and some TLS ones, its log in a file; killed on drop.
struct TlsNode {
    child: Child,
    plain: u16,
    /// The TLS listeners' ports, in the order of the prefixes given to `start`.
    tls: Vec<u16>,
    log: PathBuf,
}

impl TlsNode {
    /// Starts the binary with `-l notls:127.0.0.1:P` plus one TLS listener per entry of
    /// `prefixes` (`""`, `"btls:"` or `"mtls:"`), and `flags`; waits until it serves. With
    /// no prefixes, the one listener has none (TLS off).
    fn start(dir: &TempDir, prefixes: &[&str], flags: &[&str]) -> TlsNode {
        let log = dir.join("node.log");
        for _ in 0..5 {
            let plain = free_port();
            let tls: Vec<u16> = prefixes.iter().map(|_| free_port()).collect();
            let mut listen = match prefixes {
                [] => format!("127.0.0.1:{plain}"),
                _ => format!("notls:127.0.0.1:{plain}"),
            };
            for (prefix, port) in prefixes.iter().zip(&tls) {
                listen.push_str(&format!(",{prefix}127.0.0.1:{port}"));
            }
            let child = Command::new(binary())
                .args(["-U", "0", "-t", "2", "-l", &listen])
                .args(flags)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).expect("log file"))
                .spawn()
                .expect("spawn meshcached");
            let mut node = TlsNode {
                child,
                plain,
                tls,
                log: log.clone(),
            };
            if node.wait_serving() {
                return node;
            }
        }
        panic!(
            "meshcached did not start with {flags:?}:\n{}",
            read_log(&log)
        );
    }

    /// Whether this process came to serve its plaintext port (false: it exited, e.g. lost a
    /// port race, or another process answers there).
    fn wait_serving(&mut self) -> bool {
        let end = Instant::now() + DEADLINE;
        while Instant::now() < end {
            if self.child.try_wait().expect("try_wait").is_some() {
                return false;
            }
            if TcpStream::connect(("127.0.0.1", self.plain)).is_ok() {
                let pid = self.client().stats().get("pid").cloned();
                return pid == Some(self.child.id().to_string());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }

    /// A plaintext client, on the `notls:` listener.
    fn client(&self) -> Client {
        Client::connect(([127, 0, 0, 1], self.plain).into())
    }

    fn stat(&self, name: &str) -> u64 {
        let stats = self.client().stats();
        let v = stats
            .get(name)
            .unwrap_or_else(|| panic!("no {name} in {stats:?}"));
        v.parse().expect("a number")
    }

    fn settings(&self) -> HashMap<String, String> {
        let out = self.client().call(b"stats settings\r\n", b"END\r\n");
        out.lines()
            .filter_map(|l| l.strip_prefix("STAT "))
            .filter_map(|l| l.split_once(' '))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn log(&self) -> String {
        read_log(&self.log)
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }
}

impl Drop for TlsNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A test's certificates: the clients' CA (`ca.pem`), the served certificate
/// (`server.crt`, `server.key`, overwritten to change it), a client certificate from the
/// same CA and one from a CA the node does not trust.
struct Pki {
    dir: TempDir,
    ca: Ca,
}

impl Pki {
    fn new(tag: &str) -> Pki {
        let pki = Pki {
            dir: TempDir::new(tag),
            ca: generate_ca().expect("CA"),
        };
        std::fs::write(pki.path("ca.pem"), pki.ca.cert_pem()).expect("write ca.pem");
        pki.serve("tls-a");
        pki.issue(&pki.ca, "client", "client");
        pki.issue(&generate_ca().expect("CA"), "stranger", "stranger");
        pki
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    fn at(&self, file: &str) -> String {
        self.dir.at(file)
    }

    /// Writes `<file>.crt` and `<file>.key`: a certificate for `name` (and 127.0.0.1).
    fn issue(&self, ca: &Ca, name: &str, file: &str) {
        let cert = ca.issue_node(name, &["127.0.0.1"]).expect("issue");
        std::fs::write(self.path(&format!("{file}.crt")), &cert.cert_pem).expect("write");
        std::fs::write(self.path(&format!("{file}.key")), &cert.key_pem).expect("write");
    }

    /// Makes the served certificate one for `name`.
    fn serve(&self, name: &str) {
        self.issue(&self.ca, name, "server");
    }

    /// `-Z -o ssl_chain_cert=...,ssl_key=...` and more `-o` options.
    fn flags(&self, more: &str) -> Vec<String> {
        let mut o = format!(
            "ssl_chain_cert={},ssl_key={}",
            self.at("server.crt"),
            self.at("server.key")
        );
        if !more.is_empty() {
            o.push(',');
            o.push_str(more);
        }
        vec!["-Z".into(), "-o".into(), o]
    }

    fn client_cert(&self, who: &str) -> Vec<String> {
        let (crt, key) = (
            self.at(&format!("{who}.crt")),
            self.at(&format!("{who}.key")),
        );
        vec!["-cert".into(), crt, "-key".into(), key]
    }
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// What pymemcache does over TLS: a set and a get of a value larger than one TLS record,
/// with the TLS version pinned to the one given (1.2 or 1.3), then `stats`. A second
/// client, whose context does not trust the node's CA, must fail its handshake.
const PYMEMCACHE: &str = r#"
import ssl, sys
from pymemcache.client.base import Client
port, ca, version = int(sys.argv[1]), sys.argv[2], sys.argv[3]
pin = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}[version]
ctx = ssl.create_default_context(cafile=ca)
ctx.minimum_version = ctx.maximum_version = pin
c = Client(("127.0.0.1", port), tls_context=ctx, connect_timeout=10, timeout=10)
big = bytes(range(256)) * 400
assert c.set("tls-key", big), "set"
assert c.get("tls-key") == big, "get"
assert c.get("missing") is None
print("version", c.sock.version())
print("handshake_errors", int(c.stats()[b"ssl_handshake_errors"]))
c.close()
stranger = ssl.create_default_context()
c = Client(("127.0.0.1", port), tls_context=stranger, connect_timeout=10, timeout=10)
try:
    c.get("tls-key")
    print("untrusted server accepted")
except ssl.SSLCertVerificationError:
    print("untrusted server refused")
"#;

/// pymemcache's `tls_context` speaks TLS 1.2 and 1.3 to a node whose TLS settings come
/// from a Debian-style configuration file; a client that does not trust the certificate
/// refuses it, and the node counts the failed handshake.
#[test]
fn pymemcache_over_tls_1_2_and_1_3() {
    let pki = Pki::new("tls-pymemcache");
    let conf = pki.path("memcached.conf");
    let conf_text = format!(
        "# Debian style\n-m 64\n-Z\n-o ssl_chain_cert={}\n-o ssl_key={}\n",
        pki.at("server.crt"),
        pki.at("server.key")
    );
    std::fs::write(&conf, conf_text).expect("write the config");
    let conf = conf.display().to_string();
    let node = TlsNode::start(&pki.dir, &[""], &["--config", &conf]);
    let port = node.tls[0].to_string();
    for (version, shown) in [("1.2", "TLSv1.2"), ("1.3", "TLSv1.3")] {
        let before = node.stat("ssl_handshake_errors");
        let out = python(PYMEMCACHE, &[&port, &pki.at("ca.pem"), version]);
        assert!(out.contains(&format!("version {shown}\n")), "{out}");
        assert!(
            out.contains(&format!("handshake_errors {before}\n")),
            "{out}"
        );
        assert!(out.contains("untrusted server refused"), "{out}");
        eventually(DEADLINE, "the refused handshake is counted", || {
            node.stat("ssl_handshake_errors") == before + 1
        });
    }
    // The value went through TLS into the same store the plaintext listener reads.
    let got = node.client().call(b"get tls-key\r\n", b"END\r\n");
    assert!(got.starts_with("VALUE tls-key 0 102400\r\n"), "{got:.40}");
}

/// `openssl s_client` with each version; with `ssl_min_version=tlsv1.3` a TLS 1.2 client
/// is refused. `stats` and `stats settings` show memcached's `ssl_*` fields.
#[test]
fn openssl_s_client_and_the_minimum_version() {
    let pki = Pki::new("tls-s-client");
    let ca = pki.path("ca.pem");
    let node = TlsNode::start(&pki.dir, &[""], &strs(&pki.flags("")));
    let port = node.tls[0];
    for version in ["-tls1_2", "-tls1_3"] {
        let (out, err) = s_client_run(
            port,
            &ca,
            &[version],
            "set k 0 0 2\r\nhi\r\nget k\r\nquit\r\n",
        );
        assert_eq!(
            out, "STORED\r\nVALUE k 0 2\r\nhi\r\nEND\r\n",
            "{version}: {err}"
        );
    }
    let stats = node.client().stats();
    for name in [
        "ssl_handshake_errors",
        "ssl_proto_errors",
        "time_since_server_cert_refresh",
    ] {
        assert!(stats.contains_key(name), "{name} in {stats:?}");
    }
    assert!(
        !stats.contains_key("ssl_new_sessions"),
        "only with ssl_session_cache"
    );
    let settings = node.settings();
    assert_eq!(settings["ssl_enabled"], "yes");
    assert_eq!(settings["ssl_chain_cert"], pki.at("server.crt"));
    assert_eq!(settings["ssl_min_version"], "tlsv1.2");
    assert_eq!(settings["ssl_verify_mode"], "0");
    drop(node);

    let flags = pki.flags("ssl_min_version=tlsv1.3,ssl_session_cache");
    let node = TlsNode::start(&pki.dir, &[""], &strs(&flags));
    let port = node.tls[0];
    let (out, err) = s_client_run(port, &ca, &["-tls1_2"], "version\r\nquit\r\n");
    assert!(!out.contains("VERSION"), "TLS 1.2 was served: {out} {err}");
    eventually(DEADLINE, "the TLS 1.2 handshake is counted", || {
        node.stat("ssl_handshake_errors") == 1
    });
    let (out, err) = s_client_run(port, &ca, &["-tls1_3"], "version\r\nquit\r\n");
    assert!(out.starts_with("VERSION 1.6.45 meshcached-"), "{out} {err}");
    assert_eq!(node.settings()["ssl_min_version"], "tlsv1.3");
    assert_eq!(node.settings()["ssl_session_cache"], "yes");
    // With a session cache, TLS 1.3 clients are given tickets: sessions are stored.
    eventually(DEADLINE, "sessions are counted", || {
        node.stat("ssl_new_sessions") >= 1
    });
}

/// `ssl_verify_mode=2` with `ssl_ca_cert`: no certificate, or one from another CA, is
/// refused (and counted); one from the CA is served, by s_client and by pymemcache.
/// `ssl_verify_mode=1` serves clients without a certificate but still refuses a bad one.
/// The `mtls:` and `btls:` prefixes override the mode per listener.
#[test]
fn client_certificates_required_and_refused() {
    let pki = Pki::new("tls-mtls");
    let ca = pki.path("ca.pem");
    let ca_flag = format!("ssl_ca_cert={}", pki.at("ca.pem"));
    let flags = pki.flags(&format!("{ca_flag},ssl_verify_mode=2"));
    let node = TlsNode::start(&pki.dir, &["", "btls:"], &strs(&flags));
    let (port, btls) = (node.tls[0], node.tls[1]);
    let request = "version\r\nquit\r\n";
    let (out, _) = s_client_run(port, &ca, &[], request);
    assert!(
        !out.contains("VERSION"),
        "served without a certificate: {out}"
    );
    let (out, _) = s_client_run(port, &ca, &strs(&pki.client_cert("stranger")), request);
    assert!(!out.contains("VERSION"), "served a stranger: {out}");
    eventually(DEADLINE, "both refusals are counted", || {
        node.stat("ssl_handshake_errors") == 2
    });
    let (out, err) = s_client_run(port, &ca, &strs(&pki.client_cert("client")), request);
    assert!(out.starts_with("VERSION "), "{out} {err}");
    // btls: never asks for one, whatever ssl_verify_mode says.
    let (out, err) = s_client_run(btls, &ca, &[], request);
    assert!(out.starts_with("VERSION "), "{out} {err}");
    assert_eq!(
        node.settings()["ssl_verify_mode"],
        "3",
        "OpenSSL's flags, as memcached"
    );
    let script = r#"
import ssl, sys
from pymemcache.client.base import Client
port, ca, crt, key = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
ctx = ssl.create_default_context(cafile=ca)
ctx.load_cert_chain(crt, key)
c = Client(("127.0.0.1", port), tls_context=ctx, connect_timeout=10, timeout=10)
assert c.set("m", b"with a certificate")
print(c.get("m").decode())
"#;
    let out = python(
        script,
        &[
            &port.to_string(),
            &pki.at("ca.pem"),
            &pki.at("client.crt"),
            &pki.at("client.key"),
        ],
    );
    assert_eq!(out, "with a certificate\n");
    drop(node);

    // Mode 1 (request), and an mtls: listener beside it.
    let flags = pki.flags(&format!("{ca_flag},ssl_verify_mode=1"));
    let node = TlsNode::start(&pki.dir, &["", "mtls:"], &strs(&flags));
    let (port, mtls) = (node.tls[0], node.tls[1]);
    let (out, err) = s_client_run(port, &ca, &[], request);
    assert!(
        out.starts_with("VERSION "),
        "mode 1 serves without: {out} {err}"
    );
    let (out, _) = s_client_run(port, &ca, &strs(&pki.client_cert("stranger")), request);
    assert!(
        !out.contains("VERSION"),
        "mode 1 checks what is given: {out}"
    );
    let (out, _) = s_client_run(mtls, &ca, &[], request);
    assert!(!out.contains("VERSION"), "mtls: served without: {out}");
    let (out, err) = s_client_run(mtls, &ca, &strs(&pki.client_cert("client")), request);
    assert!(out.starts_with("VERSION "), "{out} {err}");
}

/// Clients that do not speak TLS to a TLS listener: a TCP probe is not counted as an
/// error; plaintext requests get no answer and the connection is closed; a client that sends nothing is closed after the handshake
/// limit (here `-o idle_timeout=1`) while others are served meanwhile; a forged record
/// after the handshake closes that connection and counts in `ssl_proto_errors`.
#[test]
fn plaintext_silent_and_forged_clients_on_a_tls_port() {
    let pki = Pki::new("tls-bad-clients");
    let ca = pki.path("ca.pem");
    let node = TlsNode::start(&pki.dir, &[""], &strs(&pki.flags("idle_timeout=1")));
    let port = node.tls[0];
    // A TCP probe (connect, close) is not a TLS error.
    drop(TcpStream::connect(("127.0.0.1", port)).expect("connect"));
    eventually(DEADLINE, "the probe's connection is closed", || {
        node.stat("curr_connections") == 1
    });
    assert_eq!(node.stat("ssl_handshake_errors"), 0);
    let mut plain = Client::connect(([127, 0, 0, 1], port).into());
    plain.send(b"version\r\n");
    let mut rest = Vec::new();
    let _ = std::io::Read::read_to_end(&mut plain.stream, &mut rest);
    assert!(
        !String::from_utf8_lossy(&rest).contains("VERSION"),
        "{rest:?}"
    );
    eventually(DEADLINE, "the plaintext client is counted", || {
        node.stat("ssl_handshake_errors") == 1
    });

    let silent = Client::connect(([127, 0, 0, 1], port).into());
    let since = Instant::now();
    let (out, err) = s_client_run(port, &ca, &[], "version\r\nquit\r\n");
    assert!(out.starts_with("VERSION "), "{out} {err}");
    let mut silent = silent;
    assert!(silent.closed(), "the silent client is closed");
    assert!(since.elapsed() < DEADLINE, "and within the deadline");
    eventually(DEADLINE, "the timed-out handshake is counted", || {
        node.stat("ssl_handshake_errors") == 2
    });

    send_forged_record(port, pki.ca.cert_pem());
    eventually(DEADLINE, "the forged record is counted", || {
        node.stat("ssl_proto_errors") == 1
    });
    assert!(node.client().line("version").starts_with("VERSION "));
}

/// Certificates that cannot be served stop the node at start with the file named and a
/// non-zero status; inconsistent flags are refused before that.
#[test]
fn bad_tls_settings_stop_the_node_with_a_clear_error() {
    let pki = Pki::new("tls-refusals");
    let missing = pki.at("missing.crt");
    let cases: Vec<(Vec<String>, i32, &str)> = vec![
        (
            vec![
                "-Z".into(),
                "-o".into(),
                format!("ssl_chain_cert={missing}"),
            ],
            1,
            "missing.crt: No such file",
        ),
        (
            vec![
                "-Z".into(),
                "-o".into(),
                format!(
                    "ssl_chain_cert={},ssl_key={}",
                    pki.at("server.crt"),
                    pki.at("client.key")
                ),
            ],
            1,
            "does not match the certificate",
        ),
        (
            vec![
                "-Z".into(),
                "-o".into(),
                format!(
                    "ssl_chain_cert={},ssl_key={}",
                    pki.at("server.crt"),
                    pki.dir.at("")
                ),
            ],
            1,
            "error loading the key",
        ),
        (vec!["-Z".into()], 2, "-Z needs -o ssl_chain_cert=FILE"),
        (
            pki.flags("ssl_min_version=tlsv1.1"),
            2,
            "TLS 1.0 and 1.1 are deprecated",
        ),
        (
            pki.flags("ssl_verify_mode=2"),
            2,
            "needs -o ssl_ca_cert=FILE",
        ),
        (
            vec!["-o".into(), format!("ssl_chain_cert={missing}")],
            2,
            "without -Z",
        ),
    ];
    for (flags, code, message) in cases {
        let mut args = vec!["-p", "0", "-U", "0"];
        args.extend(strs(&flags));
        let (got, text) = run_to_exit(&args);
        assert_eq!(got, Some(code), "{flags:?}: {text}");
        assert!(text.contains(message), "{flags:?}: {text}");
    }
}

/// With TLS on, `stats` and `stats settings` have every `ssl_*` name Debian's memcached
/// (built with TLS) shows with the same flags, in its order (1.6.18 lacks 1.6.45's
/// `ssl_proto_errors`).
#[test]
fn ssl_stat_names_match_memcached() {
    let help = Command::new("memcached")
        .arg("-h")
        .output()
        .expect("memcached -h");
    assert!(
        String::from_utf8_lossy(&help.stdout).contains("--enable-ssl"),
        "Debian's memcached is built with TLS"
    );
    let pki = Pki::new("tls-names");
    let flags = pki.flags("ssl_session_cache");
    let ours = TlsNode::start(&pki.dir, &[""], &strs(&flags));
    let port = free_port();
    let listen = format!("notls:127.0.0.1:{port},127.0.0.1:{}", free_port());
    // Killed when the test ends, failed assertions included.
    let _theirs = KillOnDrop(
        Command::new("memcached")
            .args(["-U", "0", "-u", "root", "-l", &listen])
            .args(strs(&flags))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn memcached"),
    );
    eventually(DEADLINE, "memcached serves", || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let mut reference = Client::connect(([127, 0, 0, 1], port).into());
    let names = |c: &mut Client, req: &[u8]| -> Vec<String> {
        let out = c.call(req, b"END\r\n");
        out.lines()
            .filter_map(|l| l.strip_prefix("STAT "))
            .filter_map(|l| l.split_once(' '))
            .map(|(k, _)| k.to_string())
            .filter(|k| k.starts_with("ssl_") || k.contains("cert"))
            .collect()
    };
    for req in [&b"stats\r\n"[..], b"stats settings\r\n"] {
        let want = names(&mut reference, req);
        let got = names(&mut ours.client(), req);
        assert!(!want.is_empty());
        let ours_in_their_set: Vec<&String> = got.iter().filter(|n| want.contains(n)).collect();
        assert_eq!(
            ours_in_their_set,
            want.iter().collect::<Vec<_>>(),
            "{}: ours {got:?}",
            String::from_utf8_lossy(req)
        );
    }
}

/// A reference process, killed and reaped when dropped.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
