//! Client TLS, as memcached's `-Z`: the certificates, the rustls configurations built from
//! them, their reload (`refresh_certs`, SIGHUP), the handshake, and the `ssl_*` counters.
//!
//! ```text
//!   -o ssl_chain_cert/ssl_key/ssl_ca_cert ──load──► Served { on, no_peer, peer }  (rustls)
//!   refresh_certs / SIGHUP ──load again──► swapped whole; a failure keeps the old one
//!   accepted TCP socket ──worker task: handshake (bounded in time)──► connection::run
//! ```
//!
//! **Reload.** A refresh reads every file again and builds new configurations before it
//! swaps them in, so a bad file leaves the certificate being served untouched and is
//! reported. Connections hold the configuration they were accepted with (rustls keeps it
//! per connection), so existing clients are never dropped or renegotiated: only new
//! handshakes see the new certificate, as in memcached.
//!
//! **The handshake runs in the connection's task** on its worker, never in the acceptor, and
//! is bounded by [`HANDSHAKE_TIMEOUT`] (or `-o idle_timeout`, if shorter): a client that
//! opens a socket and sends nothing holds only its own connection slot, for that long.
//!
//! **Versions.** TLS 1.3 and, unless `ssl_min_version=tlsv1.3`, TLS 1.2, named explicitly
//! in this listener's configuration. rustls' `tls12` feature is on for this: the peer
//! transport's configurations name TLS 1.3 alone and are unaffected by it.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{
    NoServerSessionStorage, ServerSessionMemoryCache, StoresServerSessions, WebPkiClientVerifier,
};
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{RootCertStore, ServerConfig, SupportedProtocolVersion};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::certs::read_pem_file;
use crate::config::{ListenerTls, TlsConfig, TlsVersion};

/// How long a client has to complete its handshake (unless `-o idle_timeout` is shorter).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Sessions kept for resumption with `ssl_session_cache`: OpenSSL's default cache size,
/// which is what memcached gets.
const SESSION_CACHE_SIZE: usize = 20 * 1024;

/// Why the certificates could not be loaded. The messages start as memcached's
/// `refresh_certs` errors do (after its "Error "), and name the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("loading the certificate chain {}: {reason}", .path.display())]
    Chain { path: PathBuf, reason: String },
    #[error("loading the key {}: {reason}", .path.display())]
    Key { path: PathBuf, reason: String },
    #[error("validating the certificate: the private key in {} does not match the certificate in {}", .key.display(), .chain.display())]
    Mismatch { key: PathBuf, chain: PathBuf },
    #[error("loading the CA certificate {}: {reason}", .path.display())]
    Ca { path: PathBuf, reason: String },
}

/// The `ssl_*` counters of `stats`.
#[derive(Debug, Default)]
pub struct TlsCounters {
    /// Handshakes that failed or timed out.
    pub handshake_errors: AtomicU64,
    /// Connections ended by a bad TLS record after their handshake.
    pub proto_errors: AtomicU64,
}

/// The rustls configurations new connections get, one per kind of listener, built from one
/// load of the files.
struct Served {
    /// Listeners without a prefix: client certificates as `ssl_verify_mode` says.
    on: Arc<ServerConfig>,
    /// `btls:`: no client certificate asked for.
    no_peer: Arc<ServerConfig>,
    /// `mtls:`: a client certificate required; `None` without `ssl_ca_cert`, in which case
    /// the configuration has no `mtls:` listener.
    peer: Option<Arc<ServerConfig>>,
}

/// The node's client TLS: what it serves now, and its counters.
pub struct ClientTls {
    config: TlsConfig,
    provider: Arc<CryptoProvider>,
    served: RwLock<Arc<Served>>,
    /// With `ssl_session_cache`: one cache for the node's lifetime, each configuration
    /// seeing only its own sessions of the current certificates (see [`ScopedSessions`]).
    sessions: Option<Arc<CountingSessions>>,
    /// Bumped by every refresh: sessions of earlier certificates (or an earlier CA) do not
    /// resume.
    generation: AtomicU64,
    pub counters: TlsCounters,
    /// When the certificates in use were loaded (the server clock's milliseconds).
    loaded_ms: AtomicU64,
}

