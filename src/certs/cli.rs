//! The `meshcached certs` subcommands, modelled on `cockroach cert`: flags, and the steps
//! each command takes. Every command checks all the files it would write before writing
//! any, so a refusal (existing file, missing CA, wrong key) leaves the disk as it was.

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use super::create::{check_absent, ensure_dir, read_file, read_secret, write_file, Ca};
use super::inspect::{format_time, unix_secs, Labeled};
use super::list::{inspect_dir, render};
use super::{
    load_node_identity_at, now, CertsError, Host, NodeName, BACKDATE, CA_CERT_FILE, HINT_CREATE_CA,
    NODE_CERT_FILE, NODE_KEY_FILE,
};

/// Appended to "X does not exist" for a missing `--ca-key`.
const HINT_CA_KEY: &str = "; pass the CA key written by `meshcached certs create-ca`";
/// Appended to "DIR/ca.crt does not exist" in `create-node`: the cluster's CA certificate
/// is wanted there, not a new CA.
const HINT_CA_CERT: &str = "; copy the cluster's ca.crt there, or pass it with --ca-cert FILE \
     (`create-ca` makes a new CA, for a new cluster)";
/// Lifetimes beyond this are a typo, and would not fit certificate dates.
const MAX_LIFETIME: Duration = Duration::from_secs(100 * 365 * 86_400);

/// `meshcached certs ...` as a command line of its own: `main` hands it everything after the
/// binary name when the first argument is `certs` (the server's flags are memcached's flat
/// flags, not subcommands).
#[derive(Debug, clap::Parser)]
#[command(
    name = "meshcached certs",
    bin_name = "meshcached certs",
    about = "Create and inspect the certificates that authenticate meshcached nodes to each other"
)]
pub struct CertsCli {
    #[command(subcommand)]
    pub command: CertsCommand,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum CertsCommand {
    /// Create the cluster CA: DIR/ca.crt, and its private key at FILE (mode 0600).
    #[command(name = "create-ca")]
    CreateCa {
        /// Directory for ca.crt (created if missing).
        #[arg(long, value_name = "DIR")]
        certs_dir: PathBuf,
        /// Where to write the CA's private key: apart from the certificates, off the nodes.
        #[arg(long, value_name = "FILE")]
        ca_key: PathBuf,
        /// How long the CA certificate is valid, in hours, days or years (h, d, y).
        #[arg(long, value_name = "DURATION", default_value = "10y", value_parser = parse_lifetime)]
        lifetime: Duration,
        /// Replace ca.crt and the CA key if they exist (every node certificate must then be
        /// made again).
        #[arg(long)]
        overwrite: bool,
    },
    /// Create DIR/node.crt and DIR/node.key (mode 0600) for node NAME, signed by the CA.
    #[command(name = "create-node")]
    CreateNode {
        /// IP addresses and DNS names the node is reached at (subject alternative names).
        #[arg(value_name = "HOST", required = true)]
        hosts: Vec<Host>,
        /// The node's name: its identity in the cluster (lowercase letters, digits, '-', '.').
        #[arg(long, value_name = "NAME")]
        name: NodeName,
        /// Directory where node.crt and node.key are written (created if missing); it holds
        /// the cluster's ca.crt, or gets a copy of --ca-cert.
        #[arg(long, value_name = "DIR")]
        certs_dir: PathBuf,
        /// The cluster's CA certificate (create-ca's ca.crt), copied to DIR/ca.crt when DIR
        /// has none; without it, DIR/ca.crt must exist.
        #[arg(long, value_name = "FILE")]
        ca_cert: Option<PathBuf>,
        /// The CA's private key, as written by create-ca.
        #[arg(long, value_name = "FILE")]
        ca_key: PathBuf,
        /// How long the node certificate is valid (h, d, y); never beyond the CA's own expiry.
        #[arg(long, value_name = "DURATION", default_value = "5y", value_parser = parse_lifetime)]
        lifetime: Duration,
        /// Replace node.crt and node.key if they exist.
        #[arg(long)]
        overwrite: bool,
    },
    /// Show the certificates in DIR: names, hosts, expiry, whether each chains to ca.crt and
    /// matches its key. Exits with status 1 if anything would stop a node from using them.
    List {
        /// The directory to check: ca.crt, and node.crt and node.key if present (a node's
        /// certs dir, or one holding only the CA certificate).
        #[arg(long, value_name = "DIR")]
        certs_dir: PathBuf,
    },
}

/// Parses the arguments after the binary name (starting with `certs`), runs the command and
/// reports: exit status 0 on success, 1 when the command fails, 2 for a bad command line.
pub fn main<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match <CertsCli as clap::Parser>::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2));
        }
    };
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "meshcached certs: {e}");
            ExitCode::from(1)
        }
    }
}

