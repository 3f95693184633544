//! Client TLS settings, as memcached 1.6 takes them: `-Z` (`--enable-ssl`), the `ssl_*`
//! options of `-o`, and the `notls:` / `btls:` / `mtls:` prefixes of `-l`.
//!
//! memcached reads `ssl_*` options without `-Z` and then serves plaintext; here they are
//! refused instead, for the reason `-o` refuses options it cannot honour: an operator must
//! never believe traffic is encrypted when it is not. The OpenSSL knobs rustls has no
//! counterpart for (cipher strings, kernel TLS, the write buffer size) are refused by name
//! for the same reason.

use std::net::SocketAddr;
use std::path::PathBuf;

/// `ssl_verify_mode`: whether clients must present a certificate chained to `ssl_ca_cert`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum VerifyMode {
    /// 0: no client certificate is asked for (memcached's default).
    #[default]
    None,
    /// 1: a client certificate is asked for and verified if given; clients without one are
    /// served.
    Request,
    /// 2: a verified client certificate is required.
    Require,
    /// 3: OpenSSL's "verify once" (skip the check on renegotiation); rustls never
    /// renegotiates, so this is `Require`.
    Once,
}

impl VerifyMode {
    /// The number memcached's `ssl_verify_mode=` takes.
    pub fn number(self) -> u8 {
        match self {
            VerifyMode::None => 0,
            VerifyMode::Request => 1,
            VerifyMode::Require => 2,
            VerifyMode::Once => 3,
        }
    }

    /// What memcached's `stats settings` shows for it: OpenSSL's `SSL_VERIFY_*` bits (PEER 1,
    /// FAIL_IF_NO_PEER_CERT 2, CLIENT_ONCE 4), not the number given.
    pub fn openssl_flags(self) -> u8 {
        match self {
            VerifyMode::None => 0,
            VerifyMode::Request => 1,
            VerifyMode::Require => 3,
            VerifyMode::Once => 7,
        }
    }

    /// Whether client certificates are checked at all (then `ssl_ca_cert` is needed).
    pub fn verifies(self) -> bool {
        self != VerifyMode::None
    }

    /// Whether a client without a certificate is refused.
    pub fn requires(self) -> bool {
        matches!(self, VerifyMode::Require | VerifyMode::Once)
    }
}

/// The oldest protocol version a client may use (`ssl_min_version`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    #[default]
    Tls12,
    Tls13,
}

impl TlsVersion {
    /// memcached's name for it, as `stats settings` shows it.
    pub fn name(self) -> &'static str {
        match self {
            TlsVersion::Tls12 => "tlsv1.2",
            TlsVersion::Tls13 => "tlsv1.3",
        }
    }
}

/// How one `-l` listener treats TLS.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ListenerTls {
    /// Plaintext: no `-Z`, or a `notls:` listener.
    #[default]
    Off,
    /// TLS, asking for client certificates as `ssl_verify_mode` says.
    On,
    /// `btls:`: TLS that never asks for a client certificate, whatever `ssl_verify_mode`.
    NoPeer,
    /// `mtls:`: TLS that requires a client certificate chained to `ssl_ca_cert`, whatever
    /// `ssl_verify_mode`.
    Peer,
}

/// One client listener: where, and whether it speaks TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listener {
    pub addr: SocketAddr,
    pub tls: ListenerTls,
}

/// The validated client TLS settings: `-Z` was given and everything it needs is there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// `ssl_chain_cert`: the server certificate then its intermediates, PEM.
    pub chain_cert: PathBuf,
    /// `ssl_key`: the private key, PEM; `None` when it is in the `chain_cert` file.
    pub key: Option<PathBuf>,
    /// `ssl_ca_cert`: the CA certificate(s) client certificates must chain to, PEM.
    pub ca_cert: Option<PathBuf>,
    pub verify_mode: VerifyMode,
    pub min_version: TlsVersion,
    /// `ssl_session_cache`: keep sessions so that clients can resume them.
    pub session_cache: bool,
}

impl TlsConfig {
    /// The file that holds the private key.
    pub fn key_file(&self) -> &PathBuf {
        self.key.as_ref().unwrap_or(&self.chain_cert)
    }
}

/// The `ssl_*` options of `-o`, as given; checked against `-Z` and `-l` by [`tls_config`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SslOptions {
    pub chain_cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub ca_cert: Option<PathBuf>,
    pub verify_mode: VerifyMode,
    pub min_version: TlsVersion,
    pub session_cache: bool,
    /// The first `ssl_*` option given, to name in an error if `-Z` is missing.
    pub first: Option<String>,
}

