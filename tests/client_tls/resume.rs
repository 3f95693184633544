//! Session resumption (`ssl_session_cache`) keeps each listener's client-certificate rule.

use super::*;

/// A session made on a `btls:` listener (no client certificate asked) must not resume on an
/// `mtls:` one. rustls checks only the cipher suite, EMS and SNI when it resumes, so with
/// one cache shared by every listener a client without a certificate was served on `mtls:`,
/// over TLS 1.3 and 1.2. OpenSSL (memcached) ties a session to its context; so do we.
#[test]
fn a_session_from_a_listener_without_client_certificates_does_not_resume_on_mtls() {
    let pki = Pki::new("tls-resume");
    let ca = pki.path("ca.pem");
    let flags = pki.flags(&format!(
        "ssl_ca_cert={},ssl_session_cache",
        pki.at("ca.pem")
    ));
    let node = TlsNode::start(&pki.dir, &["btls:", "mtls:"], &strs(&flags));
    let (btls, mtls) = (node.tls[0], node.tls[1]);
    for version in ["-tls1_3", "-tls1_2"] {
        let file = pki.path(&format!("session{version}.pem"));
        let path = file.display().to_string();
        let mut s = Session::open(btls, &ca, &[version, "-sess_out", &path]);
        let answer = s.call("version\r\n", "\r\n");
        assert!(
            answer.is_some_and(|a| a.starts_with("VERSION ")),
            "{version}: served on btls:"
        );
        drop(s);
        assert!(
            std::fs::metadata(&file).is_ok_and(|m| m.len() > 0),
            "{version}: s_client saved its session"
        );
        let (out, err) = s_client_run(
            mtls,
            &ca,
            &[version, "-sess_in", &path],
            "version\r\nquit\r\n",
        );
        assert!(
            !out.contains("VERSION"),
            "{version}: a session from btls: resumed on mtls: without a certificate: {out} {err}"
        );
    }
}
