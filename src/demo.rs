//! `meshcached demo`: a local cluster with zero setup. It makes a CA and one certificate per
//! node in a temporary directory, starts N nodes in this process on 127.0.0.1 (client ports
//! from 11211, cluster ports from 12211), each joining the first, prints how to reach them,
//! and serves until Ctrl-C.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;

use crate::certs::{generate_ca, write_node_dir};
use crate::clock::SystemClock;
use crate::config::{Args, Config};
use crate::server::{Server, ShutdownHandle};

/// Start a local cluster on 127.0.0.1 with generated certificates.
#[derive(Debug, Parser)]
#[command(name = "meshcached demo", bin_name = "meshcached demo")]
pub struct DemoArgs {
    /// How many nodes.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=16))]
    pub nodes: u16,
    /// The first node's client port; node i listens on base + i - 1.
    #[arg(long, default_value_t = 11211)]
    pub base_port: u16,
    /// The first node's cluster port.
    #[arg(long, default_value_t = 12211)]
    pub base_cluster_port: u16,
    /// Memory per node, as `-m`.
    #[arg(short = 'm', long, default_value = "64")]
    pub memory_limit: String,
}

pub fn main(args: impl IntoIterator<Item = std::ffi::OsString>) -> ExitCode {
    let args = match DemoArgs::try_parse_from(args) {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    let dir = std::env::temp_dir().join(format!("meshcached-demo-{}", std::process::id()));
    let result = run(&args, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("meshcached demo: {e}");
            ExitCode::from(1)
        }
    }
}

fn node_name(i: u16) -> String {
    format!("node-{i}")
}

/// The flags node `i` (from 1) would be started with as a process.
fn node_args(args: &DemoArgs, i: u16, dir: &Path) -> Vec<String> {
    let mut argv = vec![
        "meshcached".to_string(),
        "-l".into(),
        "127.0.0.1".into(),
        "-p".into(),
        (args.base_port + i - 1).to_string(),
        "-m".into(),
        args.memory_limit.clone(),
        "-t".into(),
        "1".into(),
        "--node-name".into(),
        node_name(i),
        "--node-id".into(),
        i.to_string(),
        "--certs-dir".into(),
        dir.join(node_name(i)).display().to_string(),
        "--cluster-listen".into(),
        format!("127.0.0.1:{}", args.base_cluster_port + i - 1),
    ];
    if i > 1 {
        argv.push("--join".into());
        argv.push(format!("127.0.0.1:{}", args.base_cluster_port));
    }
    argv
}

fn run(args: &DemoArgs, dir: &Path) -> Result<(), String> {
    if u32::from(args.base_port) + u32::from(args.nodes) > 65536
        || u32::from(args.base_cluster_port) + u32::from(args.nodes) > 65536
    {
        return Err("ports out of range".into());
    }
    // Ctrl-C is handled from before the first key is written: a signal at any point must
    // not kill the process and leave the keys in the temporary directory.
    let signals = Signals::install()?;
    let ca = generate_ca().map_err(|e| e.to_string())?;
    let mut servers = Vec::new();
    for i in 1..=args.nodes {
        let node = ca
            .issue_node(&node_name(i), &["127.0.0.1"])
            .map_err(|e| e.to_string())?;
        write_node_dir(&dir.join(node_name(i)), &ca, &node).map_err(|e| e.to_string())?;
        let argv = node_args(args, i, dir);
        let parsed = Args::try_parse_from(&argv).map_err(|e| e.to_string())?;
        let config = Config::from_args(&parsed).map_err(|e| e.to_string())?;
        let server = Server::bind(config, Arc::new(SystemClock)).map_err(|e| {
            format!(
                "node {i}: {e} (is another memcached running? try --base-port and --base-cluster-port)"
            )
        })?;
        servers.push(server);
    }
    let handles: Vec<ShutdownHandle> = servers.iter().map(|s| s.shutdown_handle()).collect();
    let ready: Vec<_> = servers.iter().map(|s| s.serving()).collect();
    let threads: Vec<_> = servers
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            std::thread::Builder::new()
                .name(format!("demo-node-{}", i + 1))
                .spawn(move || s.run(false))
        })
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    // The help once every node serves: its example works as soon as it is printed.
    let mut signals = signals;
    if signals.wait_ready(ready) {
        print_help(args, dir);
        signals.wait();
    }
    eprintln!("stopping the demo cluster");
    for h in &handles {
        h.shutdown();
    }
    for t in threads {
        match t.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("meshcached demo: a node stopped with: {e}"),
            Err(_) => eprintln!("meshcached demo: a node panicked"),
        }
    }
    Ok(())
}

fn print_help(args: &DemoArgs, dir: &Path) {
    let last = args.base_port + args.nodes - 1;
    let mut out = format!(
        "meshcached demo: {} nodes on 127.0.0.1, replicating over QUIC with mutual TLS\n\
         (certificates in {}, removed on exit)\n\n",
        args.nodes,
        dir.display()
    );
    for i in 1..=args.nodes {
        out.push_str(&format!(
            "  {:<8} clients 127.0.0.1:{}  cluster 127.0.0.1:{}\n",
            node_name(i),
            args.base_port + i - 1,
            args.base_cluster_port + i - 1
        ));
    }
    out.push_str(&format!(
        "\nWrite on one node, read on another:\n\n  \
         printf 'set k 0 0 5\\r\\nhello\\r\\n' | nc -q1 127.0.0.1 {}\n  \
         printf 'get k\\r\\n' | nc -q1 127.0.0.1 {}\n\n\
         Peers and replication lag: printf 'stats replication\\r\\n' | nc -q1 127.0.0.1 {}\n\
         Ctrl-C stops the cluster.\n",
        args.base_port, last, args.base_port
    ));
    // A closed stdout (piped into `head`) is no reason to stop the cluster.
    let _ = writeln!(std::io::stdout(), "{out}");
}

/// SIGINT and SIGTERM handlers, installed up front, and the runtime that waits on them.
struct Signals {
    rt: tokio::runtime::Runtime,
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Result<Signals, String> {
        use tokio::signal::unix::{signal, SignalKind};
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let _guard = rt.enter();
        let term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
        let int = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
        drop(_guard);
        Ok(Signals { rt, term, int })
    }

    /// Waits until every node serves; false if a signal came first.
    fn wait_ready(&mut self, ready: Vec<tokio::sync::watch::Receiver<bool>>) -> bool {
        self.rt.block_on(async {
            let all = async {
                for mut r in ready {
                    let _ = r.wait_for(|r| *r).await;
                }
            };
            tokio::select! {
                _ = all => true,
                _ = self.term.recv() => false,
                _ = self.int.recv() => false,
            }
        })
    }

    fn wait(mut self) {
        self.rt.block_on(async {
            tokio::select! {
                _ = self.term.recv() => {}
                _ = self.int.recv() => {}
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_flags_are_valid() {
        let args = DemoArgs::try_parse_from(["demo", "--nodes", "3"]).unwrap();
        let dir = std::path::PathBuf::from("/tmp/x");
        for i in 1..=3 {
            let parsed = Args::try_parse_from(node_args(&args, i, &dir)).unwrap();
            let c = Config::from_args(&parsed).unwrap();
            let cc = c.cluster.unwrap();
            assert_eq!(cc.node_name, format!("node-{i}"));
            assert_eq!(cc.join.len(), usize::from(i > 1));
            assert_eq!(c.listen[0].addr.port(), 11210 + i);
        }
    }
}
