//! What a new operator meets first, against the real binary: `--help` and the subcommands'
//! help, cluster flags checked on a standalone node, `-l` with a host name, a port that is
//! taken, the log lines of a standalone node, `stats cluster` and `stats settings`, and the
//! LICENSE that Cargo.toml names.

mod common;

use common::{read_log, run_to_exit, wait_log, Client, Node, TempDir};

fn stats_group(c: &mut Client, group: &str) -> Vec<(String, String)> {
    let out = c.call(format!("stats {group}\r\n").as_bytes(), b"END\r\n");
    out.lines()
        .filter_map(|l| l.strip_prefix("STAT "))
        .filter_map(|l| l.split_once(' '))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn help_lists_the_subcommands_and_groups_the_flags() {
    let (code, help) = run_to_exit(&["--help"]);
    assert_eq!(code, Some(0), "{help}");
    for command in ["demo ", "certs ", "config "] {
        let listed = help
            .lines()
            .skip_while(|l| *l != "Commands:")
            .take_while(|l| !l.is_empty())
            .any(|l| l.trim_start().starts_with(command));
        assert!(listed, "{command:?} under Commands:\n{help}");
    }
    assert!(
        help.lines()
            .any(|l| l.trim_start().starts_with("cluster forget NAME")),
        "the admin command to forget a member is in --help:\n{help}"
    );
    // Each section holds its own flags: a flag is under the heading before it.
    let section_of = |flag: &str| -> String {
        let mut section = String::new();
        for line in help.lines() {
            if !line.starts_with(' ') && line.ends_with(':') {
                section = line.to_string();
            }
            if line.contains(flag) {
                return section;
            }
        }
        panic!("{flag} is not in --help:\n{help}");
    };
    for (flag, section) in [
        ("--memory-limit", "memcached flags:"),
        ("--pidfile", "memcached flags:"),
        ("--certs-dir", "Cluster (replication between nodes):"),
        ("--drain-timeout", "Cluster (replication between nodes):"),
        (
            "--remove-down-after",
            "Cluster (replication between nodes):",
        ),
        ("--metrics-listen", "Operations:"),
        ("--config", "Operations:"),
    ] {
        assert_eq!(section_of(flag), section, "{flag}");
    }

    let (code, demo) = run_to_exit(&["demo", "--help"]);
    assert_eq!(code, Some(0), "{demo}");
    assert!(demo.contains("Usage: meshcached demo [OPTIONS]"), "{demo}");

    let (code, list) = run_to_exit(&["certs", "list", "--help"]);
    assert_eq!(code, Some(0), "{list}");
    // Its text follows on the same line, or (when long) on the next.
    let lines: Vec<&str> = list.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.trim_start().starts_with("--certs-dir <DIR>"))
        .unwrap_or_else(|| panic!("{list}"));
    let same = lines[at].split("<DIR>").nth(1).unwrap_or("").trim();
    let next = lines.get(at + 1).map_or("", |l| l.trim());
    let text = if same.is_empty() { next } else { same };
    assert!(text.contains("ca.crt"), "--certs-dir has a text: {list}");

    let (code, config) = run_to_exit(&["config", "--help"]);
    assert_eq!(code, Some(0), "{config}");
    assert!(
        config.contains("meshcached config check [FILE]"),
        "{config}"
    );
}

/// `--repl-backlog lots` used to start a standalone node: cluster settings are checked
/// wherever they are given, and refused by name without `--certs-dir`.
#[test]
fn cluster_flags_are_checked_on_a_standalone_node() {
    let (code, text) = run_to_exit(&["--repl-backlog", "lots"]);
    assert_eq!(code, Some(2), "{text}");
    assert!(
        text.contains("--repl-backlog: invalid size \"lots\""),
        "{text}"
    );
    let (code, text) = run_to_exit(&["--drain-timeout", "forever"]);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("--drain-timeout: invalid duration"), "{text}");
    let (code, text) = run_to_exit(&["--repl-backlog", "1m"]);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("--repl-backlog needs --certs-dir"), "{text}");
    let (code, text) = run_to_exit(&["-l", "nowhere.invalid"]);
    assert_eq!(code, Some(2), "{text}");
    assert!(
        text.contains("cannot resolve the listen address \"nowhere.invalid\""),
        "{text}"
    );
}

