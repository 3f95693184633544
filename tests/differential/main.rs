//! Differential test: every script in `tests/diff/` is played against a real
//! memcached and against meshcached, and their answers must be the same.
//!
//! This is the central conformance check for the client protocols (text, meta,
//! binary): memcached's behaviour is the specification (DESIGN.md section 8), so
//! instead of hand-written expectations we ask the real thing. The reference is
//! memcached 1.6.45; the reference *binary* here is whatever `$MEMCACHED_BIN` (default
//! `/usr/bin/memcached`, Debian's 1.6.18) is. Where 1.6.18 and 1.6.45 answer
//! differently, the step carries both answers explicitly (see `@VERSION` below and
//! `tests/diff/since_1_6_18.txt`, the list of those differences).
//!
//! Running:
//! - `cargo test --test differential` compares the built meshcached binary.
//! - `MESHCACHED_BIN=path` compares another binary instead; `MEMCACHED_BIN=path`
//!   changes the reference. To check the harness itself, point MESHCACHED_BIN at a
//!   wrapper that runs memcached (as root it needs `-u root`):
//!   `printf '#!/bin/sh\nexec /usr/bin/memcached -u root "$@"\n' > /tmp/fake-mesh`.
//!   A subject that reports the same VERSION as the reference is taken to be
//!   memcached itself and is held to the reference version's `@VERSION` answers.
//! - `DIFF_TRACE=1 cargo test --test differential NAME -- --nocapture` prints every
//!   step of script NAME with both replies.
//!
//! Each test starts its own pair of servers (so scripts are independent, and CAS
//! ordinals start fresh): `-U 0 -l 127.0.0.1 -p PORT -t 1 -m 64` plus the script's
//! `# flags:`. Replies are compared after normalisation (CAS values, VERSION,
//! meta TTLs; see `reply.rs` for what and why). `stats` output is elided in the
//! scripts; `stats.rs` checks the stat names instead.
//!
//! When meshcached answers a step differently, first ask which of the two is
//! memcached 1.6.45's answer: if it is meshcached's (1.6.18 is older), record the
//! step in `tests/diff/since_1_6_18.txt` with both answers; otherwise fix meshcached.
//!
//! # Script format
//!
//! One step per `>` line (plus its `+` continuations); after each step the harness
//! sends a sentinel (`mn`, or a binary NOOP) in the same write and reads until its
//! answer, so every reply is attributed to its step without timing guesses.
//!
//! ```text
//! # comment                  ignored, as are blank lines
//! # flags: -C                extra server flags (header only; both servers get them)
//! > TEXT                     send TEXT + "\r\n", then the sentinel `mn\r\n`
//! + TEXT                     continue the step (same mode: `>` adds "\r\n" again)
//! >> TEXT                    send TEXT as is (no "\r\n" added), then the sentinel
//! >| TEXT                    send TEXT as is, no sentinel: read until the server
//!                            closes (for over-long lines); `<closed>` is recorded
//! bin> OP field=value ...    one binary request (fields: key value flags exp delta
//!                            initial cas opaque level extras=HEX magic datatype
//!                            vbucket keylen extlen bodylen), then a NOOP sentinel
//! hex> 80 0a 00 ...          raw bytes on a binary connection, then a NOOP sentinel
//! reconnect                  close the connection and open a new one
//! @1.6.45 LINE               expected reply element for the step above, per
//! @1.6.18 LINE               memcached version (one line per element, written as
//!                            failures show them; `<nothing>` for no reply). Only
//!                            where versions differ: the reference binary must give
//!                            its version's answer, meshcached the 1.6.45 one.
//! @meshcached LINE           where meshcached departs from 1.6.45 on purpose (with
//!                            a comment saying why): what meshcached must answer.
//! ```
//!
//! In TEXT and field values: escapes `\r \n \t \0 \\ \{ \xNN`; `{rep:S:N}` is S
//! repeated N times; `{cas}` is the last CAS this server returned, `{cas:KEY}` the
//! last one for KEY (from VALUE lines, meta `c` flags, binary headers), both with an
//! optional `+N`/`-N`; `{now+N}` is unix time at script start plus N. Trailing
//! spaces are trimmed from script lines: write a significant one as `\x20`. Steps
//! whose text contains `mn` commands wait for one `MN` per such command plus the
//! sentinel's. A step that leaves a data block incomplete would swallow the
//! sentinel and time out: give every declared length its bytes.
//!
//! A reply is a list of elements, shown one per line in failures: a protocol line
//! (without its `\r\n`), a data block, a binary packet rendered as
//! `RES <op> status=... opaque=... [cas=<casN>] [extras=..] [key=".."] [value=".."]`,
//! or a marker (`<closed>`, `<timeout: ...>`, `<incomplete: ...>`).

