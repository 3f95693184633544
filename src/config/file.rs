//! `--config FILE`: the flags from a file, which the command line overrides.
//!
//! Two styles, told apart by content: Debian's `/etc/memcached.conf` (one flag per line,
//! `#` comments; its first setting line starts with `-`), so that an existing memcached
//! unit can be pointed at meshcached, and TOML, whose keys are the long flag names
//! (`port = 11211`, `memory-limit = "1g"`, `join = ["10.0.0.2:11212"]`,
//! `disable-evictions = true`, `verbose = 2`). Either way the file becomes command-line
//! words placed before the real command line's, and clap reads them all: one parser, one
//! set of checks, and the last occurrence of a flag wins (repeatable flags, `-l` among them,
//! add up; the command line's `-l` replace the file's). Each
//! line or key is first checked alone, so that an error names its line.

use std::path::{Path, PathBuf};

use clap::{ArgAction, CommandFactory};

use super::Args;

/// Why a configuration file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    #[error("--config {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not valid TOML: {message}")]
    Toml { path: PathBuf, message: String },
    #[error("{path}:{line}: unknown key `{key}` (the keys are the long flags of --help, such as port or memory-limit)")]
    UnknownKey {
        path: PathBuf,
        line: usize,
        key: String,
    },
    #[error("{path}:{line}: {message}")]
    Line {
        path: PathBuf,
        line: usize,
        message: String,
    },
}

/// A file's flags as command-line words, and remarks to log once logging is up.
#[derive(Debug, Default)]
pub struct FileArgs {
    pub words: Vec<String>,
    pub notes: Vec<String>,
}

/// Keys a file may not set: they act on the reading of the command line itself.
const NOT_IN_FILE: &[&str] = &["config", "help", "version"];

/// Reads `path` and turns it into command-line words.
pub fn read_config_file(path: &Path) -> Result<FileArgs, ConfigFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigFileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    if is_debian_style(&text) {
        debian(path, &text)
    } else {
        toml_file(path, &text)
    }
}

/// Debian's file: its first line that is not blank or a comment is a flag (or the
/// `logfile` line of Debian's start-memcached script).
fn is_debian_style(text: &str) -> bool {
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .is_some_and(|l| l.starts_with('-') || l.starts_with("logfile "))
}

fn debian(path: &Path, text: &str) -> Result<FileArgs, ConfigFileError> {
    let mut out = FileArgs::default();
    for (i, line) in text.lines().enumerate() {
        let line = strip_comment(line);
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let words: Vec<String> = line.split_whitespace().map(str::to_string).collect();
        if words[0] == "logfile" {
            // start-memcached redirects memcached's output there; meshcached logs to
            // stderr (the journal under systemd).
            out.notes.push(format!(
                "{}:{}: `{line}` is start-memcached's, not a flag: meshcached logs to stderr",
                path.display(),
                i + 1
            ));
            continue;
        }
        if words[0].starts_with("--config") {
            return Err(ConfigFileError::Line {
                path: path.to_path_buf(),
                line: i + 1,
                message: "a configuration file cannot name another one".into(),
            });
        }
        check_alone(path, i + 1, &words)?;
        out.words.extend(words);
    }
    Ok(out)
}

/// `line` without its comment: from the first `#` not escaped as `\#` to the end, with
/// the escapes undone. Debian's systemd-memcached-wrapper strips comments anywhere on a
/// line (`-m 64  # megabytes`) and hands the rest to a shell, which undoes `\#`.
fn strip_comment(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'#') => {
                out.push('#');
                chars.next();
            }
            '#' => break,
            c => out.push(c),
        }
    }
    out
}