impl ClientTls {
    /// Loads the certificates and builds the configurations; what a node does at start.
    pub fn new(config: TlsConfig, now_ms: u64) -> Result<ClientTls, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let sessions = config.session_cache.then(|| {
            Arc::new(CountingSessions {
                inner: ServerSessionMemoryCache::new(SESSION_CACHE_SIZE),
                new: AtomicU64::new(0),
            })
        });
        let served = build(&config, &provider, sessions.as_ref().map(|s| (s, 0)))?;
        Ok(ClientTls {
            config,
            provider,
            served: RwLock::new(Arc::new(served)),
            sessions,
            generation: AtomicU64::new(0),
            counters: TlsCounters::default(),
            loaded_ms: AtomicU64::new(now_ms),
        })
    }

    pub fn config(&self) -> &TlsConfig {
        &self.config
    }

    /// Reads the files again and serves them to new connections; on failure nothing
    /// changes. Connections already open keep their session.
    pub fn refresh(&self, now_ms: u64) -> Result<(), TlsError> {
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        let sessions = self.sessions.as_ref().map(|s| (s, generation));
        let served = build(&self.config, &self.provider, sessions)?;
        *self.served.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(served);
        self.loaded_ms.store(now_ms, Ordering::Relaxed);
        Ok(())
    }

    /// Seconds since the certificates in use were loaded (`time_since_server_cert_refresh`).
    pub fn secs_since_refresh(&self, now_ms: u64) -> u64 {
        now_ms.saturating_sub(self.loaded_ms.load(Ordering::Relaxed)) / 1000
    }

    /// Sessions stored for resumption (`ssl_new_sessions`); `None` without
    /// `ssl_session_cache`, when memcached does not show the field.
    pub fn new_sessions(&self) -> Option<u64> {
        self.sessions
            .as_ref()
            .map(|s| s.new.load(Ordering::Relaxed))
    }

    /// Runs the server side of a handshake on `tcp`, within `limit`. A failure or time-out
    /// is counted and logged at debug level (a port scanner is not worth more); a client
    /// that closes before finishing (a TCP health check) is not a TLS error and is not
    /// counted.
    pub async fn handshake(
        &self,
        mode: ListenerTls,
        tcp: TcpStream,
        limit: Duration,
    ) -> Option<TlsStream<TcpStream>> {
        let acceptor = TlsAcceptor::from(self.server_config(mode)?);
        let peer = tcp.peer_addr().ok();
        let failed = match tokio::time::timeout(limit, acceptor.accept(tcp)).await {
            Ok(Ok(stream)) => return Some(stream),
            Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
                tracing::debug!(client = ?peer, "client closed during the TLS handshake");
                return None;
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no handshake within {limit:?}"),
        };
        self.counters
            .handshake_errors
            .fetch_add(1, Ordering::Relaxed);
        tracing::debug!(client = ?peer, error = %failed, "TLS handshake failed");
        None
    }

    /// The configuration for a new connection on a listener of kind `mode`.
    fn server_config(&self, mode: ListenerTls) -> Option<Arc<ServerConfig>> {
        let served = self.served.read().unwrap_or_else(|e| e.into_inner());
        match mode {
            ListenerTls::On => Some(served.on.clone()),
            ListenerTls::NoPeer => Some(served.no_peer.clone()),
            ListenerTls::Peer => served.peer.clone(),
            ListenerTls::Off => None,
        }
    }
}

