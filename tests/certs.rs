//! `meshcached certs ...` as a process, in temporary directories: what an operator types, the
//! files and modes it leaves, its output, and its refusals (exit status 1 with a message that
//! names the file; 2 for a bad command line).

mod common;

use common::TempDir;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

/// Runs `meshcached certs ARGS`; returns the exit status, stdout and stderr.
fn certs(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_meshcached"))
        .arg("certs")
        .args(args)
        .output()
        .expect("run meshcached certs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs a command that must succeed, and returns its stdout.
fn ok(args: &[&str]) -> String {
    let (code, out, err) = certs(args);
    assert_eq!(
        code, 0,
        "meshcached certs {args:?}\nstdout: {out}\nstderr: {err}"
    );
    out
}

/// Runs a command that must fail with `status`, and returns its stderr.
fn fails(args: &[&str], status: i32) -> String {
    let (code, out, err) = certs(args);
    assert_eq!(
        code, status,
        "meshcached certs {args:?}\nstdout: {out}\nstderr: {err}"
    );
    err
}

fn mode(path: &str) -> u32 {
    std::fs::metadata(path).expect("stat").mode() & 0o777
}

/// A CA in `certs/` with its key in `safe/ca.key`, and node `node1` beside it.
fn cluster(t: &TempDir) -> (String, String) {
    let (dir, key) = (t.at("certs"), t.at("safe/ca.key"));
    ok(&["create-ca", "--certs-dir", &dir, "--ca-key", &key]);
    ok(&[
        "create-node",
        "127.0.0.1",
        "node1.example",
        "--name",
        "node1",
        "--certs-dir",
        &dir,
        "--ca-key",
        &key,
    ]);
    (dir, key)
}

#[test]
fn create_ca_writes_the_certificate_and_a_private_key() {
    let t = TempDir::new("ca");
    let (dir, key) = (t.at("certs"), t.at("safe/ca.key"));
    let out = ok(&["create-ca", "--certs-dir", &dir, "--ca-key", &key]);
    assert!(out.contains("ca.crt (valid until 20"), "{out}");
    assert!(out.contains("keep it secret"), "{out}");
    let crt = std::fs::read_to_string(format!("{dir}/ca.crt")).unwrap();
    assert!(crt.starts_with("-----BEGIN CERTIFICATE-----"), "{crt}");
    assert!(std::fs::read_to_string(&key)
        .unwrap()
        .contains("BEGIN PRIVATE KEY"));
    assert_eq!(mode(&key), 0o600);
    assert_eq!(
        mode(&t.at("safe")),
        0o700,
        "the CA key's directory is private too"
    );
    // A CA key in the certificates directory works, with a reminder.
    let out = ok(&[
        "create-ca",
        "--certs-dir",
        &t.at("d2"),
        "--ca-key",
        &t.at("d2/ca.key"),
    ]);
    assert!(
        out.contains("note: the CA key is in the certificates directory"),
        "{out}"
    );
}

#[test]
fn create_node_and_list() {
    let t = TempDir::new("node");
    let (dir, _) = cluster(&t);
    assert_eq!(mode(&format!("{dir}/node.key")), 0o600);
    let out = ok(&["list", "--certs-dir", &dir]);
    for expected in [
        "\nca.crt\n",
        "kind     CA",
        "\nnode.crt\n",
        "subject  CN=node1, O=meshcached",
        "kind     node \"node1\"",
        "hosts    DNS:node1, DNS:node1.example, IP:127.0.0.1",
        "chain    signed by ca.crt",
        "key      node.key matches",
        "(expires in 182",
        "2 certificate(s), no problems",
    ] {
        assert!(out.contains(expected), "{expected:?} missing from:\n{out}");
    }
}

#[test]
fn existing_files_are_kept_unless_overwrite() {
    let t = TempDir::new("overwrite");
    let (dir, key) = cluster(&t);
    let ca_before = std::fs::read(format!("{dir}/ca.crt")).unwrap();
    let node_before = std::fs::read(format!("{dir}/node.crt")).unwrap();
    let err = fails(&["create-ca", "--certs-dir", &dir, "--ca-key", &key], 1);
    assert!(
        err.contains("ca.crt already exists; pass --overwrite to replace it"),
        "{err}"
    );
    let node_args = [
        "create-node",
        "127.0.0.1",
        "--name",
        "node1",
        "--certs-dir",
        &dir,
        "--ca-key",
        &key,
    ];
    let err = fails(&node_args, 1);
    assert!(
        err.contains("node.crt already exists; pass --overwrite"),
        "{err}"
    );
    assert_eq!(std::fs::read(format!("{dir}/ca.crt")).unwrap(), ca_before);
    assert_eq!(
        std::fs::read(format!("{dir}/node.crt")).unwrap(),
        node_before
    );

    // --overwrite replaces, and a key left world-readable comes back as 0600.
    let node_key = format!("{dir}/node.key");
    std::fs::set_permissions(&node_key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut again = node_args.to_vec();
    again.push("--overwrite");
    ok(&again);
    assert_ne!(
        std::fs::read(format!("{dir}/node.crt")).unwrap(),
        node_before
    );
    assert_eq!(mode(&node_key), 0o600);
    ok(&["list", "--certs-dir", &dir]);

    ok(&[
        "create-ca",
        "--certs-dir",
        &dir,
        "--ca-key",
        &key,
        "--overwrite",
    ]);
    assert_ne!(std::fs::read(format!("{dir}/ca.crt")).unwrap(), ca_before);
    assert_eq!(mode(&key), 0o600);
    // The old node certificate does not chain to the new CA, and list says so.
    let err = fails(&["list", "--certs-dir", &dir], 1);
    assert!(err.contains("1 problem(s) found in"), "{err}");
    let (_, out, _) = certs(&["list", "--certs-dir", &dir]);
    assert!(
        out.contains("node.crt is not signed by the CA in ca.crt"),
        "{out}"
    );
}

#[test]
fn create_node_needs_the_ca_certificate_and_its_own_key() {
    let t = TempDir::new("refuse");
    let (dir, key) = cluster(&t);
    let empty = t.at("empty");
    let err = fails(
        &[
            "create-node",
            "::1",
            "--name",
            "n2",
            "--certs-dir",
            &empty,
            "--ca-key",
            &key,
        ],
        1,
    );
    assert!(
        err.contains("empty/ca.crt does not exist; copy the cluster's ca.crt there, or pass it with --ca-cert FILE (`create-ca` makes a new CA, for a new cluster)"),
        "{err}"
    );
    assert!(!Path::new(&empty).join("node.key").exists());

    // Another cluster's CA key: refused, and nothing written.
    let other_key = t.at("other/ca.key");
    ok(&[
        "create-ca",
        "--certs-dir",
        &t.at("other"),
        "--ca-key",
        &other_key,
    ]);
    let fresh = t.at("fresh");
    std::fs::create_dir(&fresh).unwrap();
    std::fs::copy(format!("{dir}/ca.crt"), format!("{fresh}/ca.crt")).unwrap();
    let err = fails(
        &[
            "create-node",
            "::1",
            "--name",
            "n2",
            "--certs-dir",
            &fresh,
            "--ca-key",
            &other_key,
        ],
        1,
    );
    assert!(err.contains("other/ca.key does not match"), "{err}");
    assert!(err.contains("another cluster's CA"), "{err}");
    assert!(!Path::new(&fresh).join("node.crt").exists());
    assert!(!Path::new(&fresh).join("node.key").exists());

    // A CA key that others can read is refused before it is used.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = fails(
        &[
            "create-node",
            "::1",
            "--name",
            "n2",
            "--certs-dir",
            &fresh,
            "--ca-key",
            &key,
        ],
        1,
    );
    assert!(
        err.contains("is readable or writable by other users (mode 0644)"),
        "{err}"
    );

    // Files that are not what they claim to be.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let err = fails(
        &[
            "create-node",
            "::1",
            "--name",
            "n2",
            "--certs-dir",
            &fresh,
            "--ca-key",
            &format!("{dir}/ca.crt"),
        ],
        1,
    );
    assert!(
        err.contains("it holds a certificate, not a private key"),
        "{err}"
    );
    std::fs::copy(format!("{dir}/node.crt"), format!("{fresh}/ca.crt")).unwrap();
    let err = fails(
        &[
            "create-node",
            "::1",
            "--name",
            "n2",
            "--certs-dir",
            &fresh,
            "--ca-key",
            &key,
        ],
        1,
    );
    assert!(
        err.contains("fresh/ca.crt is not a meshcached CA certificate"),
        "{err}"
    );
}

#[test]
fn list_reports_foreign_mismatched_and_malformed_files() {
    let t = TempDir::new("list");
    let (dir, _) = cluster(&t);
    let other = t.at("other");
    ok(&[
        "create-ca",
        "--certs-dir",
        &other,
        "--ca-key",
        &t.at("other.key"),
    ]);
    ok(&[
        "create-node",
        "10.0.0.9",
        "--name",
        "node9",
        "--certs-dir",
        &other,
        "--ca-key",
        &t.at("other.key"),
    ]);
    std::fs::copy(format!("{other}/node.crt"), format!("{dir}/stranger.crt")).unwrap();
    std::fs::copy(format!("{other}/node.key"), format!("{dir}/node.key")).unwrap();
    std::fs::write(format!("{dir}/junk.crt"), "hello").unwrap();
    let (code, out, err) = certs(&["list", "--certs-dir", &dir]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains("stranger.crt is not signed by the CA in ca.crt"),
        "{out}"
    );
    assert!(out.contains("node.key does not match node.crt"), "{out}");
    assert!(out.contains("junk.crt: no certificate found"), "{out}");
    assert!(err.contains("3 problem(s) found in"), "{err}");

    let err = fails(&["list", "--certs-dir", &t.at("nope")], 1);
    assert!(err.contains("nope does not exist"), "{err}");
}

#[test]
fn bad_command_lines_exit_2() {
    let t = TempDir::new("usage");
    let dir = t.at("c");
    let key = t.at("k");
    let err = fails(
        &[
            "create-node",
            "--name",
            "n1",
            "--certs-dir",
            &dir,
            "--ca-key",
            &key,
        ],
        2,
    );
    assert!(err.contains("<HOST>"), "{err}");
    let err = fails(
        &[
            "create-node",
            "h",
            "--name",
            "Bad_Name",
            "--certs-dir",
            &dir,
            "--ca-key",
            &key,
        ],
        2,
    );
    assert!(err.contains("invalid node name \"Bad_Name\""), "{err}");
    let err = fails(
        &[
            "create-node",
            "h:80",
            "--name",
            "n1",
            "--certs-dir",
            &dir,
            "--ca-key",
            &key,
        ],
        2,
    );
    assert!(err.contains("invalid host \"h:80\""), "{err}");
    let err = fails(
        &[
            "create-ca",
            "--certs-dir",
            &dir,
            "--ca-key",
            &key,
            "--lifetime",
            "5",
        ],
        2,
    );
    assert!(err.contains("invalid lifetime"), "{err}");
    fails(&["no-such-command"], 2);
    let (code, out, _) = certs(&["--help"]);
    assert_eq!(code, 0);
    assert!(out.contains("create-ca") && out.contains("create-node") && out.contains("list"));
    assert!(
        !Path::new(&dir).exists(),
        "a refused command creates nothing"
    );
}

#[test]
fn ca_rotation_with_a_bundle() {
    let t = TempDir::new("rotate");
    let (dir, _old_key) = cluster(&t);
    let new_key = t.at("safe/new-ca.key");
    ok(&[
        "create-ca",
        "--certs-dir",
        &t.at("new-ca"),
        "--ca-key",
        &new_key,
    ]);
    // Step 2 of certs/README.md: append the new CA; the old node certificate still chains.
    let mut bundle = std::fs::read_to_string(format!("{dir}/ca.crt")).unwrap();
    bundle.push_str(&std::fs::read_to_string(t.at("new-ca/ca.crt")).unwrap());
    std::fs::write(format!("{dir}/ca.crt"), bundle).unwrap();
    let out = ok(&["list", "--certs-dir", &dir]);
    assert!(out.contains("ca.crt (certificate #2)"), "{out}");
    assert!(
        out.contains("chain    signed by ca.crt (certificate #1)"),
        "{out}"
    );
    // Step 3: reissue from the new CA, which create-node finds in the bundle by its key.
    ok(&[
        "create-node",
        "127.0.0.1",
        "--name",
        "node1",
        "--certs-dir",
        &dir,
        "--ca-key",
        &new_key,
        "--overwrite",
    ]);
    let out = ok(&["list", "--certs-dir", &dir]);
    assert!(
        out.contains("chain    signed by ca.crt (certificate #2)"),
        "{out}"
    );
}
