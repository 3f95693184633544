//! Command-line configuration, memcached-compatible.
//!
//! [`Args`] is what clap parses; [`Config`] is the validated result that the rest of the
//! program takes, so nothing downstream re-checks a flag. Sizes take human units (`64k`,
//! `1m`, `2g`); memcached's bare numbers keep memcached's meaning (`-m` in megabytes, `-I` in
//! bytes).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use clap::Parser;

mod cluster;
mod extended;
mod file;
mod tls;

use cluster::cluster_config;
pub use cluster::{
    host_name, node_id_for, parse_duration, ClusterConfig, PeerAddr, DEFAULT_CLUSTER_PORT,
};
use extended::{parse_extended, parse_unix_mask};
pub use extended::{Extended, DEFAULT_UNIX_MASK};
pub use file::{config_path, parse_command_line, read_config_file, ConfigFileError, FileArgs};
pub use tls::{Listener, ListenerTls, TlsConfig, TlsConfigError, TlsVersion, VerifyMode};

/// `--help`'s sections: memcached's own flags, the cluster's, client TLS and operations.
pub const HELP_MEMCACHED: &str = "memcached flags";
pub const HELP_CLUSTER: &str = "Cluster (replication between nodes)";
pub const HELP_TLS: &str = "Client TLS";
pub const HELP_OPERATIONS: &str = "Operations";

/// `--help`: the subcommands (dispatched by `main` before the flags are parsed, since the
/// node itself takes memcached's flat list of flags), then the flags by section.
const HELP_TEMPLATE: &str = "\
{about-with-newline}
{usage-heading} {usage}

Commands:
  demo     Start a local cluster with generated certificates (see `meshcached demo --help`)
  certs    Create and inspect the certificates that authenticate nodes to each other
  config   `meshcached config check [FILE] [FLAGS]` prints the effective configuration

Admin commands (text, on a client port, beside memcached's):
  cluster forget NAME   Forget a cluster member at once (one stopped for good): it is no
                        longer dialed or waited for; answers OK or CLIENT_ERROR why not

{all-args}{after-help}";

/// A memcached-compatible cache server where every node is a master.
#[derive(Debug, Clone, Parser)]
// `args_override_self`: the last occurrence of a flag wins, as with memcached's getopt;
// that is also how the command line overrides `--config`'s flags (placed before it).
#[command(
    name = "meshcached",
    version,
    about,
    disable_help_flag = true,
    disable_version_flag = true,
    args_override_self = true,
    help_template = HELP_TEMPLATE,
    override_usage = "meshcached [FLAGS]\n       meshcached <COMMAND> [ARGS]"
)]
pub struct Args {
    /// TCP port to listen on (0 picks a free one).
    #[arg(help_heading = HELP_MEMCACHED, short = 'p', long = "port", default_value_t = 11211)]
    pub port: u16,

    /// Interface(s) to listen on, comma separated or repeated: IP addresses or host names,
    /// each ADDR or ADDR:PORT. With -Z, a `notls:` prefix serves one plaintext, `btls:` TLS
    /// without client certificates, `mtls:` TLS requiring them.
    // Repeated -l add up, as memcached joins them with commas; the command line's -l
    // replace the configuration file's as a set (see `parse_command_line`).
    #[arg(help_heading = HELP_MEMCACHED, short = 'l', long = "listen", default_value = "127.0.0.1")]
    pub listen: Vec<String>,

    /// Unix socket path to listen on (disables TCP, as in memcached).
    #[arg(help_heading = HELP_MEMCACHED, short = 's', long = "unix-socket")]
    pub unix_socket: Option<PathBuf>,

    /// Access mask of the unix socket, in octal (default 0700: the owner only).
    #[arg(help_heading = HELP_MEMCACHED, short = 'a', long = "unix-mask", default_value = "0700")]
    pub unix_mask: String,

    /// memcached's extended options, comma separated: idle_timeout=SECONDS (0: never);
    /// with -Z, ssl_chain_cert=FILE, ssl_key=FILE, ssl_ca_cert=FILE, ssl_verify_mode=0..3,
    /// ssl_min_version=tlsv1.2|tlsv1.3, ssl_session_cache.
    #[arg(help_heading = HELP_MEMCACHED, short = 'o', long = "extended")]
    pub extended: Vec<String>,

