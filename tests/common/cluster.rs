//! An in-process cluster harness: N real nodes (the same `Server` the binary runs) in the
//! test process, on 127.0.0.1 port 0, with certificates generated for the run. Nodes can be
//! killed and restarted on the same ports; `wait_*` helpers poll with a deadline.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use clap::Parser;
use meshcached::certs::{generate_ca, write_node_dir, Ca};
use meshcached::clock::{SystemClock, Version};
use meshcached::cluster::sync::Phase;
use meshcached::config::{Args, Config};
use meshcached::server::{Server, Shared, ShutdownHandle};

use super::{eventually, Client, DEADLINE};

static DIRS: AtomicUsize = AtomicUsize::new(0);

/// One node's whole state: every key with its value (None for a tombstone), flags, exptime
/// and version, sorted by key.
pub type State = Vec<(Vec<u8>, Option<(Vec<u8>, u32, u32)>, Version)>;

pub struct TestCluster {
    pub dir: PathBuf,
    pub ca: Ca,
    pub nodes: Vec<TestNode>,
}

pub struct TestNode {
    pub name: String,
    pub node_id: u16,
    /// Flags beyond the harness's own.
    pub extra: Vec<String>,
    pub join: Vec<String>,
    pub client_addr: Option<SocketAddr>,
    pub cluster_addr: Option<SocketAddr>,
    running: Option<Running>,
}

struct Running {
    shared: Arc<Shared>,
    handle: ShutdownHandle,
    thread: JoinHandle<std::io::Result<()>>,
}

impl TestCluster {
    /// `n` nodes named node-1..node-n; each joins node-1. Waits until all are connected.
    pub fn start(n: usize) -> TestCluster {
        Self::with_flags(n, &[])
    }

