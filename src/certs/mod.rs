//! Certificates for the peer transport: a cluster CA, node certificates, and the checks that
//! decide whether a node may start with the files it was given (`meshcached certs ...`).
//!
//! ```text
//!   meshcached certs create-ca    ──► certs/ca.crt   + CA key (0600, kept off the nodes)
//!   meshcached certs create-node  ──► certs/node.crt + certs/node.key (0600), signed by the CA
//!   meshcached certs list         ──► what is in certs/, and whether it is fit to use
//!
//!   load_node_identity(certs/) ──► NodeIdentity { name, cert_chain, key, ca_certs } ──► QUIC
//!   node_name_of(peer's cert)  ──► the name the peer's certificate was issued to
//! ```
//!
//! **Identity.** A node certificate carries its node name twice: as the subject common name
//! (CN) and as a DNS subject alternative name. The transport decides who a peer is from the
//! **CN**, through [`node_name_of`], after rustls has verified the chain to `ca.crt`: the CN is
//! exactly one value, whereas the SANs also hold the node's hosts, and a host of one node that
//! happens to equal another node's name must not let it pass as that node. The DNS SAN is there
//! so that a dialer may also use the peer's name as the TLS server name and let standard
//! hostname verification agree; [`node_name_of`] insists that both are present and equal.
//!
//! **Checks.** Chaining is decided by webpki (the verifier rustls itself uses), never by
//! comparing names, and separately from validity in time, so that "signed by another CA" and
//! "expired" are reported as what they are. `ca.crt` may hold several CA certificates (a
//! bundle, for rotating the CA); a node certificate is accepted if one of them signed it.
//!
//! Time is an input: every check has an `_at` form taking the time; the plain forms read the
//! clock through [`crate::clock::SystemClock`].

mod cli;
mod create;
mod inspect;
mod list;
mod names;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls_pki_types::{CertificateDer, PrivateKeyDer};

pub use cli::{main, run, CertsCli, CertsCommand};
pub use create::{generate_ca, read_pem_file, Ca, NodeCert, PemFileError};
pub use names::{Host, NodeName};

/// File names inside a certificates directory, as `cockroach cert` lays them out.
pub const CA_CERT_FILE: &str = "ca.crt";
pub const NODE_CERT_FILE: &str = "node.crt";
pub const NODE_KEY_FILE: &str = "node.key";

/// Appended to "X does not exist" when a command can make X.
pub(crate) const HINT_CREATE_CA: &str =
    "; copy the cluster's ca.crt there (`meshcached certs create-ca` makes one, once per cluster)";
pub(crate) const HINT_CREATE_NODE: &str = "; create it with `meshcached certs create-node`";

/// Default lifetime of a CA certificate (`create-ca --lifetime`): ten years.
pub const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Default lifetime of a node certificate (`create-node --lifetime`): five years.
pub const NODE_LIFETIME: Duration = Duration::from_secs(5 * 365 * 24 * 3600);
/// New certificates start this long before "now", so that a node whose clock is a little
/// behind the machine that made the certificate does not reject it as not yet valid.
pub const BACKDATE: Duration = Duration::from_secs(3600);

/// Everything that can be wrong with certificates or their files. Each message names the file
/// (or "peer certificate", for one received over the network) and what is wrong with it.
/// No variant leaves anything half-written: commands check before they write.
#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    #[error("{} does not exist{hint}", .path.display())]
    Missing { path: PathBuf, hint: &'static str },
    #[error("cannot {action} {}: {source}", .path.display())]
    Io {
        path: PathBuf,
        action: &'static str,
        source: std::io::Error,
    },
    #[error("{} already exists; pass --overwrite to replace it", .path.display())]
    Exists { path: PathBuf },
    #[error("{} is not the same as --ca-cert {}: a node trusts the ca.crt of its own directory; remove it or pass the one it holds", .present.display(), .given.display())]
    CaCertDiffers { present: PathBuf, given: PathBuf },
    #[error(
        "{} is readable or writable by other users (mode {mode:04o}); a private key must be \
         0600 (or 0640/0440 for a group): run `chmod 600 {}`",
        .path.display(),
        .path.display()
    )]
    KeyPermissions { path: PathBuf, mode: u32 },
    #[error("{what}: {reason}")]
    Malformed { what: String, reason: String },
    #[error("{what} expired on {not_after}")]
    Expired { what: String, not_after: String },
    #[error("{what} is not valid before {not_before} (is this machine's clock right?)")]
    NotYetValid { what: String, not_before: String },
    #[error("{key} does not match {cert}{hint}")]
    KeyMismatch {
        key: String,
        cert: String,
        hint: &'static str,
    },
    #[error("{what} is not signed by the CA in {ca}: {reason}")]
    NotSignedByCa {
        what: String,
        ca: String,
        reason: String,
    },
    #[error("{what} is not a meshcached {expected} certificate: {reason}")]
    Foreign {
        what: String,
        expected: &'static str,
        reason: String,
    },
    #[error("invalid node name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("invalid host {host:?}: {reason}")]
    InvalidHost { host: String, reason: String },
    #[error("invalid lifetime {0:?}: expected a number with a unit h, d or y (e.g. 90d, 5y)")]
    InvalidLifetime(String),
    #[error("cannot make {what}: {source}")]
    Generate {
        what: &'static str,
        source: rcgen::Error,
    },
    #[error("{count} problem(s) found in {}", .dir.display())]
    Problems { dir: PathBuf, count: usize },
}