    /// Serve TLS to clients (memcached's -Z): -o ssl_chain_cert=FILE is required, and
    /// ssl_key=FILE unless the key is in that file. `refresh_certs` or SIGHUP reloads them.
    #[arg(short = 'Z', long = "enable-ssl", help_heading = HELP_TLS)]
    pub enable_ssl: bool,

    /// Item memory in megabytes (or with a unit: 512k, 2g).
    #[arg(help_heading = HELP_MEMCACHED, short = 'm', long = "memory-limit", default_value = "64")]
    pub memory_limit: String,

    /// Maximum simultaneous connections.
    #[arg(help_heading = HELP_MEMCACHED, short = 'c', long = "conn-limit", default_value_t = 1024)]
    pub conn_limit: u32,

    /// Number of worker threads.
    #[arg(help_heading = HELP_MEMCACHED, short = 't', long = "threads", default_value_t = 4)]
    pub threads: u16,

    /// Maximum item size, in bytes or with a unit (k, m); between 1k and 1g.
    #[arg(help_heading = HELP_MEMCACHED, short = 'I', long = "max-item-size", default_value = "1m")]
    pub max_item_size: String,

    /// Return an error when memory is exhausted instead of evicting items.
    #[arg(help_heading = HELP_MEMCACHED, short = 'M', long = "disable-evictions")]
    pub disable_evictions: bool,

    /// Do not return CAS values (versions are still kept internally).
    #[arg(help_heading = HELP_MEMCACHED, short = 'C', long = "disable-cas")]
    pub disable_cas: bool,

    /// Refuse flush_all.
    #[arg(help_heading = HELP_MEMCACHED, short = 'F', long = "disable-flush-all")]
    pub disable_flush_all: bool,

    /// Allow the `shutdown` command.
    #[arg(help_heading = HELP_MEMCACHED, short = 'A', long = "enable-shutdown")]
    pub enable_shutdown: bool,

    /// UDP port: only 0 is accepted, UDP is not served.
    #[arg(help_heading = HELP_MEMCACHED, short = 'U', long = "udp-port", default_value_t = 0)]
    pub udp_port: u16,

    /// Verbose logging (-v debug, -vv trace). RUST_LOG overrides.
    #[arg(help_heading = HELP_MEMCACHED, short = 'v', long = "verbose", action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// User to run as: started as root, the node takes this user and its group once its
    /// ports are bound.
    #[arg(help_heading = HELP_MEMCACHED, short = 'u', long = "user")]
    pub user: Option<String>,

    /// Serve Prometheus metrics, /ready and /health over HTTP on ADDR:PORT (off by default;
    /// 9150 is the convention).
    #[arg(help_heading = HELP_OPERATIONS, long = "metrics-listen")]
    pub metrics_listen: Option<String>,

    /// A configuration file: TOML whose keys are these long flags, or Debian's
    /// /etc/memcached.conf style (one flag per line). Flags given here override it.
    #[arg(help_heading = HELP_OPERATIONS, long = "config")]
    pub config: Option<PathBuf>,

    /// Accepted for memcached compatibility: meshcached stays in the foreground (run it
    /// under systemd or another supervisor).
    #[arg(help_heading = HELP_MEMCACHED, short = 'd', long = "daemon")]
    pub daemon: bool,

    /// Write the process id to this file once the ports are bound (removed at exit).
    #[arg(help_heading = HELP_MEMCACHED, short = 'P', long = "pidfile")]
    pub pidfile: Option<PathBuf>,

    /// Print help.
    #[arg(help_heading = HELP_OPERATIONS, short = 'h', long = "help", action = clap::ArgAction::Help)]
    pub help: Option<bool>,

    /// Print the version.
    #[arg(help_heading = HELP_OPERATIONS, short = 'V', long = "version", action = clap::ArgAction::Version)]
    pub version: Option<bool>,

    /// This node's name in the cluster (default: the host name); must be the name in
    /// `node.crt`.
    #[arg(help_heading = HELP_CLUSTER, long = "node-name")]
    pub node_name: Option<String>,

    /// This node's id, 0-1023, unique in the cluster (default: derived from the name).
    #[arg(help_heading = HELP_CLUSTER, long = "node-id")]
    pub node_id: Option<u16>,

