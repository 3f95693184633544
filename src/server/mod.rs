//! The server: listeners, worker threads, connections, and the state they share.
//!
//! Threading follows memcached: an acceptor hands each new connection to one of `-t`
//! worker threads, round-robin; each worker runs a single-threaded tokio runtime, so a
//! connection never migrates and its requests never cross a thread. The store is shared by
//! all workers behind its shard locks.

mod accept;
mod ack;
mod connection;
pub mod dispatch;
mod dump;
mod idle;
mod meta_dispatch;
mod ops;
pub mod report;
mod signals;
pub use signals::ignore_hangups_until_handled;
pub mod state_file;
pub mod stats;
pub mod tls;
mod unix_socket;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpSocket, UnixSocket};
use tokio::sync::{mpsc, watch};

use crate::certs::{load_node_identity, CertsError};
use crate::clock::{Clock, Hlc, NodeId};
use crate::cluster::outbox::Outbox;
use crate::cluster::Cluster;
use crate::config::{ClusterConfig, Config, ListenerTls};
use crate::replication::transport::{PeerEndpoint, TransportError};
use crate::state;
use crate::store::{Store, StoreConfig};
use connection::Stream;
use state_file::{Saving, StateFile};
use stats::{ConnStats, Counters};
use tls::{ClientTls, TlsError};
use unix_socket::bind_unix;
pub use unix_socket::UnixSocketError;

/// What `version` answers: the memcached release whose behaviour we follow, then our own.
pub const VERSION: &str = concat!("1.6.45 meshcached-", env!("CARGO_PKG_VERSION"));

/// How long a shutdown waits for connections to finish their in-flight replies.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// How long a stopping node keeps handling gossip after announcing its leave, so that the
/// members it told pass it on (and its own retransmissions go out).
const LEAVE_LINGER: Duration = Duration::from_millis(300);
/// The listen backlog of client sockets (memcached's default).
const LISTEN_BACKLOG: u32 = 1024;
/// How often the sweeper wakes, and how many slots per shard it looks at each time.
/// The sweeper's pace adapts like memcached's LRU maintainer: every millisecond while
/// clients are active, backing off to every 100 ms when they are not.
const SWEEP_BUSY: Duration = Duration::from_millis(1);
const SWEEP_IDLE: Duration = Duration::from_millis(100);
const SWEEP_BUDGET: usize = 256;

/// State shared by every connection.
pub struct Shared {
    /// The node's name in its log lines: its cluster name, or standalone the host name.
    pub name: String,
    pub store: Arc<Store>,
    pub hlc: Arc<Hlc>,
    /// Set when the node replicates to peers.
    pub cluster: Option<Arc<Cluster>>,
    /// Where local writes go to replicate (the cluster's, when there is one): the
    /// dispatcher records flushes in it.
    pub outbox: Option<Arc<Outbox>>,
    /// Set with `--ack-replicas` above 0: writes' answers wait for peers.
    pub acks: Option<ack::AckGate>,
    pub config: Config,
    pub counters: Counters,
    pub conns: ConnStats,
    /// Client TLS (`-Z`): what TLS listeners serve, and its counters.
    pub tls: Option<ClientTls>,
    pub started_ms: u64,
    shutdown: watch::Sender<bool>,
    /// True once the client listeners accept connections.
    serving: watch::Sender<bool>,
}

impl Shared {
    pub fn clock(&self) -> &Arc<dyn Clock> {
        self.hlc.clock()
    }

    /// Whether writes replicate to peers; it decides the few places where replication
    /// needs other semantics than memcached's (touch changes the CAS, meta `E` is refused).
    pub fn replicated(&self) -> bool {
        self.outbox.is_some()
    }

    /// The state a dispatcher needs, without listeners or a cluster shell: for driving
    /// client requests through [`dispatch::execute`] in process (the simulator runs one per
    /// replica core, with that core's outbox).
    pub fn embedded(
        config: Config,
        store: Arc<Store>,
        hlc: Arc<Hlc>,
        outbox: Option<Arc<Outbox>>,
    ) -> Shared {
        let started_ms = hlc.clock().now_ms();
        Shared {
            name: log_name(&config),
            store,
            hlc,
            cluster: None,
            outbox,
            acks: None,
            config,
            counters: Counters::default(),
            conns: ConnStats::default(),
            tls: None,
            started_ms,
            shutdown: watch::channel(false).0,
            serving: watch::Sender::new(false),
        }
    }

