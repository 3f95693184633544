//! `meshcached certs list`: what a certificates directory holds, and whether a node could use
//! it. Every `*.crt` file is shown (each certificate of a bundle separately) with its names,
//! validity, whether it chains to `ca.crt` and whether its `.key` matches. Problems (anything
//! that would stop a node from starting, or a file that does not belong) are counted so the
//! command can fail and serve as a pre-flight check; notes are advice only.

use std::collections::BTreeSet;
use std::io::ErrorKind;
use std::path::Path;
use std::time::SystemTime;

use super::create::{read_file, read_secret};
use super::inspect::{
    bundle_label, format_time, key_matches, node_name, parse_ca_bundle, parse_certs, parse_key,
    unix_secs, verify_chain, CertInfo, Labeled,
};
use super::{CertsError, CA_CERT_FILE, HINT_CREATE_CA, NODE_CERT_FILE};

/// One certificate, as `list` shows it.
#[derive(Debug, Default)]
pub(crate) struct Entry {
    /// The file name, with "(certificate #N)" inside a bundle.
    pub file: String,
    pub fields: Vec<(&'static str, String)>,
    pub problems: Vec<String>,
    pub notes: Vec<String>,
}

#[derive(Debug, Default)]
pub(crate) struct Report {
    pub entries: Vec<Entry>,
    /// Problems and notes about the directory as a whole.
    pub problems: Vec<String>,
    pub notes: Vec<String>,
}

impl Report {
    pub fn problem_count(&self) -> usize {
        self.problems.len() + self.entries.iter().map(|e| e.problems.len()).sum::<usize>()
    }
}

/// Reads every certificate and key in `dir` and judges them at `now`. Only an unreadable
/// directory is an error; everything wrong with a file is a problem in the report.
pub(crate) fn inspect_dir(dir: &Path, now: SystemTime) -> Result<Report, CertsError> {
    let listing = std::fs::read_dir(dir).map_err(|source| match source.kind() {
        ErrorKind::NotFound => CertsError::Missing {
            path: dir.into(),
            hint: "",
        },
        _ => CertsError::Io {
            path: dir.into(),
            action: "list",
            source,
        },
    })?;
    let (mut crts, mut keys) = (Vec::new(), BTreeSet::new());
    for entry in listing {
        let entry = entry.map_err(|source| CertsError::Io {
            path: dir.into(),
            action: "list",
            source,
        })?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".crt") {
            crts.push(name);
        } else if name.ends_with(".key") {
            keys.insert(name);
        }
    }
    crts.sort_by_key(|n| (n != CA_CERT_FILE, n.clone()));

    let mut report = Report::default();
    let cas = match read_file(&dir.join(CA_CERT_FILE), HINT_CREATE_CA) {
        Ok(bytes) => parse_ca_bundle(&Labeled::new(&bytes, CA_CERT_FILE)).ok(),
        Err(e) => {
            // A ca.crt that exists but cannot be read gets its problem in its own entry.
            if matches!(e, CertsError::Missing { .. }) {
                report.problems.push(e.to_string());
            }
            None
        }
    };
    if crts.is_empty() {
        report.problems.push("no certificates (*.crt) found".into());
    }
    for file in &crts {
        inspect_file(dir, file, cas.as_deref(), &mut keys, now, &mut report);
    }
    for key in keys {
        report
            .notes
            .push(format!("{key} has no matching .crt file"));
    }
    Ok(report)
}

fn inspect_file(
    dir: &Path,
    file: &str,
    cas: Option<&[CertInfo]>,
    keys: &mut BTreeSet<String>,
    now: SystemTime,
    report: &mut Report,
) {
    let failed = |e: CertsError| Entry {
        file: file.to_string(),
        problems: vec![e.to_string()],
        ..Entry::default()
    };
    let ders = match read_file(&dir.join(file), "")
        .and_then(|bytes| parse_certs(&Labeled::new(&bytes, file)))
    {
        Ok(ders) => ders,
        Err(e) => return report.entries.push(failed(e)),
    };
    let many = ders.len() > 1;
    let in_ca_file = file == CA_CERT_FILE;
    for (i, der) in ders.iter().enumerate() {
        let label = bundle_label(file, i, many);
        let info = match CertInfo::parse(der, &label) {
            Ok(info) => info,
            Err(e) => {
                report.entries.push(Entry {
                    file: label,
                    ..failed(e)
                });
                continue;
            }
        };
        let mut e = Entry {
            file: label.clone(),
            ..Entry::default()
        };
        e.fields.push(("subject", info.subject.clone()));
        if info.is_ca {
            e.fields.push(("kind", "CA".into()));
        } else {
            match node_name(&info, &label) {
                Ok(name) => e.fields.push(("kind", format!("node {name:?}"))),
                Err(err) => {
                    e.fields.push(("kind", "not a node certificate".into()));
                    e.problems.push(err.to_string());
                }
            }
            if in_ca_file {
                e.problems.push(format!("{label} is not a CA certificate"));
            }
        }
        let hosts = info.hosts();
        if !hosts.is_empty() {
            e.fields.push(("hosts", hosts.join(", ")));
        }
        e.fields.push(("valid", validity(&info, now)));
        if let Err(err) = info.check_time(&label, now) {
            e.problems.push(err.to_string());
        }
        if !info.is_ca {
            e.fields.push(("issuer", info.issuer.clone()));
        }
        e.fields.push(("serial", info.serial.clone()));
        let chain = if in_ca_file && !info.is_ca {
            "unusable: not a CA, so nodes refuse this ca.crt".to_string()
        } else if in_ca_file {
            "trusted (it is in ca.crt)".to_string()
        } else if info.is_ca {
            "not checked: a CA outside ca.crt is not trusted by nodes".into()
        } else if i > 0 {
            format!("intermediate, checked with {file}")
        } else if let Some(cas) = cas {
            match verify_chain(&info, &ders[1..], cas, &label, CA_CERT_FILE) {
                Ok(ca) => format!(
                    "signed by {}",
                    bundle_label(CA_CERT_FILE, ca, cas.len() > 1)
                ),
                Err(err) => {
                    e.problems.push(err.to_string());
                    "NOT signed by ca.crt".into()
                }
            }
        } else {
            "not checked: ca.crt is missing or unusable".into()
        };
        e.fields.push(("chain", chain));
        if i == 0 {
            inspect_key(dir, file, &info, keys, &mut e);
        }
        report.entries.push(e);
    }
}