/// Why the client TLS settings were refused. Each message names the option.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsConfigError {
    #[error("-o {0}: needs a value ({0}=...)")]
    MissingValue(String),
    #[error("-o ssl_verify_mode={0}: expected 0 (none), 1 (request: check a client certificate if one is given), 2 (require one) or 3 (once: the same as 2 here)")]
    VerifyMode(String),
    #[error("-o ssl_min_version={0}: expected tlsv1.2 (or 2) or tlsv1.3 (or 3)")]
    MinVersion(String),
    #[error("-o ssl_min_version={0}: TLS 1.0 and 1.1 are deprecated (RFC 8996) and not offered; meshcached speaks TLS 1.2 and 1.3, use tlsv1.2")]
    OldVersion(String),
    #[error("-o ssl_keyformat={0}: only PEM keys are read (ssl_keyformat=1, the default)")]
    KeyFormat(String),
    #[error("-o {name}: not supported by meshcached: {why}")]
    Unsupported { name: String, why: &'static str },
    #[error("-o {0} is given without -Z (--enable-ssl), so no listener would serve TLS; add -Z or drop the option")]
    WithoutEnable(String),
    #[error("-l {0}: the notls:, btls: and mtls: prefixes need -Z (--enable-ssl)")]
    PrefixWithoutEnable(String),
    #[error("-Z needs -o ssl_chain_cert=FILE (the server certificate chain, PEM; its key in the same file or in -o ssl_key=FILE)")]
    NoChainCert,
    #[error("{0} checks client certificates, which needs -o ssl_ca_cert=FILE (the CA certificates, PEM, that they must chain to)")]
    NoCaCert(String),
    #[error(
        "-Z with -s: TLS is served on TCP listeners only, and -s turns TCP off (as in memcached)"
    )]
    UnixSocket,
}

/// Takes one `-o` option if it is an `ssl_*` one meshcached knows (`Ok(false)` otherwise).
pub fn parse_ssl_option(
    ssl: &mut SslOptions,
    name: &str,
    value: Option<&str>,
) -> Result<bool, TlsConfigError> {
    if !name.starts_with("ssl_") {
        return Ok(false);
    }
    let need = || value.ok_or_else(|| TlsConfigError::MissingValue(name.to_string()));
    let unsupported = |why| TlsConfigError::Unsupported {
        name: name.to_string(),
        why,
    };
    match name {
        "ssl_chain_cert" => ssl.chain_cert = Some(need()?.into()),
        "ssl_key" => ssl.key = Some(need()?.into()),
        "ssl_ca_cert" => ssl.ca_cert = Some(need()?.into()),
        "ssl_verify_mode" => {
            let v = need()?;
            ssl.verify_mode = match v.trim() {
                "0" => VerifyMode::None,
                "1" => VerifyMode::Request,
                "2" => VerifyMode::Require,
                "3" => VerifyMode::Once,
                _ => return Err(TlsConfigError::VerifyMode(v.to_string())),
            };
        }
        "ssl_min_version" => {
            let v = need()?;
            ssl.min_version = match v.trim().to_ascii_lowercase().as_str() {
                "2" | "tlsv1.2" => TlsVersion::Tls12,
                "3" | "tlsv1.3" => TlsVersion::Tls13,
                "0" | "1" | "tlsv1" | "tlsv1.0" | "tlsv1.1" => {
                    return Err(TlsConfigError::OldVersion(v.to_string()))
                }
                _ => return Err(TlsConfigError::MinVersion(v.to_string())),
            };
        }
        // memcached's SSL_FILETYPE_PEM is 1; ASN1 (2) and engines are not read here.
        "ssl_keyformat" => {
            let v = need()?;
            if !matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "pem") {
                return Err(TlsConfigError::KeyFormat(v.to_string()));
            }
        }
        "ssl_session_cache" => ssl.session_cache = true,
        "ssl_ciphers" => {
            return Err(unsupported(
                "rustls offers only modern AEAD cipher suites (AES-GCM, ChaCha20-Poly1305) and takes no OpenSSL cipher list",
            ))
        }
        "ssl_kernel_tls" => {
            return Err(unsupported(
                "TLS records are encrypted by rustls in user space",
            ))
        }
        "ssl_wbuf_size" => {
            return Err(unsupported(
                "answers are encrypted straight from the connection's write buffer; there is no separate TLS buffer to size",
            ))
        }
        _ => return Ok(false),
    }
    ssl.first.get_or_insert_with(|| name.to_string());
    Ok(true)
}