    /// Asks the whole server to stop (a signal, the `shutdown` command, a test).
    pub fn request_shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    /// Whether a shutdown was asked for: the node is finishing its clients' requests and
    /// handing its writes to its peers before it exits.
    pub fn stopping(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Whether the client listeners accept connections.
    pub fn is_serving(&self) -> bool {
        *self.serving.borrow()
    }
}

/// A handle that stops a running [`Server`].
#[derive(Clone)]
pub struct ShutdownHandle(Arc<Shared>);

impl ShutdownHandle {
    pub fn shutdown(&self) {
        self.0.request_shutdown();
    }
}

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen: {0}")]
    Listen(#[from] io::Error),
    #[error("cannot listen on {addr}: {source}{}", if source.kind() == io::ErrorKind::AddrInUse { " (is another memcached running? -p and -l choose another port or address)" } else { "" })]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("cluster certificates: {0}")]
    Certs(#[from] CertsError),
    #[error("--node-name is {flag:?} but the node certificate in {dir} is for {cert:?}; make a certificate for this node (`meshcached certs create-node`) or fix --node-name")]
    NameMismatch {
        flag: String,
        cert: String,
        dir: String,
    },
    #[error("{0}")]
    UnixSocket(#[from] UnixSocketError),
    #[error("{0}")]
    Transport(#[from] TransportError),
    #[error("--state-file: {0}; the node saves its store there when it stops, so the path must be writable from the start")]
    StateFile(#[from] state::StateError),
    #[error("client TLS (-Z): error {0}")]
    Tls(#[from] TlsError),
}

/// A bound, not yet running server. Its client sockets are bound (so the ports are taken
/// and known) but not listening: connections are refused until `run` opens them, which a
/// node with peers does only once its initial sync is complete.
pub struct Server {
    shared: Arc<Shared>,
    /// The client TCP sockets, each with whether it serves TLS.
    tcp: Vec<(TcpSocket, ListenerTls)>,
    unix: Option<UnixSocket>,
    /// The runtime of the cluster tasks (a thread of its own), when clustered.
    cluster_rt: Option<tokio::runtime::Runtime>,
    /// Where to save the store on a graceful shutdown (`--state-file`).
    state_file: Option<StateFile>,
    /// The store came from that file: `run` removes it before serving.
    state_loaded: bool,
}

impl Server {
    /// Binds the listeners now (so that a port-0 caller learns its port before `run`).
    pub fn bind(config: Config, clock: Arc<dyn Clock>) -> Result<Server, ServerError> {
        let mut tcp = Vec::new();
        let mut unix = None;
        if let Some(path) = &config.unix_socket {
            unix = Some(bind_unix(path, config.unix_mask)?);
        } else {
            for listener in &config.listen {
                let socket = if listener.addr.is_ipv4() {
                    TcpSocket::new_v4()?
                } else {
                    TcpSocket::new_v6()?
                };
                socket.set_reuseaddr(true)?;
                socket
                    .bind(listener.addr)
                    .map_err(|source| ServerError::Bind {
                        addr: listener.addr,
                        source,
                    })?;
                tcp.push((socket, listener.tls));
            }
        }
        // Before anything else starts: a certificate that cannot be served stops the node.
        let tls = match &config.tls {
            Some(t) => Some(ClientTls::new(t.clone(), clock.now_ms())?),
            None => None,
        };
        let store = Arc::new(Store::new(StoreConfig {
            mem_limit: config.mem_limit,
            max_item_size: config.max_item_size,
            evict: config.evict,
            cas_enabled: config.cas_enabled,
            shards: 64,
            // Standalone, a delete need not be remembered: no older write can arrive.
            tombstone_ttl: config.cluster.as_ref().map_or(0, |c| c.tombstone_ttl),
            tombstone_mem: None,
        }));
        // Node id 0 for a standalone node (DESIGN.md section 1).
        let node_id = config
            .cluster
            .as_ref()
            .map_or(NodeId::default(), |c| c.node_id);
        let hlc = Arc::new(Hlc::new(node_id, clock.clone()));
        let (cluster, cluster_rt, state_file, state_loaded) = match &config.cluster {
            Some(cc) => {
                let (cluster, rt, state_file, loaded) = start_cluster(cc, &store, &hlc)?;
                (Some(cluster), Some(rt), state_file, loaded)
            }
            None => (None, None, None, false),
        };
        // Without an initial sync to wait for, the port accepts from now on (connections
        // queue until `run`), as memcached's does once it is started.
        if accept::sync_gate(cluster.as_ref(), &config).is_none() {
            use std::os::fd::AsRawFd;
            let fds = tcp.iter().map(|(s, _)| s.as_raw_fd());
            for fd in fds.chain(unix.iter().map(|s| s.as_raw_fd())) {
                // SAFETY: listen(2) on a socket this function owns; `run` listens again
                // (which only sets the backlog) to get the tokio listener.
                if unsafe { libc::listen(fd, LISTEN_BACKLOG as i32) } != 0 {
                    return Err(ServerError::Listen(io::Error::last_os_error()));
                }
            }
        }
        let (shutdown, _) = watch::channel(false);
        let acks = ack_gate(&config, cluster.as_ref());
        let shared = Arc::new(Shared {
            name: log_name(&config),
            store,
            hlc,
            acks,
            outbox: cluster.as_ref().map(|c| c.outbox.clone()),
            cluster,
            counters: Counters::default(),
            conns: ConnStats::default(),
            tls,
            started_ms: clock.now_ms(),
            config,
            shutdown,
            serving: watch::Sender::new(false),
        });
        Ok(Server {
            shared,
            tcp,
            unix,
            cluster_rt,
            state_file,
            state_loaded,
        })
    }

    /// The cluster endpoint's address, when clustered.
    pub fn cluster_addr(&self) -> Option<SocketAddr> {
        self.shared.cluster.as_ref().and_then(|c| c.local_addr())
    }

    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.tcp
            .iter()
            .filter_map(|(l, _)| l.local_addr().ok())
            .collect()
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Becomes true once the client port accepts connections (for a node with peers, after
    /// its initial sync).
    pub fn serving(&self) -> watch::Receiver<bool> {
        self.shared.serving.subscribe()
    }

    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle(self.shared.clone())
    }

    /// Serves until shutdown is requested (signal, `shutdown` command or handle), then lets
    /// connections finish the requests they have read and returns. Blocks the calling thread.
    pub fn run(self, handle_signals: bool) -> io::Result<()> {
        // Start-up can no longer fail: the loaded state file goes before the first client.
        if let Some(sf) = self.state_file.as_ref().filter(|_| self.state_loaded) {
            sf.invalidate().map_err(|e| {
                io::Error::other(format!(
                    "{e}; not serving, since a crash later would reload the file as if it \
                     were current (the file is kept: fix the directory's permissions and \
                     start again)"
                ))
            })?;
        }
        let threads = self.shared.config.threads;
        let mut senders = Vec::with_capacity(threads);
        let mut workers = Vec::with_capacity(threads);
        for i in 0..threads {
            let (tx, rx) = mpsc::unbounded_channel::<Stream>();
            senders.push(tx);
            let shared = self.shared.clone();
            workers.push(
                std::thread::Builder::new()
                    .name(format!("meshcached-worker-{i}"))
                    .spawn(move || worker(shared, rx))?,
            );
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let result = rt.block_on(accept::accept_loop(
            self.shared.clone(),
            self.tcp,
            self.unix,
            senders,
            handle_signals,
        ));
        // Connections finish what they have read, bounded in time: a client that never
        // reads its answers must not hold the process up.
        let deadline = std::time::Instant::now() + SHUTDOWN_GRACE;
        for w in workers {
            while !w.is_finished() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if !w.is_finished() {
                tracing::warn!(
                    node = %self.shared.name,
                    "connections still open after the shutdown grace period; closing them"
                );
                break;
            }
            if w.join().is_err() {
                tracing::error!(node = %self.shared.name, "a worker thread panicked");
            }
        }
        if let (Some(cluster), Some(rt)) = (&self.shared.cluster, self.cluster_rt) {
            // Every write clients were answered for is in the log by now (the workers are
            // done): hand it to the peers before leaving.
            let drain_timeout = self
                .shared
                .config
                .cluster
                .as_ref()
                .map_or(Duration::ZERO, |c| c.drain_timeout);
            rt.block_on(async {
                cluster.drain(drain_timeout).await;
                // Say goodbye through SWIM while the connections still carry gossip, so
                // the others record this node as left rather than failed.
                cluster.leave_membership(LEAVE_LINGER).await;
                cluster
                    .close("node shutting down", Duration::from_millis(200))
                    .await;
            });
            rt.shutdown_timeout(Duration::from_millis(100));
            if let Some(sf) = &self.state_file {
                sf.save(Saving {
                    store: &self.shared.store,
                    now_ms: self.shared.clock().now_ms(),
                    phase: cluster.phase(),
                    positions: cluster.positions(),
                    own: cluster.own_position(),
                });
            }
        }
        result
    }
}

/// The gate that holds writes' answers for their peers, with `--ack-replicas` above 0.
fn ack_gate(config: &Config, cluster: Option<&Arc<Cluster>>) -> Option<ack::AckGate> {
    let (cc, cluster) = (config.cluster.as_ref()?, cluster?);
    (cc.ack_replicas > 0).then(|| {
        ack::AckGate::new(
            cluster.outbox.clone(),
            cluster.acks(),
            cc.ack_timeout,
            cluster.counters.clone(),
        )
    })
}

/// Loads and checks the node's certificates, binds the cluster endpoint on a runtime thread
/// of its own, hooks the store's journal to the replication log and starts the peer tasks.
fn start_cluster(
    cc: &ClusterConfig,
    store: &Arc<Store>,
    hlc: &Arc<Hlc>,
) -> Result<
    (
        Arc<Cluster>,
        tokio::runtime::Runtime,
        Option<StateFile>,
        bool,
    ),
    ServerError,
> {
    let identity = load_node_identity(&cc.certs_dir)?;
    if identity.name != cc.node_name {
        return Err(ServerError::NameMismatch {
            flag: cc.node_name.clone(),
            cert: identity.name.clone(),
            dir: cc.certs_dir.display().to_string(),
        });
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("meshcached-cluster")
        .enable_all()
        .build()?;
    let cluster_id = identity
        .ca_certs
        .first()
        .map_or(0, |ca| state::cluster_id(ca.as_ref()));
    let state_file = cc.state_file.as_ref().map(|path| StateFile {
        path: path.clone(),
        cluster_id,
        node_name: cc.node_name.clone(),
        tombstone_ttl: cc.tombstone_ttl,
    });
    if let Some(sf) = &state_file {
        state::check_writable(&sf.path)?;
    }
    let positions = state_file.as_ref().and_then(|sf| sf.load(store, hlc));
    let loaded = positions.is_some();
    let cluster = Cluster::new(cc, store.clone(), hlc.clone(), positions);
    let outbox = cluster.outbox.clone();
    if store
        .set_journal(Box::new(move |key, change| {
            outbox.record_change(key, change)
        }))
        .is_err()
    {
        tracing::error!(node = %cc.node_name, "the store already had a journal");
    }
    {
        let _guard = rt.enter();
        let endpoint = PeerEndpoint::bind(cc.listen, identity)?;
        tracing::info!(
            node = %cc.node_name,
            node_id = cc.node_id.get(),
            addr = %endpoint.local_addr()?,
            "cluster endpoint listening (QUIC, mutual TLS)"
        );
        cluster.start(endpoint);
    }
    Ok((cluster, rt, state_file, loaded))
}

/// Reclaims expired and flushed items in the background, one shard per wake-up.
///
/// The pace follows activity, as memcached's maintainer threads do, and that matters for
/// latency as much as for memory: on a virtual machine an idle vCPU halts, and waking it
/// for the next request costs tens of microseconds. A sweeper that wakes every
/// millisecond while clients are active keeps the vCPU out of that state (measured in
/// benches/README.md); when clients go quiet it backs off to a tenth of a second.
async fn sweep_loop(shared: Arc<Shared>) {
    let mut pause = SWEEP_IDLE;
    let mut seen = 0;
    let mut shard = 0usize;
    loop {
        tokio::time::sleep(pause).await;
        let read = shared.counters.get(stats::Counter::BytesRead);
        pause = if read != seen {
            SWEEP_BUSY
        } else {
            (pause * 2).min(SWEEP_IDLE)
        };
        seen = read;
        let now = shared.clock().now_secs();
        shared.store.sweep_shard(shard, now, SWEEP_BUDGET);
        shard = shard.wrapping_add(1);
    }
}

fn worker(shared: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<Stream>) {
    // IO only: a time driver would sit in every park of the hot loop, and workers need no
    // timers (the shutdown grace period is kept by the thread that joins them), except for
    // the idle timeout when it is on, the time limit of TLS handshakes and the wait for
    // `--ack-replicas` peers.
    let mut builder = tokio::runtime::Builder::new_current_thread();
    builder.enable_io();
    if shared.config.idle_timeout > 0 || shared.tls.is_some() || shared.acks.is_some() {
        builder.enable_time();
    }
    let rt = match builder.build() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(node = %shared.name, error = %e, "cannot start a worker runtime");
            return;
        }
    };
    rt.block_on(async move {
        let mut conns = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                conn = rx.recv() => match conn {
                    Some(conn) => {
                        let shared = shared.clone();
                        conns.spawn(connection::serve(shared, conn));
                    }
                    None => break,
                },
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
        // Shutdown: connections finish what they have read.
        while conns.join_next().await.is_some() {}
    });
}

/// The name a node's log lines carry: `--node-name` in a cluster; standalone, the host name
/// (what `--node-name` defaults to), so that every line names its node either way.
pub fn log_name(config: &Config) -> String {
    match &config.cluster {
        Some(cc) => cc.node_name.clone(),
        None => crate::config::host_name().unwrap_or_else(|| "meshcached".to_string()),
    }
}
