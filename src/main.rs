//! The `meshcached` binary: parse flags, set up logging, run the server.

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use meshcached::clock::SystemClock;
use meshcached::config::{Args, Config};
use meshcached::server::Server;

fn main() -> ExitCode {
    // Subcommands first: the node itself takes memcached's flat list of flags.
    if std::env::args_os().nth(1).is_some_and(|a| a == "certs") {
        return meshcached::certs::main(std::env::args_os().skip(1));
    }
    if std::env::args_os().nth(1).is_some_and(|a| a == "demo") {
        init_logging(0);
        return meshcached::demo::main(std::env::args_os().skip(1));
    }
    let args = Args::parse();
    let config = match Config::from_args(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("meshcached: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(config.verbose);
    let server = match Server::bind(config, Arc::new(SystemClock)) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("meshcached: {e}");
            return ExitCode::from(1);
        }
    };
    if let Some(addr) = server.shared().config.metrics_listen {
        if let Err(e) = meshcached::metrics::start(addr, server.shared().clone()) {
            eprintln!("meshcached: {e}");
            return ExitCode::from(1);
        }
    }
    // Everything is bound: now -u may drop root.
    let socket = server.shared().config.unix_socket.clone();
    if let Err(e) = meshcached::privileges::settle(args.user.as_deref(), socket.as_deref()) {
        eprintln!("meshcached: {e}");
        return ExitCode::from(1);
    }
    // The state file is written at shutdown by the user the node now runs as: check now
    // that it can (the check at bind ran with the start-up identity).
    let state_file = (server.shared().config.cluster.as_ref()).and_then(|c| c.state_file.clone());
    if let Some(path) = state_file {
        if let Err(e) = meshcached::state::check_writable(&path) {
            eprintln!("meshcached: --state-file: {e}");
            return ExitCode::from(1);
        }
    }
    match server.run(true) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("meshcached: {e}");
            ExitCode::from(1)
        }
    }
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .init();
}
