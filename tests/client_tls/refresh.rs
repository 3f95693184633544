//! Certificates reloaded under a running node: `refresh_certs` and SIGHUP, with and without
//! TLS, and the warning a world-readable key earns.

use super::*;

/// `refresh_certs` serves new connections the new certificate and keeps open ones; a
/// refresh from bad files answers an error and keeps the certificate; SIGHUP reloads too.
#[test]
fn refresh_certs_swaps_the_served_certificate() {
    let pki = Pki::new("tls-refresh");
    let ca = pki.path("ca.pem");
    let node = TlsNode::start(&pki.dir, &[""], &strs(&pki.flags("")));
    let port = node.tls[0];
    assert_eq!(served_cn(port, &ca), "tls-a");
    let mut open = Session::open(port, &ca, &[]);
    let stored = open.call("set kept 0 0 4\r\nopen\r\n", "\r\n");
    assert_eq!(stored.as_deref(), Some("STORED\r\n"));

    // So that the reset below is seen: a second since the certificate was loaded.
    eventually(DEADLINE, "a second passes", || {
        node.stat("time_since_server_cert_refresh") >= 1
    });
    pki.serve("tls-b");
    let refreshed = Instant::now();
    assert_eq!(node.client().line("refresh_certs"), "OK\r\n");
    assert_eq!(served_cn(port, &ca), "tls-b");
    let since = node.stat("time_since_server_cert_refresh");
    assert!(
        since <= refreshed.elapsed().as_secs(),
        "{since} s since the refresh"
    );
    let got = open.call("get kept\r\n", "END\r\n");
    assert_eq!(got.as_deref(), Some("VALUE kept 0 4\r\nopen\r\nEND\r\n"));

    // Bad files: the answer says why, and tls-b is still served.
    std::fs::write(pki.path("server.crt"), "not a certificate").expect("write");
    let answer = node.client().line("refresh_certs");
    assert!(
        answer.starts_with("Error loading the certificate chain ")
            && answer.contains("no certificate found"),
        "{answer}"
    );
    pki.issue(&generate_ca().expect("CA"), "tls-x", "other");
    std::fs::copy(pki.path("other.crt"), pki.path("server.crt")).expect("copy");
    let answer = node.client().line("refresh_certs");
    assert!(
        answer.starts_with("Error validating the certificate: "),
        "{answer}"
    );
    assert_eq!(served_cn(port, &ca), "tls-b");

    // SIGHUP: a bad file is logged and changes nothing; then a good one is served.
    node.signal(libc::SIGHUP);
    eventually(DEADLINE, "the failed reload is logged", || {
        node.log()
            .contains("SIGHUP: client TLS certificates not reloaded")
    });
    assert_eq!(served_cn(port, &ca), "tls-b");
    pki.serve("tls-c");
    node.signal(libc::SIGHUP);
    eventually(DEADLINE, "SIGHUP serves the new certificate", || {
        served_cn(port, &ca) == "tls-c"
    });
    let got = open.call("get kept\r\n", "END\r\n");
    assert_eq!(got.as_deref(), Some("VALUE kept 0 4\r\nopen\r\nEND\r\n"));
}

/// Without TLS, SIGHUP is logged and the node serves on (its default action would end the
/// process), and `refresh_certs` answers as memcached does.
#[test]
fn without_tls_sighup_is_harmless_and_refresh_certs_says_so() {
    let dir = TempDir::new("tls-off");
    let node = TlsNode::start(&dir, &[], &[]);
    node.signal(libc::SIGHUP);
    eventually(DEADLINE, "SIGHUP is logged", || {
        node.log().contains("SIGHUP: nothing to reload")
    });
    let mut c = node.client();
    assert_eq!(c.line("refresh_certs"), "Error TLS not enabled\r\n");
    assert!(c.line("version").starts_with("VERSION "));
    assert_eq!(node.settings()["ssl_enabled"], "no");
}

/// A private key file every user may read is served, as memcached does, but the node
/// warns, naming the file and its mode, at start and at each reload.
#[test]
fn a_world_readable_key_is_served_with_a_warning() {
    use std::os::unix::fs::PermissionsExt;
    let pki = Pki::new("tls-key-mode");
    let key = pki.path("server.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let flags = pki.flags("");
    let node = TlsNode::start(&pki.dir, &[""], &strs(&flags));
    assert!(
        !node.log().contains("readable by every user"),
        "{}",
        node.log()
    );
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert_eq!(node.client().line("refresh_certs"), "OK\r\n");
    eventually(DEADLINE, "the reload warns of the key's mode", || {
        node.log().contains("readable by every user")
    });
    let log = node.log();
    let line = log
        .lines()
        .find(|l| l.contains("readable by every user"))
        .unwrap();
    assert!(
        line.contains(&pki.at("server.key")) && line.contains("0644"),
        "{line}"
    );
}