/// Runs one command, printing what it did on stdout.
pub fn run(cmd: CertsCommand) -> Result<(), CertsError> {
    let mut out = String::new();
    let result = execute(cmd, now(), &mut out);
    // A closed stdout (`| head`) must not turn a successful command into a failure.
    let _ = std::io::stdout().lock().write_all(out.as_bytes());
    result
}

pub(crate) fn execute(
    cmd: CertsCommand,
    now: SystemTime,
    out: &mut String,
) -> Result<(), CertsError> {
    match cmd {
        CertsCommand::CreateCa {
            certs_dir,
            ca_key,
            lifetime,
            overwrite,
        } => create_ca(&certs_dir, &ca_key, lifetime, overwrite, now, out),
        CertsCommand::CreateNode {
            hosts,
            name,
            certs_dir,
            ca_cert,
            ca_key,
            lifetime,
            overwrite,
        } => {
            let files = NodeFiles {
                certs_dir: &certs_dir,
                ca_cert: ca_cert.as_deref(),
                ca_key: &ca_key,
                overwrite,
            };
            create_node(&name, &hosts, files, lifetime, now, out)
        }
        CertsCommand::List { certs_dir } => {
            let report = inspect_dir(&certs_dir, now)?;
            out.push_str(&render(&report, &certs_dir));
            match report.problem_count() {
                0 => Ok(()),
                count => Err(CertsError::Problems {
                    dir: certs_dir,
                    count,
                }),
            }
        }
    }
}

fn create_ca(
    certs_dir: &Path,
    ca_key: &Path,
    lifetime: Duration,
    overwrite: bool,
    now: SystemTime,
    out: &mut String,
) -> Result<(), CertsError> {
    let ca_crt = certs_dir.join(CA_CERT_FILE);
    check_absent(&ca_crt, overwrite)?;
    check_absent(ca_key, overwrite)?;
    let ca = Ca::generate_with_validity(now - BACKDATE, now + lifetime)?;
    ensure_dir(ca_key.parent().unwrap_or(Path::new("")), 0o700)?;
    ensure_dir(certs_dir, 0o755)?;
    write_pair(
        (ca_key, ca.key_pem(), 0o600),
        (&ca_crt, ca.cert_pem(), 0o644),
        overwrite,
    )?;
    out.push_str(&format!(
        "wrote {} (valid until {})\nwrote {} (mode 0600): keep it secret, and off the nodes\n",
        ca_crt.display(),
        format_time(ca.info().not_after),
        ca_key.display(),
    ));
    if same_dir(ca_key, certs_dir) {
        out.push_str(
            "note: the CA key is in the certificates directory; copy only ca.crt, node.crt and \
             node.key to a node\n",
        );
    }
    Ok(())
}

/// Where `create-node` reads and writes.
struct NodeFiles<'a> {
    certs_dir: &'a Path,
    /// `--ca-cert`: where the CA certificate comes from when `certs_dir` has none.
    ca_cert: Option<&'a Path>,
    ca_key: &'a Path,
    overwrite: bool,
}

