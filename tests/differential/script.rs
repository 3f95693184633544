//! Parsing of the scripts in `tests/diff/*.txt`. The format is documented at the top
//! of `main.rs`; this module turns a file into [`Script`] and reports syntax errors
//! with the file and line, so a broken script fails loudly instead of testing nothing.

use crate::binary::RequestSpec;

pub struct Script {
    pub path: String,
    /// Extra server flags from the `# flags:` header (both servers get them).
    pub flags: Vec<String>,
    pub items: Vec<Item>,
}

pub enum Item {
    /// Close the connection and open a new one (protocol is negotiated afresh).
    Reconnect,
    Step(Step),
}

pub struct Step {
    /// 1-based line of the step's first line in the script.
    pub line: usize,
    /// The step as written (all its lines), for failure messages.
    pub source: String,
    pub kind: StepKind,
    /// Expected reply per memcached version (`@1.6.45 ...` lines). Empty for an
    /// ordinary step, whose reply is compared between the two servers instead.
    pub expect: Vec<(String, Vec<String>)>,
}

pub enum StepKind {
    /// Text or meta protocol bytes. `sentinel` is false for `>|` steps, which expect
    /// the server to close the connection.
    Text {
        bytes: Template,
        sentinel: bool,
        crlf: bool,
    },
    /// Binary protocol requests, sent back to back.
    Binary(Vec<RequestSpec>),
    /// Raw bytes on a binary connection (garbage, truncated headers).
    Hex(Vec<u8>),
}

/// Bytes to send, with placeholders resolved per server at send time.
#[derive(Clone, Default)]
pub struct Template(pub Vec<Piece>);

#[derive(Clone)]
pub enum Piece {
    Lit(Vec<u8>),
    /// `{cas}` / `{cas:KEY}` with an optional `+N`/`-N`: a CAS value this server
    /// returned earlier (servers' CAS values legitimately differ).
    Cas {
        key: Option<Vec<u8>>,
        delta: i64,
    },
    /// `{now+N}`: unix time when the script started, plus N seconds.
    Now(i64),
}

impl Template {
    pub fn push_lit(&mut self, bytes: &[u8]) {
        if let Some(Piece::Lit(last)) = self.0.last_mut() {
            last.extend_from_slice(bytes);
        } else {
            self.0.push(Piece::Lit(bytes.to_vec()));
        }
    }

    pub fn extend(&mut self, other: &Template) {
        for piece in &other.0 {
            match piece {
                Piece::Lit(bytes) => self.push_lit(bytes),
                other => self.0.push(other.clone()),
            }
        }
    }

    /// The literal bytes, when the template has no placeholders.
    pub fn literal(&self) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        for piece in &self.0 {
            match piece {
                Piece::Lit(bytes) => out.extend_from_slice(bytes),
                _ => return None,
            }
        }
        Some(out)
    }
}

/// Parses one script file.
pub fn load(path: &str) -> Script {
    let full = format!("{}/{path}", env!("CARGO_MANIFEST_DIR"));
    let text =
        std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("cannot read script {path}: {e}"));
    parse(path, &text).unwrap_or_else(|(line, msg)| panic!("{path}:{line}: {msg}"))
}

type ParseResult<T> = Result<T, (usize, String)>;

