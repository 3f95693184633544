//! Propagation delay of single writes on an idle in-process pair.

use super::*;

/// A node running in this process (the same `Server` the binary runs), so the bench can
/// read its store directly. Shut down and joined when dropped.
pub(crate) struct InProcess {
    pub(crate) shared: Arc<Shared>,
    pub(crate) client_addr: SocketAddr,
    pub(crate) cluster_addr: SocketAddr,
    pub(crate) handle: ShutdownHandle,
    pub(crate) thread: Option<JoinHandle<std::io::Result<()>>>,
}

impl InProcess {
    pub(crate) fn start(
        certs: &Certs,
        name: &str,
        node_id: u16,
        join: Option<SocketAddr>,
    ) -> Result<InProcess> {
        let mut argv: Vec<String> = [
            "meshcached",
            "-l",
            "127.0.0.1",
            "-p",
            "0",
            "-U",
            "0",
            "-t",
            "1",
        ]
        .map(String::from)
        .to_vec();
        argv.extend([
            "--node-name".into(),
            name.into(),
            "--node-id".into(),
            node_id.to_string(),
        ]);
        argv.extend([
            "--certs-dir".into(),
            certs.node(name)?.display().to_string(),
        ]);
        argv.extend(["--cluster-listen".into(), "127.0.0.1:0".into()]);
        if let Some(j) = join {
            argv.extend(["--join".into(), j.to_string()]);
        }
        let args = Args::try_parse_from(&argv).context("node flags")?;
        let config = Config::from_args(&args).context("node flags")?;
        let server = meshcached::server::Server::bind(config, Arc::new(SystemClock))
            .context("binding a node")?;
        let client_addr = *server.local_addrs().first().context("no client listener")?;
        let cluster_addr = server.cluster_addr().context("no cluster endpoint")?;
        let (shared, handle) = (server.shared().clone(), server.shutdown_handle());
        let thread = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || server.run(false))?;
        Ok(InProcess {
            shared,
            client_addr,
            cluster_addr,
            handle,
            thread: Some(thread),
        })
    }

    pub(crate) fn peers_connected(&self) -> usize {
        self.shared
            .cluster
            .as_ref()
            .map_or(0, |c| c.peers_connected())
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        self.handle.shutdown();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Single-write propagation delays, in nanoseconds, sorted.
pub(crate) struct Propagation {
    /// From writing the request to A until B's store holds the key.
    pub(crate) from_send: Vec<u64>,
    /// From reading A's `STORED` until B's store holds the key.
    pub(crate) from_stored: Vec<u64>,
    /// A's round trip: from writing the request to reading `STORED`.
    pub(crate) round_trip: Vec<u64>,
    /// Writes B already held at the first poll after `STORED`.
    pub(crate) already: u64,
}

/// Writes one new key at a time to A, each after the previous one reached B and a pause of
/// `prop_gap`; B's store is polled in a tight loop (sched_yield between polls) with the
/// cheapest lookup it has
/// (`Store::read` of one key: a hash and one shard lock, no copy).
pub(crate) fn measure_propagation(opts: &Options, certs: &Certs) -> Result<Propagation> {
    const WARMUP_WRITES: u64 = 50;
    let a = InProcess::start(certs, "prop-a", 1, None)?;
    let b = InProcess::start(certs, "prop-b", 2, Some(a.cluster_addr))?;
    let deadline = Instant::now() + CONNECT_DEADLINE;
    while a.peers_connected() != 1 || b.peers_connected() != 1 {
        ensure!(
            Instant::now() < deadline,
            "in-process pair not connected after {CONNECT_DEADLINE:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut client = TcpStream::connect(a.client_addr)?;
    client.set_nodelay(true)?;
    client.set_read_timeout(Some(Duration::from_secs(10)))?;
    let b_store = &b.shared.store;
    let mut p = Propagation {
        from_send: Vec::new(),
        from_stored: Vec::new(),
        round_trip: Vec::new(),
        already: 0,
    };
    let (mut req, mut reply) = (Vec::new(), [0u8; 8]);
    for n in 0..WARMUP_WRITES + opts.prop_writes {
        let key = format!("prop:{n:07}");
        req.clear();
        write!(req, "set {key} 0 0 {}\r\n", loadgen::VALUE_LEN)?;
        req.extend((0..loadgen::VALUE_LEN).map(|i| b'a' + (i % 26) as u8));
        req.extend_from_slice(b"\r\n");
        let now = b.shared.clock().now_secs();
        let held = || b_store.read(key.as_bytes(), now, false, |item| item.is_some());

        let sent = Instant::now();
        client.write_all(&req)?;
        client.read_exact(&mut reply).context("reading A's reply")?;
        let stored = Instant::now();
        ensure!(
            &reply == b"STORED\r\n",
            "A answered {:?}",
            String::from_utf8_lossy(&reply)
        );
        let already = held();
        if !already {
            while !held() {
                if stored.elapsed() > CATCH_UP_DEADLINE {
                    bail!("{key} not on B {CATCH_UP_DEADLINE:?} after A stored it");
                }
                // Yield rather than spin: with 2 vCPUs, a spinning poller that B's runtime
                // thread has to wait behind costs a scheduler slice (p99 ~3.5 ms instead of
                // ~0.3 ms in a trial on this machine). sched_yield keeps the loop tight while
                // letting any runnable node thread go first.
                std::thread::yield_now();
            }
        }
        let arrived = Instant::now();
        if n >= WARMUP_WRITES {
            p.already += u64::from(already);
            p.from_send.push((arrived - sent).as_nanos() as u64);
            p.from_stored.push((arrived - stored).as_nanos() as u64);
            p.round_trip.push((stored - sent).as_nanos() as u64);
        }
        std::thread::sleep(opts.prop_gap);
    }
    p.from_send.sort_unstable();
    p.from_stored.sort_unstable();
    p.round_trip.sort_unstable();
    Ok(p)
}

pub(crate) fn print_propagation(opts: &Options, p: &Propagation, machine: &str) {
    let us = |v: &[u64], q: f64| percentile(v, q) as f64 / 1e3;
    println!("## Propagation delay of a single write, idle pair ({machine})\n");
    println!(
        "Two nodes in the bench process (`-t 1` each, QUIC over loopback). {} writes of new keys \
         (`set prop:NNNNNNN 0 0 {}`), one at a time, each after the previous one reached B and a \
         {:.1} ms pause. \"Holds\" is the first successful `Store::read` of the key on B, polled \
         in a tight loop (`sched_yield` between polls) once A's `STORED` has arrived; {} of the writes were already on B at the \
         first poll. Targets: p50 ≤ 100 µs, p99 ≤ 1 ms.\n",
        p.from_send.len(),
        loadgen::VALUE_LEN,
        opts.prop_gap.as_secs_f64() * 1e3,
        p.already,
    );
    println!("| interval | p50 µs | p99 µs | max µs |");
    println!("|---|--:|--:|--:|");
    for (name, v) in [
        ("request sent to A → B holds the key", &p.from_send),
        ("A's `STORED` received → B holds the key", &p.from_stored),
        (
            "request sent to A → `STORED` received (A's round trip)",
            &p.round_trip,
        ),
    ] {
        println!(
            "| {name} | {:.1} | {:.1} | {:.1} |",
            us(v, 0.5),
            us(v, 0.99),
            us(v, 1.0)
        );
    }
    println!();
}
