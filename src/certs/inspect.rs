//! Reading and judging certificates and keys: PEM parsing, the fields `certs list` shows, the
//! chain check (webpki), the key check, and the node identity check that combines them.
//!
//! Nothing here touches the file system or the clock: callers pass bytes labelled with where
//! they came from (a path, or "peer certificate") and the time to judge validity at.

use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::KeyPair;
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use webpki::{EndEntityCert, KeyUsage};
use x509_parser::extensions::GeneralName;

use super::{CertsError, NodeIdentity, NodeName};

/// Bytes and a human label for them (a file path, or "node certificate" for PEM in memory),
/// which every error about them repeats.
pub(crate) struct Labeled<'a> {
    pub bytes: &'a [u8],
    pub what: String,
}

impl<'a> Labeled<'a> {
    pub fn new(bytes: &'a [u8], what: impl Into<String>) -> Self {
        Labeled {
            bytes,
            what: what.into(),
        }
    }
}

/// The parts of a certificate meshcached looks at, copied out of the DER.
#[derive(Debug, Clone)]
pub(crate) struct CertInfo {
    pub der: CertificateDer<'static>,
    pub subject: String,
    pub issuer: String,
    pub common_names: Vec<String>,
    pub dns_names: Vec<String>,
    pub ips: Vec<IpAddr>,
    pub not_before: i64,
    pub not_after: i64,
    pub is_ca: bool,
    pub serial: String,
    /// The subjectPublicKey bits, compared with a private key's public half.
    pub public_key: Vec<u8>,
}

impl CertInfo {
    pub fn parse(der: &CertificateDer<'_>, what: &str) -> Result<CertInfo, CertsError> {
        let malformed = |reason: String| CertsError::Malformed {
            what: what.to_string(),
            reason,
        };
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| malformed(format!("not a valid X.509 certificate ({e})")))?;
        let mut dns_names = Vec::new();
        let mut ips = Vec::new();
        let san = cert
            .subject_alternative_name()
            .map_err(|e| malformed(format!("bad subject alternative names ({e})")))?;
        for name in san.iter().flat_map(|s| s.value.general_names.iter()) {
            match name {
                GeneralName::DNSName(d) => dns_names.push(d.to_string()),
                GeneralName::IPAddress(b) => match b.len() {
                    4 => ips.push(IpAddr::from(<[u8; 4]>::try_from(*b).unwrap_or_default())),
                    16 => ips.push(IpAddr::from(<[u8; 16]>::try_from(*b).unwrap_or_default())),
                    _ => return Err(malformed("an IP address SAN of a bad length".into())),
                },
                _ => {}
            }
        }
        let common_names = cert
            .subject()
            .iter_common_name()
            .map(|cn| cn.as_str().unwrap_or("<not text>").to_string())
            .collect();
        Ok(CertInfo {
            der: der.clone().into_owned(),
            subject: cert.subject().to_string(),
            issuer: cert.issuer().to_string(),
            common_names,
            dns_names,
            ips,
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
            is_ca: cert.is_ca(),
            serial: cert.raw_serial_as_string(),
            public_key: cert.public_key().subject_public_key.data.to_vec(),
        })
    }

    /// The SANs, as `DNS:name` and `IP:addr`.
    pub fn hosts(&self) -> Vec<String> {
        let dns = self.dns_names.iter().map(|d| format!("DNS:{d}"));
        dns.chain(self.ips.iter().map(|ip| format!("IP:{ip}")))
            .collect()
    }

    /// Whether the certificate is valid at `now`; the error says which bound is crossed, and when.
    pub fn check_time(&self, what: &str, now: SystemTime) -> Result<(), CertsError> {
        let now = unix_secs(now);
        if now < self.not_before {
            return Err(CertsError::NotYetValid {
                what: what.to_string(),
                not_before: format_time(self.not_before),
            });
        }
        if now > self.not_after {
            return Err(CertsError::Expired {
                what: what.to_string(),
                not_after: format_time(self.not_after),
            });
        }
        Ok(())
    }
}