/// Reads the files and builds every configuration from them.
fn build(
    config: &TlsConfig,
    provider: &Arc<CryptoProvider>,
    sessions: Option<(&Arc<CountingSessions>, u64)>,
) -> Result<Served, TlsError> {
    let key = Arc::new(load_key_pair(config, provider)?);
    let roots = match &config.ca_cert {
        Some(path) => Some(load_roots(path)?),
        None => None,
    };
    let verifier = |require: bool| -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
        let Some((path, roots)) = config.ca_cert.as_ref().zip(roots.as_ref()) else {
            return Ok(WebPkiClientVerifier::no_client_auth());
        };
        let builder = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone());
        let builder = if require {
            builder
        } else {
            builder.allow_unauthenticated()
        };
        builder.build().map_err(|e| TlsError::Ca {
            path: path.clone(),
            reason: e.to_string(),
        })
    };
    let versions: &[&'static SupportedProtocolVersion] = match config.min_version {
        TlsVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::Tls13 => &[&rustls::version::TLS13],
    };
    let make = |verifier: Arc<dyn ClientCertVerifier>,
                kind: Kind|
     -> Result<Arc<ServerConfig>, TlsError> {
        let mut sc = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)
            .map_err(|e| TlsError::Chain {
                path: config.chain_cert.clone(),
                reason: e.to_string(),
            })?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(Arc::new(SingleCertAndKey::from(key.clone())));
        match sessions {
            Some((cache, generation)) => {
                sc.session_storage = Arc::new(ScopedSessions {
                    shared: cache.clone(),
                    scope: scope(kind, generation),
                })
            }
            None => {
                // memcached's default: no session cache, so no tickets either.
                sc.session_storage = Arc::new(NoServerSessionStorage {});
                sc.send_tls13_tickets = 0;
            }
        }
        Ok(Arc::new(sc))
    };
    let on = if config.verify_mode.verifies() {
        make(verifier(config.verify_mode.requires())?, Kind::On)?
    } else {
        make(WebPkiClientVerifier::no_client_auth(), Kind::On)?
    };
    let peer = match &roots {
        Some(_) => Some(make(verifier(true)?, Kind::Peer)?),
        None => None,
    };
    Ok(Served {
        on,
        no_peer: make(WebPkiClientVerifier::no_client_auth(), Kind::NoPeer)?,
        peer,
    })
}

/// The certificate chain and its private key (from `ssl_key`, or from the chain's file),
/// checked to belong together.
fn load_key_pair(config: &TlsConfig, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
    let chain_path = &config.chain_cert;
    let chain_err = |reason: String| TlsError::Chain {
        path: chain_path.clone(),
        reason,
    };
    let (chain_pem, chain_mode) = read(chain_path).map_err(chain_err)?;
    let chain = CertificateDer::pem_slice_iter(&chain_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| chain_err(format!("not valid PEM ({e})")))?;
    if chain.is_empty() {
        return Err(chain_err(
            "no certificate found (expected PEM \"CERTIFICATE\" blocks)".into(),
        ));
    }
    let key_path = config.key_file();
    let key_err = |reason: String| TlsError::Key {
        path: key_path.clone(),
        reason,
    };
    let (key_pem, key_mode) = match &config.key {
        Some(path) => {
            read_pem_file(path).map_err(|e| key_err(e.to_string().replace(['\r', '\n'], " ")))?
        }
        None => (chain_pem, chain_mode),
    };
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound if config.key.is_none() => {
            key_err("no private key in the certificate chain's file, and no -o ssl_key=FILE".into())
        }
        rustls_pki_types::pem::Error::NoItemsFound => {
            key_err("no private key found (expected a PEM \"PRIVATE KEY\" block)".into())
        }
        e => key_err(format!("not valid PEM ({e})")),
    })?;
    warn_if_world_readable(key_path, key_mode);
    CertifiedKey::from_der(chain, key, provider).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => TlsError::Mismatch {
            key: key_path.clone(),
            chain: chain_path.clone(),
        },
        e => key_err(format!("unusable private key ({e})")),
    })
}

