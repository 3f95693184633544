//! Listing the keys of the real binary: `memcdump` (libmemcached-tools, which reads
//! `stats cachedump`) lists every key, and `lru_crawler metadump all` lists a store larger
//! than one answer chunk completely, each key once, with pipelined commands after it
//! answered in order.

mod common;

use std::collections::BTreeSet;
use std::process::Command;

use common::{Client, Node};

/// Stores `n` keys named `prefix<i>` with values of `len` bytes, pipelined.
fn fill(c: &mut Client, prefix: &str, n: usize, len: usize) -> BTreeSet<String> {
    let value = "v".repeat(len);
    let mut keys = BTreeSet::new();
    for chunk in (0..n).collect::<Vec<_>>().chunks(100) {
        let mut req = String::new();
        for i in chunk {
            let key = format!("{prefix}{i}");
            req.push_str(&format!("set {key} 0 0 {len}\r\n{value}\r\n"));
            keys.insert(key);
        }
        c.send(req.as_bytes());
        let want = "STORED\r\n".repeat(chunk.len());
        assert_eq!(String::from_utf8(c.read_exact(want.len())).unwrap(), want);
    }
    keys
}

#[test]
fn memcdump_lists_every_key() {
    let node = Node::start(&[]);
    let mut c = node.client();
    let mut keys = fill(&mut c, "key:", 1000, 10);
    assert_eq!(c.line("set odd%key 3 0 1\r\nx"), "STORED\r\n");
    keys.insert("odd%key".to_string());
    let out = Command::new("memcdump")
        .arg(format!("--servers={}", node.addr))
        .output()
        .expect("memcdump (package libmemcached-tools) runs");
    assert!(out.status.success(), "{out:?}");
    let listed: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    let unique: BTreeSet<String> = listed.iter().cloned().collect();
    assert_eq!(unique.len(), listed.len(), "a key was listed twice");
    assert_eq!(unique, keys);
}

#[test]
fn metadump_lists_a_large_store_once_in_pieces() {
    let node = Node::start(&["-m", "256"]);
    let mut c = node.client();
    // About 100 bytes of metadump line per key: 6,000 keys pass the 256 KiB answer chunk.
    let keys = fill(
        &mut c,
        "a-rather-long-key-name-to-make-lines-longer-",
        6000,
        1,
    );
    c.send(b"lru_crawler metadump all\r\nversion\r\n");
    // Only the END line and the version line end with CRLF (a metadump line ends with a
    // bare newline): read CRLF-terminated pieces until the version line is in.
    let mut text = String::new();
    while !text.contains("END\r\nVERSION ") {
        text.push_str(&String::from_utf8(c.read_until(b"\r\n")).unwrap());
    }
    let (body, version) = text
        .split_once("END\r\n")
        .expect("the dump ends with END, then the pipelined version");
    assert!(version.starts_with("VERSION ") && version.ends_with("\r\n"));
    let listed: Vec<&str> = body
        .lines()
        .map(|l| {
            let key = l.strip_prefix("key=").unwrap().split(' ').next().unwrap();
            // One class; the size is what the item is charged (key, 1-byte value,
            // overhead); the flags are the set's 0.
            let size = key.len() + 1 + meshcached::store::ENTRY_OVERHEAD;
            assert!(l.ends_with(&format!(" cls=1 size={size} flags=0 ")), "{l}");
            key
        })
        .collect();
    let unique: BTreeSet<String> = listed.iter().map(|k| k.to_string()).collect();
    assert_eq!(unique.len(), listed.len(), "a key was listed twice");
    assert_eq!(unique, keys);
    assert!(c.line("version").starts_with("VERSION "));
}