fn toml_file(path: &Path, text: &str) -> Result<FileArgs, ConfigFileError> {
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| ConfigFileError::Toml {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
    let lines = key_lines(text);
    let command = Args::command();
    let mut out = FileArgs::default();
    for (key, value) in &table {
        let line = lines.get(key.as_str()).copied().unwrap_or(0);
        let line_err = |message: String| ConfigFileError::Line {
            path: path.to_path_buf(),
            line,
            message,
        };
        let arg = command
            .get_arguments()
            .find(|a| a.get_long() == Some(key.as_str()))
            .filter(|_| !NOT_IN_FILE.contains(&key.as_str()))
            .ok_or_else(|| ConfigFileError::UnknownKey {
                path: path.to_path_buf(),
                line,
                key: key.clone(),
            })?;
        let flag = format!("--{key}");
        let mut words = Vec::new();
        match (arg.get_action(), value) {
            (ArgAction::SetTrue, toml::Value::Boolean(b)) => {
                if *b {
                    words.push(flag);
                }
            }
            (ArgAction::SetTrue, _) => {
                return Err(line_err(format!("`{key}` takes true or false")))
            }
            (ArgAction::Count, toml::Value::Integer(n)) if (0..=3).contains(n) => {
                words.extend(std::iter::repeat_n(flag, *n as usize));
            }
            (ArgAction::Count, _) => return Err(line_err(format!("`{key}` takes 0 to 3"))),
            (ArgAction::Append, toml::Value::Array(items)) => {
                for item in items {
                    words.push(flag.clone());
                    words.push(scalar(item).ok_or_else(|| {
                        line_err(format!("`{key}` takes a list of strings or numbers"))
                    })?);
                }
            }
            (_, v) => {
                let v = scalar(v)
                    .ok_or_else(|| line_err(format!("`{key}` takes a string or a number")))?;
                words.push(flag);
                words.push(v);
            }
        }
        check_alone(path, line, &words)?;
        out.words.extend(words);
    }
    Ok(out)
}

/// A string or integer value as a command-line word.
fn scalar(v: &toml::Value) -> Option<String> {
    match v {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The 1-based line of each top-level key, from the parser's spans: the line of `key =`,
/// of a dotted `key.sub =` or of a `[key]` table header, where the key first appears.
fn key_lines(text: &str) -> std::collections::HashMap<String, usize> {
    // `text` parsed as a `toml::Table` already, so it parses here too; an error leaves
    // every key at line 0 rather than failing twice.
    let Ok(table) = toml::de::DeTable::parse(text) else {
        return Default::default();
    };
    let line = |offset: usize| {
        1 + text.as_bytes()[..offset.min(text.len())]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
    };
    table
        .get_ref()
        .keys()
        .map(|k| (k.get_ref().to_string(), line(k.span().start)))
        .collect()
}

/// Parses `words` alone, so that a bad value is reported with its line.
fn check_alone(path: &Path, line: usize, words: &[String]) -> Result<(), ConfigFileError> {
    let argv = std::iter::once("meshcached").chain(words.iter().map(String::as_str));
    if let Err(e) = Args::command().try_get_matches_from(argv) {
        let text = e.to_string();
        let first = text
            .lines()
            .next()
            .unwrap_or("")
            .trim_start_matches("error: ");
        return Err(ConfigFileError::Line {
            path: path.to_path_buf(),
            line,
            message: first.to_string(),
        });
    }
    Ok(())
}

/// Reads a whole command line (program name first): `--config`'s flags, then the command
/// line's own, parsed together. A refused file is an error here; a refused flag is clap's
/// (which prints it and exits 2, or prints `--help`).
pub fn parse_command_line(
    argv: Vec<std::ffi::OsString>,
) -> Result<(Args, FileArgs), ConfigFileError> {
    let file = match config_path(&argv) {
        Some(path) => read_config_file(&path)?,
        None => FileArgs::default(),
    };
    let mut full: Vec<std::ffi::OsString> = argv.iter().take(1).cloned().collect();
    full.extend(file.words.iter().map(Into::into));
    full.extend(argv.iter().skip(1).cloned());
    let mut args = <Args as clap::Parser>::try_parse_from(full).unwrap_or_else(|e| e.exit());
    if !file.words.is_empty() {
        if let Some(listen) = command_line_listen(argv) {
            args.listen = listen;
        }
    }
    Ok((args, file))
}

/// The command line's own `-l` values, if it has any. Repeated `-l` add up within one
/// source, but the command line's set replaces the file's as a whole, as any other flag
/// given on the command line overrides the file's.
fn command_line_listen(argv: Vec<std::ffi::OsString>) -> Option<Vec<String>> {
    // The same words were just parsed with the file's before them, so they parse alone.
    let matches = Args::command().try_get_matches_from(argv).ok()?;
    if matches.value_source("listen") != Some(clap::parser::ValueSource::CommandLine) {
        return None;
    }
    Some(matches.get_many::<String>("listen")?.cloned().collect())
}

/// The value of `--config` in a command line, if any.
pub fn config_path(argv: &[std::ffi::OsString]) -> Option<PathBuf> {
    let mut it = argv.iter().skip(1);
    while let Some(a) = it.next() {
        let s = a.to_string_lossy();
        if s == "--config" {
            return it.next().map(PathBuf::from);
        }
        if let Some(v) = s.strip_prefix("--config=") {
            return Some(PathBuf::from(v));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdir::TempDir;

    /// `parse_command_line`'s `-l` set: the file's, or the command line's in place of it.
    fn listen_of(file: &str, flags: &[&str]) -> Vec<String> {
        let dir = TempDir::new("config-listen");
        let path = dir.join("c");
        std::fs::write(&path, file).unwrap();
        let mut argv: Vec<std::ffi::OsString> = vec!["meshcached".into(), "--config".into()];
        argv.push(path.into());
        argv.extend(flags.iter().map(Into::into));
        parse_command_line(argv).unwrap().0.listen
    }

    #[test]
    fn the_command_line_listen_set_replaces_the_file_one() {
        let file = "-l 127.0.0.2\n-l 127.0.0.3\n";
        assert_eq!(listen_of(file, &[]), ["127.0.0.2", "127.0.0.3"]);
        assert_eq!(listen_of(file, &["-m", "8"]), ["127.0.0.2", "127.0.0.3"]);
        let flags = ["-l", "127.0.0.4", "--listen=127.0.0.5"];
        assert_eq!(listen_of(file, &flags), ["127.0.0.4", "127.0.0.5"]);
        assert_eq!(listen_of("-m 8\n", &[]), ["127.0.0.1"]);
    }

    fn read(text: &str) -> Result<FileArgs, ConfigFileError> {
        let dir = TempDir::new("config-file");
        let path = dir.join("c");
        std::fs::write(&path, text).unwrap();
        read_config_file(&path)
    }

    #[test]
    fn toml_keys_become_long_flags() {
        let f = read(
            "port = 1\nmemory-limit = \"1g\"\ndisable-cas = true\nverbose = 2\n\
                      join = [\"a:1\", \"b:2\"]\nenable-shutdown = false\n",
        )
        .unwrap();
        let words = f.words.join(" ");
        for part in [
            "--port 1",
            "--memory-limit 1g",
            "--disable-cas",
            "--verbose --verbose",
            "--join a:1 --join b:2",
        ] {
            assert!(words.contains(part), "{part} in {words}");
        }
        assert!(!words.contains("shutdown"));
    }

    #[test]
    fn toml_refusals_name_the_line() {
        let e = read("port = 1\n\nbogus = 2\n").unwrap_err().to_string();
        assert!(e.ends_with(":3: unknown key `bogus` (the keys are the long flags of --help, such as port or memory-limit)"), "{e}");
        let e = read("[server]\nport = 1\n").unwrap_err().to_string();
        assert!(e.contains(":1: unknown key `server`"), "{e}");
        let e = read("port = 1\n\nserver.port = 1\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains(":3: unknown key `server`"), "{e}");
        let e = read("port = 1\n\"memory-limit\" = 3\n[a.b]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains(":3: unknown key `a`"), "{e}");
        let e = read("port = \"x\"\n").unwrap_err().to_string();
        assert!(e.contains(":1: invalid value 'x'"), "{e}");
        let e = read("disable-cas = 1\n").unwrap_err().to_string();
        assert!(e.contains(":1: `disable-cas` takes true or false"), "{e}");
        let e = read("config = \"other\"\n").unwrap_err().to_string();
        assert!(e.contains("unknown key `config`"), "{e}");
        assert!(matches!(
            read("port = \n"),
            Err(ConfigFileError::Toml { .. })
        ));
    }

    #[test]
    fn debian_style_is_one_flag_per_line() {
        let f = read("# comment\n-d\nlogfile /var/log/memcached.log\n-m 64\n-o idle_timeout=5\n")
            .unwrap();
        assert_eq!(f.words, ["-d", "-m", "64", "-o", "idle_timeout=5"]);
        assert_eq!(f.notes.len(), 1);
        let f = read("-m 64   # megabytes\n  # indented\n-l 127.0.0.2 #a#b\n-o x=a\\#b\n").unwrap();
        assert_eq!(f.words, ["-m", "64", "-l", "127.0.0.2", "-o", "x=a#b"]);
        let f = read("-l 127.0.0.2\n-l 127.0.0.3\n").unwrap();
        assert_eq!(f.words, ["-l", "127.0.0.2", "-l", "127.0.0.3"]);
        let e = read("-m 64\n-k\n").unwrap_err().to_string();
        assert!(e.contains(":2: unexpected argument '-k'"), "{e}");
        let e = read("-m 64\n--config other\n").unwrap_err().to_string();
        assert!(
            e.contains(":2: a configuration file cannot name another one"),
            "{e}"
        );
    }
}
