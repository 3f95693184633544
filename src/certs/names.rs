//! What may go into a certificate: node names and hosts, parsed once so that every later
//! step (the CN, the SANs, the transport's comparison) can rely on them being well formed.
//!
//! A node name is an identity that the transport compares byte for byte with the name a peer
//! claims, so it is deliberately narrow: a lowercase DNS name (letters, digits, `-`, dots),
//! because it also goes into the certificate as a DNS subject alternative name, where standard
//! TLS verifiers (rustls/webpki) only accept valid DNS names. Lowercase only, because DNS
//! matching ignores case but a string comparison does not: "Node1" and "node1" must not be two
//! identities that a SAN check would confuse.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use rustls_pki_types::DnsName;

use super::CertsError;

/// The longest DNS name (RFC 1035), hence the longest node name.
const MAX_NAME_LEN: usize = 253;

/// A validated node name: a lowercase DNS name such as `node1` or `cache-a.dc1`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeName(String);

impl NodeName {
    pub fn new(name: &str) -> Result<NodeName, CertsError> {
        let bad = |reason: &'static str| CertsError::InvalidName {
            name: name.to_string(),
            reason,
        };
        if name.is_empty() {
            return Err(bad("it is empty"));
        }
        if name.len() > MAX_NAME_LEN {
            return Err(bad("it is longer than 253 characters"));
        }
        if name.parse::<IpAddr>().is_ok() {
            return Err(bad(
                "an IP address is not a node name (give it as a HOST instead)",
            ));
        }
        if name.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(bad("node names are lowercase"));
        }
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        };
        if !name.split('.').all(label_ok) {
            return Err(bad(
                "use lowercase letters, digits and '-' in dot-separated labels of 1 to 63 \
                 characters, not starting or ending with '-'",
            ));
        }
        // Our rules are stricter than webpki's, but checking with its own parser guarantees
        // the name is accepted wherever the certificate is verified.
        if DnsName::try_from(name).is_err() {
            return Err(bad("it is not a valid DNS name"));
        }
        Ok(NodeName(name.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for NodeName {
    type Err = CertsError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        NodeName::new(s)
    }
}

impl fmt::Display for NodeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A host a node is reached at, written into its certificate as a subject alternative name:
/// an IP address (`IP:` SAN) or a DNS name (`DNS:` SAN, stored lowercase).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    Ip(IpAddr),
    Dns(String),
}

impl FromStr for Host {
    type Err = CertsError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // `[::1]` is how IPv6 addresses appear in URLs and in our own listen flags.
        let unbracketed = s
            .strip_prefix('[')
            .and_then(|r| r.strip_suffix(']'))
            .unwrap_or(s);
        if let Ok(ip) = unbracketed.parse::<IpAddr>() {
            return Ok(Host::Ip(ip));
        }
        let bad = |reason: &str| CertsError::InvalidHost {
            host: s.to_string(),
            reason: reason.to_string(),
        };
        if s.contains(':') {
            return Err(bad("a host is an IP address or a DNS name, without a port"));
        }
        if s.contains('*') {
            return Err(bad("wildcard names are not supported"));
        }
        let lower = s.to_ascii_lowercase();
        match DnsName::try_from(lower.as_str()) {
            Ok(_) if !lower.is_empty() && !lower.ends_with('.') => Ok(Host::Dns(lower)),
            _ => Err(bad("not an IP address or a valid DNS name")),
        }
    }
}

impl fmt::Display for Host {
    /// `DNS:name` or `IP:addr`, the notation openssl uses for SANs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Ip(ip) => write!(f, "IP:{ip}"),
            Host::Dns(name) => write!(f, "DNS:{name}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names() {
        for ok in ["node1", "a", "cache-a.dc1", "n-1.example.com", "1node"] {
            assert_eq!(NodeName::new(ok).unwrap().as_str(), ok);
        }
        for bad in [
            "",
            "Node1",
            "node_1",
            "node 1",
            "-node",
            "node-",
            "a..b",
            "node.",
            ".node",
            "*.node",
            "127.0.0.1",
            "::1",
            "nœud",
            "meshcached CA",
        ] {
            let err = NodeName::new(bad).unwrap_err();
            assert!(
                matches!(err, CertsError::InvalidName { .. }),
                "{bad:?}: {err}"
            );
        }
        assert!(NodeName::new(&"a".repeat(64)).is_err());
        assert!(NodeName::new(&["a"; 127].join(".")).is_ok()); // 253 characters
        assert!(NodeName::new(&["a"; 128].join(".")).is_err());
        let err = NodeName::new("Node1").unwrap_err().to_string();
        assert!(
            err.contains("\"Node1\"") && err.contains("lowercase"),
            "{err}"
        );
    }

    #[test]
    fn hosts() {
        assert_eq!(
            "127.0.0.1".parse::<Host>().unwrap(),
            Host::Ip("127.0.0.1".parse().unwrap())
        );
        assert_eq!(
            "[::1]".parse::<Host>().unwrap(),
            Host::Ip("::1".parse().unwrap())
        );
        assert_eq!("::1".parse::<Host>().unwrap().to_string(), "IP:::1");
        assert_eq!(
            "Cache.Example.COM".parse::<Host>().unwrap(),
            Host::Dns("cache.example.com".into())
        );
        assert_eq!(
            "localhost".parse::<Host>().unwrap().to_string(),
            "DNS:localhost"
        );
        for bad in [
            "",
            "host:11212",
            "*.example.com",
            "a b",
            "exa_mple..com",
            "x.",
        ] {
            let err = bad.parse::<Host>().unwrap_err();
            assert!(matches!(err, CertsError::InvalidHost { .. }), "{bad:?}");
        }
    }
}