    pub fn with_flags(n: usize, flags: &[&str]) -> TestCluster {
        let dir = std::env::temp_dir().join(format!(
            "meshcached-cluster-{}-{}",
            std::process::id(),
            DIRS.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let ca = generate_ca().expect("CA");
        let mut c = TestCluster {
            dir,
            ca,
            nodes: Vec::new(),
        };
        for i in 1..=n {
            let join = match c.nodes.first() {
                Some(first) => vec![first.cluster_addr.expect("node-1 is up").to_string()],
                None => vec![],
            };
            c.add(&format!("node-{i}"), i as u16, join, flags);
        }
        c.wait_mesh();
        for i in 0..n {
            c.wait_ready(i);
        }
        c
    }

    /// Makes certificates for `name` and starts it; returns its index.
    pub fn add(&mut self, name: &str, node_id: u16, join: Vec<String>, flags: &[&str]) -> usize {
        let cert = self.ca.issue_node(name, &["127.0.0.1"]).expect("node cert");
        write_node_dir(&self.dir.join(name), &self.ca, &cert).expect("write certs");
        self.nodes.push(TestNode {
            name: name.to_string(),
            node_id,
            extra: flags.iter().map(|s| s.to_string()).collect(),
            join,
            client_addr: None,
            cluster_addr: None,
            running: None,
        });
        let i = self.nodes.len() - 1;
        self.boot(i);
        i
    }

    fn boot(&mut self, i: usize) {
        let dir = self.dir.clone();
        let node = &mut self.nodes[i];
        let client_port = node.client_addr.map_or(0, |a| a.port());
        let cluster = node
            .cluster_addr
            .map_or_else(|| "127.0.0.1:0".to_string(), |a| a.to_string());
        let mut argv: Vec<String> = [
            "meshcached",
            "-l",
            "127.0.0.1",
            "-p",
            &client_port.to_string(),
            "-t",
            "2",
            "--node-name",
            &node.name,
            "--node-id",
            &node.node_id.to_string(),
            "--certs-dir",
            &dir.join(&node.name).display().to_string(),
            "--cluster-listen",
            &cluster,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for j in &node.join {
            argv.push("--join".into());
            argv.push(j.clone());
        }
        argv.extend(node.extra.iter().cloned());
        let args = Args::try_parse_from(&argv).expect("harness flags parse");
        let config = Config::from_args(&args).expect("harness flags are valid");
        let server = Server::bind(config, Arc::new(SystemClock)).expect("node binds");
        node.client_addr = Some(server.local_addrs()[0]);
        node.cluster_addr = server.cluster_addr();
        let shared = server.shared().clone();
        let handle = server.shutdown_handle();
        let thread = std::thread::Builder::new()
            .name(node.name.clone())
            .spawn(move || server.run(false))
            .expect("spawn node thread");
        node.running = Some(Running {
            shared,
            handle,
            thread,
        });
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn client(&self, i: usize) -> Client {
        Client::connect(self.nodes[i].client_addr.expect("started"))
    }

    pub fn shared(&self, i: usize) -> &Arc<Shared> {
        &self.nodes[i]
            .running
            .as_ref()
            .expect("node is running")
            .shared
    }

    pub fn is_running(&self, i: usize) -> bool {
        self.nodes[i].running.is_some()
    }

    /// Stops node `i` (its peers see the connection close) and waits for it to exit.
    pub fn kill(&mut self, i: usize) {
        let r = self.nodes[i].running.take().expect("node is running");
        r.handle.shutdown();
        r.thread
            .join()
            .expect("node thread")
            .expect("node ran cleanly");
    }

    /// Starts node `i` again on the same ports, with the same certificates (empty store),
    /// joining the nodes that are running, and waits until its initial sync is done.
    pub fn restart(&mut self, i: usize) {
        assert!(self.nodes[i].running.is_none(), "kill it first");
        self.nodes[i].join = self
            .running()
            .iter()
            .filter_map(|&j| self.nodes[j].cluster_addr.map(|a| a.to_string()))
            .collect();
        self.boot(i);
        self.wait_ready(i);
    }

    /// Waits until node `i` has finished its initial sync and its client port is open.
    pub fn wait_ready(&self, i: usize) {
        let addr = self.nodes[i].client_addr.expect("started");
        eventually(DEADLINE, "the node's initial sync", || {
            self.shared(i)
                .cluster
                .as_ref()
                .is_some_and(|c| c.phase() == Phase::Ready)
                && std::net::TcpStream::connect(addr).is_ok()
        });
    }

    fn running(&self) -> Vec<usize> {
        (0..self.len()).filter(|&i| self.is_running(i)).collect()
    }

    /// Waits until every running node is connected to every other running node.
    pub fn wait_mesh(&self) {
        let up = self.running();
        let want = up.len() - 1;
        eventually(DEADLINE, "every node connected to every other", || {
            up.iter().all(|&i| {
                self.shared(i)
                    .cluster
                    .as_ref()
                    .is_some_and(|c| c.peers_connected() == want)
            })
        });
    }

    /// Node `i`'s whole state (items with flags and exptime, tombstones, versions).
    pub fn state(&self, i: usize) -> State {
        let shared = self.shared(i);
        let now = shared.clock().now_secs();
        let items: std::collections::HashMap<Vec<u8>, (Vec<u8>, u32, u32)> = shared
            .store
            .dump(now)
            .into_iter()
            .map(|(k, v, flags, exp, _)| (k, (v, flags, exp)))
            .collect();
        let mut state: State = shared
            .store
            .state(now)
            .into_iter()
            .map(|(k, v, version)| {
                // A key that arrived between the two reads shows as an impossible item, so a
                // comparison made during replication sees a difference and looks again.
                let full = v.map(|v| items.get(&k).cloned().unwrap_or((v, u32::MAX, u32::MAX)));
                (k, full, version)
            })
            .collect();
        state.sort();
        state
    }

    /// Waits until every running node holds exactly the same state; returns it.
    pub fn wait_converged(&self) -> State {
        let up = self.running();
        let mut last = Vec::new();
        let converged = std::time::Instant::now() + DEADLINE * 3;
        while std::time::Instant::now() < converged {
            last = up.iter().map(|&i| self.state(i)).collect::<Vec<_>>();
            if last.windows(2).all(|w| w[0] == w[1]) {
                return last.swap_remove(0);
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        for (i, s) in up.iter().zip(&last) {
            eprintln!("node {i}: {} keys", s.len());
        }
        let first = &last[0];
        for (n, s) in last.iter().enumerate().skip(1) {
            for (a, b) in first.iter().zip(s) {
                if a != b {
                    panic!("nodes 0 and {n} differ: {a:?} vs {b:?}");
                }
            }
        }
        panic!("nodes did not converge: key counts differ");
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(r) = n.running.take() {
                r.handle.shutdown();
                let _ = r.thread.join();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
