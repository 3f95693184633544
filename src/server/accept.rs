//! The client side's front door: waiting for the initial sync, then accepting on every
//! listener (TCP, plaintext or TLS, and the unix socket) and handing connections to the
//! workers within the connection limit (`-c`).

use std::future::Future;
use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket, UnixListener, UnixSocket};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::connection::Stream;
use super::{signals, sweep_loop, Shared, LISTEN_BACKLOG};
use crate::cluster::Cluster;
use crate::config::{Config, ListenerTls};

/// What the client port waits for before it listens: the cluster's initial sync, unless
/// it is already done or `--serve-while-syncing` says not to wait; for a first node (no
/// `--join`, nothing to sync from), `--max-clock-skew` after its start
/// (`cluster::sync::SyncPlan::new` says why), which `--serve-while-syncing` does not skip.
pub(super) fn sync_gate(
    cluster: Option<&Arc<Cluster>>,
    config: &Config,
) -> Option<watch::Receiver<bool>> {
    let serve_early = config
        .cluster
        .as_ref()
        .is_some_and(|c| c.serve_while_syncing && !c.join.is_empty());
    let ready = cluster.filter(|_| !serve_early)?.ready();
    let done = *ready.borrow();
    (!done).then_some(ready)
}

/// Waits until the node may serve clients: at once standalone or with
/// `--serve-while-syncing`, otherwise once the cluster's initial sync is complete.
/// Returns false when a shutdown came first.
async fn wait_until_ready(
    shared: &Shared,
    signal: &mut std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
) -> bool {
    let Some(mut ready) = sync_gate(shared.cluster.as_ref(), &shared.config) else {
        return true;
    };
    let first = shared
        .config
        .cluster
        .as_ref()
        .is_some_and(|c| c.join.is_empty());
    if first {
        tracing::info!(node = %shared.name, "first node (no --join): the client port opens once --max-clock-skew has passed since the start, so that no version (CAS value) an earlier run issued is issued again");
    } else {
        tracing::info!(node = %shared.name, "the client port opens once the initial sync is complete (--serve-while-syncing opens it at once)");
    }
    let mut shutdown = shared.shutdown.subscribe();
    tokio::select! {
        r = ready.wait_for(|r| *r) => r.is_ok(),
        _ = shutdown.wait_for(|s| *s) => false,
        _ = signal.as_mut() => {
            tracing::info!(node = %shared.name, "signal received during the initial sync, shutting down");
            shared.request_shutdown();
            false
        }
    }
}

pub(super) async fn accept_loop(
    shared: Arc<Shared>,
    tcp: Vec<(TcpSocket, ListenerTls)>,
    unix: Option<UnixSocket>,
    senders: Vec<mpsc::UnboundedSender<Stream>>,
    handle_signals: bool,
) -> io::Result<()> {
    // First of all: SIGHUP's default action would end the process.
    let mut hangups = signals::hangup_signals(handle_signals);
    let signal = signals::stop(&shared.name, handle_signals);
    tokio::pin!(signal);
    if !wait_until_ready(&shared, &mut signal).await {
        return Ok(());
    }
    let (accepted_tx, mut accepted) = mpsc::channel::<Stream>(64);
    let mut tasks = Vec::new();
    for (socket, tls) in tcp {
        let l = socket.listen(LISTEN_BACKLOG)?;
        let serves = if tls == ListenerTls::Off {
            "plaintext"
        } else {
            "TLS"
        };
        tracing::info!(node = %shared.name, addr = %l.local_addr()?, serves, "listening");
        tasks.push(spawn_acceptor(
            Tcp(l, tls),
            accepted_tx.clone(),
            &shared.name,
        ));
    }
    if let Some(socket) = unix {
        let l = socket.listen(LISTEN_BACKLOG)?;
        let path = l.local_addr()?;
        let path = path
            .as_pathname()
            .unwrap_or(std::path::Path::new("?"))
            .display();
        tracing::info!(node = %shared.name, %path, "listening on unix socket");
        tasks.push(spawn_acceptor(Unix(l), accepted_tx.clone(), &shared.name));
    }
    drop(accepted_tx);
    shared.serving.send_replace(true);
    let sweeper = tokio::spawn(sweep_loop(shared.clone()));
    let mut shutdown = shared.shutdown.subscribe();
    let mut next = 0usize;
    loop {
        tokio::select! {
            conn = accepted.recv() => {
                let Some(conn) = conn else { break };
                if let Some(conn) = admit(&shared, conn) {
                    let _ = senders[next % senders.len()].send(conn);
                    next = next.wrapping_add(1);
                }
            }
            _ = shutdown.wait_for(|s| *s) => break,
            _ = &mut signal => {
                tracing::info!(node = %shared.name, "signal received, shutting down");
                shared.request_shutdown();
                break;
            }
            _ = signals::hangup(&mut hangups) => signals::reload_certificates(&shared),
        }
    }
    for t in tasks {
        t.abort();
    }
    sweeper.abort();
    // Dropping the senders lets each worker finish once its connections have.
    drop(senders);
    Ok(())
}

/// Errors from accept are transient (out of file descriptors, a connection reset before
/// it was accepted): log, pause briefly so a full fd table does not spin, and go on.
async fn accept_error(node: &str, e: io::Error) {
    tracing::warn!(%node, error = %e, "accept failed");
    tokio::time::sleep(Duration::from_millis(10)).await;
}

/// Applies the connection limit (`-c`): beyond it, memcached's refusal line, then close.
fn admit(shared: &Shared, conn: Stream) -> Option<Stream> {
    let conns = &shared.conns;
    if conns.curr.load(Ordering::Acquire) >= u64::from(shared.config.max_conns) {
        conns.rejected.fetch_add(1, Ordering::Relaxed);
        conn.refuse(b"ERROR Too many open connections\r\n");
        return None;
    }
    conns.curr.fetch_add(1, Ordering::AcqRel);
    conns.total.fetch_add(1, Ordering::Relaxed);
    Some(conn)
}

/// A client listener; `next` is one accepted connection, or `None` for one that was gone
/// before it could be taken.
trait Listener: Send + 'static {
    fn next(&self) -> impl Future<Output = io::Result<Option<Stream>>> + Send;
}

/// A TCP listener, and whether it serves TLS.
struct Tcp(TcpListener, ListenerTls);

impl Listener for Tcp {
    async fn next(&self) -> io::Result<Option<Stream>> {
        let (s, _) = self.0.accept().await?;
        let _ = s.set_nodelay(true);
        let Ok(s) = s.into_std() else { return Ok(None) };
        Ok(Some(match self.1 {
            ListenerTls::Off => Stream::Tcp(s),
            mode => Stream::Tls(s, mode),
        }))
    }
}

/// The unix socket's listener (`-s`).
struct Unix(UnixListener);

impl Listener for Unix {
    async fn next(&self) -> io::Result<Option<Stream>> {
        let (s, _) = self.0.accept().await?;
        Ok(s.into_std().ok().map(Stream::Unix))
    }
}

/// Accepts on `l` until the acceptor loop is gone, handing each connection to it.
fn spawn_acceptor(l: impl Listener, tx: mpsc::Sender<Stream>, node: &str) -> JoinHandle<()> {
    let node = node.to_string();
    tokio::spawn(async move {
        loop {
            match l.next().await {
                Ok(Some(conn)) => {
                    if tx.send(conn).await.is_err() {
                        return;
                    }
                }
                Ok(None) => {}
                Err(e) => accept_error(&node, e).await,
            }
        }
    })
}