/// Splits memcached's per-listener prefix off one `-l` entry.
pub fn split_listener_prefix(part: &str) -> (ListenerTls, &str) {
    for (prefix, tls) in [
        ("notls:", ListenerTls::Off),
        ("btls:", ListenerTls::NoPeer),
        ("mtls:", ListenerTls::Peer),
    ] {
        if let Some(rest) = part.strip_prefix(prefix) {
            return (tls, rest);
        }
    }
    (ListenerTls::On, part)
}

/// The client TLS settings, checked against each other: `enabled` is `-Z`; `listeners`
/// hold what the `-l` prefixes asked for ([`ListenerTls::On`] where there was none), and
/// are turned to plaintext when TLS is off; `prefixed` are the `-l` entries that had one.
pub fn tls_config(
    enabled: bool,
    ssl: &SslOptions,
    listeners: &mut [Listener],
    prefixed: &[String],
    unix_socket: bool,
) -> Result<Option<TlsConfig>, TlsConfigError> {
    if !enabled {
        if let Some(name) = &ssl.first {
            return Err(TlsConfigError::WithoutEnable(name.clone()));
        }
        if let Some(entry) = prefixed.first() {
            return Err(TlsConfigError::PrefixWithoutEnable(entry.clone()));
        }
        for l in listeners.iter_mut() {
            l.tls = ListenerTls::Off;
        }
        return Ok(None);
    }
    if unix_socket {
        return Err(TlsConfigError::UnixSocket);
    }
    let chain_cert = ssl.chain_cert.clone().ok_or(TlsConfigError::NoChainCert)?;
    if ssl.ca_cert.is_none() {
        if ssl.verify_mode.verifies() && listeners.iter().any(|l| l.tls == ListenerTls::On) {
            return Err(TlsConfigError::NoCaCert(format!(
                "-o ssl_verify_mode={}",
                ssl.verify_mode.number()
            )));
        }
        if let Some(l) = listeners.iter().find(|l| l.tls == ListenerTls::Peer) {
            return Err(TlsConfigError::NoCaCert(format!("-l mtls:{}", l.addr)));
        }
    }
    Ok(Some(TlsConfig {
        chain_cert,
        key: ssl.key.clone(),
        ca_cert: ssl.ca_cert.clone(),
        verify_mode: ssl.verify_mode,
        min_version: ssl.min_version,
        session_cache: ssl.session_cache,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::parse;
    use crate::config::ConfigError;

    fn with_tls(extra: &[&str]) -> Result<crate::config::Config, ConfigError> {
        let mut argv = vec!["-Z", "-o", "ssl_chain_cert=/c.pem"];
        argv.extend_from_slice(extra);
        parse(&argv)
    }

    #[test]
    fn defaults_are_memcached_s() {
        let c = with_tls(&[]).unwrap();
        let tls = c.tls.unwrap();
        assert_eq!(tls.chain_cert, PathBuf::from("/c.pem"));
        assert_eq!(tls.key_file(), &PathBuf::from("/c.pem"));
        assert_eq!(tls.verify_mode, VerifyMode::None);
        assert_eq!(tls.min_version, TlsVersion::Tls12);
        assert!(!tls.session_cache);
        assert_eq!(c.listen[0].tls, ListenerTls::On);
        // Without -Z nothing is TLS.
        let c = parse(&[]).unwrap();
        assert!(c.tls.is_none());
        assert_eq!(c.listen[0].tls, ListenerTls::Off);
    }

    #[test]
    fn every_option_is_read() {
        let c = with_tls(&[
            "-o",
            "ssl_key=/k.pem,ssl_ca_cert=/ca.pem,ssl_verify_mode=3",
            "-o",
            "ssl_min_version=tlsv1.3,ssl_session_cache,ssl_keyformat=1",
        ])
        .unwrap();
        let tls = c.tls.unwrap();
        assert_eq!(tls.key_file(), &PathBuf::from("/k.pem"));
        assert_eq!(tls.ca_cert, Some(PathBuf::from("/ca.pem")));
        assert_eq!(tls.verify_mode, VerifyMode::Once);
        assert!(tls.verify_mode.requires());
        assert_eq!(tls.verify_mode.openssl_flags(), 7);
        assert_eq!(tls.min_version, TlsVersion::Tls13);
        assert!(tls.session_cache);
        // memcached's numbers for the versions work too.
        let tls = with_tls(&["-o", "ssl_min_version=2"]).unwrap().tls.unwrap();
        assert_eq!(tls.min_version, TlsVersion::Tls12);
    }

    #[test]
    fn listener_prefixes() {
        let c = with_tls(&[
            "-o",
            "ssl_ca_cert=/ca.pem",
            "-l",
            "notls:127.0.0.1:7000,127.0.0.1,btls:127.0.0.2,mtls:[::1]:7001",
        ])
        .unwrap();
        let got: Vec<_> = c
            .listen
            .iter()
            .map(|l| (l.addr.to_string(), l.tls))
            .collect();
        assert_eq!(
            got,
            [
                ("127.0.0.1:7000".to_string(), ListenerTls::Off),
                ("127.0.0.1:11211".to_string(), ListenerTls::On),
                ("127.0.0.2:11211".to_string(), ListenerTls::NoPeer),
                ("[::1]:7001".to_string(), ListenerTls::Peer),
            ]
        );
    }

    #[test]
    fn a_config_file_carries_them() {
        let dir = crate::testdir::TempDir::new("tls-toml");
        let path = dir.join("meshcached.toml");
        let toml = "enable-ssl = true\nlisten = \"notls:127.0.0.1:7000,127.0.0.1\"\n\
                    extended = [\"ssl_chain_cert=/c.pem\", \"ssl_min_version=tlsv1.3\"]\n";
        std::fs::write(&path, toml).unwrap();
        let words = crate::config::read_config_file(&path).unwrap().words;
        let c = parse(&words.iter().map(String::as_str).collect::<Vec<_>>()).unwrap();
        let tls = c.tls.unwrap();
        assert_eq!(tls.chain_cert, PathBuf::from("/c.pem"));
        assert_eq!(tls.min_version, TlsVersion::Tls13);
        assert_eq!(c.listen[0].tls, ListenerTls::Off);
        assert_eq!(c.listen[1].tls, ListenerTls::On);
    }

    #[test]
    fn refusals_name_the_option() {
        let tls_err = |argv: &[&str]| match parse(argv) {
            Err(ConfigError::Tls(e)) => e,
            other => panic!("{argv:?}: {other:?}"),
        };
        assert_eq!(tls_err(&["-Z"]), TlsConfigError::NoChainCert);
        assert_eq!(
            tls_err(&["-o", "ssl_chain_cert=/c.pem"]),
            TlsConfigError::WithoutEnable("ssl_chain_cert".into())
        );
        assert_eq!(
            tls_err(&["-l", "notls:127.0.0.1"]),
            TlsConfigError::PrefixWithoutEnable("notls:127.0.0.1".into())
        );
        let e = tls_err(&["-Z", "-o", "ssl_chain_cert=/c,ssl_min_version=tlsv1.1"]);
        assert!(matches!(e, TlsConfigError::OldVersion(_)), "{e}");
        assert!(e.to_string().contains("use tlsv1.2"), "{e}");
        let e = tls_err(&["-Z", "-o", "ssl_chain_cert=/c,ssl_min_version=0"]);
        assert!(matches!(e, TlsConfigError::OldVersion(_)), "{e}");
        let e = tls_err(&["-Z", "-o", "ssl_chain_cert=/c,ssl_min_version=tls9"]);
        assert!(matches!(e, TlsConfigError::MinVersion(_)), "{e}");
        let e = tls_err(&["-Z", "-o", "ssl_chain_cert=/c,ssl_verify_mode=4"]);
        assert!(matches!(e, TlsConfigError::VerifyMode(_)), "{e}");
        let e = tls_err(&["-Z", "-o", "ssl_chain_cert=/c,ssl_verify_mode=2"]);
        assert_eq!(e, TlsConfigError::NoCaCert("-o ssl_verify_mode=2".into()));
        let e = tls_err(&["-Z", "-o", "ssl_chain_cert=/c", "-l", "mtls:127.0.0.1:1"]);
        assert_eq!(e, TlsConfigError::NoCaCert("-l mtls:127.0.0.1:1".into()));
        // A verify mode that no listener uses (every one has a prefix) needs no CA.
        assert!(with_tls(&["-o", "ssl_verify_mode=2", "-l", "btls:127.0.0.1"]).is_ok());
        let e = tls_err(&["-Z", "-o", "ssl_chain_cert=/c,ssl_ciphers=HIGH"]);
        assert!(
            e.to_string().starts_with("-o ssl_ciphers: not supported"),
            "{e}"
        );
        let e = tls_err(&["-Z", "-o", "ssl_chain_cert=/c,ssl_keyformat=2"]);
        assert!(matches!(e, TlsConfigError::KeyFormat(_)), "{e}");
        let e = tls_err(&["-Z", "-o", "ssl_key"]);
        assert_eq!(e, TlsConfigError::MissingValue("ssl_key".into()));
        let e = tls_err(&["-Z", "-o", "ssl_chain_cert=/c", "-s", "/tmp/x.sock"]);
        assert_eq!(e, TlsConfigError::UnixSocket);
    }
}
