//! `--config FILE` against the real binary: a TOML file whose settings the command line
//! overrides, refusals that name the line, Debian's stock `/etc/memcached.conf` (from the
//! memcached package) accepted as it is apart from the user and pid file paths, and
//! `meshcached config check`.

mod common;

use common::{run_to_exit, wait_log, Client, Node, TempDir};

fn settings(c: &mut Client) -> std::collections::HashMap<String, String> {
    let out = c.call(b"stats settings\r\n", b"END\r\n");
    out.lines()
        .filter_map(|l| l.strip_prefix("STAT "))
        .filter_map(|l| l.split_once(' '))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

const TOML: &str = "# a meshcached node\n\
    memory-limit = \"32\"\n\
    extended = [\"idle_timeout=7\"]\n\
    disable-cas = true\n\
    port = 1\n";

#[test]
fn a_toml_file_is_read_and_flags_override_it() {
    let dir = TempDir::new("config-toml");
    let path = dir.at("meshcached.toml");
    std::fs::write(&path, TOML).unwrap();
    // The harness's -p comes after the file: it overrides `port = 1`; so does -m.
    let node = Node::start(&["--config", &path, "-m", "48"]);
    let s = settings(&mut node.client());
    assert_eq!(s["maxbytes"], (48u64 << 20).to_string());
    assert_eq!(s["idle_timeout"], "7");
    assert_eq!(s["cas_enabled"], "no");
}

#[test]
fn unknown_keys_and_bad_values_are_refused_with_their_line() {
    let dir = TempDir::new("config-bad");
    let path = dir.at("c.toml");
    std::fs::write(&path, "port = 1\n\nbogus = 2\n").unwrap();
    let (code, text) = run_to_exit(&["--config", &path]);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("c.toml:3: unknown key `bogus`"), "{text}");
    std::fs::write(&path, "-m 64\n-k\n").unwrap();
    let (code, text) = run_to_exit(&["--config", &path]);
    assert_eq!(code, Some(2), "{text}");
    assert!(
        text.contains("c.toml:2: unexpected argument '-k'"),
        "{text}"
    );
    let (code, text) = run_to_exit(&["--config", &dir.at("missing")]);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("missing"), "{text}");
}

#[test]
fn debian_stock_memcached_conf_is_accepted() {
    let stock = std::fs::read_to_string("/etc/memcached.conf")
        .expect("/etc/memcached.conf from Debian's memcached package (.ci/run installs it)");
    let dir = TempDir::new("config-debian");
    let pidfile = dir.at("memcached.pid");
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let user = if root { "-u nobody" } else { "" };
    let conf: String = stock
        .lines()
        .map(|l| match l.trim() {
            "-u memcache" => user.to_string(),
            l if l.starts_with("-P ") => format!("-P {pidfile}"),
            l => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    let path = dir.at("memcached.conf");
    std::fs::write(&path, conf).unwrap();
    let log = dir.join("node.log");
    let node = Node::start_logged(&["--config", &path], &log);
    assert_eq!(
        std::fs::read_to_string(&pidfile).unwrap(),
        format!("{}\n", node.child.id())
    );
    assert_eq!(
        settings(&mut node.client())["maxbytes"],
        (64u64 << 20).to_string()
    );
    wait_log(&log, "does not daemonize");
    wait_log(&log, "start-memcached");
    if root {
        let nobody = meshcached::privileges::lookup("nobody").unwrap();
        let status = std::fs::read_to_string(format!("/proc/{}/status", node.child.id())).unwrap();
        let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
        assert!(uid.ends_with(&format!("\t{}", nobody.uid)), "{uid}");
    }
}

#[test]
fn config_check_prints_the_effective_configuration() {
    let dir = TempDir::new("config-check");
    let path = dir.at("m.toml");
    std::fs::write(&path, TOML).unwrap();
    let (code, text) = run_to_exit(&["config", "check", &path, "-m", "48"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains(&format!("mem_limit: {},", 48u64 << 20)),
        "{text}"
    );
    assert!(text.contains("idle_timeout: 7,"), "{text}");
    assert!(text.contains("cas_enabled: false,"), "{text}");
    std::fs::write(&path, "memory-limit = \"lots\"\n").unwrap();
    let (code, text) = run_to_exit(&["config", "check", &path]);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("invalid size \"lots\""), "{text}");
}

/// Repeated `-l` add up, as memcached's do (`memcached -l 127.0.0.1 -l 127.0.0.2` listens
/// on both), and the command line's `-l` replace the file's set as a whole.
#[test]
fn repeated_listen_lines_add_up_and_the_command_line_replaces_them() {
    let dir = TempDir::new("config-listen");
    let path = dir.at("memcached.conf");
    std::fs::write(
        &path,
        "# two interfaces\n-p 7\n-l 127.0.0.2\n-l 127.0.0.3\n",
    )
    .unwrap();
    let (code, text) = run_to_exit(&["config", "check", &path]);
    assert_eq!(code, Some(0), "{text}");
    for addr in ["127.0.0.2:7", "127.0.0.3:7"] {
        assert!(text.contains(&format!("addr: {addr},")), "{addr} in {text}");
    }
    let (code, text) = run_to_exit(&[
        "config",
        "check",
        &path,
        "-l",
        "127.0.0.4",
        "-l",
        "127.0.0.5",
    ]);
    assert_eq!(code, Some(0), "{text}");
    for addr in ["127.0.0.4:7", "127.0.0.5:7"] {
        assert!(text.contains(&format!("addr: {addr},")), "{addr} in {text}");
    }
    let config = text.split_once("Config {").unwrap().1;
    assert!(
        !config.contains("127.0.0.2") && !config.contains("127.0.0.3"),
        "{text}"
    );
    let (code, text) = run_to_exit(&["config", "check", "-l", "127.0.0.6", "-l", "127.0.0.7"]);
    assert_eq!(code, Some(0), "{text}");
    for addr in ["127.0.0.6:11211", "127.0.0.7:11211"] {
        assert!(text.contains(&format!("addr: {addr},")), "{addr} in {text}");
    }
}

/// `config check` checks what a start would, short of binding: the client TLS files, the
/// -u user; and it prints -u, -P and -d.
#[test]
fn config_check_refuses_what_start_would() {
    let dir = TempDir::new("config-check-start");
    let missing = dir.at("missing.crt");
    let option = format!("ssl_chain_cert={missing}");
    let (code, text) = run_to_exit(&["config", "check", "-Z", "-o", &option]);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("missing.crt"), "{text}");
    let (code, text) = run_to_exit(&["config", "check", "-u", "no-such-user-here"]);
    assert_eq!(code, Some(2), "{text}");
    assert!(
        text.contains("-u no-such-user-here: no such user"),
        "{text}"
    );
    let pid = dir.at("m.pid");
    let (code, text) = run_to_exit(&["config", "check", "-u", "root", "-P", &pid, "-d"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("user: Some(\"root\")"), "{text}");
    assert!(
        text.contains(&format!("pidfile: Some(\"{pid}\")")),
        "{text}"
    );
    assert!(text.contains("daemon: true"), "{text}");
}
