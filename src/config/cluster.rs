//! The cluster flags: who this node is, where its peers are, and the replication settings
//! (DESIGN.md sections 4, 5 and 7), validated into a [`ClusterConfig`].

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use super::{parse_size, resolve_bind, Args, ConfigError};
use crate::clock::{NodeId, MAX_NODE_ID};

/// The repcached replication port, which the cluster port defaults to.
pub const DEFAULT_CLUSTER_PORT: u16 = 11212;

/// Where a peer is reached: a host name or IP address, and a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerAddr {
    pub host: String,
    pub port: u16,
}

impl std::fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// A validated cluster configuration.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub node_name: String,
    pub node_id: NodeId,
    pub listen: SocketAddr,
    pub certs_dir: PathBuf,
    pub join: Vec<PeerAddr>,
    pub repl_backlog: usize,
    pub max_clock_skew: Duration,
    /// Seconds.
    pub tombstone_ttl: u32,
    pub join_timeout: Duration,
    pub serve_while_syncing: bool,
    pub drain_timeout: Duration,
    pub state_file: Option<PathBuf>,
    /// `--remove-down-after`: a member down this long is forgotten.
    pub remove_down_after: Duration,
    /// `--ack-replicas`: distinct peers that must apply a write before its client is
    /// answered (DESIGN.md section 7); 0 keeps replication asynchronous.
    pub ack_replicas: usize,
    /// `--ack-timeout`: how long a write waits for them before it is answered
    /// `SERVER_ERROR`.
    pub ack_timeout: Duration,
    /// `--anti-entropy-period`: between comparisons with each peer when nothing differs;
    /// zero turns anti-entropy off.
    pub anti_entropy_period: Duration,
}

/// `--remove-down-after`'s default. A member is down once unreachable (its link lost, not
/// back within seconds); forgetting it stops the redials, which are also what heals a
/// partition: if both sides of a partition forget each other, only their `--join`
/// addresses reconnect them (README, "Member lifecycle"). So the default outlasts a weekend's outage, as Consul's
/// `reconnect_timeout` (72h) does, and costs little meanwhile: a member down is no longer
/// waited for, only redialed every few seconds and listed. A node gone for good is removed
/// at once with `cluster forget`.
pub const DEFAULT_REMOVE_DOWN_AFTER: &str = "72h";

/// The default `--ack-timeout`. A healthy peer acknowledges within milliseconds (measured
/// in benches/README.md), so this is two orders of magnitude of slack for a busy peer, yet
/// below the 1 s and longer operation timeouts of common client libraries: the client
/// hears `SERVER_ERROR` (and can retry elsewhere) before it gives up on its own.
pub const ACK_TIMEOUT: &str = "500ms";

/// The default `--anti-entropy-period` (see `DEFAULT_AE_PERIOD_MS` in the cluster core for
/// why).
pub const ANTI_ENTROPY_PERIOD: &str = "10s";

/// Parses `500ms`, `5s`, `10m`, `2h`, `30d`; a bare number is seconds.
pub fn parse_duration(s: &str) -> Result<Duration, ConfigError> {
    let err = || ConfigError::Duration(s.to_string());
    let lower = s.trim().to_ascii_lowercase();
    let split = lower
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(lower.len());
    let n: u64 = lower[..split].parse().map_err(|_| err())?;
    let ms = match &lower[split..] {
        "ms" => 1,
        "" | "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(err()),
    };
    n.checked_mul(ms).map(Duration::from_millis).ok_or_else(err)
}

/// The default node id for a name: a hash of it (FNV-1a) folded to 10 bits, so that nodes
/// named differently usually differ; a clash is detected when the nodes meet.
pub fn node_id_for(name: &str) -> NodeId {
    let mut h: u32 = 0x811c_9dc5;
    for b in name.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    let folded = (h ^ (h >> 10) ^ (h >> 20)) & u32::from(MAX_NODE_ID);
    NodeId::new(folded as u16).expect("masked to 10 bits")
}

