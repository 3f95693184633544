//! deploy/container: the compose file's topology as processes. The image is not built (its
//! base images need a registry); what it would run is run instead: the Dockerfile's
//! ENTRYPOINT (the script it copies there) with each service's command, the binary on PATH
//! as the image has it, each named volume a directory mapped where the service mounts it.
//! The certificate service runs first and must succeed (and succeed again, as at a second
//! `up`); then node1..node3, each on a host of its own named after its service, must form
//! one cluster, replicate, answer /ready, and stop on SIGTERM with exit 0 within
//! stop_grace_period.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::Value;

use super::*;
use common::netns::Lan;
use common::{eventually, DEADLINE};

/// The Dockerfile's final stage: its ENTRYPOINT, what COPY put where (from the
/// repository), its USER and the directories it prepares.
pub(crate) struct Image {
    pub entrypoint: Vec<String>,
    pub copies: HashMap<String, String>,
    pub user: String,
    pub text: String,
}

pub(crate) fn image() -> Image {
    let text = std::fs::read_to_string(repo().join("deploy/container/Dockerfile")).unwrap();
    let last_stage = &text[text.rfind("\nFROM ").expect("a FROM")..];
    let mut img = Image {
        entrypoint: Vec::new(),
        copies: HashMap::new(),
        user: String::new(),
        text: last_stage.to_string(),
    };
    for line in last_stage.lines() {
        if let Some(json) = line.strip_prefix("ENTRYPOINT ") {
            let v: Value = serde_json::from_str(json).expect("ENTRYPOINT in exec form");
            img.entrypoint = strings(&v);
        } else if let Some(rest) = line.strip_prefix("COPY ") {
            let words: Vec<&str> = rest.split_whitespace().collect();
            if !words[0].starts_with("--from") {
                img.copies
                    .insert(words[1].to_string(), words[0].to_string());
            }
        } else if let Some(user) = line.strip_prefix("USER ") {
            img.user = user.trim().to_string();
        }
    }
    img
}

#[test]
fn the_image_runs_its_entrypoint_as_a_numeric_non_root_user() {
    let img = image();
    assert_eq!(img.entrypoint, ["/usr/local/bin/meshcached-entrypoint"]);
    assert_eq!(
        img.copies
            .get("/usr/local/bin/meshcached-entrypoint")
            .map(String::as_str),
        Some("deploy/container/entrypoint.sh")
    );
    assert!(repo().join("deploy/container/entrypoint.sh").exists());
    // Kubernetes' runAsNonRoot can only check a numeric user.
    let uid: u32 = img
        .user
        .split(':')
        .next()
        .unwrap()
        .parse()
        .expect("a numeric USER");
    assert_ne!(uid, 0);
    assert!(
        img.text.contains("EXPOSE 11211/tcp 11212/udp 9150/tcp"),
        "{}",
        img.text
    );
    // Every mount point of the compose file and of the StatefulSet exists in the image,
    // owned by that user (a new named volume copies the mount point's owner).
    for dir in ["/var/lib/meshcached", "/certs", "/ca", "/run/meshcached"] {
        assert!(img.text.contains(dir), "{dir} prepared in the image");
    }
}

/// A service of the compose file, run as the image would run it.
struct Service<'a> {
    name: &'a str,
    spec: &'a Value,
}

impl Service<'_> {
    /// The volume mounts, as container path -> the volume's directory.
    fn mounts(&self, volumes: &Path) -> Mounts {
        let mut pairs = Vec::new();
        for v in strings(&self.spec["volumes"]) {
            let mut parts = v.split(':');
            let (volume, path) = (parts.next().unwrap(), parts.next().unwrap());
            let dir = volumes.join(volume);
            std::fs::create_dir_all(&dir).unwrap();
            pairs.push((path.to_string(), dir));
        }
        Mounts::new(pairs)
    }

    /// The program and arguments: the image's ENTRYPOINT (the repository's script), then
    /// the service's command with its container paths mapped.
    fn argv(&self, img: &Image, mounts: &Mounts) -> (PathBuf, Vec<String>) {
        assert!(
            self.spec.get("entrypoint").is_none(),
            "{}: the image's",
            self.name
        );
        let script = &img.copies[&img.entrypoint[0]];
        let args = strings(&self.spec["command"])
            .iter()
            .map(|a| mounts.map(a))
            .collect();
        (repo().join(script), args)
    }
}

