//! Making certificates (in memory) and writing and reading their files.
//!
//! [`Ca`] and [`NodeCert`] never touch the disk, so tests can build a whole cluster's
//! certificates in memory; the CLI writes them with [`write_file`], which creates a key file
//! with mode 0600 from the start (never chmod after the secret is written) and refuses to
//! replace an existing file unless asked to.
//!
//! What goes into a certificate, and why:
//! - Keys are ECDSA P-256: every TLS stack verifies it, and ring signs with it cheaply.
//! - The CA: `CN=meshcached CA <day> <key id>, O=meshcached` (two CAs read apart in a
//!   rotation bundle), CA:TRUE with path length 0 (it signs node
//!   certificates only, never another CA), key usages keyCertSign and cRLSign.
//! - A node: `CN=<node name>, O=meshcached`, CA:FALSE, the node name as the first DNS SAN and
//!   the hosts after it, key usage digitalSignature and extended key usages serverAuth and
//!   clientAuth, because every node is both a TLS server and a TLS client to its peers.

use std::fs::{DirBuilder, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::time::SystemTime;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use super::inspect::{self, unix_secs, CertInfo, Labeled};
use super::{now, CertsError, Host, NodeIdentity, NodeName, BACKDATE, CA_LIFETIME, NODE_LIFETIME};

/// The start of a CA's common name; the rest (the day it was made and an id of its key)
/// tells CAs apart for people reading `certs list` or a rotation bundle. The chain check
/// compares keys and signatures, not names.
const CA_COMMON_NAME: &str = "meshcached CA";
const ORGANIZATION: &str = "meshcached";

/// Certificates and keys are a few kilobytes; refusing anything bigger keeps a wrong path
/// (a log file, /dev/zero) from being read into memory.
const MAX_FILE_LEN: u64 = 1 << 20;

/// A cluster CA: its certificate, and its key for signing node certificates.
pub struct Ca {
    cert_der: CertificateDer<'static>,
    cert_pem: String,
    key_pem: String,
    issuer: Issuer<'static, KeyPair>,
    info: CertInfo,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("subject", &self.info.subject)
            .finish_non_exhaustive()
    }
}

/// A new CA valid for [`CA_LIFETIME`] from now, for tests and the `demo` command.
pub fn generate_ca() -> Result<Ca, CertsError> {
    let now = now();
    Ca::generate_with_validity(now - BACKDATE, now + CA_LIFETIME)
}

impl Ca {
    pub fn generate_with_validity(
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<Ca, CertsError> {
        let gen = |source| CertsError::Generate {
            what: "the CA",
            source,
        };
        let key = KeyPair::generate().map_err(gen)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = name(&ca_common_name(not_before, key.public_key_raw()));
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = datetime(not_before);
        params.not_after = datetime(not_after);
        let cert = params.self_signed(&key).map_err(gen)?;
        let key_pem = key.serialize_pem();
        Ca::assemble(
            cert.der().clone(),
            cert.pem(),
            key_pem,
            key,
            "CA certificate",
        )
    }

    /// A CA from its certificate and key in PEM, e.g. to issue node certificates for a test
    /// cluster from fixed files. The certificate text may be a bundle (`ca.crt` during a
    /// rotation); the CA is the one the key belongs to.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Ca, CertsError> {
        Ca::load(
            Labeled::new(cert_pem.as_bytes(), "CA certificate"),
            Labeled::new(key_pem.as_bytes(), "CA key"),
        )
    }

    pub(crate) fn load(cert: Labeled<'_>, key: Labeled<'_>) -> Result<Ca, CertsError> {
        let cas = inspect::parse_ca_bundle(&cert)?;
        let key_der = inspect::parse_key(&key)?;
        let pair = KeyPair::try_from(&key_der).map_err(|e| CertsError::Malformed {
            what: key.what.clone(),
            reason: format!("unsupported private key ({e})"),
        })?;
        let Some(ca) = cas
            .into_iter()
            .find(|c| c.public_key == pair.public_key_raw())
        else {
            return Err(CertsError::KeyMismatch {
                key: key.what,
                cert: cert.what,
                hint: " (is it the key of another cluster's CA?)",
            });
        };
        // Keep the text as given: for a bundle, trusting all of it is what a node does too.
        let cert_pem = String::from_utf8_lossy(cert.bytes).into_owned();
        let key_pem = String::from_utf8_lossy(key.bytes).into_owned();
        Ca::assemble(ca.der, cert_pem, key_pem, pair, &cert.what)
    }