/// `-l localhost` (the harness's own `-l 127.0.0.1` comes first; the last one wins) serves
/// on the loopback address, and `stats settings` says so.
#[test]
fn listen_takes_a_host_name() {
    let node = Node::start(&["-l", "localhost"]);
    let settings = stats_group(&mut node.client(), "settings");
    let inter = settings
        .iter()
        .find(|(k, _)| k == "inter")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    assert!(
        inter.split(',').all(|a| a == "127.0.0.1" || a == "::1") && inter.contains("127.0.0.1"),
        "{inter}"
    );
}

/// A client port that is taken stops the node with the address in the message.
#[test]
fn a_port_clash_names_the_address() {
    let first = Node::start(&[]);
    let port = first.addr.port().to_string();
    let (code, text) = run_to_exit(&["-p", &port, "-l", "127.0.0.1"]);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains(&format!("cannot listen on 127.0.0.1:{port}: ")),
        "{text}"
    );
    assert!(text.contains("is another memcached running?"), "{text}");
}

/// Every log line of a standalone node names it (by host name, the default --node-name),
/// and the unix socket's path is written as a path.
#[test]
fn a_standalone_node_s_log_names_it() {
    let dir = TempDir::new("operator-log");
    let socket = dir.at("mc.sock");
    let log = dir.join("node.log");
    let mut child = std::process::Command::new(common::binary())
        .args(["-s", &socket])
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("spawn");
    let text = wait_log(&log, "listening on unix socket");
    let _ = child.kill();
    let _ = child.wait();
    assert!(text.contains(&format!("path={socket}")), "{text}");
    assert!(!text.contains("Some("), "{text}");
    let host = meshcached::config::host_name().expect("a host name");
    for line in read_log(&log)
        .lines()
        .filter(|l| l.contains(" meshcached::"))
    {
        assert!(line.contains(&format!(" node={host}")), "{line}");
    }
}

/// `stats cluster` answers (it answered ERROR): standalone, that it is; `stats settings`
/// says there is no cluster.
#[test]
fn stats_cluster_on_a_standalone_node() {
    let node = Node::start(&[]);
    let mut c = node.client();
    assert_eq!(
        stats_group(&mut c, "cluster"),
        [("mode".to_string(), "standalone".to_string())]
    );
    let settings = stats_group(&mut c, "settings");
    assert!(settings.contains(&("cluster".to_string(), "no".to_string())));
    assert_eq!(
        c.line("cluster forget node-b"),
        "CLIENT_ERROR not a cluster node\r\n"
    );
}

/// The LICENSE file is the license Cargo.toml declares.
#[test]
fn the_license_file_matches_cargo_toml() {
    let root = env!("CARGO_MANIFEST_DIR");
    let manifest = std::fs::read_to_string(format!("{root}/Cargo.toml")).expect("Cargo.toml");
    let declared = manifest
        .lines()
        .find_map(|l| l.strip_prefix("license = "))
        .expect("a license in Cargo.toml")
        .trim_matches('"');
    assert_eq!(declared, "BSD-3-Clause");
    let license = std::fs::read_to_string(format!("{root}/LICENSE")).expect("LICENSE");
    assert!(license.starts_with("BSD 3-Clause License\n"), "{license}");
    for clause in [
        "Redistributions of source code must retain the above copyright notice",
        "Redistributions in binary form must reproduce the above copyright notice",
        "Neither the name of the copyright holder nor the names of its",
        "THIS SOFTWARE IS PROVIDED BY THE COPYRIGHT HOLDERS AND CONTRIBUTORS \"AS IS\"",
    ] {
        assert!(license.contains(clause), "{clause}");
    }
    assert!(license.contains("Copyright (c) "), "{license}");
}

/// The upgrade policy is kept: the README's upgrade notes name the wire protocol and the
/// state-file format this build speaks, so neither changes without the notes saying so.
#[test]
fn the_upgrade_notes_name_the_current_wire_and_state_file_versions() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let start = readme.find("\n## Upgrades\n").expect("an Upgrades section");
    let section = &readme[start + 1..];
    let section = &section[..section[3..].find("\n## ").map_or(section.len(), |i| i + 3)];
    let alpn = String::from_utf8_lossy(meshcached::replication::transport::ALPN);
    assert!(
        section.contains(&format!("today `{alpn}`")),
        "the upgrade notes name {alpn}:\n{section}"
    );
    let format = meshcached::state::format::FORMAT;
    assert!(
        section.contains(&format!("format {format} today")),
        "the upgrade notes name state-file format {format}:\n{section}"
    );
}
