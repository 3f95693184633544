//! Hosts on a private network, for running deployment topologies as processes: each host is
//! a network namespace with one interface on a bridge, the bridge being in a namespace of
//! its own, so no packet leaves the namespaces a [`Lan`] creates. Host names resolve through
//! `/etc/netns/<namespace>/hosts`, which `ip netns exec` mounts over `/etc/hosts` for the
//! processes it starts (as a container runtime's or Kubernetes' DNS would answer).
//!
//! Needs root and `ip` (iproute2). Everything a [`Lan`] adds (namespaces, their interfaces,
//! the hosts files) is removed when it is dropped, also when the test fails; processes are
//! stopped by their PID ([`LanProc`], killed on drop), never by name.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::DEADLINE;

/// One host of a [`Lan`].
#[derive(Debug, Clone)]
pub struct LanHost {
    /// Its name, and other names it answers to (all in every host's hosts file).
    pub names: Vec<String>,
    pub ip: Ipv4Addr,
    /// The network namespace it is.
    pub ns: String,
}

/// Network namespaces on one bridge; removed on drop.
pub struct Lan {
    switch: String,
    pub hosts: Vec<LanHost>,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run ip (iproute2, as root): {e}"));
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Lan {
    /// Hosts named `names[i]` (the first name is the host's own, the others aliases) with
    /// addresses `subnet.(i + 1)`/24, e.g. `[10, 0, 0]` gives 10.0.0.1, 10.0.0.2, ...
    pub fn new(tag: &str, subnet: [u8; 3], names: &[Vec<String>]) -> Lan {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let prefix = format!("mc-{tag}-{}-{n}", std::process::id());
        let mut lan = Lan {
            switch: format!("{prefix}-sw"),
            hosts: Vec::new(),
        };
        ip(&["netns", "add", &lan.switch]);
        ip(&["-n", &lan.switch, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &lan.switch, "link", "set", "br0", "up"]);
        for (i, host_names) in names.iter().enumerate() {
            let ns = format!("{prefix}-{i}");
            let addr = Ipv4Addr::new(subnet[0], subnet[1], subnet[2], i as u8 + 1);
            // Registered before it exists, so that a failure below still removes it.
            lan.hosts.push(LanHost {
                names: host_names.clone(),
                ip: addr,
                ns: ns.clone(),
            });
            ip(&["netns", "add", &ns]);
            let port = format!("v{i}");
            ip(&[
                "-n",
                &lan.switch,
                "link",
                "add",
                &port,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &ns,
            ]);
            ip(&["-n", &lan.switch, "link", "set", &port, "master", "br0"]);
            ip(&["-n", &lan.switch, "link", "set", &port, "up"]);
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                "eth0",
            ]);
            ip(&["-n", &ns, "link", "set", "eth0", "up"]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
        }
        let mut hosts = String::from("127.0.0.1 localhost\n::1 localhost\n");
        for h in &lan.hosts {
            hosts.push_str(&format!("{} {}\n", h.ip, h.names.join(" ")));
        }
        for h in &lan.hosts {
            let dir = PathBuf::from("/etc/netns").join(&h.ns);
            std::fs::create_dir_all(&dir).expect("create /etc/netns/<namespace>");
            std::fs::write(dir.join("hosts"), &hosts).expect("write the namespace's hosts");
        }
        lan
    }

    /// The host named `name` (its first name).
    pub fn host(&self, name: &str) -> &LanHost {
        self.hosts
            .iter()
            .find(|h| h.names[0] == name)
            .unwrap_or_else(|| panic!("no host {name}"))
    }

    /// Starts `program args` on host `name`, in `dir`, with `env` added, its stdout and
    /// stderr in `log`. `ip netns exec` execs the program, so the PID is the program's.
    pub fn spawn(
        &self,
        name: &str,
        program: &Path,
        args: &[String],
        env: &[(String, String)],
        dir: &Path,
        log: &Path,
    ) -> LanProc {
        let host = self.host(name);
        let out = std::fs::File::create(log).expect("create the log file");
        let err = out.try_clone().expect("clone the log file");
        let child = Command::new("ip")
            .args(["netns", "exec", &host.ns])
            .arg(program)
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn in a network namespace");
        LanProc {
            child,
            log: log.to_path_buf(),
        }
    }

    /// A TCP connection to `port` on host `name`, made from inside its namespace (the
    /// socket stays in it): what a client on that host would open.
    pub fn connect(&self, name: &str, port: u16) -> std::io::Result<TcpStream> {
        let host = self.host(name);
        let (ns, addr) = (host.ns.clone(), SocketAddr::from((host.ip, port)));
        std::thread::spawn(move || {
            let netns = std::fs::File::open(format!("/run/netns/{ns}"))?;
            // SAFETY: setns(2) on an open namespace file; it changes this thread only,
            // which ends right after.
            if unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        })
        .join()
        .expect("the connecting thread")
    }

    /// Waits until `port` on host `name` accepts, and returns a client for it.
    pub fn client(&self, name: &str, port: u16) -> super::Client {
        let end = Instant::now() + DEADLINE;
        loop {
            match self.connect(name, port) {
                Ok(s) => return super::Client::from_stream(s),
                Err(e) if Instant::now() < end => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("{name}:{port} does not accept within {DEADLINE:?}: {e}"),
            }
        }
    }

    /// `GET path` over HTTP/1.1 on host `name`: the status code and the body.
    pub fn http_get(&self, name: &str, port: u16, path: &str) -> std::io::Result<(u16, String)> {
        let mut s = self.connect(name, port)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n"
        )?;
        let mut reply = String::new();
        s.read_to_string(&mut reply)?;
        let code = reply
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = reply.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        Ok((code, body.to_string()))
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for h in &self.hosts {
            let _ = std::fs::remove_dir_all(PathBuf::from("/etc/netns").join(&h.ns));
            let _ = Command::new("ip").args(["netns", "del", &h.ns]).output();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.switch])
            .output();
    }
}

/// A process on a [`Lan`] host, killed (by PID) on drop.
pub struct LanProc {
    pub child: Child,
    pub log: PathBuf,
}

impl LanProc {
    pub fn log(&self) -> String {
        super::read_log(&self.log)
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid (not yet waited for, so not reused).
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    /// Waits up to `limit` for the exit; panics with the log otherwise.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let end = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < end,
                "{} did not exit within {limit:?}:\n{}",
                self.log.display(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for a log line containing every one of `needles`.
    pub fn wait_line(&self, needles: &[&str]) -> String {
        let end = Instant::now() + DEADLINE;
        loop {
            let log = self.log();
            if let Some(l) = log.lines().find(|l| needles.iter().all(|n| l.contains(n))) {
                return l.to_string();
            }
            assert!(
                Instant::now() < end,
                "no line with {needles:?} in {}:\n{log}",
                self.log.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for LanProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
