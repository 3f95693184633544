//! Partitions between nodes on one machine: packet filter rules on the loopback interface
//! that drop the UDP datagrams between two cluster ports, both ways. A [`Partition`]
//! removes its rules when dropped (also when the test panics), so no rule outlives a test.

use std::process::Command;

/// The rules cutting the path between two cluster ports; healed on drop.
pub struct Partition {
    rules: Vec<Vec<String>>,
    healed: bool,
}

impl Partition {
    /// Drops every datagram between 127.0.0.1:`a` and 127.0.0.1:`b`, in both directions.
    pub fn cut(a: u16, b: u16) -> Partition {
        let tag = format!("meshcached-test-{}", std::process::id());
        let rules: Vec<Vec<String>> = [(a, b), (b, a)]
            .into_iter()
            .map(|(from, to)| {
                [
                    "INPUT",
                    "-i",
                    "lo",
                    "-p",
                    "udp",
                    "--sport",
                    &from.to_string(),
                    "--dport",
                    &to.to_string(),
                    "-m",
                    "comment",
                    "--comment",
                    &tag,
                    "-j",
                    "DROP",
                ]
                .iter()
                .map(|s| s.to_string())
                .collect()
            })
            .collect();
        let mut p = Partition {
            rules: Vec::new(),
            healed: false,
        };
        for rule in rules {
            iptables("-I", &rule);
            p.rules.push(rule);
        }
        p
    }

    /// Removes the rules: the path carries datagrams again.
    pub fn heal(&mut self) {
        if self.healed {
            return;
        }
        self.healed = true;
        for rule in self.rules.drain(..) {
            iptables("-D", &rule);
        }
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        self.heal();
    }
}

/// Runs `iptables -w ACTION RULE...`; the suite needs it (root, `iptables` installed), so a
/// failure is a failed test, never a silently skipped partition.
fn iptables(action: &str, rule: &[String]) {
    let out = Command::new("iptables")
        .arg("-w")
        .arg(action)
        .args(rule)
        .output()
        .unwrap_or_else(|e| panic!("cannot run iptables (the fault suite needs it, as root): {e}"));
    assert!(
        out.status.success(),
        "iptables {action} {rule:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