    fn assemble(
        der: CertificateDer<'static>,
        cert_pem: String,
        key_pem: String,
        key: KeyPair,
        what: &str,
    ) -> Result<Ca, CertsError> {
        let info = CertInfo::parse(&der, what)?;
        let issuer = Issuer::from_ca_cert_der(&der, key).map_err(|e| CertsError::Malformed {
            what: what.to_string(),
            reason: format!("cannot sign with it ({e})"),
        })?;
        Ok(Ca {
            cert_der: der,
            cert_pem,
            key_pem,
            issuer,
            info,
        })
    }

    /// The text of `ca.crt`: this CA's certificate, or the whole bundle it was loaded from.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA's private key (PKCS#8 PEM). Keep it off the nodes.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    pub fn not_after(&self) -> SystemTime {
        inspect::system_time(self.info.not_after)
    }

    pub(crate) fn info(&self) -> &CertInfo {
        &self.info
    }

    /// A node certificate valid for [`NODE_LIFETIME`] from now. `hosts` are IP addresses or
    /// DNS names the node is reached at; the name itself is always included as a DNS SAN.
    pub fn issue_node(
        &self,
        name: &str,
        hosts: &[impl AsRef<str>],
    ) -> Result<NodeCert, CertsError> {
        let now = now();
        self.issue_node_with_validity(name, hosts, now - BACKDATE, now + NODE_LIFETIME)
    }

    /// A node certificate with the given validity: for `--lifetime`, and for tests that need
    /// an expired (or not yet valid) certificate.
    pub fn issue_node_with_validity(
        &self,
        name: &str,
        hosts: &[impl AsRef<str>],
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<NodeCert, CertsError> {
        let name = NodeName::new(name)?;
        let hosts = hosts
            .iter()
            .map(|h| h.as_ref().parse())
            .collect::<Result<Vec<Host>, _>>()?;
        self.issue(&name, &hosts, not_before, not_after)
    }

    pub(crate) fn issue(
        &self,
        name: &NodeName,
        hosts: &[Host],
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<NodeCert, CertsError> {
        let gen = |source| CertsError::Generate {
            what: "the node certificate",
            source,
        };
        let key = KeyPair::generate().map_err(gen)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = self::name(name.as_str());
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.not_before = datetime(not_before);
        params.not_after = datetime(not_after);
        let dns = |s: &str| s.to_string().try_into().map(SanType::DnsName).map_err(gen);
        params.subject_alt_names.push(dns(name.as_str())?);
        for host in hosts {
            let san = match host {
                Host::Ip(ip) => SanType::IpAddress(*ip),
                Host::Dns(d) if d == name.as_str() => continue,
                Host::Dns(d) => dns(d)?,
            };
            if !params.subject_alt_names.contains(&san) {
                params.subject_alt_names.push(san);
            }
        }
        let cert = params.signed_by(&key, &self.issuer).map_err(gen)?;
        Ok(NodeCert {
            name: name.to_string(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_der: cert.der().clone(),
            key_der: PrivatePkcs8KeyDer::from(key.serialize_der()),
        })
    }
}

/// A node certificate and its key, in memory.
pub struct NodeCert {
    pub name: String,
    pub cert_pem: String,
    pub key_pem: String,
    cert_der: CertificateDer<'static>,
    key_der: PrivatePkcs8KeyDer<'static>,
}

impl std::fmt::Debug for NodeCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeCert")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl NodeCert {
    pub fn cert_der(&self) -> CertificateDer<'static> {
        self.cert_der.clone()
    }

    pub fn key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key_der.clone_key())
    }

    /// This certificate as a node identity trusting `ca`, checked as
    /// [`super::load_node_identity`] checks files (an expired certificate is refused).
    pub fn identity(&self, ca: &Ca) -> Result<NodeIdentity, CertsError> {
        self.identity_at(ca, now())
    }

    pub fn identity_at(&self, ca: &Ca, now: SystemTime) -> Result<NodeIdentity, CertsError> {
        NodeIdentity::from_pem_at(&self.cert_pem, &self.key_pem, ca.cert_pem(), now)
    }

    /// This certificate as a node identity trusting `ca`, **without any check**: for tests
    /// that need a node to present an expired or foreign certificate to its peers.
    pub fn identity_unverified(&self, ca: &Ca) -> NodeIdentity {
        let not_after = CertInfo::parse(&self.cert_der, "node certificate")
            .map(|i| inspect::system_time(i.not_after))
            .unwrap_or(SystemTime::UNIX_EPOCH);
        NodeIdentity {
            name: self.name.clone(),
            cert_chain: vec![self.cert_der()],
            key: self.key_der(),
            ca_certs: vec![ca.cert_der().clone()],
            not_after,
        }
    }
}

