//! Command-line configuration, memcached-compatible.
//!
//! [`Args`] is what clap parses; [`Config`] is the validated result that the rest of the
//! program takes, so nothing downstream re-checks a flag. Sizes take human units (`64k`,
//! `1m`, `2g`); memcached's bare numbers keep memcached's meaning (`-m` in megabytes, `-I` in
//! bytes).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::clock::{NodeId, MAX_NODE_ID};

/// A memcached-compatible cache server where every node is a master.
#[derive(Debug, Clone, Parser)]
#[command(name = "meshcached", version, about, disable_help_flag = true)]
pub struct Args {
    /// TCP port to listen on (0 picks a free one).
    #[arg(short = 'p', long = "port", default_value_t = 11211)]
    pub port: u16,

    /// Interface(s) to listen on, comma separated.
    #[arg(short = 'l', long = "listen", default_value = "127.0.0.1")]
    pub listen: String,

    /// Unix socket path to listen on (disables TCP, as in memcached).
    #[arg(short = 's', long = "unix-socket")]
    pub unix_socket: Option<PathBuf>,

    /// Item memory in megabytes (or with a unit: 512k, 2g).
    #[arg(short = 'm', long = "memory-limit", default_value = "64")]
    pub memory_limit: String,

    /// Maximum simultaneous connections.
    #[arg(short = 'c', long = "conn-limit", default_value_t = 1024)]
    pub conn_limit: u32,

    /// Number of worker threads.
    #[arg(short = 't', long = "threads", default_value_t = 4)]
    pub threads: u16,

    /// Maximum item size, in bytes or with a unit (k, m); between 1k and 1g.
    #[arg(short = 'I', long = "max-item-size", default_value = "1m")]
    pub max_item_size: String,

    /// Return an error when memory is exhausted instead of evicting items.
    #[arg(short = 'M', long = "disable-evictions")]
    pub disable_evictions: bool,

    /// Do not return CAS values (versions are still kept internally).
    #[arg(short = 'C', long = "disable-cas")]
    pub disable_cas: bool,

    /// Refuse flush_all.
    #[arg(short = 'F', long = "disable-flush-all")]
    pub disable_flush_all: bool,

    /// Allow the `shutdown` command.
    #[arg(short = 'A', long = "enable-shutdown")]
    pub enable_shutdown: bool,

    /// UDP port: only 0 is accepted, UDP is not served.
    #[arg(short = 'U', long = "udp-port", default_value_t = 0)]
    pub udp_port: u16,

    /// Verbose logging (-v debug, -vv trace). RUST_LOG overrides.
    #[arg(short = 'v', long = "verbose", action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// User to run as (accepted for compatibility; no effect unless started as root).
    #[arg(short = 'u', long = "user")]
    pub user: Option<String>,

    /// Print help.
    #[arg(short = 'h', long = "help", action = clap::ArgAction::Help)]
    pub help: Option<bool>,

    /// This node's name in the cluster (default: the host name); must be the name in
    /// `node.crt`.
    #[arg(long = "node-name")]
    pub node_name: Option<String>,

    /// This node's id, 0-1023, unique in the cluster (default: derived from the name).
    #[arg(long = "node-id")]
    pub node_id: Option<u16>,

    /// Address of the cluster endpoint (UDP, QUIC), ADDR:PORT or ADDR (default: the first -l
    /// address, port -X).
    #[arg(long = "cluster-listen")]
    pub cluster_listen: Option<String>,

    /// Cluster port (repcached's -X; default 11212).
    #[arg(short = 'X', long = "cluster-port")]
    pub cluster_port: Option<u16>,

    /// Directory holding ca.crt, node.crt and node.key (see `meshcached certs`).
    #[arg(long = "certs-dir")]
    pub certs_dir: Option<PathBuf>,

    /// A cluster member to join, HOST:PORT (repeatable).
    #[arg(long = "join")]
    pub join: Vec<String>,

    /// A peer, HOST[:PORT] with the port defaulting to -X's (repcached's -x; repeatable).
    #[arg(short = 'x', long = "peer")]
    pub peer: Vec<String>,

    /// Bytes of recent local writes kept for peers that fall behind.
    #[arg(long = "repl-backlog", default_value = "64MB")]
    pub repl_backlog: String,

    /// How far ahead of local time a peer's version may be before it is refused.
    #[arg(long = "max-clock-skew", default_value = "5s")]
    pub max_clock_skew: String,

