//! deploy/systemd: the unit passes `systemd-analyze verify` and `systemd-analyze security`
//! (offline, exposure at most 2.0: `--threshold=20`), carries Debian's hardening set, and
//! its ExecStart line runs as written (the shipped meshcached.toml on the host 10.0.0.1 it
//! is written for, the same file adapted on the two peers it names): the node serves,
//! replicates, stops on KillSignal within TimeoutStopSec with exit 0, leaves its state file
//! in StateDirectory, and the next start loads it.

use std::collections::HashMap;
use std::time::Duration;

use super::*;
use common::netns::Lan;
use common::{eventually, DEADLINE};

fn unit_text() -> String {
    std::fs::read_to_string(repo().join("deploy/systemd/meshcached.service")).expect("the unit")
}

/// `Key=value` lines of the unit (a repeated key keeps every value).
fn unit_settings(text: &str) -> HashMap<String, Vec<String>> {
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.starts_with('[') {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            out.entry(k.to_string()).or_default().push(v.to_string());
        }
    }
    out
}

/// systemd's tools need the unit's binary to exist: the copy they check names the binary
/// under test instead of /usr/bin/meshcached, and nothing else differs.
fn checkable_copy(dir: &TempDir) -> PathBuf {
    let text = unit_text().replace("/usr/bin/meshcached", common::binary());
    let path = dir.join("meshcached.service");
    std::fs::write(&path, text).expect("write the unit copy");
    path
}