fn parse(path: &str, text: &str) -> ParseResult<Script> {
    let mut script = Script {
        path: path.to_string(),
        flags: Vec::new(),
        items: Vec::new(),
    };
    for (index, raw) in text.lines().enumerate() {
        let line_no = index + 1;
        let err = |msg: String| (line_no, msg);
        let line = raw.trim_end();
        if let Some(flags) = line.strip_prefix("# flags:") {
            if script
                .items
                .iter()
                .any(|item| matches!(item, Item::Step(_)))
            {
                return Err(err("`# flags:` must come before the first step".into()));
            }
            script
                .flags
                .extend(flags.split_whitespace().map(str::to_string));
            continue;
        }
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        if line == "reconnect" {
            script.items.push(Item::Reconnect);
            continue;
        }
        if let Some(rest) = line.strip_prefix('@') {
            let (version, expected) = rest.split_once(' ').unwrap_or((rest, ""));
            let step =
                last_step(&mut script).ok_or_else(|| err("expectation before any step".into()))?;
            match step.expect.iter_mut().find(|(v, _)| v == version) {
                Some((_, lines)) => lines.push(expected.to_string()),
                None => step
                    .expect
                    .push((version.to_string(), vec![expected.to_string()])),
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix('+') {
            let rest = rest.strip_prefix(' ').unwrap_or(rest);
            let step = last_step(&mut script)
                .ok_or_else(|| err("`+` continuation before any step".into()))?;
            if !step.expect.is_empty() {
                return Err(err("`+` continuation after the step's expectations".into()));
            }
            step.source.push_str("\n+ ");
            step.source.push_str(rest);
            match &mut step.kind {
                StepKind::Text { bytes, crlf, .. } => {
                    bytes.extend(&parse_template(rest).map_err(err)?);
                    if *crlf {
                        bytes.push_lit(b"\r\n");
                    }
                }
                StepKind::Binary(requests) => requests.push(RequestSpec::parse(rest).map_err(err)?),
                StepKind::Hex(bytes) => bytes.extend(parse_hex(rest).map_err(err)?),
            }
            continue;
        }
        let kind = parse_step_head(line).map_err(err)?;
        script.items.push(Item::Step(Step {
            line: line_no,
            source: line.to_string(),
            kind,
            expect: Vec::new(),
        }));
    }
    Ok(script)
}

fn last_step(script: &mut Script) -> Option<&mut Step> {
    match script.items.last_mut() {
        Some(Item::Step(step)) => Some(step),
        _ => None,
    }
}

fn parse_step_head(line: &str) -> Result<StepKind, String> {
    // Longest prefixes first: `>>` and `>|` also start with `>`.
    let text_modes: [(&str, bool, bool); 3] =
        [(">>", true, false), (">|", false, false), (">", true, true)];
    for (prefix, sentinel, crlf) in text_modes {
        if let Some(rest) = line.strip_prefix(prefix) {
            let rest = rest.strip_prefix(' ').unwrap_or(rest);
            let mut bytes = parse_template(rest)?;
            if crlf {
                bytes.push_lit(b"\r\n");
            }
            return Ok(StepKind::Text {
                bytes,
                sentinel,
                crlf,
            });
        }
    }
    if let Some(rest) = line.strip_prefix("bin>") {
        return Ok(StepKind::Binary(vec![RequestSpec::parse(rest.trim())?]));
    }
    if let Some(rest) = line.strip_prefix("hex>") {
        return Ok(StepKind::Hex(parse_hex(rest)?));
    }
    Err(format!("unrecognised line (expected `>`, `>>`, `>|`, `bin>`, `hex>`, `+`, `@VERSION` or `reconnect`): {line}"))
}

fn parse_hex(text: &str) -> Result<Vec<u8>, String> {
    let digits: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    if !digits.len().is_multiple_of(2) {
        return Err(format!("odd number of hex digits: {text}"));
    }
    (0..digits.len())
        .step_by(2)
        .map(|i| {
            u8::from_str_radix(&digits[i..i + 2], 16)
                .map_err(|e| format!("bad hex `{}`: {e}", &digits[i..i + 2]))
        })
        .collect()
}

/// Parses escapes (`\r \n \t \0 \\ \{ \xNN`) and placeholders (`{rep:S:N}`, `{cas}`,
/// `{cas:KEY}`, `{cas:KEY+N}`, `{now+N}`).
pub fn parse_template(text: &str) -> Result<Template, String> {
    let mut out = Template::default();
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => {
                let (byte, used) = parse_escape(&bytes[i..])?;
                out.push_lit(&[byte]);
                i += used;
            }
            b'{' => {
                let end = text[i..]
                    .find('}')
                    .ok_or_else(|| format!("unclosed `{{` in: {text}"))?
                    + i;
                parse_placeholder(&text[i + 1..end], &mut out)?;
                i = end + 1;
            }
            byte => {
                out.push_lit(&[byte]);
                i += 1;
            }
        }
    }
    Ok(out)
}