/// The CA certificate `create-node` signs with, and whether it must be copied into the
/// certs dir: `--ca-cert` when given (then DIR/ca.crt, if present, must be the same file's
/// content: a node trusts what is in its own directory), else DIR/ca.crt.
fn node_ca(files: &NodeFiles<'_>, ca_crt: &Path) -> Result<(Vec<u8>, Option<Vec<u8>>), CertsError> {
    let Some(source) = files.ca_cert else {
        return Ok((read_file(ca_crt, HINT_CA_CERT)?, None));
    };
    let bytes = read_file(source, HINT_CREATE_CA)?;
    match std::fs::read(ca_crt) {
        Ok(present) if present == bytes => Ok((bytes, None)),
        Ok(_) => Err(CertsError::CaCertDiffers {
            present: ca_crt.to_path_buf(),
            given: source.to_path_buf(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok((bytes.clone(), Some(bytes))),
        Err(source) => Err(CertsError::Io {
            path: ca_crt.to_path_buf(),
            action: "read",
            source,
        }),
    }
}

fn create_node(
    name: &NodeName,
    hosts: &[Host],
    files: NodeFiles<'_>,
    lifetime: Duration,
    now: SystemTime,
    out: &mut String,
) -> Result<(), CertsError> {
    let ca_crt = files.certs_dir.join(CA_CERT_FILE);
    let node_crt = files.certs_dir.join(NODE_CERT_FILE);
    let node_key = files.certs_dir.join(NODE_KEY_FILE);
    let (ca_bytes, copy_ca) = node_ca(&files, &ca_crt)?;
    let ca_label = files.ca_cert.unwrap_or(&ca_crt).display().to_string();
    let key_bytes = read_secret(files.ca_key, HINT_CA_KEY)?;
    let ca = Ca::load(
        Labeled::new(&ca_bytes, ca_label.clone()),
        Labeled::new(&key_bytes, files.ca_key.display().to_string()),
    )?;
    ca.info().check_time(&ca_label, now)?;
    check_absent(&node_crt, files.overwrite)?;
    check_absent(&node_key, files.overwrite)?;
    // A certificate cannot usefully outlive the CA that vouches for it.
    let mut not_after = now + lifetime;
    if unix_secs(not_after) > ca.info().not_after {
        not_after = ca.not_after();
        out.push_str("note: the node certificate expires with the CA\n");
    }
    let node = ca.issue(name, hosts, now - BACKDATE, not_after)?;
    if let Some(bytes) = &copy_ca {
        ensure_dir(files.certs_dir, 0o755)?;
        write_file(&ca_crt, bytes, 0o644, false)?;
        out.push_str(&format!(
            "wrote {} (a copy of {ca_label})\n",
            ca_crt.display()
        ));
    }
    let written = write_pair(
        (&node_key, &node.key_pem, 0o600),
        (&node_crt, &node.cert_pem, 0o644),
        files.overwrite,
    );
    if let Err(e) = written {
        if copy_ca.is_some() {
            // A refused command leaves the disk as it was.
            let _ = std::fs::remove_file(&ca_crt);
        }
        return Err(e);
    }
    // Load what was written exactly as a starting node will, so a problem shows now.
    let identity = load_node_identity_at(files.certs_dir, now)?;
    let hosts: Vec<String> = hosts.iter().map(Host::to_string).collect();
    out.push_str(&format!(
        "wrote {} for node {:?} (hosts {}; valid until {})\nwrote {} (mode 0600)\n",
        node_crt.display(),
        identity.name,
        hosts.join(", "),
        format_time(unix_secs(identity.not_after)),
        node_key.display(),
    ));
    Ok(())
}

/// Writes a key and its certificate, key first; if the second write fails, a freshly created
/// first file is removed again so no key is left without its certificate.
fn write_pair(
    first: (&Path, &str, u32),
    second: (&Path, &str, u32),
    overwrite: bool,
) -> Result<(), CertsError> {
    write_file(first.0, first.1.as_bytes(), first.2, overwrite)?;
    if let Err(e) = write_file(second.0, second.1.as_bytes(), second.2, overwrite) {
        if !overwrite {
            let _ = std::fs::remove_file(first.0);
        }
        return Err(e);
    }
    Ok(())
}

fn same_dir(file: &Path, dir: &Path) -> bool {
    let parent = file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    match (parent.canonicalize(), dir.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// `90d`, `5y`, `12h`: a whole number and a unit; a year is 365 days.
pub(crate) fn parse_lifetime(s: &str) -> Result<Duration, CertsError> {
    let err = || CertsError::InvalidLifetime(s.to_string());
    let split = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(err)?;
    let (number, unit) = s.split_at(split);
    let n: u64 = number.parse().map_err(|_| err())?;
    let unit_secs = match unit {
        "h" => 3600,
        "d" => 86_400,
        "y" => 365 * 86_400,
        _ => return Err(err()),
    };
    let lifetime = Duration::from_secs(n.checked_mul(unit_secs).ok_or_else(err)?);
    if lifetime.is_zero() || lifetime > MAX_LIFETIME {
        return Err(err());
    }
    Ok(lifetime)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::NodeIdentity;
    use crate::testdir::TempDir;
    use clap::Parser;
    use std::os::unix::fs::MetadataExt;

    fn exec(args: &[&str], now: SystemTime) -> (Result<(), CertsError>, String) {
        let cli = CertsCli::try_parse_from(std::iter::once("certs").chain(args.iter().copied()));
        let mut out = String::new();
        (execute(cli.unwrap().command, now, &mut out), out)
    }

    #[test]
    fn lifetimes() {
        assert_eq!(
            parse_lifetime("12h").unwrap(),
            Duration::from_secs(12 * 3600)
        );
        assert_eq!(
            parse_lifetime("90d").unwrap(),
            Duration::from_secs(90 * 86_400)
        );
        assert_eq!(
            parse_lifetime("5y").unwrap(),
            Duration::from_secs(5 * 365 * 86_400)
        );
        for bad in [
            "",
            "5",
            "y",
            "0d",
            "5 y",
            "5Y",
            "-1d",
            "101y",
            "99999999999999999999y",
        ] {
            assert!(
                matches!(parse_lifetime(bad), Err(CertsError::InvalidLifetime(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn create_ca_then_nodes_then_list() {
        let tmp = TempDir::new("cli");
        let certs = tmp.path().join("n1/certs");
        let ca_key = tmp.path().join("safe/ca.key");
        let (c, k) = (certs.to_str().unwrap(), ca_key.to_str().unwrap());
        let now = SystemTime::now();
        let (r, out) = exec(&["create-ca", "--certs-dir", c, "--ca-key", k], now);
        r.unwrap();
        assert!(out.contains("ca.crt (valid until 20"), "{out}");
        assert_eq!(std::fs::metadata(&ca_key).unwrap().mode() & 0o777, 0o600);
        assert_eq!(
            std::fs::metadata(ca_key.parent().unwrap()).unwrap().mode() & 0o777,
            0o700
        );

        let (r, _) = exec(&["create-ca", "--certs-dir", c, "--ca-key", k], now);
        assert!(matches!(r, Err(CertsError::Exists { .. })));

        let args = [
            "create-node",
            "127.0.0.1",
            "n1.local",
            "--name",
            "n1",
            "--certs-dir",
            c,
            "--ca-key",
            k,
        ];
        let (r, out) = exec(&args, now);
        r.unwrap();
        assert!(
            out.contains("for node \"n1\" (hosts IP:127.0.0.1, DNS:n1.local"),
            "{out}"
        );
        assert_eq!(
            std::fs::metadata(certs.join("node.key")).unwrap().mode() & 0o777,
            0o600
        );
        let id: NodeIdentity = crate::certs::load_node_identity(&certs).unwrap();
        assert_eq!(id.name, "n1");
        let (r, _) = exec(&args, now);
        assert!(matches!(r, Err(CertsError::Exists { .. })));
        let mut again = args.to_vec();
        again.push("--overwrite");
        exec(&again, now).0.unwrap();
        assert_ne!(
            crate::certs::load_node_identity(&certs).unwrap().cert_chain,
            id.cert_chain
        );

        let (r, out) = exec(&["list", "--certs-dir", c], now);
        r.unwrap();
        assert!(out.contains("2 certificate(s), no problems"), "{out}");

        // A node certificate never outlives its CA.
        let mut long = again.clone();
        long.extend(["--lifetime", "20y"]);
        let (r, out) = exec(&long, now);
        r.unwrap();
        assert!(out.contains("expires with the CA"), "{out}");
        // An expired CA signs nothing.
        let later = now + Duration::from_secs(11 * 365 * 86_400);
        let (r, _) = exec(&again, later);
        assert!(matches!(r, Err(CertsError::Expired { .. })), "{r:?}");
        let (r, _) = exec(&["list", "--certs-dir", c], later);
        assert!(
            matches!(r, Err(CertsError::Problems { count: 2, .. })),
            "{r:?}"
        );
    }

    /// `--ca-cert` starts a node's directory with the cluster's CA certificate, so that the
    /// steps run in the order an operator reads them: create-ca, then create-node per node.
    #[test]
    fn create_node_copies_the_ca_certificate_given() {
        let tmp = TempDir::new("cli-ca-cert");
        let p = |s: &str| tmp.path().join(s).to_str().unwrap().to_string();
        let now = SystemTime::now();
        exec(
            &[
                "create-ca",
                "--certs-dir",
                &p("ca"),
                "--ca-key",
                &p("safe/ca.key"),
            ],
            now,
        )
        .0
        .unwrap();
        let node = |dir: &str, ca_cert: &str| {
            exec(
                &[
                    "create-node",
                    "10.0.0.1",
                    "--name",
                    "cache-a",
                    "--certs-dir",
                    &p(dir),
                    "--ca-cert",
                    &p(ca_cert),
                    "--ca-key",
                    &p("safe/ca.key"),
                ],
                now,
            )
        };
        let (r, out) = node("certs-a", "ca/ca.crt");
        r.unwrap();
        assert!(out.contains("certs-a/ca.crt (a copy of"), "{out}");
        let ca = std::fs::read(tmp.path().join("ca/ca.crt")).unwrap();
        assert_eq!(
            std::fs::read(tmp.path().join("certs-a/ca.crt")).unwrap(),
            ca
        );
        assert_eq!(
            crate::certs::load_node_identity(&tmp.path().join("certs-a"))
                .unwrap()
                .name,
            "cache-a"
        );
        // The same CA certificate already there is fine (renewing with --overwrite).
        let (r, _) = node("certs-a", "ca/ca.crt");
        assert!(matches!(r, Err(CertsError::Exists { .. })), "{r:?}");
        // Another CA's certificate is refused, and nothing is written.
        exec(
            &[
                "create-ca",
                "--certs-dir",
                &p("other"),
                "--ca-key",
                &p("safe/other.key"),
            ],
            now,
        )
        .0
        .unwrap();
        let (r, _) = node("certs-a", "other/ca.crt");
        let err = r.unwrap_err();
        assert!(matches!(err, CertsError::CaCertDiffers { .. }), "{err}");
        // A CA certificate that is not the key's: nothing at all is written.
        let (r, _) = node("certs-b", "other/ca.crt");
        assert!(matches!(r, Err(CertsError::KeyMismatch { .. })), "{r:?}");
        assert!(!tmp.path().join("certs-b").exists());
    }

    #[test]
    fn create_node_refuses_a_foreign_key_and_a_missing_ca() {
        let tmp = TempDir::new("cli-foreign");
        let p = |s: &str| tmp.path().join(s).to_str().unwrap().to_string();
        let now = SystemTime::now();
        exec(
            &["create-ca", "--certs-dir", &p("a"), "--ca-key", &p("a.key")],
            now,
        )
        .0
        .unwrap();
        exec(
            &["create-ca", "--certs-dir", &p("b"), "--ca-key", &p("b.key")],
            now,
        )
        .0
        .unwrap();
        let node = |dir: &str, key: &str| {
            exec(
                &[
                    "create-node",
                    "::1",
                    "--name",
                    "x",
                    "--certs-dir",
                    &p(dir),
                    "--ca-key",
                    &p(key),
                ],
                now,
            )
            .0
        };
        let err = node("a", "b.key").unwrap_err();
        assert!(matches!(err, CertsError::KeyMismatch { .. }), "{err}");
        assert!(err.to_string().contains("b.key does not match"), "{err}");
        let err = node("c", "a.key").unwrap_err();
        assert!(
            err.to_string()
                .contains("c/ca.crt does not exist; copy the cluster's ca.crt there, or pass it with --ca-cert FILE"),
            "{err}"
        );
        let err = node("a", "nope.key").unwrap_err();
        assert!(
            err.to_string()
                .contains("nope.key does not exist; pass the CA key"),
            "{err}"
        );
        assert!(!tmp.path().join("a/node.crt").exists() && !tmp.path().join("a/node.key").exists());
        assert!(!tmp.path().join("c").exists());
    }
}
