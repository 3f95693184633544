//! libmemcached's conformance checker, `memccapable` (Debian package libmemcached-tools),
//! against the real binary: every ASCII and binary test must pass.

mod common;

use std::process::Command;

use common::Node;

fn memccapable(protocol_flag: &str) {
    let node = Node::start(&["-t", "2"]);
    let out = Command::new("memccapable")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &node.addr.port().to_string(),
            "-t",
            "10",
            protocol_flag,
        ])
        .output()
        .expect("memccapable is installed (apt-get install libmemcached-tools)");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "memccapable {protocol_flag} failed:\n{text}"
    );
    assert!(text.contains("All tests passed"), "{text}");
}

#[test]
fn ascii() {
    memccapable("-a");
}

#[test]
fn binary() {
    memccapable("-b");
}