    /// How long a delete's tombstone is kept, so that older writes arriving late lose.
    #[arg(long = "tombstone-ttl", default_value = "10m")]
    pub tombstone_ttl: String,
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: Vec<SocketAddr>,
    pub unix_socket: Option<PathBuf>,
    pub mem_limit: usize,
    pub max_conns: u32,
    pub threads: usize,
    pub max_item_size: usize,
    pub evict: bool,
    pub cas_enabled: bool,
    pub flush_enabled: bool,
    pub shutdown_enabled: bool,
    pub verbose: u8,
    /// Set when the node takes part in a cluster (`--certs-dir` or peers given).
    pub cluster: Option<ClusterConfig>,
}

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
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 11211))],
            unix_socket: None,
            mem_limit: 64 << 20,
            max_conns: 1024,
            threads: 4,
            max_item_size: 1 << 20,
            evict: true,
            cas_enabled: true,
            flush_enabled: true,
            shutdown_enabled: false,
            verbose: 0,
            cluster: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("-U {0}: meshcached does not serve UDP (memcached turned it off by default after it was used for amplification attacks); use -U 0 or leave it out")]
    Udp(u16),
    #[error("invalid size {0:?}: expected a number with an optional unit k, m or g")]
    Size(String),
    #[error("-I {0}: the item size limit must be between 1k and 1g")]
    ItemSize(String),
    #[error("-I {item} is larger than the memory limit -m ({mem} bytes)")]
    ItemOverMemory { item: usize, mem: usize },
    #[error("-m must be at least 1 megabyte")]
    Memory,
    #[error("-t must be between 1 and 256")]
    Threads,
    #[error("-c must be at least 1")]
    Conns,
    #[error("invalid listen address {0:?}")]
    Listen(String),
    #[error("invalid duration {0:?}: expected a number with a unit ms, s, m or h")]
    Duration(String),
    #[error("peers are given but no --certs-dir: replication always runs over mutual TLS, there is no plaintext mode (make certificates with `meshcached certs`)")]
    PeersWithoutCerts,
    #[error("{0} needs --certs-dir: replication always runs over mutual TLS")]
    ClusterFlagWithoutCerts(&'static str),
    #[error("--node-id {0}: node ids go from 0 to 1023")]
    NodeId(u16),
    #[error("invalid peer address {0:?}: expected HOST:PORT")]
    Peer(String),
    #[error("invalid --cluster-listen {0:?}: expected ADDR:PORT or ADDR")]
    ClusterListen(String),
    #[error("no --node-name given and the host name cannot be read")]
    NoHostName,
    #[error("--tombstone-ttl must be between 1s and 30d")]
    TombstoneTtl,
}

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