/// This machine's host name, lowercased: the default `--node-name`.
pub fn host_name() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let name = std::str::from_utf8(&buf[..end])
        .ok()?
        .trim()
        .to_ascii_lowercase();
    (!name.is_empty()).then_some(name)
}

/// Parses `HOST:PORT`, `[V6]:PORT`, or (when `default_port` is given) a bare `HOST`.
fn parse_peer(s: &str, default_port: Option<u16>) -> Result<PeerAddr, ConfigError> {
    let err = || ConfigError::Peer(s.to_string());
    let s = s.trim();
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(PeerAddr {
            host: addr.ip().to_string(),
            port: addr.port(),
        });
    }
    if let Ok(ip) = s
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
    {
        let port = default_port.ok_or_else(err)?;
        return Ok(PeerAddr {
            host: ip.to_string(),
            port,
        });
    }
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) => (h, p.parse::<u16>().map_err(|_| err())?),
        None => (s, default_port.ok_or_else(err)?),
    };
    let valid = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if !valid {
        return Err(err());
    }
    Ok(PeerAddr {
        host: host.to_ascii_lowercase(),
        port,
    })
}

pub(super) fn cluster_config(
    args: &Args,
    listen: &[SocketAddr],
) -> Result<Option<ClusterConfig>, ConfigError> {
    let port = args.cluster_port.unwrap_or(DEFAULT_CLUSTER_PORT);
    let mut join = Vec::new();
    for j in &args.join {
        join.push(parse_peer(j, None)?);
    }
    for x in &args.peer {
        join.push(parse_peer(x, Some(port))?);
    }
    // Every value is checked, also on a standalone node, so that a typo is reported where
    // it is made rather than when the node later joins a cluster.
    let settings = Settings::parse(args)?;
    let Some(certs_dir) = args.certs_dir.clone() else {
        if !join.is_empty() {
            return Err(ConfigError::PeersWithoutCerts);
        }
        let stray = [
            (args.cluster_listen.is_some(), "--cluster-listen"),
            (args.cluster_port.is_some(), "-X"),
            (args.node_name.is_some(), "--node-name"),
            (args.node_id.is_some(), "--node-id"),
            (args.state_file.is_some(), "--state-file"),
            (args.serve_while_syncing, "--serve-while-syncing"),
            (args.repl_backlog.is_some(), "--repl-backlog"),
            (args.max_clock_skew.is_some(), "--max-clock-skew"),
            (args.tombstone_ttl.is_some(), "--tombstone-ttl"),
            (args.join_timeout.is_some(), "--join-timeout"),
            (args.drain_timeout.is_some(), "--drain-timeout"),
            (args.remove_down_after.is_some(), "--remove-down-after"),
            // A standalone node has no peer to acknowledge anything: every write would
            // wait out the timeout and fail. Refused at start instead (0 is harmless).
            (args.ack_replicas.is_some_and(|n| n > 0), "--ack-replicas"),
            (args.ack_timeout.is_some(), "--ack-timeout"),
            (args.anti_entropy_period.is_some(), "--anti-entropy-period"),
        ];
        if let Some((_, flag)) = stray.iter().find(|(given, _)| *given) {
            return Err(ConfigError::ClusterFlagWithoutCerts(flag));
        }
        return Ok(None);
    };
    let node_name = match &args.node_name {
        Some(n) => n.clone(),
        None => host_name().ok_or(ConfigError::NoHostName)?,
    };
    let node_id = match args.node_id {
        Some(id) => NodeId::new(id).ok_or(ConfigError::NodeId(id))?,
        None => node_id_for(&node_name),
    };
    let cluster_listen = match &args.cluster_listen {
        None => SocketAddr::new(listen[0].ip(), port),
        Some(s) => *resolve_bind(s, port)
            .map_err(|_| ConfigError::ClusterListen(s.clone()))?
            .first()
            .ok_or_else(|| ConfigError::ClusterListen(s.clone()))?,
    };
    Ok(Some(ClusterConfig {
        node_name,
        node_id,
        listen: cluster_listen,
        certs_dir,
        join,
        repl_backlog: settings.repl_backlog,
        max_clock_skew: settings.max_clock_skew,
        tombstone_ttl: settings.tombstone_ttl,
        join_timeout: settings.join_timeout,
        serve_while_syncing: args.serve_while_syncing,
        drain_timeout: settings.drain_timeout,
        state_file: args.state_file.clone(),
        remove_down_after: settings.remove_down_after,
        ack_replicas: args.ack_replicas.unwrap_or(0),
        ack_timeout: settings.ack_timeout,
        anti_entropy_period: settings.anti_entropy_period,
    }))
}

