//! `meshcached demo`, and a pair set up with repcached's `-x`/`-X` flags.

use super::*;

/// `n` consecutive ports from one that was free a moment ago, all free together (TCP, or UDP).
fn free_ports(n: u16, udp: bool) -> u16 {
    for _ in 0..100 {
        let base = if udp { free_udp_port() } else { free_port() };
        if u32::from(base) + u32::from(n) > 65536 {
            continue;
        }
        let all_free = (base..base + n).all(|p| {
            if udp {
                UdpSocket::bind(("127.0.0.1", p)).is_ok()
            } else {
                std::net::TcpListener::bind(("127.0.0.1", p)).is_ok()
            }
        });
        if all_free {
            return base;
        }
    }
    panic!("no {n} consecutive free ports");
}

/// A running `meshcached demo --nodes 3`, killed on drop (and its certificates directory,
/// which it removes itself only on a clean exit, removed).
struct Demo {
    child: Child,
    /// What it printed so far.
    help: String,
    /// The first client port and the first cluster port.
    base_port: u16,
    base_cluster_port: u16,
    log: PathBuf,
}

impl Demo {
    /// Starts the demo on free ports and waits until it has printed its whole help (or only
    /// its first line); tries other ports if it loses a port race.
    fn start(dir: &TempDir, whole_help: bool) -> Demo {
        for _ in 0..3 {
            let (p, q) = (free_ports(3, false), free_ports(3, true));
            let log = dir.join("demo.log");
            let file = std::fs::File::create(&log).expect("log file");
            let child = Command::new(binary())
                .args(["demo", "--nodes", "3"])
                .args(["--base-port", &p.to_string()])
                .args(["--base-cluster-port", &q.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::from(file))
                .spawn()
                .expect("spawn meshcached demo");
            let mut demo = Demo {
                child,
                help: String::new(),
                base_port: p,
                base_cluster_port: q,
                log,
            };
            let stdout = demo.child.stdout.take().expect("stdout");
            let (tx, rx) = std::sync::mpsc::channel();
            // Reads to the end even once nobody listens: closing the pipe early would make
            // the demo's next write fail.
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let _ = tx.send(line.unwrap_or_default());
                }
            });
            let end = Instant::now() + DEADLINE;
            loop {
                let left = end.saturating_duration_since(Instant::now());
                match rx.recv_timeout(left) {
                    Ok(line) => {
                        demo.help.push_str(&line);
                        demo.help.push('\n');
                        if !whole_help || line.contains("Ctrl-C stops the cluster") {
                            return demo;
                        }
                    }
                    // It exited (lost a port race?) or went silent.
                    Err(_) => break,
                }
            }
            let exited = demo.child.try_wait().expect("try_wait").is_some();
            assert!(
                exited,
                "the demo printed no help within {DEADLINE:?}:\n{}\n{}",
                demo.help,
                read_log(&demo.log)
            );
        }
        panic!("the demo did not start on three tries");
    }

    fn client(&self, i: u16) -> Client {
        Client::connect(std::net::SocketAddr::from((
            [127, 0, 0, 1],
            self.base_port + i,
        )))
    }

    /// Where the demo keeps its certificates.
    fn certs_dir(&self) -> PathBuf {
        std::env::temp_dir().join(format!("meshcached-demo-{}", self.child.id()))
    }

    /// Sends SIGINT and waits for the exit; returns the exit code (None: killed by a signal).
    fn interrupt(&mut self) -> Option<i32> {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGINT);
        }
        let end = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status.code();
            }
            assert!(Instant::now() < end, "the demo did not exit after SIGINT");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(self.certs_dir());
    }
}

#[test]
fn demo_runs_three_replicating_nodes_until_sigint() {
    let dir = TempDir::new("demo");
    let mut demo = Demo::start(&dir, true);
    let (p, q, help) = (demo.base_port, demo.base_cluster_port, demo.help.clone());
    for i in 0..3u16 {
        let line = help
            .lines()
            .find(|l| l.contains(&format!("node-{}", i + 1)))
            .unwrap_or_else(|| panic!("node-{} in the help:\n{help}", i + 1));
        assert!(line.contains(&loopback(p + i)), "{line}");
        assert!(line.contains(&loopback(q + i)), "{line}");
    }
    let certs = demo.certs_dir();
    assert!(
        help.contains(&format!("(certificates in {}", certs.display())),
        "the help names the certificates directory:\n{help}"
    );
    assert!(certs.is_dir(), "{}", certs.display());

    let mut first = demo.client(0);
    set(&mut first, "demo-key", "hello");
    let mut third = demo.client(2);
    eventually(DEADLINE, "the write on node-1 is on node-3", || {
        get(&mut third, "demo-key").as_deref() == Some("hello")
    });
    drop((first, third));

    let code = demo.interrupt();
    assert_eq!(code, Some(0), "{}", read_log(&demo.log));
    assert!(!certs.exists(), "{} is removed on exit", certs.display());
    assert_log_is_readable(&read_log(&demo.log));
}