/// What a node needs to take part in the cluster's mutual TLS: its own certificate chain and
/// key, and the CA certificate(s) its peers must chain to. Only [`load_node_identity`] (files)
/// and [`NodeCert::identity`] (memory) build one after checking it; the fields are public so a
/// test can build a deliberately bad one (see [`NodeCert::identity_unverified`]).
pub struct NodeIdentity {
    /// The node name from the certificate (its CN), already validated.
    pub name: String,
    /// The node certificate first, then any intermediates (none, with `certs create-node`).
    pub cert_chain: Vec<CertificateDer<'static>>,
    /// The node's private key (PKCS#8).
    pub key: PrivateKeyDer<'static>,
    /// Trust anchors for peers: every CA certificate in `ca.crt` (usually exactly one; more
    /// while a CA is being rotated). Add them all to the rustls root store.
    pub ca_certs: Vec<CertificateDer<'static>>,
    /// When the node certificate expires, so the node can warn ahead of time.
    pub not_after: SystemTime,
}

impl Clone for NodeIdentity {
    fn clone(&self) -> Self {
        NodeIdentity {
            name: self.name.clone(),
            cert_chain: self.cert_chain.clone(),
            key: self.key.clone_key(),
            ca_certs: self.ca_certs.clone(),
            not_after: self.not_after,
        }
    }
}

