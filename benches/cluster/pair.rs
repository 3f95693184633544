//! Certificates, a `stats` client, and a two-node pair of processes.

use super::*;

/// A fresh directory of certificates for the run: one CA, one directory per node. Removed
/// when dropped, so also when the bench fails or panics.
pub(crate) struct Certs {
    pub(crate) dir: PathBuf,
    pub(crate) ca: Ca,
}

impl Certs {
    pub(crate) fn new() -> Result<Certs> {
        let dir =
            std::env::temp_dir().join(format!("meshcached-bench-cluster-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let certs = Certs {
            dir,
            ca: generate_ca().context("generating the CA")?,
        };
        Ok(certs)
    }

    /// Issues a certificate for `name` on 127.0.0.1; returns its `--certs-dir`.
    pub(crate) fn node(&self, name: &str) -> Result<PathBuf> {
        let cert = self.ca.issue_node(name, &["127.0.0.1"])?;
        let dir = self.dir.join(name);
        write_node_dir(&dir, &self.ca, &cert)?;
        Ok(dir)
    }
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A persistent text-protocol connection for `stats`, so that polling a node does not
/// charge it an accept per poll.
pub(crate) struct StatsClient {
    pub(crate) stream: TcpStream,
    pub(crate) buf: Vec<u8>,
}

impl StatsClient {
    pub(crate) fn connect(addr: SocketAddr) -> Result<StatsClient> {
        let stream = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        Ok(StatsClient {
            stream,
            buf: Vec::new(),
        })
    }

    /// `stats` or `stats <group>`, as name → value.
    pub(crate) fn fetch(&mut self, group: &str) -> Result<HashMap<String, String>> {
        let cmd = if group.is_empty() {
            "stats\r\n".to_string()
        } else {
            format!("stats {group}\r\n")
        };
        self.stream
            .write_all(cmd.as_bytes())
            .context("sending stats")?;
        self.buf.clear();
        let mut chunk = [0u8; 16 * 1024];
        while !self.buf.ends_with(b"END\r\n") {
            let n = self.stream.read(&mut chunk).context("reading stats")?;
            ensure!(n > 0, "server closed the stats connection");
            self.buf.extend_from_slice(&chunk[..n]);
        }
        let text = std::str::from_utf8(&self.buf).context("non-UTF-8 stats")?;
        Ok(text
            .lines()
            .filter_map(|l| l.strip_prefix("STAT "))
            .filter_map(|l| l.split_once(' '))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect())
    }

    pub(crate) fn number(&mut self, group: &str, name: &str) -> Result<u64> {
        let stats = self.fetch(group)?;
        stats
            .get(name)
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("no numeric STAT {name} in `stats {group}`"))
    }
}

/// A port no one was using a moment ago, for a node's QUIC endpoint.
pub(crate) fn free_udp_port() -> Result<u16> {
    Ok(UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Two node processes; B joined A. Both are killed when dropped (`Server`'s guard).
pub(crate) struct Pair {
    pub(crate) a: Server,
    pub(crate) b: Server,
    pub(crate) a_stats: StatsClient,
    pub(crate) b_stats: StatsClient,
    /// How A names B in `stats replication`.
    pub(crate) b_name: String,
}

impl Pair {
    pub(crate) fn start(
        opts: &Options,
        certs: &Certs,
        tag: &str,
        threads: usize,
        a_cpu: Option<usize>,
        b_cpu: Option<usize>,
    ) -> Result<Pair> {
        Self::start_sized(opts, certs, tag, threads, (a_cpu, b_cpu), MEMORY_MB, &[])
    }

    /// [`Pair::start`] with B given `b_memory_mb` of `-m` (A keeps the bench's), and
    /// `extra` flags for both nodes.
    pub(crate) fn start_sized(
        opts: &Options,
        certs: &Certs,
        tag: &str,
        threads: usize,
        (a_cpu, b_cpu): (Option<usize>, Option<usize>),
        b_memory_mb: usize,
        extra: &[&str],
    ) -> Result<Pair> {
        let (a_name, b_name) = (format!("{tag}-a"), format!("{tag}-b"));
        let a_cluster = format!("127.0.0.1:{}", free_udp_port()?);
        let args = |name: &str, id: &str, listen: String| -> Result<Vec<String>> {
            let dir = certs.node(name)?.display().to_string();
            Ok([
                "--node-name",
                name,
                "--node-id",
                id,
                "--certs-dir",
                &dir,
                "--cluster-listen",
                &listen,
            ]
            .map(String::from)
            .to_vec())
        };
        let mut a_args = args(&a_name, "1", a_cluster.clone())?;
        a_args.extend(extra.iter().map(|s| s.to_string()));
        let b_cluster = format!("127.0.0.1:{}", free_udp_port()?);
        let mut b_args = args(&b_name, "2", b_cluster)?;
        b_args.extend(extra.iter().map(|s| s.to_string()));
        b_args.extend(["--join".to_string(), a_cluster]);
        fn strs(v: &[String]) -> Vec<&str> {
            v.iter().map(String::as_str).collect()
        }
        let a = Server::start(&opts.launch(false, threads, a_cpu, &strs(&a_args)))?;
        let b_strs = strs(&b_args);
        let b_launch = Launch {
            memory_mb: b_memory_mb,
            ..opts.launch(false, threads, b_cpu, &b_strs)
        };
        let b = Server::start(&b_launch)?;
        let mut pair = Pair {
            a_stats: StatsClient::connect(a.addr)?,
            b_stats: StatsClient::connect(b.addr)?,
            a,
            b,
            b_name,
        };
        let deadline = Instant::now() + CONNECT_DEADLINE;
        while pair.a_stats.number("", "peers_connected")? != 1
            || pair.b_stats.number("", "peers_connected")? != 1
        {
            ensure!(
                Instant::now() < deadline,
                "pair {tag} not connected after {CONNECT_DEADLINE:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(pair)
    }

    /// Waits until B has acknowledged every write in A's log (B acknowledges what it has
    /// applied) and holds as many items as A, `want` of them; returns how long that took.
    /// Fails if A had to skip writes B never got (`needs_resync`), which a lag of 0 and equal
    /// item counts would not show when the load only overwrites keys.
    pub(crate) fn wait_caught_up(&mut self, want: u64) -> Result<Duration> {
        let start = Instant::now();
        let peer = |field: &str| format!("peer:{}:{field}", self.b_name);
        let (lag_key, state_key) = (peer("lag_mutations"), peer("state"));
        loop {
            let repl = self.a_stats.fetch("replication")?;
            let state = repl.get(&state_key).map_or("missing", String::as_str);
            ensure!(state == "connected", "A reports B as {state}");
            let lag: u64 = repl
                .get(&lag_key)
                .and_then(|v| v.parse().ok())
                .with_context(|| format!("no {lag_key} in A's `stats replication`"))?;
            if lag == 0 {
                let a_items = self.a_stats.number("", "curr_items")?;
                let b_items = self.b_stats.number("", "curr_items")?;
                if a_items == want && b_items == want {
                    return Ok(start.elapsed());
                }
                ensure!(
                    start.elapsed() < CATCH_UP_DEADLINE,
                    "B acknowledged everything but holds {b_items} items, A {a_items} (want {want})"
                );
            }
            ensure!(
                start.elapsed() < CATCH_UP_DEADLINE,
                "B still {lag} writes behind A after {CATCH_UP_DEADLINE:?}"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}