fn host_name() -> Option<String> {
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

fn cluster_config(
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
    let Some(certs_dir) = args.certs_dir.clone() else {
        if !join.is_empty() {
            return Err(ConfigError::PeersWithoutCerts);
        }
        let stray = [
            (args.cluster_listen.is_some(), "--cluster-listen"),
            (args.cluster_port.is_some(), "-X"),
            (args.node_name.is_some(), "--node-name"),
            (args.node_id.is_some(), "--node-id"),
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
        Some(s) => match s.parse::<SocketAddr>() {
            Ok(a) => a,
            Err(_) => {
                let ip: IpAddr = s
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse()
                    .map_err(|_| ConfigError::ClusterListen(s.clone()))?;
                SocketAddr::new(ip, port)
            }
        },
    };
    let tombstone_ttl = parse_duration(&args.tombstone_ttl)?;
    if !(Duration::from_secs(1)..=Duration::from_secs(30 * 86_400)).contains(&tombstone_ttl) {
        return Err(ConfigError::TombstoneTtl);
    }
    Ok(Some(ClusterConfig {
        node_name,
        node_id,
        listen: cluster_listen,
        certs_dir,
        join,
        repl_backlog: parse_size(&args.repl_backlog, 1)?,
        max_clock_skew: parse_duration(&args.max_clock_skew)?,
        tombstone_ttl: tombstone_ttl.as_secs() as u32,
    }))
}

/// Parses `64`, `64k`, `64m`, `1g` (case-insensitive, optional `b`). A bare number is
/// multiplied by `bare_unit`.
pub fn parse_size(s: &str, bare_unit: usize) -> Result<usize, ConfigError> {
    let err = || ConfigError::Size(s.to_string());
    let lower = s.trim().to_ascii_lowercase();
    let lower = lower.strip_suffix('b').unwrap_or(&lower);
    let (digits, unit) = match lower.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        None => (lower, bare_unit),
        Some((i, _)) => {
            let unit = match &lower[i..] {
                "k" => 1 << 10,
                "m" => 1 << 20,
                "g" => 1 << 30,
                _ => return Err(err()),
            };
            (&lower[..i], unit)
        }
    };
    let n: usize = digits.parse().map_err(|_| err())?;
    n.checked_mul(unit).ok_or_else(err)
}

impl Config {
    pub fn from_args(args: &Args) -> Result<Config, ConfigError> {
        if args.udp_port != 0 {
            return Err(ConfigError::Udp(args.udp_port));
        }
        let mem_limit = parse_size(&args.memory_limit, 1 << 20)?;
        if mem_limit < 1 << 20 {
            return Err(ConfigError::Memory);
        }
        let max_item_size = parse_size(&args.max_item_size, 1)?;
        if !(1 << 10..=1 << 30).contains(&max_item_size) {
            return Err(ConfigError::ItemSize(args.max_item_size.clone()));
        }
        if max_item_size > mem_limit {
            return Err(ConfigError::ItemOverMemory {
                item: max_item_size,
                mem: mem_limit,
            });
        }
        if args.threads == 0 || args.threads > 256 {
            return Err(ConfigError::Threads);
        }
        if args.conn_limit == 0 {
            return Err(ConfigError::Conns);
        }
        let mut listen = Vec::new();
        for part in args
            .listen
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            let addr = match part.parse::<SocketAddr>() {
                Ok(a) => a,
                Err(_) => {
                    let ip: IpAddr = part
                        .trim_start_matches('[')
                        .trim_end_matches(']')
                        .parse()
                        .map_err(|_| ConfigError::Listen(part.to_string()))?;
                    SocketAddr::new(ip, args.port)
                }
            };
            listen.push(addr);
        }
        if listen.is_empty() {
            return Err(ConfigError::Listen(args.listen.clone()));
        }
        let cluster = cluster_config(args, &listen)?;
        Ok(Config {
            cluster,
            listen,
            unix_socket: args.unix_socket.clone(),
            mem_limit,
            max_conns: args.conn_limit,
            threads: usize::from(args.threads),
            max_item_size,
            evict: !args.disable_evictions,
            cas_enabled: !args.disable_cas,
            flush_enabled: !args.disable_flush_all,
            shutdown_enabled: args.enable_shutdown,
            verbose: args.verbose,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(argv: &[&str]) -> Result<Config, ConfigError> {
        let args = Args::try_parse_from(std::iter::once("meshcached").chain(argv.iter().copied()))
            .expect("clap accepts these");
        Config::from_args(&args)
    }

    #[test]
    fn defaults_match_memcached() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.listen, vec!["127.0.0.1:11211".parse().unwrap()]);
        assert_eq!(c.mem_limit, 64 << 20);
        assert_eq!(c.max_item_size, 1 << 20);
        assert_eq!(c.max_conns, 1024);
        assert!(c.evict && c.cas_enabled && c.flush_enabled && !c.shutdown_enabled);
    }

    #[test]
    fn sizes_and_flags() {
        let c = parse(&[
            "-m",
            "128",
            "-I",
            "2m",
            "-M",
            "-C",
            "-F",
            "-p",
            "0",
            "-l",
            "127.0.0.2",
        ])
        .unwrap();
        assert_eq!(c.mem_limit, 128 << 20);
        assert_eq!(c.max_item_size, 2 << 20);
        assert!(!c.evict && !c.cas_enabled && !c.flush_enabled);
        assert_eq!(c.listen, vec!["127.0.0.2:0".parse().unwrap()]);
        assert_eq!(parse(&["-I", "512k"]).unwrap().max_item_size, 512 << 10);
        assert_eq!(parse(&["-I", "4096"]).unwrap().max_item_size, 4096);
        assert_eq!(parse(&["-m", "1g"]).unwrap().mem_limit, 1 << 30);
    }

    #[test]
    fn refusals() {
        assert!(matches!(
            parse(&["-U", "11211"]),
            Err(ConfigError::Udp(11211))
        ));
        assert!(parse(&["-U", "0"]).is_ok());
        assert!(matches!(parse(&["-I", "1x"]), Err(ConfigError::Size(_))));
        assert!(matches!(
            parse(&["-I", "100"]),
            Err(ConfigError::ItemSize(_))
        ));
        assert!(matches!(parse(&["-t", "0"]), Err(ConfigError::Threads)));
        assert!(matches!(
            parse(&["-l", "nowhere"]),
            Err(ConfigError::Listen(_))
        ));
        assert!(matches!(
            parse(&["-m", "2", "-I", "4m"]),
            Err(ConfigError::ItemOverMemory { .. })
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
        assert!(matches!(
            bad(&["--certs-dir", "/c", "--tombstone-ttl", "10x"]),
            ConfigError::Duration(_)
        ));
        assert_eq!(
            bad(&["--certs-dir", "/c", "--tombstone-ttl", "0"]),
            ConfigError::TombstoneTtl
        );
    }

    #[test]
    fn default_node_ids_spread() {
        let ids: std::collections::HashSet<u16> = (0..100)
            .map(|i| node_id_for(&format!("node-{i}")).get())
            .collect();
        assert!(ids.len() > 90, "{}", ids.len());
    }
}