/// Every certificate in a PEM text, in order. Other PEM blocks are skipped; none at all is an
/// error that says what the file seems to hold instead.
pub(crate) fn parse_certs(src: &Labeled<'_>) -> Result<Vec<CertificateDer<'static>>, CertsError> {
    let malformed = |reason: String| CertsError::Malformed {
        what: src.what.clone(),
        reason,
    };
    let certs = CertificateDer::pem_slice_iter(src.bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| malformed(format!("not valid PEM ({})", pem_error(e))))?;
    if certs.is_empty() {
        let reason = if contains(src.bytes, b"PRIVATE KEY-----") {
            "it holds a private key, not a certificate"
        } else {
            "no certificate found (expected a PEM \"CERTIFICATE\" block)"
        };
        return Err(malformed(reason.into()));
    }
    Ok(certs)
}

/// The one private key in a PEM text.
pub(crate) fn parse_key(src: &Labeled<'_>) -> Result<PrivateKeyDer<'static>, CertsError> {
    PrivateKeyDer::from_pem_slice(src.bytes).map_err(|e| CertsError::Malformed {
        what: src.what.clone(),
        reason: match e {
            pem::Error::NoItemsFound if contains(src.bytes, b"CERTIFICATE-----") => {
                "it holds a certificate, not a private key".into()
            }
            pem::Error::NoItemsFound => {
                "no private key found (expected a PEM \"PRIVATE KEY\" block)".into()
            }
            e => format!("not valid PEM ({})", pem_error(e)),
        },
    })
}

/// `ca.crt`, parsed: one or more CA certificates.
pub(crate) fn parse_ca_bundle(src: &Labeled<'_>) -> Result<Vec<CertInfo>, CertsError> {
    let certs = parse_certs(src)?;
    let many = certs.len() > 1;
    let mut infos = Vec::with_capacity(certs.len());
    for (i, der) in certs.iter().enumerate() {
        let what = bundle_label(&src.what, i, many);
        let info = CertInfo::parse(der, &what)?;
        if !info.is_ca {
            return Err(CertsError::Foreign {
                what,
                expected: "CA",
                reason: "it is not a CA certificate (did you swap ca.crt and node.crt?)".into(),
            });
        }
        infos.push(info);
    }
    Ok(infos)
}

/// "ca.crt", or "ca.crt (certificate #2)" when the file is a bundle.
pub(crate) fn bundle_label(what: &str, index: usize, many: bool) -> String {
    if many {
        format!("{what} (certificate #{})", index + 1)
    } else {
        what.to_string()
    }
}

/// The node name a certificate was issued to: its single CN, which must be a valid node name
/// and also one of its DNS SANs, in a certificate that is not a CA.
pub(crate) fn node_name(info: &CertInfo, what: &str) -> Result<String, CertsError> {
    let foreign = |reason: String| CertsError::Foreign {
        what: what.to_string(),
        expected: "node",
        reason,
    };
    if info.is_ca {
        return Err(foreign("it is a CA certificate".into()));
    }
    let cn = match info.common_names.as_slice() {
        [cn] => cn,
        cns => {
            return Err(foreign(format!(
                "it has {} common names (CN); a node certificate has exactly one, the node name",
                cns.len()
            )))
        }
    };
    if let Err(e) = NodeName::new(cn) {
        return Err(foreign(format!("its common name is not a node name: {e}")));
    }
    if !info.dns_names.iter().any(|d| d == cn) {
        return Err(foreign(format!(
            "its common name {cn:?} is not among its DNS names"
        )));
    }
    Ok(cn.clone())
}

/// Which CA certificate (index into `cas`) signed `leaf`, through `intermediates`, as webpki
/// decides it for a TLS server and a TLS client alike (meshcached connections are mutual).
///
/// The chain is checked at the leaf's own notBefore, not now: whether a certificate was signed
/// by a CA does not change with time, and expiry is reported separately with its dates.
pub(crate) fn verify_chain(
    leaf: &CertInfo,
    intermediates: &[CertificateDer<'_>],
    cas: &[CertInfo],
    what: &str,
    ca_what: &str,
) -> Result<usize, CertsError> {
    let ee = EndEntityCert::try_from(&leaf.der).map_err(|e| CertsError::Malformed {
        what: what.to_string(),
        reason: format!("the certificate verifier cannot parse it ({e})"),
    })?;
    let at = UnixTime::since_unix_epoch(Duration::from_secs(leaf.not_before.max(0) as u64));
    let mut last = None;
    for (i, ca) in cas.iter().enumerate() {
        let anchors = match webpki::anchor_from_trusted_cert(&ca.der) {
            Ok(a) => [a],
            Err(e) => {
                last = Some(e);
                continue;
            }
        };
        let verified = [KeyUsage::server_auth(), KeyUsage::client_auth()]
            .into_iter()
            .try_for_each(|usage| {
                ee.verify_for_usage(
                    webpki::ALL_VERIFICATION_ALGS,
                    &anchors,
                    intermediates,
                    at,
                    usage,
                    None,
                    None,
                )
                .map(drop)
            });
        match verified {
            Ok(()) => return Ok(i),
            Err(e) => last = Some(e),
        }
    }
    Err(CertsError::NotSignedByCa {
        what: what.to_string(),
        ca: ca_what.to_string(),
        reason: match last {
            Some(e) => describe(e),
            None => "it holds no CA certificate".into(),
        },
    })
}

/// webpki's errors, in an operator's words for the ones a misplaced file produces.
fn describe(e: webpki::Error) -> String {
    use webpki::Error as E;
    match e {
        E::UnknownIssuer => "it was issued by another CA".into(),
        E::InvalidSignatureForPublicKey | E::SignatureAlgorithmMismatch => {
            "its signature does not verify with this CA's key: it was issued by another CA \
             (one with the same name)"
                .into()
        }
        E::CaUsedAsEndEntity => "it is a CA certificate, not a node certificate".into(),
        E::RequiredEkuNotFoundContext(_) => {
            "it lacks the extended key usages serverAuth and clientAuth that mutual TLS needs"
                .into()
        }
        e => format!("the certificate verifier rejected it ({e})"),
    }
}

/// Whether `key` is the private half of the public key in `cert`.
pub(crate) fn key_matches(
    key: &PrivateKeyDer<'_>,
    cert: &CertInfo,
    key_what: &str,
    cert_what: &str,
) -> Result<(), CertsError> {
    let pair = KeyPair::try_from(key).map_err(|e| CertsError::Malformed {
        what: key_what.to_string(),
        reason: format!(
            "unsupported private key ({e}); meshcached uses ECDSA P-256 keys in PKCS#8 form"
        ),
    })?;
    if pair.public_key_raw() != cert.public_key.as_slice() {
        return Err(CertsError::KeyMismatch {
            key: key_what.to_string(),
            cert: cert_what.to_string(),
            hint: "",
        });
    }
    Ok(())
}

/// The whole check a node runs on its identity before using it; see
/// [`super::load_node_identity_at`] for the list.
pub(crate) fn verify_identity(
    cert: Labeled<'_>,
    key: Labeled<'_>,
    ca: Labeled<'_>,
    now: SystemTime,
) -> Result<NodeIdentity, CertsError> {
    let cas = parse_ca_bundle(&ca)?;
    let chain = parse_certs(&cert)?;
    let leaf = CertInfo::parse(&chain[0], &cert.what)?;
    let name = node_name(&leaf, &cert.what)?;
    let signer = verify_chain(&leaf, &chain[1..], &cas, &cert.what, &ca.what)?;
    cas[signer].check_time(&bundle_label(&ca.what, signer, cas.len() > 1), now)?;
    leaf.check_time(&cert.what, now)?;
    for (i, der) in chain.iter().enumerate().skip(1) {
        let what = bundle_label(&cert.what, i, true);
        CertInfo::parse(der, &what)?.check_time(&what, now)?;
    }
    let key_der = parse_key(&key)?;
    key_matches(&key_der, &leaf, &key.what, &cert.what)?;
    Ok(NodeIdentity {
        name,
        cert_chain: chain,
        key: key_der,
        ca_certs: cas.into_iter().map(|c| c.der).collect(),
        not_after: system_time(leaf.not_after),
    })
}

/// pki-types shows the offending bytes as a list of numbers; show them as text.
fn pem_error(e: pem::Error) -> String {
    match e {
        pem::Error::MissingSectionEnd { end_marker } => {
            let marker = String::from_utf8_lossy(&end_marker);
            format!("no \"-----END {marker}-----\" line: is the file cut short?")
        }
        pem::Error::IllegalSectionStart { line } => {
            format!("bad line {:?}", String::from_utf8_lossy(&line))
        }
        e => e.to_string(),
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Seconds since the Unix epoch, negative before it.
pub(crate) fn unix_secs(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    }
}

pub(crate) fn system_time(secs: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs as u64)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    }
}

/// `2036-05-01 12:00:00 UTC`.
pub(crate) fn format_time(secs: i64) -> String {
    match time::OffsetDateTime::from_unix_timestamp(secs) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        ),
        Err(_) => format!("{secs} (seconds since 1970)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::generate_ca;

    const DAY: Duration = Duration::from_secs(86_400);

    fn lab(s: &str) -> Labeled<'_> {
        Labeled::new(s.as_bytes(), "f.pem")
    }

    #[test]
    fn parse_certs_and_keys_say_what_is_wrong() {
        let ca = generate_ca().unwrap();
        assert_eq!(parse_certs(&lab(ca.cert_pem())).unwrap().len(), 1);
        let two = format!("{}{}", ca.cert_pem(), ca.cert_pem());
        assert_eq!(parse_certs(&lab(&two)).unwrap().len(), 2);
        let err = parse_certs(&lab(ca.key_pem())).unwrap_err().to_string();
        assert_eq!(err, "f.pem: it holds a private key, not a certificate");
        let err = parse_certs(&lab("hello")).unwrap_err().to_string();
        assert!(err.contains("no certificate found"), "{err}");
        let bad = "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n";
        let err = parse_certs(&lab(bad)).unwrap_err().to_string();
        assert!(err.starts_with("f.pem: not valid PEM"), "{err}");
        let truncated = &ca.cert_pem()[..100];
        let err = parse_certs(&lab(truncated)).unwrap_err().to_string();
        assert!(
            err.contains("(no \"-----END CERTIFICATE-----\" line: is"),
            "{err}"
        );
        let junk = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let der = parse_certs(&lab(junk)).unwrap();
        let err = CertInfo::parse(&der[0], "f.pem").unwrap_err().to_string();
        assert!(err.contains("not a valid X.509 certificate"), "{err}");

        assert!(parse_key(&lab(ca.key_pem())).is_ok());
        let err = parse_key(&lab(ca.cert_pem())).unwrap_err().to_string();
        assert_eq!(err, "f.pem: it holds a certificate, not a private key");
        let err = parse_key(&lab("")).unwrap_err().to_string();
        assert!(err.contains("no private key found"), "{err}");
    }

    #[test]
    fn cert_info_and_time() {
        let ca = generate_ca().unwrap();
        let node = ca
            .issue_node("node1", &["127.0.0.1", "::1", "Node1.Example.com"])
            .unwrap();
        let info = CertInfo::parse(&node.cert_der(), "node.crt").unwrap();
        assert_eq!(info.common_names, ["node1"]);
        assert_eq!(
            info.hosts(),
            [
                "DNS:node1",
                "DNS:node1.example.com",
                "IP:127.0.0.1",
                "IP:::1"
            ]
        );
        assert!(!info.is_ca);
        assert!(info.issuer.contains("meshcached CA"), "{}", info.issuer);
        let now = SystemTime::now();
        info.check_time("node.crt", now).unwrap();
        let err = info
            .check_time("node.crt", now + 6 * 365 * DAY)
            .unwrap_err();
        assert!(matches!(err, CertsError::Expired { .. }), "{err}");
        assert!(
            err.to_string().starts_with("node.crt expired on 20"),
            "{err}"
        );
        let err = info.check_time("node.crt", now - 2 * DAY).unwrap_err();
        assert!(matches!(err, CertsError::NotYetValid { .. }), "{err}");
        assert_eq!(format_time(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(unix_secs(system_time(-5)), -5);
    }

    #[test]
    fn chain_and_key_checks_use_the_real_verifier() {
        let ca = generate_ca().unwrap();
        let other = generate_ca().unwrap();
        let node = ca.issue_node("node1", &["127.0.0.1"]).unwrap();
        let leaf = CertInfo::parse(&node.cert_der(), "node.crt").unwrap();
        let ca_info = CertInfo::parse(ca.cert_der(), "ca.crt").unwrap();
        let other_info = CertInfo::parse(other.cert_der(), "other.crt").unwrap();
        assert_eq!(
            verify_chain(&leaf, &[], std::slice::from_ref(&ca_info), "n", "c").unwrap(),
            0
        );
        // The names differ for people; what the verifier checks is the signature (a CA
        // made with a copied name would still be refused).
        assert_ne!(ca_info.subject, other_info.subject);
        let err = verify_chain(
            &leaf,
            &[],
            std::slice::from_ref(&other_info),
            "node.crt",
            "ca.crt",
        );
        let err = err.unwrap_err();
        assert!(matches!(err, CertsError::NotSignedByCa { .. }), "{err}");
        assert!(err
            .to_string()
            .starts_with("node.crt is not signed by the CA in ca.crt"));
        // A bundle (rotation): the second CA signed it.
        assert_eq!(
            verify_chain(&leaf, &[], &[other_info, ca_info.clone()], "n", "c").unwrap(),
            1
        );
        // A CA is not a node certificate.
        let err = verify_chain(
            &ca_info,
            &[],
            std::slice::from_ref(&ca_info),
            "ca.crt",
            "ca.crt",
        )
        .unwrap_err();
        assert!(err.to_string().contains("CA certificate"), "{err}");

        let key = parse_key(&lab(&node.key_pem)).unwrap();
        key_matches(&key, &leaf, "node.key", "node.crt").unwrap();
        let wrong = parse_key(&lab(ca.key_pem())).unwrap();
        let err = key_matches(&wrong, &leaf, "node.key", "node.crt").unwrap_err();
        assert_eq!(err.to_string(), "node.key does not match node.crt");
    }

    #[test]
    fn verify_identity_reports_each_problem() {
        let now = SystemTime::now();
        let ca = generate_ca().unwrap();
        let node = ca.issue_node("node1", &["127.0.0.1"]).unwrap();
        let check = |cert: &str, key: &str, ca_pem: &str, at| {
            verify_identity(
                Labeled::new(cert.as_bytes(), "node.crt"),
                Labeled::new(key.as_bytes(), "node.key"),
                Labeled::new(ca_pem.as_bytes(), "ca.crt"),
                at,
            )
        };
        let id = check(&node.cert_pem, &node.key_pem, ca.cert_pem(), now).unwrap();
        assert_eq!(id.name, "node1");
        assert_eq!(id.cert_chain, [node.cert_der()]);
        assert_eq!(id.ca_certs, [ca.cert_der().clone()]);

        let other = generate_ca().unwrap();
        let stranger = other.issue_node("node1", &["127.0.0.1"]).unwrap();
        let cases = [
            (
                check(&stranger.cert_pem, &stranger.key_pem, ca.cert_pem(), now),
                "not signed",
            ),
            (
                check(&node.cert_pem, &stranger.key_pem, ca.cert_pem(), now),
                "does not match",
            ),
            (
                check(&node.cert_pem, &node.key_pem, &node.cert_pem, now),
                "not a meshcached CA",
            ),
            (
                check(ca.cert_pem(), ca.key_pem(), ca.cert_pem(), now),
                "not a meshcached node",
            ),
            (
                check(&node.cert_pem, "", ca.cert_pem(), now),
                "no private key",
            ),
            (
                check(
                    &node.cert_pem,
                    &node.key_pem,
                    ca.cert_pem(),
                    now + 6 * 365 * DAY,
                ),
                "expired",
            ),
            (
                check(
                    &node.cert_pem,
                    &node.key_pem,
                    ca.cert_pem(),
                    now + 11 * 365 * DAY,
                ),
                "ca.crt expired",
            ),
        ];
        for (result, expected) in cases {
            let err = result.unwrap_err().to_string();
            assert!(
                err.contains(expected),
                "{err:?} should contain {expected:?}"
            );
        }
    }
}