/// `meshcached CA 2026-12-03 9f3a1c2e`: the day the CA starts (its backdated start, so the
/// day it was made in nearly every case) and the first 32 bits of an FNV-1a hash of its
/// public key (an id, not a security check).
fn ca_common_name(not_before: SystemTime, public_key: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in public_key {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let day = datetime(not_before).date();
    format!(
        "{CA_COMMON_NAME} {:04}-{:02}-{:02} {:08x}",
        day.year(),
        u8::from(day.month()),
        day.day(),
        h >> 32
    )
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, ORGANIZATION);
    dn
}

/// Certificates hold whole seconds.
fn datetime(t: SystemTime) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(unix_secs(t))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

/// Reads a certificate file; a missing file is reported with `hint` (what creates it, as in
/// [`super::HINT_CREATE_CA`]).
pub(crate) fn read_file(path: &Path, hint: &'static str) -> Result<Vec<u8>, CertsError> {
    read_with_mode(path, hint).map(|(bytes, _)| bytes)
}

/// Reads a private key file, refusing one that other users may read or write (as ssh and
/// PostgreSQL do). Group read is allowed for deployments that share keys with a group, such
/// as Kubernetes secrets mounted with an fsGroup. A file holding no private key is returned
/// as is: parsing it then says what it holds, which is the more useful message.
pub(crate) fn read_secret(path: &Path, hint: &'static str) -> Result<Vec<u8>, CertsError> {
    let (bytes, mode) = read_with_mode(path, hint)?;
    let is_key = bytes.windows(16).any(|w| w == b"PRIVATE KEY-----");
    if mode & 0o027 != 0 && is_key {
        return Err(CertsError::KeyPermissions {
            path: path.into(),
            mode,
        });
    }
    Ok(bytes)
}

/// The file's contents and its permission bits, taken from the open file itself.
fn read_with_mode(path: &Path, hint: &'static str) -> Result<(Vec<u8>, u32), CertsError> {
    read_pem_file(path).map_err(|e| match e {
        PemFileError::Open(e) => open_error(path, hint, e),
        PemFileError::Read(source) => CertsError::Io {
            path: path.into(),
            action: "read",
            source,
        },
        PemFileError::TooLarge => CertsError::Malformed {
            what: path.display().to_string(),
            reason: e.to_string(),
        },
    })
}

/// Why [`read_pem_file`] read nothing.
#[derive(Debug, thiserror::Error)]
pub enum PemFileError {
    #[error("{0}")]
    Open(std::io::Error),
    #[error("{0}")]
    Read(std::io::Error),
    #[error("larger than 1 MiB: not a certificate or key")]
    TooLarge,
}

/// A certificate or key file's contents and its permission bits (taken from the open file
/// itself, so both describe the same file), refusing anything over 1 MiB: the one reader of
/// PEM files, for the cluster's certificates and for client TLS's.
pub fn read_pem_file(path: &Path) -> Result<(Vec<u8>, u32), PemFileError> {
    let file = std::fs::File::open(path).map_err(PemFileError::Open)?;
    let mode = file.metadata().map_err(PemFileError::Read)?.mode() & 0o7777;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_LEN + 1)
        .read_to_end(&mut bytes)
        .map_err(PemFileError::Read)?;
    if bytes.len() as u64 > MAX_FILE_LEN {
        return Err(PemFileError::TooLarge);
    }
    Ok((bytes, mode))
}

fn open_error(path: &Path, hint: &'static str, e: std::io::Error) -> CertsError {
    match e.kind() {
        ErrorKind::NotFound => CertsError::Missing {
            path: path.into(),
            hint,
        },
        _ => CertsError::Io {
            path: path.into(),
            action: "read",
            source: e,
        },
    }
}

/// Fails with [`CertsError::Exists`] if `path` exists and `overwrite` is off: commands call it
/// for every file before writing any, so a refusal leaves nothing half-done.
pub(crate) fn check_absent(path: &Path, overwrite: bool) -> Result<(), CertsError> {
    match std::fs::symlink_metadata(path) {
        Ok(_) if !overwrite => Err(CertsError::Exists { path: path.into() }),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(source) => Err(CertsError::Io {
            path: path.into(),
            action: "inspect",
            source,
        }),
    }
}