/// What an operator reads in the demo's log: every line names its node (three nodes share
/// the process), a new cluster's empty snapshots are not narrated, and the nodes' own
/// shutdown is no warning.
fn assert_log_is_readable(log: &str) {
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" meshcached::"))
        .collect();
    assert!(lines.len() >= 6, "{log}");
    for line in &lines {
        assert!(
            line.contains(" node=node-"),
            "a line without its node: {line}"
        );
        let narrated = [
            "sending a snapshot",
            "receiving a snapshot",
            "snapshot sent",
            "snapshot applied",
        ];
        // A snapshot that carries something is worth a line (the write the test makes
        // can reach a node before the link that would have made its snapshot empty).
        assert!(
            !(narrated.iter().any(|n| line.contains(n)) && line.contains(" items=0")),
            "an empty snapshot narrated: {line}"
        );
        assert!(
            !line.contains(" WARN ") && !line.contains(" ERROR "),
            "a warning in a clean run and stop: {line}"
        );
    }
    assert!(
        lines
            .iter()
            .any(|l| l.contains("link closed: this node is leaving")),
        "{log}"
    );
}

/// The help says "Ctrl-C stops the cluster": a Ctrl-C right after it must stop the demo
/// cleanly (exit 0, certificates removed), not kill it. Repeated, as it is a race.
#[test]
fn demo_exits_cleanly_on_sigint_right_after_its_help() {
    let dir = TempDir::new("demo-early");
    for round in 0..10 {
        let mut demo = Demo::start(&dir, false);
        let certs = demo.certs_dir();
        let code = demo.interrupt();
        assert_eq!(
            code,
            Some(0),
            "round {round}: SIGINT right after the help (None: killed by the signal)\n{}",
            read_log(&demo.log)
        );
        assert!(
            !certs.exists(),
            "round {round}: {} is left",
            certs.display()
        );
    }
}

// ---- 6. repcached-style flags -------------------------------------------------------------

/// A pair set up as repcached's would be: `-X` for the own replication port, `-x` for the
/// peer's address.
#[test]
fn a_pair_set_up_with_repcached_flags_replicates_both_ways() {
    let dir = TempDir::new("repcached");
    let ca = generate_ca().expect("CA");
    let certs_a = certify(&ca, &dir, "node-a");
    let certs_b = certify(&ca, &dir, "node-b");
    let (pa, pb) = free_udp_pair();
    let (xa, xb) = (pa.to_string(), pb.to_string());
    let (peer_a, peer_b) = (loopback(pa), loopback(pb));
    let a = Proc::start_with(
        &dir,
        "node-a",
        &[
            "--node-name",
            "node-a",
            "--certs-dir",
            &certs_a,
            "-X",
            &xa,
            "-x",
            &peer_b,
            // node-b is not up yet: node-a serves after this, alone.
            "--join-timeout",
            "1s",
        ],
    );
    let b = Proc::start_with(
        &dir,
        "node-b",
        &[
            "--node-name",
            "node-b",
            "--certs-dir",
            &certs_b,
            "-X",
            &xb,
            "-x",
            &peer_a,
        ],
    );
    wait_connected(&a, 1);
    wait_connected(&b, 1);
    let (mut ca_client, mut cb) = (a.client(), b.client());
    // Each node's endpoint is where -X put it.
    assert_eq!(cluster_port(&mut ca_client, "node-b"), pb);
    assert_eq!(cluster_port(&mut cb, "node-a"), pa);
    set(&mut ca_client, "from-a", "a");
    set(&mut cb, "from-b", "b");
    wait_value(&b, "from-a", "a");
    wait_value(&a, "from-b", "b");
}