    /// Address of the cluster endpoint (UDP, QUIC), ADDR:PORT or ADDR (default: the first -l
    /// address, port -X).
    #[arg(help_heading = HELP_CLUSTER, long = "cluster-listen")]
    pub cluster_listen: Option<String>,

    /// Cluster port (repcached's -X; default 11212).
    #[arg(help_heading = HELP_CLUSTER, short = 'X', long = "cluster-port")]
    pub cluster_port: Option<u16>,

    /// Directory holding ca.crt, node.crt and node.key (see `meshcached certs`).
    #[arg(help_heading = HELP_CLUSTER, long = "certs-dir")]
    pub certs_dir: Option<PathBuf>,

    /// A cluster member to join, HOST:PORT (repeatable).
    #[arg(help_heading = HELP_CLUSTER, long = "join")]
    pub join: Vec<String>,

    /// A peer, HOST[:PORT] with the port defaulting to -X's (repcached's -x; repeatable).
    #[arg(help_heading = HELP_CLUSTER, short = 'x', long = "peer")]
    pub peer: Vec<String>,

    /// Bytes of recent local writes kept for peers that fall behind (default 64MB).
    #[arg(help_heading = HELP_CLUSTER, long = "repl-backlog")]
    pub repl_backlog: Option<String>,

    /// How far ahead of local time a peer's version may be before it is refused (default
    /// 5s).
    #[arg(help_heading = HELP_CLUSTER, long = "max-clock-skew")]
    pub max_clock_skew: Option<String>,

    /// How long a delete's tombstone is kept, so that older writes arriving late lose
    /// (default 10m).
    #[arg(help_heading = HELP_CLUSTER, long = "tombstone-ttl")]
    pub tombstone_ttl: Option<String>,

    /// How long a starting node waits for a peer to answer before it serves anyway (default
    /// 10s).
    #[arg(help_heading = HELP_CLUSTER, long = "join-timeout")]
    pub join_timeout: Option<String>,

    /// Forget a member down (unreachable) this long: stop dialing it and listing it
    /// (default 72h, to outlast a weekend's partition; `cluster forget NAME` does it at
    /// once).
    #[arg(help_heading = HELP_CLUSTER, long = "remove-down-after")]
    pub remove_down_after: Option<String>,

    /// Open the client port at once instead of after the initial sync.
    #[arg(help_heading = HELP_CLUSTER, long = "serve-while-syncing")]
    pub serve_while_syncing: bool,

    /// On SIGTERM/SIGINT, how long to wait for peers to take the writes they lack (default
    /// 10s).
    #[arg(help_heading = HELP_CLUSTER, long = "drain-timeout")]
    pub drain_timeout: Option<String>,

    /// Answer a write only once this many peers applied it (default 0: asynchronous
    /// replication); see --ack-timeout.
    #[arg(help_heading = HELP_CLUSTER, long = "ack-replicas")]
    pub ack_replicas: Option<usize>,

    /// With --ack-replicas, how long a write waits for its peers before it is answered
    /// SERVER_ERROR (default 500ms).
    #[arg(help_heading = HELP_CLUSTER, long = "ack-timeout")]
    pub ack_timeout: Option<String>,

    /// How often to compare stores with each peer and repair what replication missed
    /// (default 10s; 0 turns anti-entropy off).
    #[arg(help_heading = HELP_CLUSTER, long = "anti-entropy-period")]
    pub anti_entropy_period: Option<String>,