/// The cluster settings that have a default, parsed.
struct Settings {
    repl_backlog: usize,
    max_clock_skew: Duration,
    tombstone_ttl: u32,
    join_timeout: Duration,
    drain_timeout: Duration,
    remove_down_after: Duration,
    ack_timeout: Duration,
    anti_entropy_period: Duration,
}

impl Settings {
    fn parse(args: &Args) -> Result<Settings, ConfigError> {
        // The value given, or the default; an error names the flag.
        fn value<T>(
            given: &Option<String>,
            default: &str,
            flag: &'static str,
            parse: impl Fn(&str) -> Result<T, ConfigError>,
        ) -> Result<T, ConfigError> {
            parse(given.as_deref().unwrap_or(default)).map_err(|e| ConfigError::Flag {
                flag,
                message: e.to_string(),
            })
        }
        let tombstone_ttl = value(&args.tombstone_ttl, "10m", "--tombstone-ttl", |s| {
            let ttl = parse_duration(s)?;
            if !(Duration::from_secs(1)..=Duration::from_secs(30 * 86_400)).contains(&ttl) {
                return Err(ConfigError::TombstoneTtl);
            }
            Ok(ttl.as_secs() as u32)
        })?;
        Ok(Settings {
            repl_backlog: value(&args.repl_backlog, "64MB", "--repl-backlog", |s| {
                parse_size(s, 1)
            })?,
            max_clock_skew: value(
                &args.max_clock_skew,
                "5s",
                "--max-clock-skew",
                parse_duration,
            )?,
            tombstone_ttl,
            join_timeout: value(&args.join_timeout, "10s", "--join-timeout", parse_duration)?,
            drain_timeout: value(
                &args.drain_timeout,
                "10s",
                "--drain-timeout",
                parse_duration,
            )?,
            remove_down_after: value(
                &args.remove_down_after,
                DEFAULT_REMOVE_DOWN_AFTER,
                "--remove-down-after",
                parse_duration,
            )?,
            ack_timeout: value(&args.ack_timeout, ACK_TIMEOUT, "--ack-timeout", |s| {
                let t = parse_duration(s)?;
                if t.is_zero() {
                    return Err(ConfigError::AckTimeout);
                }
                Ok(t)
            })?,
            anti_entropy_period: value(
                &args.anti_entropy_period,
                ANTI_ENTROPY_PERIOD,
                "--anti-entropy-period",
                parse_duration,
            )?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::parse;

    #[test]
    fn ack_replicas_need_a_cluster_and_a_wait_longer_than_zero() {
        let c = parse(&[
            "--certs-dir",
            "/c",
            "--ack-replicas",
            "2",
            "--ack-timeout",
            "250ms",
        ])
        .unwrap()
        .cluster
        .unwrap();
        assert_eq!(
            (c.ack_replicas, c.ack_timeout),
            (2, Duration::from_millis(250))
        );
        // Standalone, no peer could ever acknowledge: refused at start, not failing every
        // write later. 0 is what a standalone node does anyway.
        assert_eq!(
            parse(&["--ack-replicas", "1"]).unwrap_err(),
            ConfigError::ClusterFlagWithoutCerts("--ack-replicas")
        );
        assert!(parse(&["--ack-replicas", "0"]).unwrap().cluster.is_none());
        assert_eq!(
            parse(&["--ack-timeout", "1s"]).unwrap_err(),
            ConfigError::ClusterFlagWithoutCerts("--ack-timeout")
        );
        assert!(matches!(
            parse(&["--certs-dir", "/c", "--ack-timeout", "0s"]).unwrap_err(),
            ConfigError::Flag {
                flag: "--ack-timeout",
                ..
            }
        ));
    }

    #[test]
    fn anti_entropy_period_defaults_to_10s_and_0_turns_it_off() {
        let cluster = |period: &[&str]| {
            let mut argv = vec!["--certs-dir", "/c"];
            argv.extend_from_slice(period);
            parse(&argv).unwrap().cluster.unwrap()
        };
        // What the core is given: its period, 0 meaning off (no HELLO_AE, no rounds).
        let core_ms = |period: &[&str]| {
            crate::cluster::core::ReplicaConfig::from(&cluster(period))
                .entropy
                .period_ms
        };
        let default = crate::cluster::core::DEFAULT_AE_PERIOD_MS;
        assert_eq!(cluster(&[]).anti_entropy_period.as_millis(), 10_000);
        assert_eq!((core_ms(&[]), default), (10_000, 10_000));
        assert_eq!(core_ms(&["--anti-entropy-period", "250ms"]), 250);
        assert_eq!(core_ms(&["--anti-entropy-period", "0"]), 0);
        assert_eq!(
            parse(&["--anti-entropy-period", "1s"]).unwrap_err(),
            ConfigError::ClusterFlagWithoutCerts("--anti-entropy-period")
        );
        assert!(matches!(
            parse(&["--certs-dir", "/c", "--anti-entropy-period", "soon"]).unwrap_err(),
            ConfigError::Flag {
                flag: "--anti-entropy-period",
                ..
            }
        ));
    }

    #[test]
    fn cluster_flags() {
        assert!(parse(&[]).unwrap().cluster.is_none());
        assert_eq!(
            parse(&["--join", "127.0.0.2:11212"]).unwrap_err(),
            ConfigError::PeersWithoutCerts
        );
        assert_eq!(
            parse(&["-x", "10.0.0.2"]).unwrap_err(),
            ConfigError::PeersWithoutCerts
        );
        assert_eq!(
            parse(&["-X", "7000"]).unwrap_err(),
            ConfigError::ClusterFlagWithoutCerts("-X")
        );
        let c = parse(&[
            "--certs-dir",
            "/c",
            "--node-name",
            "a",
            "-l",
            "127.0.0.5",
            "-X",
            "7000",
            "-x",
            "127.0.0.6",
            "-x",
            "b.example:7001",
            "--join",
            "[::1]:7002",
        ])
        .unwrap()
        .cluster
        .unwrap();
        assert_eq!(c.listen, "127.0.0.5:7000".parse().unwrap());
        assert_eq!(c.node_id, node_id_for("a"));
        let joins: Vec<String> = c.join.iter().map(|p| p.to_string()).collect();
        assert_eq!(joins, ["[::1]:7002", "127.0.0.6:7000", "b.example:7001"]);
        assert_eq!(c.repl_backlog, 64 << 20);
        assert_eq!(c.max_clock_skew, Duration::from_secs(5));
        assert_eq!(c.tombstone_ttl, 600);
        assert_eq!(c.join_timeout, Duration::from_secs(10));
        assert_eq!(c.drain_timeout, Duration::from_secs(10));
        assert_eq!(c.remove_down_after, Duration::from_secs(72 * 3600));
        assert!(!c.serve_while_syncing);
        assert_eq!(c.state_file, None);
        assert_eq!(c.ack_replicas, 0, "asynchronous unless asked");
        assert_eq!(c.ack_timeout, Duration::from_millis(500));
        assert_eq!(
            parse(&["--state-file", "/s"]).unwrap_err(),
            ConfigError::ClusterFlagWithoutCerts("--state-file")
        );
        let c = parse(&[
            "--certs-dir",
            "/c",
            "--join-timeout",
            "1500ms",
            "--drain-timeout",
            "2s",
            "--remove-down-after",
            "90m",
            "--serve-while-syncing",
            "--state-file",
            "/var/lib/meshcached/state",
        ])
        .unwrap()
        .cluster
        .unwrap();
        assert_eq!(c.join_timeout, Duration::from_millis(1500));
        assert_eq!(c.drain_timeout, Duration::from_secs(2));
        assert_eq!(c.remove_down_after, Duration::from_secs(90 * 60));
        assert!(c.serve_while_syncing);
        assert_eq!(
            c.state_file,
            Some(PathBuf::from("/var/lib/meshcached/state"))
        );
        let c = parse(&[
            "--certs-dir",
            "/c",
            "--node-name",
            "a",
            "--node-id",
            "1023",
            "--cluster-listen",
            "0.0.0.0:0",
            "--tombstone-ttl",
            "90s",
            "--max-clock-skew",
            "500ms",
            "--repl-backlog",
            "1m",
        ])
        .unwrap()
        .cluster
        .unwrap();
        assert_eq!(c.node_id.get(), 1023);
        assert_eq!(c.listen, "0.0.0.0:0".parse().unwrap());
        assert_eq!(c.tombstone_ttl, 90);
        assert_eq!(c.max_clock_skew, Duration::from_millis(500));
        assert_eq!(c.repl_backlog, 1 << 20);
        let bad = |argv: &[&str]| parse(argv).unwrap_err();
        assert_eq!(
            bad(&["--certs-dir", "/c", "--node-id", "1024"]),
            ConfigError::NodeId(1024)
        );
        assert!(matches!(
            bad(&["--certs-dir", "/c", "--join", "nohost"]),
            ConfigError::Peer(_)
        ));
        assert!(matches!(
            bad(&["--certs-dir", "/c", "-x", "a b"]),
            ConfigError::Peer(_)
        ));
        assert_eq!(
            bad(&["--certs-dir", "/c", "--tombstone-ttl", "10x"]).to_string(),
            "--tombstone-ttl: invalid duration \"10x\": expected a number with a unit ms, s, m or h"
        );
        assert_eq!(
            bad(&["--certs-dir", "/c", "--tombstone-ttl", "0"]).to_string(),
            "--tombstone-ttl: must be between 1s and 30d"
        );
    }

    /// Every cluster setting is checked on a standalone node too, and one given without
    /// `--certs-dir` is refused by name rather than ignored.
    #[test]
    fn cluster_settings_are_checked_without_a_cluster() {
        let bad = |argv: &[&str]| parse(argv).unwrap_err().to_string();
        assert_eq!(
            bad(&["--repl-backlog", "lots"]),
            "--repl-backlog: invalid size \"lots\": expected a number with an optional unit k, m or g"
        );
        for (flag, value) in [
            ("--max-clock-skew", "soon"),
            ("--join-timeout", "1y"),
            ("--drain-timeout", "10 s"),
            ("--tombstone-ttl", "31d"),
        ] {
            assert!(
                bad(&[flag, value]).starts_with(&format!("{flag}: ")),
                "{flag}"
            );
        }
        for flag in [
            "--repl-backlog",
            "--max-clock-skew",
            "--tombstone-ttl",
            "--join-timeout",
            "--drain-timeout",
        ] {
            let value = if flag == "--repl-backlog" { "1m" } else { "5s" };
            assert_eq!(
                parse(&[flag, value]).unwrap_err(),
                ConfigError::ClusterFlagWithoutCerts(flag)
            );
        }
    }

    #[test]
    fn default_node_ids_spread() {
        let ids: std::collections::HashSet<u16> = (0..100)
            .map(|i| node_id_for(&format!("node-{i}")).get())
            .collect();
        assert!(ids.len() > 90, "{}", ids.len());
    }
}