/// Creates `dir` and its missing parents with `mode` (0700 for the CA key's directory).
pub(crate) fn ensure_dir(dir: &Path, mode: u32) -> Result<(), CertsError> {
    if dir.as_os_str().is_empty() {
        return Ok(()); // a bare file name: the current directory
    }
    DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)
        .map_err(|source| CertsError::Io {
            path: dir.into(),
            action: "create directory",
            source,
        })
}

/// Writes `contents` to `path` with `mode` set when the file is created, so a key is never
/// readable by others, not even for an instant. Without `overwrite` the file must not exist
/// (`O_EXCL`); with it, a temporary file is written and renamed over the old one, which both
/// replaces atomically and drops the old file's (possibly looser) mode.
pub(crate) fn write_file(
    path: &Path,
    contents: &[u8],
    mode: u32,
    overwrite: bool,
) -> Result<(), CertsError> {
    let io = |action, source| CertsError::Io {
        path: path.into(),
        action,
        source,
    };
    let target = if overwrite {
        let mut name = path.file_name().unwrap_or_default().to_os_string();
        name.push(format!(".tmp-{}", std::process::id()));
        path.with_file_name(name)
    } else {
        path.to_path_buf()
    };
    if overwrite {
        // A leftover from a crashed run of this same pid is ours to remove.
        let _ = std::fs::remove_file(&target);
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&target)
        .map_err(|e| match e.kind() {
            ErrorKind::AlreadyExists => CertsError::Exists { path: path.into() },
            _ => io("create", e),
        })?;
    let written = file.write_all(contents).and_then(|()| file.sync_all());
    if let Err(e) = written {
        let _ = std::fs::remove_file(&target);
        return Err(io("write", e));
    }
    if overwrite {
        if let Err(e) = std::fs::rename(&target, path) {
            let _ = std::fs::remove_file(&target);
            return Err(io("replace", e));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdir::TempDir;
    use std::time::Duration;

    #[test]
    fn ca_and_node_certificates_have_the_right_shape() {
        let ca = generate_ca().unwrap();
        assert!(ca.info().is_ca);
        // `CN=meshcached CA 2026-12-03 9f3a1c2e, O=meshcached`: two CAs read apart.
        let subject = &ca.info().subject;
        let cn = subject
            .strip_prefix("CN=meshcached CA ")
            .and_then(|s| s.strip_suffix(", O=meshcached"))
            .unwrap_or_else(|| panic!("{subject}"));
        let (day, id) = cn.split_once(' ').unwrap();
        assert_eq!(day.len(), 10, "{subject}");
        assert!(
            id.len() == 8 && id.bytes().all(|b| b.is_ascii_hexdigit()),
            "{subject}"
        );
        assert_ne!(&generate_ca().unwrap().info().subject, subject);
        let years = (ca.info().not_after - ca.info().not_before) / (365 * 86_400);
        assert_eq!(years, 10);
        let node = ca
            .issue_node("node1", &["10.0.0.1", "node1", "db.example"])
            .unwrap();
        let info = CertInfo::parse(&node.cert_der(), "node.crt").unwrap();
        assert_eq!(info.subject, "CN=node1, O=meshcached");
        assert_eq!(info.hosts(), ["DNS:node1", "DNS:db.example", "IP:10.0.0.1"]);
        assert_eq!((info.not_after - info.not_before) / (365 * 86_400), 5);
        assert_eq!(format!("{node:?}"), "NodeCert { name: \"node1\", .. }");
        assert!(matches!(
            ca.issue_node("Bad Name", &["10.0.0.1"]),
            Err(CertsError::InvalidName { .. })
        ));
        assert!(matches!(
            ca.issue_node("ok", &["10.0.0.1:80"]),
            Err(CertsError::InvalidHost { .. })
        ));
    }

    #[test]
    fn expired_certificates_for_tests() {
        let now = SystemTime::now();
        let day = Duration::from_secs(86_400);
        let ca = Ca::generate_with_validity(now - 60 * day, now + 365 * day).unwrap();
        let old = ca.issue_node_with_validity("old", &["127.0.0.1"], now - 30 * day, now - day);
        let old = old.unwrap();
        let err = old.identity(&ca).unwrap_err();
        assert!(matches!(err, CertsError::Expired { .. }), "{err}");
        let id = old.identity_unverified(&ca);
        assert_eq!(id.name, "old");
        assert!(id.not_after < now);
        old.identity_at(&ca, now - 2 * day).unwrap();
        // Before the CA existed, the CA is what is not yet valid.
        let err = old.identity_at(&ca, now - 61 * day).unwrap_err();
        assert!(
            matches!(err, CertsError::NotYetValid { ref what, .. } if what == "CA certificate"),
            "{err}"
        );
    }

    #[test]
    fn ca_from_pem_finds_the_keys_certificate() {
        let ca = generate_ca().unwrap();
        let other = generate_ca().unwrap();
        let again = Ca::from_pem(ca.cert_pem(), ca.key_pem()).unwrap();
        assert_eq!(again.cert_der(), ca.cert_der());
        let bundle = format!("{}{}", other.cert_pem(), ca.cert_pem());
        let from_bundle = Ca::from_pem(&bundle, ca.key_pem()).unwrap();
        assert_eq!(from_bundle.cert_der(), ca.cert_der());
        // A node issued by the reloaded CA chains to the original certificate.
        let node = from_bundle.issue_node("n2", &["127.0.0.1"]).unwrap();
        node.identity(&ca).unwrap();
        let err = Ca::from_pem(ca.cert_pem(), other.key_pem()).unwrap_err();
        assert!(matches!(err, CertsError::KeyMismatch { .. }), "{err}");
        assert!(err.to_string().contains("another cluster's CA"), "{err}");
        let node_pem = ca.issue_node("n3", &["127.0.0.1"]).unwrap();
        let err = Ca::from_pem(&node_pem.cert_pem, &node_pem.key_pem).unwrap_err();
        assert!(matches!(err, CertsError::Foreign { .. }), "{err}");
    }

    const KEY: &[u8] = b"-----BEGIN PRIVATE KEY-----\nsecret\n-----END PRIVATE KEY-----\n";
    const KEY2: &[u8] = b"-----BEGIN PRIVATE KEY-----\nnew\n-----END PRIVATE KEY-----\n";

    #[test]
    fn files_keep_their_mode_and_are_not_replaced_silently() {
        let dir = TempDir::new("write");
        let key = dir.path().join("sub/dir/a.key");
        ensure_dir(key.parent().unwrap(), 0o700).unwrap();
        let dir_mode = std::fs::metadata(key.parent().unwrap()).unwrap().mode() & 0o777;
        assert_eq!(dir_mode, 0o700);
        write_file(&key, KEY, 0o600, false).unwrap();
        assert_eq!(std::fs::metadata(&key).unwrap().mode() & 0o777, 0o600);
        let err = write_file(&key, b"other", 0o600, false).unwrap_err();
        assert!(matches!(err, CertsError::Exists { .. }), "{err}");
        assert_eq!(std::fs::read(&key).unwrap(), KEY);
        check_absent(&key, false).unwrap_err();
        check_absent(&key, true).unwrap();
        // Overwriting a key that had been made world-readable leaves a 0600 file.
        std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .unwrap();
        let err = read_secret(&key, "").unwrap_err();
        assert!(
            matches!(err, CertsError::KeyPermissions { mode: 0o644, .. }),
            "{err}"
        );
        write_file(&key, KEY2, 0o600, true).unwrap();
        assert_eq!(std::fs::metadata(&key).unwrap().mode() & 0o777, 0o600);
        assert_eq!(read_secret(&key, "").unwrap(), KEY2);
        let entries = std::fs::read_dir(key.parent().unwrap()).unwrap().count();
        assert_eq!(entries, 1, "no temporary file left behind");
        std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o640))
            .unwrap();
        read_secret(&key, "").unwrap();
        // Not a key at all: returned, so that parsing can say what it is instead.
        let crt = dir.path().join("a.crt");
        write_file(&crt, b"-----BEGIN CERTIFICATE-----\n", 0o644, false).unwrap();
        read_secret(&crt, "").unwrap();

        let missing = dir.path().join("nope.crt");
        let err = read_file(&missing, crate::certs::HINT_CREATE_CA).unwrap_err();
        assert!(
            err.to_string()
                .ends_with("nope.crt does not exist; copy the cluster's ca.crt there (`meshcached certs create-ca` makes one, once per cluster)"),
            "{err}"
        );
        let big = dir.path().join("big.crt");
        std::fs::write(&big, vec![b'x'; (MAX_FILE_LEN + 1) as usize]).unwrap();
        assert!(matches!(
            read_file(&big, ""),
            Err(CertsError::Malformed { .. })
        ));
    }
}