    /// Save the store here on a graceful shutdown and load it at start (warm restart).
    #[arg(help_heading = HELP_CLUSTER, long = "state-file")]
    pub state_file: Option<PathBuf>,
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The TCP listeners, each plaintext or TLS.
    pub listen: Vec<Listener>,
    /// Client TLS (`-Z`): certificates and client verification; `None` when off.
    pub tls: Option<TlsConfig>,
    pub unix_socket: Option<PathBuf>,
    /// Permission bits of the unix socket file (`-a`).
    pub unix_mask: u32,
    /// Seconds without a command after which a TCP client is disconnected; 0: never.
    pub idle_timeout: u32,
    pub mem_limit: usize,
    pub max_conns: u32,
    pub threads: usize,
    pub max_item_size: usize,
    pub evict: bool,
    pub cas_enabled: bool,
    pub flush_enabled: bool,
    pub shutdown_enabled: bool,
    pub verbose: u8,
    /// Where `/metrics`, `/ready` and `/health` are served, if anywhere.
    pub metrics_listen: Option<SocketAddr>,
    /// Set when the node takes part in a cluster (`--certs-dir` or peers given).
    pub cluster: Option<ClusterConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: vec![Listener {
                addr: SocketAddr::from(([127, 0, 0, 1], 11211)),
                tls: ListenerTls::Off,
            }],
            tls: None,
            unix_socket: None,
            unix_mask: DEFAULT_UNIX_MASK,
            idle_timeout: 0,
            mem_limit: 64 << 20,
            max_conns: 1024,
            threads: 4,
            max_item_size: 1 << 20,
            evict: true,
            cas_enabled: true,
            flush_enabled: true,
            shutdown_enabled: false,
            verbose: 0,
            metrics_listen: None,
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
    #[error("invalid listen address {0:?}: expected an IP address or a host name, with an optional :PORT")]
    Listen(String),
    #[error("cannot resolve the listen address {host:?}: {reason}")]
    Resolve { host: String, reason: String },
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
    #[error("must be between 1s and 30d")]
    TombstoneTtl,
    #[error("must be longer than 0 (a write cannot be acknowledged by a peer in no time)")]
    AckTimeout,
    #[error("{flag}: {message}")]
    Flag { flag: &'static str, message: String },
    #[error("invalid --metrics-listen {0:?}: expected ADDR:PORT, such as 127.0.0.1:9150")]
    MetricsListen(String),
    #[error("-a {0:?}: expected an octal access mask between 0 and 0777, such as 0700")]
    UnixMask(String),
    #[error("-o {0}: not supported by meshcached (supported: idle_timeout=SECONDS and, with -Z, ssl_chain_cert, ssl_key, ssl_ca_cert, ssl_verify_mode, ssl_min_version, ssl_session_cache, ssl_keyformat=1)")]
    Extended(String),
    #[error("-o {0}: expected idle_timeout=SECONDS, a whole number (0 turns it off)")]
    IdleTimeout(String),
    #[error("{0}")]
    Tls(#[from] TlsConfigError),
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

/// An address to listen on: `IP`, `IP:PORT`, `[IPV6]`, `[IPV6]:PORT`, or a host name with an
/// optional `:PORT`, which is resolved now (every address it has, as memcached binds every
/// address `getaddrinfo` gives for `-l`). `port` applies where none is given.
pub fn resolve_bind(s: &str, port: u16) -> Result<Vec<SocketAddr>, ConfigError> {
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(vec![addr]);
    }
    if let Ok(ip) = s
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
    {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) => (
            h,
            p.parse::<u16>()
                .map_err(|_| ConfigError::Listen(s.into()))?,
        ),
        None => (s, port),
    };
    let valid = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if !valid {
        return Err(ConfigError::Listen(s.to_string()));
    }
    let resolve_err = |reason: String| ConfigError::Resolve {
        host: host.to_string(),
        reason,
    };
    let addrs: Vec<SocketAddr> = std::net::ToSocketAddrs::to_socket_addrs(&(host, port))
        .map_err(|e| resolve_err(e.to_string()))?
        .collect();
    if addrs.is_empty() {
        return Err(resolve_err("no address".into()));
    }
    Ok(addrs)
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
        let mut prefixed = Vec::new();
        for entry in args
            .listen
            .iter()
            .flat_map(|l| l.split(','))
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            let (tls, part) = tls::split_listener_prefix(entry);
            if part.len() != entry.len() {
                prefixed.push(entry.to_string());
            }
            for addr in resolve_bind(part, args.port)? {
                if !listen.iter().any(|l: &Listener| l.addr == addr) {
                    listen.push(Listener { addr, tls });
                }
            }
        }
        if listen.is_empty() {
            return Err(ConfigError::Listen(args.listen.join(",")));
        }
        let addrs: Vec<SocketAddr> = listen.iter().map(|l| l.addr).collect();
        let cluster = cluster_config(args, &addrs)?;
        let extended = parse_extended(&args.extended)?;
        let tls = tls::tls_config(
            args.enable_ssl,
            &extended.ssl,
            &mut listen,
            &prefixed,
            args.unix_socket.is_some(),
        )?;
        let metrics_listen = match &args.metrics_listen {
            // A port is required: there is no conventional default to fall back on.
            Some(a)
                if a.rsplit_once(':')
                    .is_some_and(|(_, p)| p.parse::<u16>().is_ok()) =>
            {
                let addrs =
                    resolve_bind(a, 0).map_err(|_| ConfigError::MetricsListen(a.clone()))?;
                Some(addrs[0])
            }
            Some(a) => return Err(ConfigError::MetricsListen(a.clone())),
            None => None,
        };
        Ok(Config {
            cluster,
            listen,
            tls,
            unix_socket: args.unix_socket.clone(),
            unix_mask: parse_unix_mask(&args.unix_mask)?,
            idle_timeout: extended.idle_timeout,
            mem_limit,
            max_conns: args.conn_limit,
            threads: usize::from(args.threads),
            max_item_size,
            evict: !args.disable_evictions,
            cas_enabled: !args.disable_cas,
            flush_enabled: !args.disable_flush_all,
            shutdown_enabled: args.enable_shutdown,
            verbose: args.verbose,
            metrics_listen,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// `Config::from_args` over an argv without the program name.
    pub(crate) fn parse(argv: &[&str]) -> Result<Config, ConfigError> {
        let args = Args::try_parse_from(std::iter::once("meshcached").chain(argv.iter().copied()))
            .expect("clap accepts these");
        Config::from_args(&args)
    }

    #[test]
    fn defaults_match_memcached() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.listen[0].addr, "127.0.0.1:11211".parse().unwrap());
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
        assert_eq!(c.listen[0].addr, "127.0.0.2:0".parse().unwrap());
        assert_eq!(parse(&["-I", "512k"]).unwrap().max_item_size, 512 << 10);
        assert_eq!(parse(&["-I", "4096"]).unwrap().max_item_size, 4096);
        assert_eq!(parse(&["-m", "1g"]).unwrap().mem_limit, 1 << 30);
    }

