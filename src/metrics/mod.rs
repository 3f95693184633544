//! Metrics and health over HTTP (`--metrics-listen ADDR:PORT`): `/metrics` in Prometheus'
//! text format, `/ready` and `/health`.
//!
//! The endpoint runs on a thread and runtime of its own, so that it keeps answering while
//! the client workers are busy and through a shutdown's drain, when `/ready` must say 503.
//! Nothing is counted for it: the collectors ([`memcached`], [`cluster`]) read what `stats`
//! already keeps, at scrape time.
//!
//! - `/health`: 200 while the process runs its endpoint (liveness: a draining node is alive).
//! - `/ready`: 200 only when the client port is open, the initial sync is complete and no
//!   shutdown is under way; otherwise 503 with the reason in the body.
//! - `/metrics`: every metric is listed in `METRICS.md`.

mod cluster;
mod memcached;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::encoding::prometheus_text;
use prometheus_client::registry::Registry;
use tokio::sync::Semaphore;

use crate::server::Shared;

/// Scrapes and probes served at once: bounds what a flood of connections to the endpoint
/// can cost. One more is answered `503` at once and closed, rather than left in the
/// kernel's backlog, where a probe would wait out its timeout behind idle connections.
pub const MAX_CONNECTIONS: usize = 64;
/// A request's header must arrive within this, or the connection is closed.
const HEADER_TIMEOUT: Duration = Duration::from_secs(2);
/// The answer to a connection beyond [`MAX_CONNECTIONS`].
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
content-type: text/plain\r\ncontent-length: 21\r\nconnection: close\r\n\r\n\
too many connections\n";

/// Why the endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("--metrics-listen {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the metrics thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// Why the node is not ready, for `/ready`'s body.
pub fn readiness(shared: &Shared) -> Result<(), String> {
    if shared.stopping() {
        return Err("draining: shutting down, handing writes to peers".into());
    }
    if let Some(c) = &shared.cluster {
        if !cluster::synced(c) {
            return Err(format!(
                "syncing: the initial sync is not complete (sync_state {})",
                cluster::sync_state(c)
            ));
        }
        if let Some((against, voters)) = c.clock_outvoted() {
            return Err(format!(
                "clock outvoted: {against} of the {voters} nodes comparing clocks with this one find it further off than --max-clock-skew; fix the clock (NTP)"
            ));
        }
    }
    if !shared.is_serving() {
        return Err("starting: the client port is not open yet".into());
    }
    Ok(())
}

/// Binds `addr` now (so that a port in use stops the node at start) and serves on a
/// thread of its own until the process exits. Returns the bound address.
pub fn start(addr: SocketAddr, shared: Arc<Shared>) -> Result<SocketAddr, MetricsError> {
    let bind_err = |source| MetricsError::Bind { addr, source };
    let listener = std::net::TcpListener::bind(addr).map_err(bind_err)?;
    listener.set_nonblocking(true).map_err(bind_err)?;
    let local = listener.local_addr().map_err(bind_err)?;
    let name = shared.name.clone();
    let mut registry = Registry::default();
    registry.register_collector(Box::new(memcached::MemcachedCollector::new(shared.clone())));
    if let Some(c) = &shared.cluster {
        registry.register_collector(Box::new(cluster::ClusterCollector::new(c.clone())));
    }
    let app = Arc::new(App { shared, registry });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(MetricsError::Thread)?;
    std::thread::Builder::new()
        .name("meshcached-metrics".into())
        .spawn(move || rt.block_on(serve(listener, app)))
        .map_err(MetricsError::Thread)?;
    tracing::info!(node = %name, addr = %local, "metrics and health endpoints listening (HTTP)");
    Ok(local)
}

struct App {
    shared: Arc<Shared>,
    registry: Registry,
}

async fn serve(listener: std::net::TcpListener, app: Arc<App>) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(node = %app.shared.name, error = %e, "cannot serve the metrics endpoint");
            return;
        }
    };
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let mut stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::debug!(node = %app.shared.name, error = %e, "metrics accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                // Answer, then take in the request (closing with it unread would reset the
                // connection and lose the answer), bounded in time and bytes.
                let _ = tokio::time::timeout(HEADER_TIMEOUT, async {
                    stream.write_all(BUSY).await?;
                    stream.shutdown().await?;
                    let mut sink = [0u8; 1024];
                    let mut left: usize = 64 << 10;
                    while left > 0 {
                        match stream.read(&mut sink).await? {
                            0 => break,
                            n => left = left.saturating_sub(n),
                        }
                    }
                    Ok::<_, std::io::Error>(())
                })
                .await;
            });
            continue;
        };
        let app = app.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let app = app.clone();
                async move { Ok::<_, Infallible>(route(&app, &req)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "metrics connection ended with an error");
            }
            drop(permit);
        });
    }
}

fn route(app: &App, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n".into());
    }
    match req.uri().path() {
        "/metrics" => metrics(app),
        "/health" => text(StatusCode::OK, "ok\n".into()),
        "/ready" => match readiness(&app.shared) {
            Ok(()) => text(StatusCode::OK, "ready\n".into()),
            Err(why) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
        },
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: /metrics, /ready and /health are served\n".into(),
        ),
    }
}

fn metrics(app: &App) -> Response<Full<Bytes>> {
    let mut body = String::with_capacity(16 * 1024);
    if let Err(e) = prometheus_text::encode(&mut body, &app.registry) {
        tracing::warn!(error = %e, "cannot encode metrics");
        return text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot encode metrics\n".into(),
        );
    }
    response(StatusCode::OK, prometheus_text::CONTENT_TYPE, body)
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    response(status, "text/plain; charset=utf-8", body)
}

fn response(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    if let Ok(v) = hyper::header::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}
