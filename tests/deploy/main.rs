//! deploy/ and the README's steps, each run as the operator would run them, against the
//! real binary: the README's certificate and start-up steps on two hosts; the systemd unit
//! (`systemd-analyze verify` and `security`, then its ExecStart line); the compose file's
//! topology (its certificate step, then three nodes on three hosts); the Kubernetes
//! manifests (validated offline with kubernetes-validate, then three pods' container
//! command on three hosts). Hosts are network namespaces on a private bridge
//! (`common::netns`): root and iproute2 are needed, as for the fault suite; `.ci/run`
//! installs systemd (for systemd-analyze), PyYAML and kubernetes-validate.
//!
//! No container image is built: no registry is reachable here for its base images. What
//! the image would run (its entrypoint script, with the binary on PATH) runs instead, and a
//! container path is a directory of the test (a volume's contents), mapped in the flags and
//! the environment exactly where the files say it is mounted.

#[path = "../common/mod.rs"]
mod common;
mod compose;
mod kubernetes;
mod readme;
mod systemd;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::TempDir;

/// The repository's top directory.
fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A directory holding `meshcached` (a link to the binary under test), for PATH.
fn bin_dir(dir: &TempDir) -> PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).expect("bin dir");
    let link = bin.join("meshcached");
    if !link.exists() {
        std::os::unix::fs::symlink(common::binary(), &link).expect("link the binary");
    }
    bin
}

/// PATH with `bin` first.
fn path_with(bin: &Path) -> String {
    format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into())
    )
}

/// Every document of a YAML file, as JSON values (PyYAML reads it: the same YAML 1.1 as
/// the Go YAML libraries of docker compose and kubectl, octal `0440` included).
fn yaml_documents(path: &Path) -> Vec<serde_json::Value> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml\n\
             docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d is not None]\n\
             print(json.dumps(docs))",
        ])
        .arg(path)
        .output()
        .expect("run python3 (PyYAML is needed: .ci/run installs it)");
    assert!(
        out.status.success(),
        "reading {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON from python3")
}

/// A JSON string array as strings.
fn strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|s| {
            s.as_str()
                .unwrap_or_else(|| panic!("not a string: {s}"))
                .to_string()
        })
        .collect()
}

/// Container paths mapped to the test's directories (longest first, so that a mount inside
/// another wins): what a volume mount does, applied to a flag or a variable's value.
struct Mounts(Vec<(String, PathBuf)>);

impl Mounts {
    fn new(mut pairs: Vec<(String, PathBuf)>) -> Mounts {
        pairs.sort_by_key(|(c, _)| std::cmp::Reverse(c.len()));
        Mounts(pairs)
    }

    fn map(&self, s: &str) -> String {
        for (container, host) in &self.0 {
            if let Some(i) = s.find(container.as_str()) {
                let rest = &s[i + container.len()..];
                if rest.is_empty() || rest.starts_with('/') {
                    return format!("{}{}{rest}", &s[..i], host.display());
                }
            }
        }
        s.to_string()
    }

    /// [`Mounts::map`] on every line of a file's text.
    fn map_lines(&self, text: &str) -> String {
        text.lines().map(|l| self.map(l) + "\n").collect()
    }
}
