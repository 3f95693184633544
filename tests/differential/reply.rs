//! Text-protocol reply framing and the normalisation that makes two correct servers
//! compare equal.
//!
//! Replies are split structurally, never by searching for strings: a `VALUE` or `VA`
//! line announces how many data bytes follow, so value bytes that look like protocol
//! (`"END\r\n"`, `"MN\r\n"`) are never mistaken for it.
//!
//! What is normalised, and why:
//! - CAS values: meshcached's are hybrid-logical-clock stamps, memcached's a counter.
//!   Each distinct value becomes `<casN>`, N being its first-seen ordinal in this
//!   server's reply stream for the script, so "same item, same CAS" and "changed CAS"
//!   are still checked. `0` stays `0` (it means "no CAS"), and values the client
//!   chose itself (meta `E<n>`) stay verbatim because they are deterministic.
//! - `VERSION <x>` becomes `VERSION <version>`.
//! - Meta `t<ttl>` (remaining TTL) is rounded to the nearest 10 s (`t~100`), because
//!   the second boundary may tick between set and get; scripts use TTLs that are
//!   multiples of 10. `t-1` (never expires) is kept. `l<secs>` (last access) becomes
//!   `l<la>`.
//! - `ME <key> <debug fields>`: the fields are memcached internals (slab class, la).
//! - `STAT` lines: a run of them collapses to `STAT <elided>`; stat names are checked
//!   by their own test, values are not comparable.

use std::collections::{HashMap, HashSet};

/// Maps CAS values to ordinals for one server's run of one script.
#[derive(Default)]
pub struct Normaliser {
    ordinals: HashMap<u64, usize>,
    /// CAS values the client supplied (meta `E` flag): shown verbatim.
    pub client_chosen: HashSet<u64>,
}

impl Normaliser {
    pub fn cas(&mut self, value: u64) -> String {
        if value == 0 || self.client_chosen.contains(&value) {
            return value.to_string();
        }
        let next = self.ordinals.len() + 1;
        format!("<cas{}>", self.ordinals.entry(value).or_insert(next))
    }
}

/// A piece of a text reply stream.
#[derive(Debug)]
pub enum Record {
    /// A line including its terminator (`\r\n`, or a bare `\n` if a server sent that).
    Line(Vec<u8>),
    /// A data block announced by the previous line, including its `\r\n` if present.
    Data(Vec<u8>),
}

/// Splits the complete records off the front of `buf`; returns them and how many
/// bytes they used. A trailing incomplete record is left for later.
pub fn split_records(buf: &[u8]) -> (Vec<Record>, usize) {
    let mut records = Vec::new();
    let mut pos = 0;
    while let Some(nl) = buf[pos..].iter().position(|&b| b == b'\n') {
        let line_end = pos + nl + 1;
        let data_len = announced_data_len(&buf[pos..line_end]);
        let Some(data_len) = data_len else {
            records.push(Record::Line(buf[pos..line_end].to_vec()));
            pos = line_end;
            continue;
        };
        let data_end = line_end + data_len + 2;
        if buf.len() < data_end {
            break;
        }
        records.push(Record::Line(buf[pos..line_end].to_vec()));
        records.push(Record::Data(buf[line_end..data_end].to_vec()));
        pos = data_end;
    }
    (records, pos)
}

/// `VALUE <key> <flags> <bytes> [<cas>]` and `VA <size> <flags>*` are followed by a
/// data block of the announced size plus `\r\n`.
fn announced_data_len(line: &[u8]) -> Option<usize> {
    let text = std::str::from_utf8(line).ok()?;
    let words: Vec<&str> = text.split_whitespace().collect();
    match words.first() {
        Some(&"VALUE") => words.get(3)?.parse().ok(),
        Some(&"VA") => words.get(1)?.parse().ok(),
        _ => None,
    }
}

/// Whether a record is the reply to the `mn` sentinel.
pub fn is_mn(record: &Record) -> bool {
    matches!(record, Record::Line(line) if line == b"MN\r\n")
}

/// Renders records for comparison: one string per record, escaped, line
/// terminators `\r\n` dropped (a bare `\n` stays visible as `\n`).
pub fn render_records(records: &[Record], norm: &mut Normaliser) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for record in records {
        match record {
            Record::Data(data) => out.push(escape(data.strip_suffix(b"\r\n").unwrap_or(data))),
            Record::Line(line) => {
                let (body, ending) = match line.strip_suffix(b"\r\n") {
                    Some(body) => (body, ""),
                    None => (&line[..line.len() - 1], "\\n"),
                };
                let rendered = normalise_line(body, norm) + ending;
                if rendered.starts_with("STAT ") {
                    if out.last().map(String::as_str) != Some("STAT <elided>") {
                        out.push("STAT <elided>".to_string());
                    }
                    continue;
                }
                out.push(rendered);
            }
        }
    }
    out
}

