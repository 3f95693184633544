//! deploy/kubernetes: every object validates offline against Kubernetes' schemas
//! (kubernetes-validate, strict), the StatefulSet has what a rolling restart without a cold
//! cache needs, and its pods' container command runs as processes: make-certs.sh lays out
//! the Secret, each pod is a host named as the StatefulSet names it (with the headless
//! Service's DNS names), the environment comes from the downward API, `$(VAR)` references
//! are expanded as the kubelet does, and volumes are directories mapped where they are
//! mounted. The three pods must form one cluster, answer the probes, replicate, and stop on
//! SIGTERM with exit 0 within the grace period.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use serde_json::Value;

use super::compose::image;
use super::*;
use common::netns::Lan;
use common::{eventually, DEADLINE};

const NAMESPACE: &str = "default";

fn manifests() -> Vec<Value> {
    yaml_documents(&repo().join("deploy/kubernetes/meshcached.yaml"))
}

fn object<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

#[test]
fn the_manifests_validate_offline() {
    let path = repo().join("deploy/kubernetes/meshcached.yaml");
    let out = Command::new("kubernetes-validate")
        .args(["--strict", "--quiet"])
        .arg(&path)
        .output()
        .expect(
            "run kubernetes-validate (`pip3 install kubernetes-validate`; .ci/run installs it)",
        );
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_stateful_set_has_what_a_warm_rolling_restart_needs() {
    let docs = manifests();
    let sts = object(&docs, "StatefulSet", "meshcached");
    let spec = &sts["spec"];
    let pod = &spec["template"]["spec"];
    let c = &pod["containers"][0];
    // Peers by stable names, published before they are ready.
    let peers = object(&docs, "Service", spec["serviceName"].as_str().unwrap());
    assert_eq!(peers["spec"]["clusterIP"], "None");
    assert_eq!(peers["spec"]["publishNotReadyAddresses"], true);
    assert_eq!(peers["spec"]["ports"][0]["protocol"], "UDP");
    // Clients: ready pods only.
    let clients = object(&docs, "Service", "meshcached");
    assert!(clients["spec"].get("clusterIP").is_none());
    assert!(clients["spec"].get("publishNotReadyAddresses").is_none());
    // Probes.
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/ready");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/health");
    let startup = &c["startupProbe"];
    assert_eq!(startup["httpGet"]["path"], "/ready");
    let budget =
        startup["periodSeconds"].as_u64().unwrap() * startup["failureThreshold"].as_u64().unwrap();
    assert!(
        budget >= 300,
        "a snapshot gets at least 5 minutes: {budget}s"
    );
    assert!(spec["minReadySeconds"].as_u64().unwrap() > 0);
    // The stop: preStop, then the drain, within the grace period.
    let pre_stop = strings(&c["lifecycle"]["preStop"]["exec"]["command"]);
    assert_eq!(pre_stop[0], "sleep");
    let pause: u64 = pre_stop[1].parse().unwrap();
    let drain: u64 = strings(&c["args"])
        .iter()
        .find_map(|a| a.strip_prefix("--drain-timeout="))
        .map_or(10, |d| d.trim_end_matches('s').parse().unwrap());
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(grace >= pause + drain + 5 + 10, "grace {grace}");
    // Disruptions one at a time.
    let pdb = object(&docs, "PodDisruptionBudget", "meshcached");
    assert_eq!(pdb["spec"]["maxUnavailable"], 1);
    assert_eq!(pdb["spec"]["selector"], spec["selector"]);
    // The restricted Pod Security Standard.
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(
        c["securityContext"]["capabilities"]["drop"],
        serde_json::json!(["ALL"])
    );
    let uid = pod["securityContext"]["runAsUser"].as_u64().unwrap();
    assert_eq!(image().user, format!("{uid}:{uid}"), "the image's user");
    // Certificates from a Secret.
    let secret = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v.get("secret").is_some())
        .expect("a secret volume");
    assert_eq!(secret["secret"]["secretName"], "meshcached-certs");
    // Replication only between meshcached pods.
    let policy = object(&docs, "NetworkPolicy", "meshcached");
    let cluster_rule = policy["spec"]["ingress"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["ports"][0]["port"] == 11212)
        .expect("a rule for the cluster port");
    assert_eq!(
        cluster_rule["from"][0]["podSelector"]["matchLabels"],
        spec["selector"]["matchLabels"]
    );
    // The image's entrypoint.
    assert_eq!(strings(&c["command"]), image().entrypoint);
}

/// `$(VAR)` references expanded as the kubelet does (an unknown one is left as it is).
fn expand(s: &str, env: &[(String, String)]) -> String {
    let mut out = s.to_string();
    for (k, v) in env {
        out = out.replace(&format!("$({k})"), v);
    }
    out
}

/// A pod's environment from its container spec: values (expanded), and the downward API's
/// name and namespace.
fn pod_env(c: &Value, pod: &str) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = Vec::new();
    for e in c["env"].as_array().unwrap() {
        let name = e["name"].as_str().unwrap().to_string();
        let value = if let Some(v) = e["value"].as_str() {
            expand(v, &env)
        } else {
            match e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                Some("metadata.name") => pod.to_string(),
                Some("metadata.namespace") => NAMESPACE.to_string(),
                other => panic!("{name}: unsupported source {other:?}"),
            }
        };
        env.push((name, value));
    }
    env
}

