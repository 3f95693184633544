//! The README's "A real cluster" steps, taken from the README itself and run in the order
//! shown: the certificate commands in a shell, then each `host$ command` line on that host
//! (10.0.0.1 and 10.0.0.2, as written), then a write on one node read on the other.

use super::*;
use common::netns::Lan;
use common::{eventually, DEADLINE};

/// The fenced `sh` blocks of the README section titled `title`.
fn section_blocks(readme: &str, title: &str) -> Vec<String> {
    let start = readme
        .find(&format!("\n## {title}\n"))
        .unwrap_or_else(|| panic!("no section {title:?} in the README"));
    let section = &readme[start + 1..];
    let section = &section[..section[3..].find("\n## ").map_or(section.len(), |i| i + 3)];
    let mut blocks = Vec::new();
    let mut rest = section;
    while let Some(open) = rest.find("```sh\n") {
        let body = &rest[open + 6..];
        let close = body.find("```").expect("a closed block");
        blocks.push(body[..close].to_string());
        rest = &body[close + 3..];
    }
    blocks
}

#[test]
fn the_readme_cluster_steps_work_in_the_order_shown() {
    let readme = std::fs::read_to_string(repo().join("README.md")).expect("README.md");
    let blocks = section_blocks(&readme, "A real cluster");
    assert_eq!(blocks.len(), 2, "certificates, then the nodes: {blocks:?}");
    let dir = TempDir::new("readme-steps");
    let bin = bin_dir(&dir);

    // 1. The certificates, as one script: each command must succeed in turn.
    let out = Command::new("sh")
        .args(["-eu", "-c", &blocks[0]])
        .env("PATH", path_with(&bin))
        .current_dir(&dir.0)
        .output()
        .expect("run the certificate steps");
    assert!(
        out.status.success(),
        "the README's certificate steps failed:\n{}\n{}{}",
        blocks[0],
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // 2. The nodes, each on its host.
    let steps: Vec<(String, String)> = blocks[1]
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (host, cmd) = l.split_once("$ ").expect("HOST$ COMMAND");
            (host.to_string(), cmd.to_string())
        })
        .collect();
    assert_eq!(steps.len(), 2, "{steps:?}");
    let names: Vec<Vec<String>> = steps.iter().map(|(h, _)| vec![h.clone()]).collect();
    // The addresses the README uses: 10.0.0.1 for the first host, 10.0.0.2 for the second.
    let lan = Lan::new("readme", [10, 0, 0], &names);
    let mut nodes = Vec::new();
    for (host, cmd) in &steps {
        assert!(cmd.contains(&lan.host(host).ip.to_string()), "{cmd}");
        let log = dir.join(&format!("{host}.log"));
        let args = vec!["-c".to_string(), format!("exec {cmd}")];
        let env = vec![("PATH".to_string(), path_with(&bin))];
        nodes.push(lan.spawn(host, Path::new("/bin/sh"), &args, &env, &dir.0, &log));
    }
    let (a, b) = (&steps[0].0, &steps[1].0);
    let mut ca = lan.client(a, 11211);
    let mut cb = lan.client(b, 11211);
    assert_eq!(
        ca.line("set readme 0 0 5\r\nhello"),
        "STORED\r\n",
        "{}",
        nodes[0].log()
    );
    eventually(
        DEADLINE,
        "the write on the first host is on the second",
        || cb.call(b"get readme\r\n", b"END\r\n").contains("hello"),
    );
    for n in &mut nodes {
        n.signal(libc::SIGTERM);
        assert_eq!(n.wait_exit(DEADLINE).code(), Some(0), "{}", n.log());
    }
}