/// Normalises one reply line (without its terminator) and escapes it for display.
/// Works on bytes split at spaces, so keys with any bytes survive unchanged.
fn normalise_line(body: &[u8], norm: &mut Normaliser) -> String {
    let words: Vec<&[u8]> = body.split(|&b| b == b' ').collect();
    let text = |word: &[u8]| std::str::from_utf8(word).ok().map(str::to_string);
    let mut out: Vec<String> = words.iter().map(|w| escape(w)).collect();
    match words[0] {
        b"VALUE" if words.len() == 5 => {
            if let Some(cas) = text(words[4]).and_then(|t| t.parse::<u64>().ok()) {
                out[4] = norm.cas(cas);
            }
        }
        b"VERSION" => out = vec!["VERSION".into(), "<version>".into()],
        b"ME" if words.len() > 2 => out = vec!["ME".into(), out[1].clone(), "<debug>".into()],
        b"HD" | b"VA" | b"EN" | b"EX" | b"NF" | b"NS" => {
            // `VA <size>`: the size is not a flag.
            let first_flag = if words[0] == b"VA" { 2 } else { 1 };
            for (i, word) in words.iter().enumerate().skip(first_flag) {
                if let Some(word) = text(word) {
                    if let Some(normalised) = normalise_meta_flag(&word, norm) {
                        out[i] = normalised;
                    }
                }
            }
        }
        _ => {}
    }
    out.join(" ")
}

fn normalise_meta_flag(word: &str, norm: &mut Normaliser) -> Option<String> {
    let mut chars = word.chars();
    let flag = chars.next()?;
    let value = chars.as_str();
    match flag {
        'c' => value
            .parse::<u64>()
            .ok()
            .map(|cas| format!("c{}", norm.cas(cas))),
        't' => match value.parse::<i64>() {
            Ok(ttl) if ttl > 0 => Some(format!("t~{}", (ttl + 5) / 10 * 10)),
            _ => None,
        },
        'l' if value.parse::<u64>().is_ok() => Some("l<la>".to_string()),
        _ => None,
    }
}

/// Escapes bytes for display: printable ASCII as is, `\r \n \t \0 \\` and `\xNN`
/// otherwise; runs of one byte longer than 16 become `{rep:X:N}` (script syntax).
pub fn escape(bytes: &[u8]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < bytes.len() {
        let run = bytes[i..].iter().take_while(|&&b| b == bytes[i]).count();
        if run > 16 {
            out.push_str(&format!("{{rep:{}:{run}}}", escape_byte(bytes[i])));
            i += run;
            continue;
        }
        out.push_str(&escape_byte(bytes[i]));
        i += 1;
    }
    out
}

fn escape_byte(byte: u8) -> String {
    match byte {
        b'\r' => "\\r".into(),
        b'\n' => "\\n".into(),
        b'\t' => "\\t".into(),
        0 => "\\0".into(),
        b'\\' => "\\\\".into(),
        b'{' => "\\{".into(),
        0x20..=0x7e => (byte as char).to_string(),
        _ => format!("\\x{byte:02x}"),
    }
}

/// Parses the CAS values a reply carries, for `{cas}` / `{cas:KEY}` placeholders:
/// `VALUE` lines name their key; meta replies name it with `k<key>` or else belong
/// to `request_key` (the key of the step's last meta request).
pub fn captured_cas(records: &[Record], request_key: Option<&[u8]>) -> Vec<(Option<Vec<u8>>, u64)> {
    let mut found = Vec::new();
    for record in records {
        let Record::Line(line) = record else { continue };
        let Ok(text) = std::str::from_utf8(line) else {
            continue;
        };
        let words: Vec<&str> = text.split_whitespace().collect();
        match words.first() {
            Some(&"VALUE") if words.len() == 5 => {
                if let Ok(cas) = words[4].parse() {
                    found.push((Some(words[1].as_bytes().to_vec()), cas));
                }
            }
            Some(&("HD" | "VA" | "EX" | "NF" | "NS")) => {
                let key = words
                    .iter()
                    .find_map(|w| w.strip_prefix('k'))
                    .map(|k| k.as_bytes().to_vec());
                let key = key.or_else(|| request_key.map(<[u8]>::to_vec));
                for word in &words[1..] {
                    if let Some(Ok(cas)) = word.strip_prefix('c').map(str::parse::<u64>) {
                        if cas != 0 {
                            found.push((key.clone(), cas));
                        }
                    }
                }
            }
            _ => {}
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_blocks_are_framed_by_length_not_content() {
        let stream = b"VALUE k 0 9 7\r\nEND\r\nMN\r\n\r\nEND\r\nMN\r\npartial";
        let (records, used) = split_records(stream);
        assert_eq!(used, stream.len() - "partial".len());
        let mut norm = Normaliser::default();
        let rendered = render_records(&records, &mut norm);
        assert_eq!(
            rendered,
            ["VALUE k 0 9 <cas1>", "END\\r\\nMN\\r\\n", "END", "MN"]
        );
    }

    #[test]
    fn cas_ttl_and_access_time_are_normalised() {
        let mut norm = Normaliser::default();
        norm.client_chosen.insert(9_000_001);
        let stream = b"VA 1 c55 t99 l3 s1\r\nx\r\nHD c66 c55 c0 c9000001 t-1\r\n";
        let (records, _) = split_records(stream);
        assert_eq!(
            render_records(&records, &mut norm),
            [
                "VA 1 c<cas1> t~100 l<la> s1",
                "x",
                "HD c<cas2> c<cas1> c0 c9000001 t-1"
            ]
        );
    }

    #[test]
    fn escape_compresses_runs_and_shows_control_bytes() {
        assert_eq!(escape(&[b'a'; 20]), "{rep:a:20}");
        assert_eq!(escape(b"a\r\n\0\xff{\\"), "a\\r\\n\\0\\xff\\{\\\\");
    }
}