#[test]
fn three_pods_run_the_container_command_as_processes() {
    let docs = manifests();
    let sts = object(&docs, "StatefulSet", "meshcached");
    let replicas = sts["spec"]["replicas"].as_u64().unwrap() as usize;
    let pod_spec = &sts["spec"]["template"]["spec"];
    let c = &pod_spec["containers"][0];
    let img = image();
    let dir = TempDir::new("kubernetes");
    let bin = bin_dir(&dir);
    let path = path_with(&bin);

    // The Secret, as make-certs.sh lays it out, mounted with the volume's defaultMode.
    let out = Command::new(repo().join("deploy/kubernetes/make-certs.sh"))
        .arg(dir.join("made"))
        .arg(replicas.to_string())
        .arg(NAMESPACE)
        .env("PATH", &path)
        .output()
        .expect("run make-certs.sh");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let volumes: HashMap<String, &Value> = pod_spec["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["name"].as_str().unwrap().to_string(), v))
        .collect();
    let secret_volume = dir.join("secret-volume");
    std::fs::create_dir_all(&secret_volume).unwrap();
    let mode = volumes["secret"]["secret"]["defaultMode"].as_u64().unwrap() as u32;
    for f in std::fs::read_dir(dir.join("made/secret")).unwrap() {
        let f = f.unwrap();
        let to = secret_volume.join(f.file_name());
        std::fs::copy(f.path(), &to).unwrap();
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    // The pods: hosts named as the StatefulSet and the headless Service name them.
    let service = sts["spec"]["serviceName"].as_str().unwrap();
    let pods: Vec<String> = (0..replicas).map(|i| format!("meshcached-{i}")).collect();
    let names: Vec<Vec<String>> = pods
        .iter()
        .map(|p| {
            vec![
                p.clone(),
                format!("{p}.{service}.{NAMESPACE}.svc.cluster.local"),
                format!("{p}.{service}.{NAMESPACE}.svc"),
                format!("{p}.{service}"),
            ]
        })
        .collect();
    let lan = Lan::new("k8s", [10, 244, 0], &names);
    let port = |name: &str| -> u16 {
        c["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .and_then(|p| p["containerPort"].as_u64())
            .unwrap_or_else(|| panic!("no port {name}")) as u16
    };
    let (client_port, metrics_port) = (port("memcached"), port("metrics"));
    let mut procs = Vec::new();
    for pod in &pods {
        let mut mounts = Vec::new();
        for m in c["volumeMounts"].as_array().unwrap() {
            let volume = m["name"].as_str().unwrap();
            let dir_for = if volumes[volume].get("secret").is_some() {
                secret_volume.clone()
            } else {
                let d = dir.join(&format!("{pod}/{volume}"));
                std::fs::create_dir_all(&d).unwrap();
                d
            };
            mounts.push((m["mountPath"].as_str().unwrap().to_string(), dir_for));
        }
        let mounts = Mounts::new(mounts);
        let env = pod_env(c, pod);
        let args: Vec<String> = strings(&c["args"])
            .iter()
            .map(|a| mounts.map(&expand(a, &env)))
            .collect();
        let mut env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.clone(), mounts.map(v)))
            .collect();
        env.push(("PATH".into(), path.clone()));
        let command = strings(&c["command"]);
        let program = repo().join(&img.copies[&command[0]]);
        let log = dir.join(&format!("{pod}.log"));
        procs.push(lan.spawn(pod, &program, &args, &env, &dir.0, &log));
    }

    // The probes, as the kubelet makes them.
    for pod in &pods {
        eventually(DEADLINE, &format!("{pod} is ready"), || {
            matches!(lan.http_get(pod, metrics_port, "/ready"), Ok((200, _)))
        });
        let (code, _) = lan.http_get(pod, metrics_port, "/health").expect("/health");
        assert_eq!(code, 200, "{pod}");
    }
    let mut first = lan.client(&pods[0], client_port);
    eventually(DEADLINE, "every pod is connected to every other", || {
        let out = first.call(b"stats cluster\r\n", b"END\r\n");
        pods[1..]
            .iter()
            .all(|p| out.contains(&format!("STAT member:{p}:state ready")))
    });
    assert_eq!(first.line("set k8s 0 0 2\r\nok"), "STORED\r\n");
    let mut last = lan.client(&pods[replicas - 1], client_port);
    eventually(DEADLINE, "the first pod's write is on the last", || {
        last.call(b"get k8s\r\n", b"END\r\n").contains("ok")
    });
    drop((first, last));
    // Each pod's certificates came from the Secret, its own pair.
    for pod in &pods {
        let certs = dir.join(&format!("{pod}/certs/certs"));
        let key = std::fs::metadata(certs.join("node.key")).expect("node.key copied");
        let mode = key.permissions().mode() & 0o777;
        assert_eq!(
            mode & 0o077,
            0,
            "{pod}: node.key is {mode:o}, private to the pod's user"
        );
    }

    // The stop: SIGTERM after the preStop hook, within the grace period.
    let grace = pod_spec["terminationGracePeriodSeconds"].as_u64().unwrap();
    for (pod, p) in pods.iter().zip(&mut procs) {
        p.signal(libc::SIGTERM);
        let status = p.wait_exit(Duration::from_secs(grace));
        assert_eq!(status.code(), Some(0), "{pod}: {}", p.log());
    }
}
