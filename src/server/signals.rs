//! The signals a node answers: SIGTERM and SIGINT stop it (gracefully), SIGHUP reloads the
//! client TLS certificates (as memcached's does; without TLS it only logs). All are
//! received by the acceptor's runtime.

use super::Shared;

/// Ignores SIGHUP until [`hangup_signals`] installs the real handler: start-up (loading a
/// state file can take seconds) would otherwise die of SIGHUP's default action, where a
/// running node reloads its certificates. Call it first thing in the node's `main`; tokio's
/// handler replaces the disposition later.
pub fn ignore_hangups_until_handled() {
    // SAFETY: setting a signal's disposition to SIG_IGN has no preconditions; it runs
    // before any other thread that could be installing handlers exists.
    unsafe { libc::signal(libc::SIGHUP, libc::SIG_IGN) };
}

/// SIGHUP, when signals are handled: it reloads the client TLS certificates, as in
/// memcached.
pub fn hangup_signals(enabled: bool) -> Option<tokio::signal::unix::Signal> {
    use tokio::signal::unix::{signal, SignalKind};
    if !enabled {
        return None;
    }
    signal(SignalKind::hangup())
        .inspect_err(|e| tracing::error!(error = %e, "cannot handle SIGHUP; use refresh_certs"))
        .ok()
}

/// Resolves at the next SIGHUP; never without a handler.
pub async fn hangup(hangups: &mut Option<tokio::signal::unix::Signal>) {
    let received = match hangups {
        Some(s) => s.recv().await.is_some(),
        None => false,
    };
    if !received {
        std::future::pending::<()>().await;
    }
}

/// SIGHUP: reloads the client TLS certificates; a failure keeps the ones in use.
pub fn reload_certificates(shared: &Shared) {
    let Some(tls) = &shared.tls else {
        tracing::info!(node = %shared.name, "SIGHUP: nothing to reload (client TLS is off)");
        return;
    };
    match tls.refresh(shared.clock().now_ms()) {
        Ok(()) => tracing::info!(
            node = %shared.name,
            chain = %tls.config().chain_cert.display(),
            "SIGHUP: client TLS certificates reloaded; new connections get them"
        ),
        Err(e) => tracing::error!(
            node = %shared.name,
            "SIGHUP: client TLS certificates not reloaded, the ones in use are kept: error {e}"
        ),
    }
}

/// Resolves at the first SIGTERM or SIGINT; never when signals are not handled.
pub async fn stop(node: &str, enabled: bool) {
    if !enabled {
        return std::future::pending().await;
    }
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!(
            %node,
            "cannot install signal handlers; stop the server with the shutdown command"
        );
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