fn parse_escape(s: &[u8]) -> Result<(u8, usize), String> {
    let byte = match s.get(1) {
        Some(b'r') => b'\r',
        Some(b'n') => b'\n',
        Some(b't') => b'\t',
        Some(b'0') => 0,
        Some(b'\\') => b'\\',
        Some(b'{') => b'{',
        Some(b'x') => {
            let hex = s.get(2..4).ok_or("truncated \\x escape")?;
            let hex = std::str::from_utf8(hex).map_err(|_| "bad \\x escape")?;
            return Ok((
                u8::from_str_radix(hex, 16).map_err(|e| format!("bad \\x{hex}: {e}"))?,
                4,
            ));
        }
        other => {
            return Err(format!(
                "unknown escape \\{}",
                other.map(|b| *b as char).unwrap_or(' ')
            ))
        }
    };
    Ok((byte, 2))
}

fn parse_placeholder(inner: &str, out: &mut Template) -> Result<(), String> {
    if let Some(rest) = inner.strip_prefix("rep:") {
        let (unit, count) = rest
            .rsplit_once(':')
            .ok_or_else(|| format!("expected {{rep:TEXT:N}}, got {{{inner}}}"))?;
        let count: usize = count
            .parse()
            .map_err(|e| format!("bad count in {{{inner}}}: {e}"))?;
        let unit = parse_template(unit)?
            .literal()
            .ok_or("placeholders are not allowed inside {rep}")?;
        out.push_lit(&unit.repeat(count));
        return Ok(());
    }
    if let Some(rest) = inner.strip_prefix("now") {
        out.0.push(Piece::Now(parse_offset(rest)?));
        return Ok(());
    }
    if let Some(rest) = inner.strip_prefix("cas") {
        let (key, offset) = match rest.strip_prefix(':') {
            Some(keyed) => {
                let split = keyed.find(['+', '-']).unwrap_or(keyed.len());
                (Some(keyed.as_bytes()[..split].to_vec()), &keyed[split..])
            }
            None => (None, rest),
        };
        out.0.push(Piece::Cas {
            key,
            delta: parse_offset(offset)?,
        });
        return Ok(());
    }
    Err(format!("unknown placeholder {{{inner}}}"))
}

fn parse_offset(text: &str) -> Result<i64, String> {
    if text.is_empty() {
        return Ok(0);
    }
    let (sign, digits) = match text.as_bytes()[0] {
        b'+' => (1, &text[1..]),
        b'-' => (-1, &text[1..]),
        _ => return Err(format!("expected +N or -N, got `{text}`")),
    };
    Ok(sign
        * digits
            .parse::<i64>()
            .map_err(|e| format!("bad offset `{text}`: {e}"))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_expand_escapes_repeats_and_placeholders() {
        let template = parse_template("a\\r\\n\\x41{rep:ab:3}\\{x{cas:foo+2}{now-5}{cas}").unwrap();
        assert_eq!(template.0.len(), 4);
        assert!(matches!(&template.0[0], Piece::Lit(bytes) if bytes == b"a\r\nAababab{x"));
        assert!(matches!(&template.0[1], Piece::Cas { key: Some(k), delta: 2 } if k == b"foo"));
        assert!(matches!(template.0[2], Piece::Now(-5)));
        assert!(matches!(
            template.0[3],
            Piece::Cas {
                key: None,
                delta: 0
            }
        ));
    }

    #[test]
    fn steps_collect_continuations_and_expectations() {
        let text = "# flags: -C\n> set a 0 0 1\n+ x\n@1.6.45 STORED\nreconnect\n>> raw\n";
        let script = parse("t", text).unwrap();
        assert_eq!(script.flags, ["-C"]);
        assert_eq!(script.items.len(), 3);
        let Item::Step(step) = &script.items[0] else {
            panic!("first item is a step")
        };
        let StepKind::Text {
            bytes,
            sentinel: true,
            crlf: true,
        } = &step.kind
        else {
            panic!("text step")
        };
        assert_eq!(bytes.literal().unwrap(), b"set a 0 0 1\r\nx\r\n");
        assert_eq!(
            step.expect,
            [("1.6.45".to_string(), vec!["STORED".to_string()])]
        );
    }
}