/// The CA certificates client certificates must chain to.
fn load_roots(path: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let ca_err = |reason: String| TlsError::Ca {
        path: path.to_path_buf(),
        reason,
    };
    let (pem, _) = read(path).map_err(ca_err)?;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| ca_err(format!("not valid PEM ({e})")))?;
        roots
            .add(cert)
            .map_err(|e| ca_err(format!("not a usable CA certificate ({e})")))?;
    }
    if roots.is_empty() {
        return Err(ca_err(
            "no certificate found (expected PEM \"CERTIFICATE\" blocks)".into(),
        ));
    }
    Ok(Arc::new(roots))
}

/// A file's contents and permission bits, or why it cannot be read, in one line.
fn read(path: &Path) -> Result<(Vec<u8>, u32), String> {
    read_pem_file(path).map_err(|e| e.to_string().replace(['\r', '\n'], " "))
}

/// The private key's file (`ssl_key`, or the chain's file holding the key) with permission
/// bits `mode`: memcached serves a key anyone may read, and so does meshcached, but it says
/// so (`meshcached certs` refuses such a node.key).
fn warn_if_world_readable(path: &Path, mode: u32) {
    if mode & 0o004 != 0 {
        tracing::warn!(
            file = %path.display(),
            mode = format_args!("{mode:04o}"),
            "client TLS: the private key file is readable by every user; chmod o-r it"
        );
    }
}

/// The three configurations a listener may serve: unprefixed (`ssl_verify_mode`), `btls:`
/// (no client certificate) and `mtls:` (one required).
#[derive(Debug, Clone, Copy)]
enum Kind {
    On = 0,
    NoPeer = 1,
    Peer = 2,
}

/// A session's scope: the configuration and the certificates' generation.
fn scope(kind: Kind, generation: u64) -> [u8; 9] {
    let mut s = [0u8; 9];
    s[0] = kind as u8;
    s[1..].copy_from_slice(&generation.to_be_bytes());
    s
}

/// One configuration's view of the shared session cache: its keys carry the configuration
/// and the certificates' generation, as OpenSSL ties a session to its context. rustls
/// checks only the cipher suite, extended master secret and SNI when it resumes a session
/// and restores the client certificate stored with it: with one view for all, a session
/// made on a listener that asks no certificate resumed on one that requires it, and
/// sessions outlived a refresh that changed `ssl_ca_cert`.
#[derive(Debug)]
struct ScopedSessions {
    shared: Arc<CountingSessions>,
    scope: [u8; 9],
}

impl ScopedSessions {
    fn key(&self, key: &[u8]) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.scope.len() + key.len());
        k.extend_from_slice(&self.scope);
        k.extend_from_slice(key);
        k
    }
}

impl StoresServerSessions for ScopedSessions {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        self.shared.put(self.key(&key), value)
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.shared.get(&self.key(key))
    }

    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.shared.take(&self.key(key))
    }

    fn can_cache(&self) -> bool {
        true
    }
}

/// rustls' session cache, counting the sessions stored (memcached's `ssl_new_sessions`).
#[derive(Debug)]
struct CountingSessions {
    inner: Arc<ServerSessionMemoryCache>,
    new: AtomicU64,
}