fn systemd_analyze(args: &[&str], unit: &Path) -> (bool, String) {
    let out = Command::new("systemd-analyze")
        .args(args)
        .arg(unit)
        .output()
        .expect("run systemd-analyze (`apt-get install systemd`; .ci/run installs it)");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn the_unit_passes_systemd_analyze_verify_and_security() {
    let dir = TempDir::new("systemd-verify");
    let unit = checkable_copy(&dir);
    let (ok, text) = systemd_analyze(&["verify"], &unit);
    assert!(ok, "systemd-analyze verify:\n{text}");
    let (ok, text) = systemd_analyze(&["security", "--offline=yes", "--threshold=20"], &unit);
    assert!(
        ok,
        "systemd-analyze security (exposure above 2.0, 20 in tenths?):\n{text}"
    );

    let s = unit_settings(&unit_text());
    let one = |k: &str| -> String {
        s.get(k)
            .and_then(|v| v.last().cloned())
            .unwrap_or_else(|| panic!("no {k}= in the unit"))
    };
    // Debian's memcached.service hardening, each as Debian sets it or stricter.
    for (k, v) in [
        ("PrivateTmp", "true"),
        ("NoNewPrivileges", "true"),
        ("PrivateDevices", "true"),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
        ("MemoryDenyWriteExecute", "true"),
        ("ProtectKernelModules", "true"),
        ("ProtectKernelTunables", "true"),
        ("ProtectControlGroups", "true"),
        ("RestrictRealtime", "true"),
        ("RestrictNamespaces", "true"),
        ("ProtectSystem", "strict"),
        ("CapabilityBoundingSet", ""),
    ] {
        assert_eq!(one(k), v, "{k}");
    }
    // A dedicated user, never root.
    assert!(
        one("User") == "meshcached" || s.contains_key("DynamicUser"),
        "a dedicated user"
    );
    let sysusers = std::fs::read_to_string(repo().join("deploy/systemd/meshcached.sysusers"))
        .expect("meshcached.sysusers");
    assert!(sysusers.contains("u meshcached "), "{sysusers}");
    assert_eq!(one("StateDirectory"), "meshcached");
    assert!(one("ExecStart").contains("--state-file ${STATE_DIRECTORY}/"));
    assert_eq!(one("ExecReload"), "/bin/kill -HUP $MAINPID");
    // The stop outlasts the drain, the clients' grace (5s) and the state file.
    let stop: u64 = one("TimeoutStopSec")
        .parse()
        .expect("TimeoutStopSec in seconds");
    let toml = std::fs::read_to_string(repo().join("deploy/systemd/meshcached.toml")).unwrap();
    let drain = toml
        .lines()
        .find_map(|l| l.strip_prefix("drain-timeout = "))
        .map(|v| {
            v.trim_matches('"')
                .trim_end_matches('s')
                .parse::<u64>()
                .unwrap()
        })
        .unwrap_or(10);
    assert!(
        stop >= drain + 5 + 10,
        "TimeoutStopSec {stop} vs drain {drain}"
    );
}

/// The example's three hosts, as the shipped configuration names them.
const HOSTS: [(&str, &str); 3] = [
    ("cache-a", "10.0.0.1"),
    ("cache-b", "10.0.0.2"),
    ("cache-c", "10.0.0.3"),
];

/// What a host of the example needs in /etc/meshcached: the shipped configuration (cache-a's
/// as shipped; another host's with its own address and name, and the others as peers) and
/// its certificates.
fn host_etc(dir: &TempDir, bin: &Path, host: &str, ip: &str) -> PathBuf {
    let etc = dir.join(&format!("{host}/etc"));
    std::fs::create_dir_all(&etc).unwrap();
    let shipped = std::fs::read_to_string(repo().join("deploy/systemd/meshcached.toml")).unwrap();
    let peers: Vec<String> = HOSTS
        .iter()
        .filter(|(h, _)| *h != host)
        .map(|(_, ip)| format!("\"{ip}:11212\""))
        .collect();
    let config = shipped
        .replace("listen = \"10.0.0.1\"", &format!("listen = \"{ip}\""))
        .replace(
            "node-name = \"cache-a\"",
            &format!("node-name = \"{host}\""),
        )
        .replace(
            "join = [\"10.0.0.2:11212\", \"10.0.0.3:11212\"]",
            &format!("join = [{}]", peers.join(", ")),
        );
    if host == "cache-a" {
        assert_eq!(config, shipped, "cache-a runs the shipped file as it is");
    }
    let mounts = Mounts::new(vec![("/etc/meshcached".into(), etc.clone())]);
    std::fs::write(etc.join("meshcached.toml"), mounts.map_lines(&config)).unwrap();
    let ok = Command::new("sh")
        .args(["-eu", "-c"])
        .arg(format!(
            "[ -e ca/ca.crt ] || meshcached certs create-ca --certs-dir ca --ca-key ca.key\n\
             meshcached certs create-node {ip} --name {host} --certs-dir {host}/etc/certs \
             --ca-cert ca/ca.crt --ca-key ca.key"
        ))
        .env("PATH", path_with(bin))
        .current_dir(&dir.0)
        .output()
        .expect("make certificates");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    etc
}

/// ExecStart as systemd runs it: `${STATE_DIRECTORY}` expanded, /usr/bin/meshcached and
/// /etc/meshcached where this host has them.
fn exec_start(etc: &Path, state: &Path) -> (PathBuf, Vec<String>) {
    let s = unit_settings(&unit_text());
    let line = s["ExecStart"].last().unwrap().clone();
    let mounts = Mounts::new(vec![("/etc/meshcached".into(), etc.to_path_buf())]);
    let words: Vec<String> = line
        .split_whitespace()
        .map(|w| mounts.map(&w.replace("${STATE_DIRECTORY}", &state.display().to_string())))
        .collect();
    assert_eq!(words[0], "/usr/bin/meshcached");
    (PathBuf::from(common::binary()), words[1..].to_vec())
}

#[test]
fn the_unit_s_exec_start_runs_a_node_that_stops_within_its_timeout() {
    let dir = TempDir::new("systemd-run");
    let bin = bin_dir(&dir);
    let lan = Lan::new(
        "systemd",
        [10, 0, 0],
        &HOSTS.map(|(h, _)| vec![h.to_string()]),
    );
    let stop_timeout = {
        let s = unit_settings(&unit_text());
        Duration::from_secs(s["TimeoutStopSec"][0].parse().unwrap())
    };
    let mut nodes = Vec::new();
    let mut states = Vec::new();
    for (host, ip) in HOSTS {
        let etc = host_etc(&dir, &bin, host, ip);
        // StateDirectory=meshcached: systemd makes it, 0700, for the service user.
        let state = dir.join(&format!("{host}/var/lib/meshcached"));
        std::fs::create_dir_all(&state).unwrap();
        let (program, args) = exec_start(&etc, &state);
        let log = dir.join(&format!("{host}.log"));
        nodes.push(lan.spawn(host, &program, &args, &[], &dir.0, &log));
        states.push((etc, state));
    }
    let mut ca = lan.client("cache-a", 11211);
    let mut cb = lan.client("cache-b", 11211);
    assert_eq!(ca.line("set unit 0 0 2\r\nok"), "STORED\r\n");
    eventually(DEADLINE, "cache-a's write is on cache-b", || {
        cb.call(b"get unit\r\n", b"END\r\n").contains("ok")
    });
    drop((ca, cb));

    // systemctl stop: KillSignal, then at most TimeoutStopSec.
    nodes[0].signal(libc::SIGTERM);
    let status = nodes[0].wait_exit(stop_timeout);
    assert_eq!(status.code(), Some(0), "{}", nodes[0].log());
    let state_file = states[0].1.join("state");
    assert!(state_file.exists(), "the state file in StateDirectory");

    // systemctl start again: a warm restart from StateDirectory.
    let (program, args) = exec_start(&states[0].0, &states[0].1);
    let log = dir.join("cache-a-again.log");
    let again = lan.spawn("cache-a", &program, &args, &[], &dir.0, &log);
    again.wait_line(&["state file loaded", "node=cache-a"]);
    let mut ca = lan.client("cache-a", 11211);
    assert!(ca.call(b"get unit\r\n", b"END\r\n").contains("ok"));
}