/// Pairs `X.crt` with `X.key`, if there is one.
fn inspect_key(
    dir: &Path,
    file: &str,
    info: &CertInfo,
    keys: &mut BTreeSet<String>,
    e: &mut Entry,
) {
    let key_file = format!("{}.key", file.trim_end_matches(".crt"));
    if keys.remove(&key_file) {
        let checked = read_secret(&dir.join(&key_file), "").and_then(|bytes| {
            let key = parse_key(&Labeled::new(&bytes, key_file.as_str()))?;
            key_matches(&key, info, &key_file, file)
        });
        match checked {
            Ok(()) => e.fields.push(("key", format!("{key_file} matches"))),
            Err(err) => {
                e.fields.push(("key", format!("{key_file} is not usable")));
                e.problems.push(err.to_string());
            }
        }
        if info.is_ca {
            e.notes.push(format!(
                "{key_file} is the CA key: keep it off the nodes (a node only needs ca.crt)"
            ));
        }
    } else if info.is_ca {
        e.fields
            .push(("key", "not here (as it should be on a node)".into()));
    } else {
        e.fields.push(("key", format!("{key_file} is missing")));
        let msg = format!("{key_file} is missing: a node cannot use {file} without it");
        if file == NODE_CERT_FILE {
            e.problems.push(msg);
        } else {
            e.notes.push(msg);
        }
    }
}

/// `2026-05-01 10:00:00 UTC to 2031-04-30 10:00:00 UTC (expires in 1825 days)`.
fn validity(info: &CertInfo, now: SystemTime) -> String {
    let now = unix_secs(now);
    // Days, or hours when that would round to nothing.
    let span = |secs: i64| match secs / 86_400 {
        0 => format!("{} hours", secs / 3600),
        days => format!("{days} days"),
    };
    let status = if now < info.not_before {
        "NOT YET VALID".to_string()
    } else if now > info.not_after {
        format!("EXPIRED {} ago", span(now - info.not_after))
    } else {
        format!("expires in {}", span(info.not_after - now))
    };
    format!(
        "{} to {} ({status})",
        format_time(info.not_before),
        format_time(info.not_after)
    )
}