impl StoresServerSessions for CountingSessions {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        let stored = self.inner.put(key, value);
        if stored {
            self.new.fetch_add(1, Ordering::Relaxed);
        }
        stored
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.inner.get(key)
    }

    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.inner.take(key)
    }

    fn can_cache(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::VerifyMode;
    use crate::testdir::TempDir;

    /// A self-signed server certificate for "localhost" and its key, PEM.
    fn self_signed(name: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn config(dir: &TempDir, key: bool) -> TlsConfig {
        TlsConfig {
            chain_cert: dir.join("chain.pem"),
            key: key.then(|| dir.join("key.pem")),
            ca_cert: None,
            verify_mode: VerifyMode::None,
            min_version: TlsVersion::Tls12,
            session_cache: false,
        }
    }

    #[test]
    fn loads_a_chain_and_key_and_the_key_from_the_chain_file() {
        let dir = TempDir::new("tls-load");
        let (cert, key) = self_signed("localhost");
        std::fs::write(dir.join("chain.pem"), &cert).unwrap();
        std::fs::write(dir.join("key.pem"), &key).unwrap();
        let tls = ClientTls::new(config(&dir, true), 1000).unwrap();
        assert!(tls.server_config(ListenerTls::On).is_some());
        assert!(tls.server_config(ListenerTls::Peer).is_none());
        assert_eq!(tls.new_sessions(), None);
        assert_eq!(tls.secs_since_refresh(4500), 3);
        std::fs::write(dir.join("chain.pem"), format!("{cert}{key}")).unwrap();
        ClientTls::new(config(&dir, false), 0).unwrap();
    }

    #[test]
    fn bad_files_are_named_and_a_failed_refresh_keeps_the_old_certificate() {
        let dir = TempDir::new("tls-bad");
        let err = ClientTls::new(config(&dir, true), 0).err().unwrap();
        assert!(matches!(err, TlsError::Chain { .. }), "{err}");
        assert!(err.to_string().contains("chain.pem: No such file"), "{err}");
        let (cert, key) = self_signed("localhost");
        let (_, other_key) = self_signed("other");
        std::fs::write(dir.join("chain.pem"), &cert).unwrap();
        let err = ClientTls::new(config(&dir, false), 0).err().unwrap();
        assert!(err.to_string().contains("no -o ssl_key=FILE"), "{err}");
        std::fs::write(dir.join("key.pem"), &other_key).unwrap();
        let err = ClientTls::new(config(&dir, true), 0).err().unwrap();
        assert!(matches!(err, TlsError::Mismatch { .. }), "{err}");
        std::fs::write(dir.join("key.pem"), &key).unwrap();
        let tls = ClientTls::new(config(&dir, true), 0).unwrap();
        let before = tls.server_config(ListenerTls::On).unwrap();
        std::fs::write(dir.join("chain.pem"), "garbage").unwrap();
        let err = tls.refresh(5000).unwrap_err();
        assert!(err.to_string().contains("no certificate found"), "{err}");
        assert!(Arc::ptr_eq(
            &before,
            &tls.server_config(ListenerTls::On).unwrap()
        ));
        assert_eq!(
            tls.secs_since_refresh(5000),
            5,
            "a failed refresh is no refresh"
        );
        std::fs::write(dir.join("chain.pem"), &cert).unwrap();
        tls.refresh(5000).unwrap();
        assert!(!Arc::ptr_eq(
            &before,
            &tls.server_config(ListenerTls::On).unwrap()
        ));
        assert_eq!(tls.secs_since_refresh(5000), 0);
    }

    #[test]
    fn a_ca_file_gives_the_mtls_listener_its_configuration() {
        let dir = TempDir::new("tls-ca");
        let (cert, key) = self_signed("localhost");
        std::fs::write(dir.join("chain.pem"), &cert).unwrap();
        std::fs::write(dir.join("key.pem"), &key).unwrap();
        std::fs::write(dir.join("ca.pem"), "not a certificate").unwrap();
        let mut cfg = config(&dir, true);
        cfg.ca_cert = Some(dir.join("ca.pem"));
        cfg.verify_mode = VerifyMode::Require;
        let err = ClientTls::new(cfg.clone(), 0).err().unwrap();
        assert!(matches!(err, TlsError::Ca { .. }), "{err}");
        std::fs::write(dir.join("ca.pem"), &cert).unwrap();
        cfg.session_cache = true;
        let tls = ClientTls::new(cfg, 0).unwrap();
        assert!(tls.server_config(ListenerTls::Peer).is_some());
        assert_eq!(tls.new_sessions(), Some(0));
    }
}