    /// `-l` takes host names, as memcached's does: every address the name resolves to.
    #[test]
    fn host_names_are_resolved() {
        let c = parse(&["-l", "localhost", "-p", "7"]).unwrap();
        assert!(!c.listen.is_empty());
        assert!(c
            .listen
            .iter()
            .all(|l| l.addr.ip().is_loopback() && l.addr.port() == 7));
        let c = parse(&["-l", "localhost:8,127.0.0.2"]).unwrap();
        assert!(c.listen.iter().any(|l| l.addr.port() == 8));
        let want: SocketAddr = "127.0.0.2:11211".parse().unwrap();
        assert!(c.listen.iter().any(|l| l.addr == want));
        let c = parse(&["--metrics-listen", "localhost:9150"]).unwrap();
        assert!(c.metrics_listen.unwrap().ip().is_loopback());
        let c = parse(&[
            "--certs-dir",
            "/c",
            "--node-name",
            "a",
            "--cluster-listen",
            "localhost",
        ]);
        let listen = c.unwrap().cluster.unwrap().listen;
        assert!(listen.ip().is_loopback() && listen.port() == 11212);
    }

    /// Repeated -l add up, as memcached's (`memcached -l 127.0.0.1 -l 127.0.0.2`).
    #[test]
    fn repeated_listen_flags_add_up() {
        let c = parse(&["-l", "127.0.0.2", "-l", "127.0.0.3,127.0.0.4", "-p", "7"]).unwrap();
        let addrs: Vec<String> = c.listen.iter().map(|l| l.addr.to_string()).collect();
        assert_eq!(addrs, ["127.0.0.2:7", "127.0.0.3:7", "127.0.0.4:7"]);
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
            parse(&["-l", "no_where"]),
            Err(ConfigError::Listen(_))
        ));
        // RFC 6761: names under .invalid never resolve.
        assert!(matches!(
            parse(&["-l", "nowhere.invalid"]),
            Err(ConfigError::Resolve { .. })
        ));
        assert!(matches!(
            parse(&["--metrics-listen", "127.0.0.1"]),
            Err(ConfigError::MetricsListen(_))
        ));
        assert!(matches!(
            parse(&["-m", "2", "-I", "4m"]),
            Err(ConfigError::ItemOverMemory { .. })
        ));
    }
}
