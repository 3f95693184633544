//! Server processes under test, the CPU accounting the bench reads from /proc,
//! and the CPU affinity of the bench itself.
//!
//! A `Server` is a child process listening on a fresh 127.0.0.1 port. It is
//! killed when the guard drops (so also when the bench panics), and the kernel
//! kills it if the bench dies without unwinding (PR_SET_PDEATHSIG).

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

/// How long a server may take to start accepting connections.
const START_DEADLINE: Duration = Duration::from_secs(10);

/// How to launch one server. Both implementations take memcached's flags.
pub struct Launch<'a> {
    pub name: &'static str,
    pub program: &'a Path,
    pub threads: usize,
    pub memory_mb: usize,
    /// Run the server under `taskset -c <core>`.
    pub pin_to: Option<usize>,
    /// Flags only this implementation needs (memcached refuses to run as root
    /// without `-u`).
    pub extra_args: &'a [&'a str],
    /// A second listener on this port, TLS (the client_tls bench; `extra_args` then
    /// carry `-Z` and the certificates): the main port becomes a `notls:` listener.
    pub tls_port: Option<u16>,
}

pub struct Server {
    pub name: &'static str,
    pub addr: SocketAddr,
    child: Child,
}

impl Server {
    pub fn start(launch: &Launch) -> Result<Server> {
        let addr = free_port()?;
        let mut cmd = match launch.pin_to {
            Some(core) => {
                // taskset execs the server, so the child's PID is the server's.
                let mut cmd = Command::new("taskset");
                cmd.arg("-c").arg(core.to_string()).arg(launch.program);
                cmd
            }
            None => Command::new(launch.program),
        };
        let listen = match launch.tls_port {
            None => "127.0.0.1".to_string(),
            Some(tls) => format!("notls:127.0.0.1:{},127.0.0.1:{tls}", addr.port()),
        };
        cmd.args(["-p", &addr.port().to_string(), "-l", &listen, "-U", "0"])
            .args([
                "-t",
                &launch.threads.to_string(),
                "-m",
                &launch.memory_mb.to_string(),
            ])
            .args(launch.extra_args)
            .stdin(Stdio::null())
            // Our stdout carries the results table; keep server chatter off it.
            .stdout(std::io::stderr());
        // SAFETY: prctl is async-signal-safe and touches no memory of ours.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {} ({:?})", launch.name, launch.program))?;
        let mut server = Server {
            name: launch.name,
            addr,
            child,
        };
        server.wait_until_accepting()?;
        Ok(server)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn wait_until_accepting(&mut self) -> Result<()> {
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().context("polling server process")? {
                bail!("{} exited during startup: {status}", self.name);
            }
            if TcpStream::connect_timeout(&self.addr, Duration::from_millis(100)).is_ok() {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "{} not accepting on {} after {START_DEADLINE:?}",
                self.name,
                self.addr
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Resident set size, from /proc/PID/status, in bytes.
    pub fn rss_bytes(&self) -> Result<u64> {
        let path = format!("/proc/{}/status", self.pid());
        let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().strip_suffix("kB"))
            .and_then(|v| v.trim().parse().ok())
            .with_context(|| format!("no VmRSS line in {path}"))?;
        Ok(kib * 1024)
    }

    /// RSS once it has stopped changing for 200 ms (or after 5 s). Background
    /// work may still be growing the heap when the last reply arrives: memcached,
    /// for one, migrates to a bigger hash table in a separate thread.
    pub fn settled_rss_bytes(&self) -> Result<u64> {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut last = self.rss_bytes()?;
        loop {
            std::thread::sleep(Duration::from_millis(200));
            let now = self.rss_bytes()?;
            if now == last || Instant::now() >= deadline {
                return Ok(now);
            }
            last = now;
        }
    }

    /// User plus system CPU time of all the server's threads.
    pub fn cpu_time(&self) -> Result<Duration> {
        let path = format!("/proc/{}/stat", self.pid());
        let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        // The command name may contain spaces; fields are counted after its ')'.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .context("malformed stat")?
            .1
            .split_whitespace()
            .collect();
        // utime and stime are fields 14 and 15 of stat(5); fields[0] is field 3.
        let field = |i: usize| -> Result<u64> {
            fields
                .get(i)
                .and_then(|f| f.parse().ok())
                .with_context(|| format!("field {} of {path}", i + 3))
        };
        Ok(ticks_to_duration(field(11)? + field(12)?))
    }
}

/// CPU time the whole machine spent running tasks (user, nice, system) or
/// lost to the hypervisor (steal), summed over CPUs. Interrupt time is left out
/// because most of it is the loopback traffic under test, which the kernel
/// bills to no process; what remains minus the generator and the server is
/// other work on the machine, i.e. noise.
pub fn machine_task_time() -> Result<Duration> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let ticks: Vec<u64> = stat
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("cpu "))
        .context("no cpu line in /proc/stat")?
        .split_whitespace()
        .map(|t| t.parse().context("malformed /proc/stat"))
        .collect::<Result<_>>()?;
    // user nice system idle iowait irq softirq steal ...
    ensure!(ticks.len() >= 8, "short cpu line in /proc/stat");
    Ok(ticks_to_duration(ticks[0] + ticks[1] + ticks[2] + ticks[7]))
}

fn ticks_to_duration(ticks: u64) -> Duration {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_secs_f64(ticks as f64 / hz as f64)
}

impl Drop for Server {
    fn drop(&mut self) {
        // Errors mean the process is already gone, which is what we want.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Asks the kernel for an unused port. Another process could take it before the
/// server binds; the server then exits and `start` reports it.
pub fn free_port() -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
    listener.local_addr().context("reading the bound address")
}

/// The CPUs the calling thread may run on. Only the main thread exists when we
/// call this, and the generator runs on it, so this is the generator's affinity.
pub fn affinity() -> Result<Vec<usize>> {
    // SAFETY: an all-zero cpu_set_t is a valid empty set; the size matches.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) };
    ensure!(
        rc == 0,
        "sched_getaffinity: {}",
        std::io::Error::last_os_error()
    );
    Ok((0..libc::CPU_SETSIZE as usize)
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect())
}

pub fn set_affinity(cpus: &[usize]) -> Result<()> {
    // SAFETY: as above; CPU_SET only writes inside `set` for cpu < CPU_SETSIZE.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &cpu in cpus {
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) };
    ensure!(
        rc == 0,
        "sched_setaffinity({cpus:?}): {}",
        std::io::Error::last_os_error()
    );
    Ok(())
}