/// The report as text for a terminal.
pub(crate) fn render(report: &Report, dir: &Path) -> String {
    let mut out = format!("Certificates in {}:\n", dir.display());
    for e in &report.entries {
        out.push_str(&format!("\n{}\n", e.file));
        for (name, value) in &e.fields {
            out.push_str(&format!("  {name:<8} {value}\n"));
        }
        for p in &e.problems {
            out.push_str(&format!("  PROBLEM  {p}\n"));
        }
        for n in &e.notes {
            out.push_str(&format!("  note     {n}\n"));
        }
    }
    out.push('\n');
    for p in &report.problems {
        out.push_str(&format!("PROBLEM: {p}\n"));
    }
    for n in &report.notes {
        out.push_str(&format!("note: {n}\n"));
    }
    let count = report.problem_count();
    out.push_str(&format!(
        "{} certificate(s), {}\n",
        report.entries.len(),
        match count {
            0 => "no problems".to_string(),
            n => format!("{n} problem(s)"),
        }
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::create::write_file;
    use crate::certs::generate_ca;
    use crate::testdir::TempDir;
    use std::time::Duration;

    fn all_problems(r: &Report) -> String {
        let mut all: Vec<&str> = r.problems.iter().map(String::as_str).collect();
        for e in &r.entries {
            all.extend(e.problems.iter().map(String::as_str));
        }
        all.join("\n")
    }

    #[test]
    fn a_good_directory_has_no_problems() {
        let dir = TempDir::new("list-good");
        let ca = generate_ca().unwrap();
        let node = ca.issue_node("node1", &["127.0.0.1"]).unwrap();
        write_file(
            &dir.path().join("ca.crt"),
            ca.cert_pem().as_bytes(),
            0o644,
            false,
        )
        .unwrap();
        write_file(
            &dir.path().join("node.crt"),
            node.cert_pem.as_bytes(),
            0o644,
            false,
        )
        .unwrap();
        write_file(
            &dir.path().join("node.key"),
            node.key_pem.as_bytes(),
            0o600,
            false,
        )
        .unwrap();
        let report = inspect_dir(dir.path(), SystemTime::now()).unwrap();
        assert_eq!(report.problem_count(), 0, "{}", all_problems(&report));
        let text = render(&report, dir.path());
        for expected in [
            "\nca.crt\n",
            "kind     CA",
            "\nnode.crt\n",
            "kind     node \"node1\"",
            "hosts    DNS:node1, IP:127.0.0.1",
            "chain    signed by ca.crt",
            "key      node.key matches",
            "(expires in 18",
            "2 certificate(s), no problems",
        ] {
            assert!(
                text.contains(expected),
                "{expected:?} missing from:\n{text}"
            );
        }
        // Five years on, the node certificate has expired and says so.
        let later = SystemTime::now() + Duration::from_secs(6 * 365 * 86_400);
        let report = inspect_dir(dir.path(), later).unwrap();
        assert_eq!(report.problem_count(), 1);
        assert!(render(&report, dir.path()).contains("EXPIRED 36"));
        let short = ca
            .issue_node_with_validity(
                "short",
                &["::1"],
                SystemTime::now(),
                SystemTime::now() + Duration::from_secs(5 * 3600 + 60),
            )
            .unwrap();
        write_file(
            &dir.path().join("short.crt"),
            short.cert_pem.as_bytes(),
            0o644,
            false,
        )
        .unwrap();
        let text = render(
            &inspect_dir(dir.path(), SystemTime::now()).unwrap(),
            dir.path(),
        );
        assert!(text.contains("(expires in 5 hours)"), "{text}");
    }

    #[test]
    fn every_problem_is_reported() {
        let dir = TempDir::new("list-bad");
        let p = |f: &str| dir.path().join(f);
        let ca = generate_ca().unwrap();
        let other = generate_ca().unwrap();
        let node = ca.issue_node("node1", &["127.0.0.1"]).unwrap();
        let stranger = other.issue_node("node2", &["127.0.0.1"]).unwrap();
        write_file(&p("ca.crt"), ca.cert_pem().as_bytes(), 0o644, false).unwrap();
        write_file(&p("node.crt"), node.cert_pem.as_bytes(), 0o644, false).unwrap();
        write_file(&p("node.key"), stranger.key_pem.as_bytes(), 0o644, false).unwrap();
        write_file(
            &p("stranger.crt"),
            stranger.cert_pem.as_bytes(),
            0o644,
            false,
        )
        .unwrap();
        write_file(&p("junk.crt"), b"not a certificate", 0o644, false).unwrap();
        write_file(&p("ca.key"), ca.key_pem().as_bytes(), 0o600, false).unwrap();
        write_file(&p("lonely.key"), b"x", 0o600, false).unwrap();
        let report = inspect_dir(dir.path(), SystemTime::now()).unwrap();
        let problems = all_problems(&report);
        assert!(
            problems.contains("node.key is readable or writable by other users"),
            "{problems}"
        );
        assert!(
            problems.contains("stranger.crt is not signed by the CA in ca.crt"),
            "{problems}"
        );
        assert!(
            problems.contains("junk.crt: no certificate found"),
            "{problems}"
        );
        assert_eq!(report.problem_count(), 3, "{problems}");
        let text = render(&report, dir.path());
        assert!(
            text.contains("ca.key is the CA key: keep it off the nodes"),
            "{text}"
        );
        assert!(
            text.contains("note: lonely.key has no matching .crt file"),
            "{text}"
        );
        assert!(text.contains("stranger.key is missing"), "{text}");

        std::fs::set_permissions(
            p("node.key"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        let report = inspect_dir(dir.path(), SystemTime::now()).unwrap();
        assert!(all_problems(&report).contains("node.key does not match node.crt"));

        std::fs::remove_file(p("ca.crt")).unwrap();
        let report = inspect_dir(dir.path(), SystemTime::now()).unwrap();
        let problems = all_problems(&report);
        assert!(
            problems.contains("ca.crt does not exist; copy the cluster's ca.crt there"),
            "{problems}"
        );
        assert!(render(&report, dir.path()).contains("not checked: ca.crt is missing"));
    }

    #[test]
    fn missing_or_empty_directory() {
        let dir = TempDir::new("list-empty");
        let err = inspect_dir(&dir.path().join("nope"), SystemTime::now()).unwrap_err();
        assert!(matches!(err, CertsError::Missing { .. }), "{err}");
        let report = inspect_dir(dir.path(), SystemTime::now()).unwrap();
        assert!(all_problems(&report).contains("no certificates"));
    }
}
