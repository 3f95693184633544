//! The `meshcached` binary: parse flags, set up logging, run the server.

use std::process::ExitCode;
use std::sync::Arc;

use meshcached::clock::SystemClock;
use meshcached::config::{parse_command_line, Config};
use meshcached::pidfile::PidFile;
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
    if std::env::args_os().nth(1).is_some_and(|a| a == "config") {
        return config_command(std::env::args_os().skip(2).collect());
    }
    meshcached::server::ignore_hangups_until_handled();
    let (args, file) = match parse_command_line(std::env::args_os().collect()) {
        Ok(parsed) => parsed,
        Err(e) => {
            eprintln!("meshcached: {e}");
            return ExitCode::from(2);
        }
    };
    let config = match Config::from_args(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("meshcached: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(config.verbose);
    let node = meshcached::server::log_name(&config);
    for note in &file.notes {
        tracing::warn!(%node, "{note}");
    }
    if args.daemon {
        tracing::warn!(%node, "-d: meshcached does not daemonize, it stays in the foreground; run it under systemd (Type=simple) or another supervisor");
    }
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
    // As memcached, before dropping root: the pid file's directory is often root's.
    // Removed when it drops: at every exit from here on.
    let _pidfile = match args.pidfile.as_deref().map(PidFile::write).transpose() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("meshcached: {e}");
            return ExitCode::from(1);
        }
    };
    // Everything is bound: now -u may drop root.
    let socket = server.shared().config.unix_socket.clone();
    if let Err(e) = meshcached::privileges::settle(&node, args.user.as_deref(), socket.as_deref()) {
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

/// `meshcached config check [FILE] [FLAGS...]`: prints the effective configuration (the
/// file's settings, overridden by the flags) and exits 0, or the error and exits 2.
fn config_command(rest: Vec<std::ffi::OsString>) -> ExitCode {
    let usage = "usage: meshcached config check [FILE] [FLAGS...]";
    let Some((sub, rest)) = rest.split_first() else {
        eprintln!("{usage}");
        return ExitCode::from(2);
    };
    if sub == "-h" || sub == "--help" || sub == "help" {
        println!(
            "Print the configuration a node would run with: FILE (TOML, or Debian's \
             /etc/memcached.conf style) overridden by FLAGS, checked as at start.\n\n{usage}"
        );
        return ExitCode::SUCCESS;
    }
    if sub != "check" {
        eprintln!("meshcached config: unknown subcommand {sub:?}; {usage}");
        return ExitCode::from(2);
    }
    let mut argv = vec![std::ffi::OsString::from("meshcached")];
    let mut rest = rest.iter();
    let mut flags: Vec<_> = rest.clone().collect();
    if let Some(file) = rest
        .next()
        .filter(|f| !f.to_string_lossy().starts_with('-'))
    {
        argv.push("--config".into());
        argv.push(file.clone());
        flags = rest.collect();
    }
    argv.extend(flags.into_iter().cloned());
    let (args, file) = match parse_command_line(argv) {
        Ok(parsed) => parsed,
        Err(e) => {
            eprintln!("meshcached: {e}");
            return ExitCode::from(2);
        }
    };
    let config = match Config::from_args(&args) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("meshcached: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = check_as_at_start(&args, &config) {
        eprintln!("meshcached: {e}");
        return ExitCode::from(2);
    }
    for note in &file.notes {
        println!("# note: {note}");
    }
    println!("# flags read: {}", file.words.join(" "));
    println!("{config:#?}");
    println!("user: {:?}", args.user);
    println!("pidfile: {:?}", args.pidfile);
    println!(
        "daemon: {} (meshcached stays in the foreground)",
        args.daemon
    );
    ExitCode::SUCCESS
}

/// What a start checks beyond the flags themselves, short of binding: the client TLS
/// certificates (-Z), the node's certificates (in a cluster) and the -u user.
fn check_as_at_start(args: &meshcached::config::Args, config: &Config) -> Result<(), String> {
    if let Some(tls) = &config.tls {
        meshcached::server::tls::ClientTls::new(tls.clone(), 0).map_err(|e| e.to_string())?;
    }
    if let Some(cc) = &config.cluster {
        let identity =
            meshcached::certs::load_node_identity(&cc.certs_dir).map_err(|e| e.to_string())?;
        if identity.name != cc.node_name {
            return Err(format!(
                "--node-name is {:?} but the node certificate in {} is for {:?}",
                cc.node_name,
                cc.certs_dir.display(),
                identity.name
            ));
        }
    }
    if let Some(user) = &args.user {
        meshcached::privileges::lookup(user).map_err(|e| e.to_string())?;
    }
    Ok(())
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