impl std::fmt::Debug for NodeIdentity {
    // Never print the private key, even in a debug log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeIdentity")
            .field("name", &self.name)
            .field("cert_chain", &self.cert_chain.len())
            .field("ca_certs", &self.ca_certs.len())
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl NodeIdentity {
    /// Checks PEM texts exactly as [`load_node_identity_at`] checks files: the node certificate
    /// chains to one of the CA certificates, both are valid at `now`, the key matches, and the
    /// certificate names a valid node.
    pub fn from_pem_at(
        cert_pem: &str,
        key_pem: &str,
        ca_pem: &str,
        now: SystemTime,
    ) -> Result<NodeIdentity, CertsError> {
        inspect::verify_identity(
            inspect::Labeled::new(cert_pem.as_bytes(), "node certificate"),
            inspect::Labeled::new(key_pem.as_bytes(), "node key"),
            inspect::Labeled::new(ca_pem.as_bytes(), "CA certificate"),
            now,
        )
    }
}

/// Loads `DIR/node.crt`, `DIR/node.key` and `DIR/ca.crt` and checks them (see
/// [`load_node_identity_at`]); what a node calls at startup.
pub fn load_node_identity(certs_dir: &Path) -> Result<NodeIdentity, CertsError> {
    load_node_identity_at(certs_dir, now())
}

/// Loads and checks a node's identity at time `now`: every file exists, is readable and well
/// formed; `node.key` is not accessible by other users and matches `node.crt`; `node.crt` is a
/// meshcached node certificate, signed by a CA in `ca.crt`, and neither it nor that CA is
/// expired or not yet valid. The first problem found is returned, naming its file.
pub fn load_node_identity_at(
    certs_dir: &Path,
    now: SystemTime,
) -> Result<NodeIdentity, CertsError> {
    let ca_path = certs_dir.join(CA_CERT_FILE);
    let cert_path = certs_dir.join(NODE_CERT_FILE);
    let key_path = certs_dir.join(NODE_KEY_FILE);
    let ca = create::read_file(&ca_path, HINT_CREATE_CA)?;
    let cert = create::read_file(&cert_path, HINT_CREATE_NODE)?;
    let key = create::read_secret(&key_path, HINT_CREATE_NODE)?;
    inspect::verify_identity(
        inspect::Labeled::new(&cert, cert_path.display().to_string()),
        inspect::Labeled::new(&key, key_path.display().to_string()),
        inspect::Labeled::new(&ca, ca_path.display().to_string()),
        now,
    )
}

/// Writes a node's certificate directory in one go: `DIR/ca.crt`, `DIR/node.crt` and
/// `DIR/node.key` (0600), creating `DIR` (0700). Existing files are never overwritten. For
/// `meshcached demo` and test harnesses, which make a whole cluster's certificates at once.
pub fn write_node_dir(dir: &Path, ca: &Ca, node: &NodeCert) -> Result<(), CertsError> {
    create::ensure_dir(dir, 0o700)?;
    create::write_file(
        &dir.join(CA_CERT_FILE),
        ca.cert_pem().as_bytes(),
        0o644,
        false,
    )?;
    create::write_file(
        &dir.join(NODE_CERT_FILE),
        node.cert_pem.as_bytes(),
        0o644,
        false,
    )?;
    create::write_file(
        &dir.join(NODE_KEY_FILE),
        node.key_pem.as_bytes(),
        0o600,
        false,
    )
}

/// The node name a peer's certificate was issued to (its CN, which must also be one of its DNS
/// SANs). This does **not** verify the certificate: call it only on a certificate that rustls
/// has already verified against the cluster CA, then compare the result with the name the peer
/// claims.
pub fn node_name_of(cert: &CertificateDer<'_>) -> Result<String, CertsError> {
    let info = inspect::CertInfo::parse(cert, "peer certificate")?;
    inspect::node_name(&info, "peer certificate")
}

/// The current time, from the one clock the crate reads.
fn now() -> SystemTime {
    use crate::clock::Clock;
    UNIX_EPOCH + Duration::from_millis(crate::clock::SystemClock.now_ms())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_file_and_the_problem() {
        let e = CertsError::Exists {
            path: "/x/ca.crt".into(),
        };
        assert_eq!(
            e.to_string(),
            "/x/ca.crt already exists; pass --overwrite to replace it"
        );
        let e = CertsError::KeyPermissions {
            path: "/x/node.key".into(),
            mode: 0o644,
        };
        assert!(e.to_string().starts_with("/x/node.key is readable"), "{e}");
        assert!(e.to_string().contains("0644"), "{e}");
    }

    #[test]
    fn shareable_across_threads() {
        // A test harness keeps one CA for many nodes; the transport moves identities to tasks.
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Ca>();
        send_sync::<NodeCert>();
        send_sync::<NodeIdentity>();
        send_sync::<CertsError>();
    }

    #[test]
    fn identity_debug_hides_the_key() {
        let ca = generate_ca().unwrap();
        let node = ca.issue_node("node1", &["127.0.0.1"]).unwrap();
        let id = node.identity(&ca).unwrap();
        let shown = format!("{id:?}");
        assert!(
            shown.contains("node1") && !shown.contains("PRIVATE"),
            "{shown}"
        );
        assert_eq!(id.clone().key.secret_der(), id.key.secret_der());
    }

    #[test]
    fn load_node_identity_checks_the_files() {
        use std::os::unix::fs::PermissionsExt;
        let dir = crate::testdir::TempDir::new("certs-load");
        let err = load_node_identity(dir.path()).unwrap_err();
        assert!(matches!(err, CertsError::Missing { .. }), "{err}");
        assert!(
            err.to_string()
                .ends_with("ca.crt does not exist; copy the cluster's ca.crt there (`meshcached certs create-ca` makes one, once per cluster)"),
            "{err}"
        );
        let ca = generate_ca().unwrap();
        let node = ca.issue_node("node7", &["192.0.2.7"]).unwrap();
        let put = |f: &str, text: &str, mode| {
            create::write_file(&dir.path().join(f), text.as_bytes(), mode, true).unwrap()
        };
        put(CA_CERT_FILE, ca.cert_pem(), 0o644);
        put(NODE_CERT_FILE, &node.cert_pem, 0o644);
        let err = load_node_identity(dir.path()).unwrap_err();
        assert!(err.to_string().contains("node.key does not exist"), "{err}");
        put(NODE_KEY_FILE, &node.key_pem, 0o644);
        let err = load_node_identity(dir.path()).unwrap_err();
        assert!(matches!(err, CertsError::KeyPermissions { .. }), "{err}");
        let key_path = dir.path().join(NODE_KEY_FILE);
        std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let id = load_node_identity(dir.path()).unwrap();
        assert_eq!(id.name, "node7");
        assert_eq!(id.key.secret_der(), node.key_der().secret_der());
        assert_eq!(id.ca_certs, [ca.cert_der().clone()]);
        put(NODE_CERT_FILE, "garbage", 0o644);
        let err = load_node_identity(dir.path()).unwrap_err();
        assert!(
            err.to_string().contains("node.crt: no certificate found"),
            "{err}"
        );
    }

    #[test]
    fn node_name_of_reads_the_cn() {
        let ca = generate_ca().unwrap();
        let node = ca
            .issue_node("cache-b", &["10.0.0.2", "cache-b.internal"])
            .unwrap();
        assert_eq!(node_name_of(&node.cert_der()).unwrap(), "cache-b");
        // The CA is not a node; neither is garbage.
        let err = node_name_of(ca.cert_der()).unwrap_err();
        assert!(matches!(err, CertsError::Foreign { .. }), "{err}");
        let err = node_name_of(&CertificateDer::from(vec![0x30, 0x03, 1, 2, 3])).unwrap_err();
        assert!(matches!(err, CertsError::Malformed { .. }), "{err}");
    }
}