mod binary;
mod dump;
mod reply;
mod script;
mod server;
mod session;
mod stats;

use std::time::{SystemTime, UNIX_EPOCH};

use script::{Item, Script, Step};
use server::ServerProc;

/// The version whose behaviour meshcached implements.
const TARGET_VERSION: &str = "1.6.45";
/// The `@` tag of a step's answer where meshcached deliberately differs from 1.6.45
/// (the issue or DESIGN.md asks for another behaviour); the step says why.
const DELIBERATE: &str = "meshcached";

/// One test per script file, so a failure names the area. `every_script_has_a_test`
/// keeps this list and the directory in step.
macro_rules! scripts {
    ($($name:ident),* $(,)?) => {
        const SCRIPTS: &[&str] = &[$(stringify!($name)),*];
        $(#[test] fn $name() { check_script(stringify!($name)); })*
    };
}

scripts! {
    text_storage,
    text_get,
    text_expiry,
    text_arith,
    text_delete_touch,
    text_errors,
    text_admin,
    text_limits,
    text_misc,
    text_nocas,
    meta_get,
    meta_set,
    meta_delete_arith,
    meta_misc,
    binary_storage,
    binary_get,
    binary_misc,
    since_1_6_18,
}

#[test]
fn every_script_has_a_test() {
    let dir = format!("{}/tests/diff", env!("CARGO_MANIFEST_DIR"));
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {dir}: {e}"))
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter_map(|name| name.strip_suffix(".txt").map(str::to_string))
        .collect();
    on_disk.sort();
    let mut listed: Vec<String> = SCRIPTS.iter().map(|s| s.to_string()).collect();
    listed.sort();
    assert_eq!(
        on_disk, listed,
        "tests/diff/*.txt and the scripts! list in tests/differential/main.rs differ"
    );
}

fn check_script(name: &str) {
    let path = format!("tests/diff/{name}.txt");
    let script = script::load(&path);
    let reference = ServerProc::start(
        "memcached",
        &server::reference_binary(),
        &script.flags,
        server::running_as_root(),
    );
    let subject = ServerProc::start(
        "meshcached",
        &server::subject_binary(),
        &script.flags,
        false,
    );
    let reference_version =
        server::version_of(reference.port).expect("memcached answers `version`");
    let subject_version = server::version_of(subject.port);
    // Checking the harness against memcached itself: hold it to its own version.
    let subject_target = if subject_version.as_deref() == Some(reference_version.as_str()) {
        reference_version.clone()
    } else {
        TARGET_VERSION.to_string()
    };

    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64;
    let reference_run = session::run(&script, reference.port, now);
    let subject_run = session::run(&script, subject.port, now);
    if std::env::var_os("DIFF_TRACE").is_some() {
        trace(&script, &reference_run, &subject_run);
    }
    check_reference_run(&script, &reference_run, &reference);

    for (index, step) in steps(&script).enumerate() {
        let from_reference = &reference_run.replies[index];
        let from_subject = subject_run
            .replies
            .get(index)
            .cloned()
            .unwrap_or_else(|| vec!["<not run>".to_string()]);
        if step.expect.is_empty() {
            if *from_reference != from_subject {
                fail(
                    &script,
                    step,
                    "memcached",
                    from_reference,
                    &from_subject,
                    &subject,
                );
            }
            continue;
        }
        let reference_expected = expected(&script, step, &reference_version);
        if *from_reference != reference_expected {
            panic!(
                "{}:{}: memcached {reference_version} no longer answers as the script says it does\n  step:\n{}\n  expected:\n{}\n  memcached said:\n{}",
                script.path, step.line, indent(&step.source), show(&reference_expected), show(from_reference)
            );
        }
        // A deliberate departure from memcached (`@meshcached`) binds meshcached only.
        let deliberate =
            subject_target == TARGET_VERSION && step.expect.iter().any(|(v, _)| v == DELIBERATE);
        let subject_key = if deliberate {
            DELIBERATE
        } else {
            subject_target.as_str()
        };
        let subject_expected = expected(&script, step, subject_key);
        if subject_expected != from_subject {
            let label = format!("expected (memcached {subject_target})");
            fail(
                &script,
                step,
                &label,
                &subject_expected,
                &from_subject,
                &subject,
            );
        }
    }
    assert!(
        subject_run.missing_cas.is_empty(),
        "{}: meshcached never returned the CAS these steps needed (lines {:?})",
        script.path,
        subject_run.missing_cas
    );
}

/// A script is only meaningful if the reference answered every step: a timeout,
/// a missing CAS or a step on a closed connection there is a bug in the script.
fn check_reference_run(script: &Script, run: &session::Run, reference: &ServerProc) {
    if let Some(line) = run.timed_out_at {
        panic!(
            "{}:{line}: memcached did not answer this step (script bug?)\n{}",
            script.path,
            reference.stderr()
        );
    }
    if let Some(line) = run.missing_cas.first() {
        panic!(
            "{}:{line}: step uses a {{cas}} memcached never returned (script bug)",
            script.path
        );
    }
    for (step, reply) in steps(script).zip(&run.replies) {
        if reply.iter().any(|e| e == session::NOT_CONNECTED) {
            panic!(
                "{}:{}: memcached had closed the connection before this step; add `reconnect`",
                script.path, step.line
            );
        }
    }
}

fn steps(script: &Script) -> impl Iterator<Item = &Step> {
    script.items.iter().filter_map(|item| match item {
        Item::Step(step) => Some(step),
        Item::Reconnect => None,
    })
}

/// DIFF_TRACE=1: every step with both replies, before any check can stop the test.
fn trace(script: &Script, reference: &session::Run, subject: &session::Run) {
    for (index, step) in steps(script).enumerate() {
        let not_run = vec!["<not run>".to_string()];
        eprintln!(
            "{}:{}\n{}\n  memcached:\n{}\n  meshcached:\n{}",
            script.path,
            step.line,
            indent(&step.source),
            show(reference.replies.get(index).unwrap_or(&not_run)),
            show(subject.replies.get(index).unwrap_or(&not_run))
        );
    }
}

fn expected(script: &Script, step: &Step, version: &str) -> Vec<String> {
    let lines = step
        .expect
        .iter()
        .find(|(v, _)| v == version)
        .map(|(_, lines)| lines)
        .unwrap_or_else(|| {
            panic!(
                "{}:{}: step lists answers per version but none for memcached {version}; \
             add an `@{version}` line (see tests/diff/since_1_6_18.txt)",
                script.path, step.line
            )
        });
    if lines.len() == 1 && lines[0] == "<nothing>" {
        return Vec::new();
    }
    lines.clone()
}

fn fail(
    script: &Script,
    step: &Step,
    label: &str,
    want: &[String],
    got: &[String],
    subject: &ServerProc,
) -> ! {
    // The end of meshcached's log often says why (a panic, a rejected flag).
    let stderr = subject.stderr();
    let lines: Vec<&str> = stderr.lines().collect();
    let tail = lines[lines.len().saturating_sub(30)..].join("\n");
    let stderr = if tail.trim().is_empty() {
        String::new()
    } else {
        format!("\n  meshcached stderr (last lines):\n{}", indent(&tail))
    };
    panic!(
        "{}:{}: meshcached answers differently\n  step:\n{}\n  {label} said:\n{}\n  meshcached said:\n{}\n  \
         (DIFF_TRACE=1 prints every step){stderr}",
        script.path,
        step.line,
        indent(&step.source),
        show(want),
        show(got)
    );
}

fn show(elements: &[String]) -> String {
    if elements.is_empty() {
        return "    (nothing)".to_string();
    }
    elements
        .iter()
        .map(|e| format!("    | {e}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}