fn grace(spec: &Value) -> Duration {
    let s = spec["stop_grace_period"]
        .as_str()
        .expect("stop_grace_period");
    Duration::from_secs(s.trim_end_matches('s').parse().expect("seconds"))
}

#[test]
fn the_compose_topology_runs_as_processes() {
    let compose = yaml_documents(&repo().join("deploy/container/compose.yaml"));
    let services = compose[0]["services"].as_object().expect("services");
    let img = image();
    let dir = TempDir::new("compose");
    let bin = bin_dir(&dir);
    let volumes = dir.join("volumes");
    let env = vec![("PATH".to_string(), path_with(&bin))];

    // The certificate step: what every node depends on having completed successfully.
    let certs = Service {
        name: "certs",
        spec: &services["certs"],
    };
    let nodes: Vec<&str> = services
        .keys()
        .map(String::as_str)
        .filter(|s| *s != "certs")
        .collect();
    assert_eq!(nodes, ["node1", "node2", "node3"]);
    for n in &nodes {
        assert_eq!(
            services[*n]["depends_on"]["certs"]["condition"], "service_completed_successfully",
            "{n}"
        );
    }
    let mounts = certs.mounts(&volumes);
    let (program, args) = certs.argv(&img, &mounts);
    for round in ["first up", "second up"] {
        let out = Command::new(&program)
            .args(&args)
            .envs(env.clone())
            .output()
            .expect("run the certificate step");
        assert!(
            out.status.success(),
            "{round}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // No node mounts the CA key's volume.
    for n in &nodes {
        let vols = strings(&services[*n]["volumes"]);
        assert!(
            !vols.iter().any(|v| v.starts_with("ca-key:")),
            "{n}: {vols:?}"
        );
    }

    // The nodes, each on the host its service name (and hostname) resolves to.
    let names: Vec<Vec<String>> = nodes.iter().map(|n| vec![n.to_string()]).collect();
    let lan = Lan::new("compose", [172, 28, 0], &names);
    let mut procs = Vec::new();
    for n in &nodes {
        let svc = Service {
            name: n,
            spec: &services[*n],
        };
        assert_eq!(svc.spec["hostname"], *n);
        let mounts = svc.mounts(&volumes);
        let (program, args) = svc.argv(&img, &mounts);
        let log = dir.join(&format!("{n}.log"));
        procs.push(lan.spawn(n, &program, &args, &env, &dir.0, &log));
    }
    // Published ports go to the container's 11211.
    for n in &nodes {
        let ports = strings(&services[*n]["ports"]);
        assert!(ports[0].ends_with(":11211"), "{n}: {ports:?}");
    }
    let mut first = lan.client("node1", 11211);
    let mut last = lan.client("node3", 11211);
    eventually(DEADLINE, "node1 is connected to both others", || {
        let out = first.call(b"stats cluster\r\n", b"END\r\n");
        out.contains("STAT member:node2:state ready")
            && out.contains("STAT member:node3:state ready")
    });
    assert_eq!(first.line("set compose 0 0 2\r\nok"), "STORED\r\n");
    eventually(DEADLINE, "node1's write is on node3", || {
        last.call(b"get compose\r\n", b"END\r\n").contains("ok")
    });
    // Each node becomes ready once its initial sync is complete (a load balancer's check).
    for n in &nodes {
        eventually(
            DEADLINE,
            &format!("{n} answers /ready with 200"),
            || matches!(lan.http_get(n, 9150, "/ready"), Ok((200, body)) if body.trim() == "ready"),
        );
    }
    drop((first, last));
    // docker compose stop: SIGTERM, then SIGKILL after stop_grace_period.
    for (n, p) in nodes.iter().zip(&mut procs) {
        p.signal(libc::SIGTERM);
        let status = p.wait_exit(grace(&services[*n]));
        assert_eq!(status.code(), Some(0), "{n}: {}", p.log());
    }
    for n in &nodes {
        assert!(
            volumes.join(format!("{n}-state/state")).exists(),
            "{n}'s state file"
        );
    }
}
