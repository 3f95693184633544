//! The memcached binary protocol, as far as the scripts need it: requests written as
//! `OPCODE field=value ...`, responses framed by their 24-byte header and rendered
//! one readable line per packet (`RES get status=0x0001(key_enoent) opaque=7 ...`).

use crate::reply::{escape, Normaliser};
use crate::script::{parse_template, Template};

pub const REQ_MAGIC: u8 = 0x80;
pub const RES_MAGIC: u8 = 0x81;
pub const HEADER_LEN: usize = 24;
pub const OP_NOOP: u8 = 0x0a;
const OP_VERSION: u8 = 0x0b;
const OP_STAT: u8 = 0x10;

/// Every opcode memcached 1.6 serves (plus SASL ones, unknown without SASL).
const OPCODES: &[(&str, u8)] = &[
    ("get", 0x00),
    ("set", 0x01),
    ("add", 0x02),
    ("replace", 0x03),
    ("delete", 0x04),
    ("incr", 0x05),
    ("decr", 0x06),
    ("quit", 0x07),
    ("flush", 0x08),
    ("getq", 0x09),
    ("noop", 0x0a),
    ("version", 0x0b),
    ("getk", 0x0c),
    ("getkq", 0x0d),
    ("append", 0x0e),
    ("prepend", 0x0f),
    ("stat", 0x10),
    ("setq", 0x11),
    ("addq", 0x12),
    ("replaceq", 0x13),
    ("deleteq", 0x14),
    ("incrq", 0x15),
    ("decrq", 0x16),
    ("quitq", 0x17),
    ("flushq", 0x18),
    ("appendq", 0x19),
    ("prependq", 0x1a),
    ("verbosity", 0x1b),
    ("touch", 0x1c),
    ("gat", 0x1d),
    ("gatq", 0x1e),
    ("sasl_list_mechs", 0x20),
    ("sasl_auth", 0x21),
    ("gatk", 0x23),
    ("gatkq", 0x24),
];

const STATUSES: &[(u16, &str)] = &[
    (0x0000, "ok"),
    (0x0001, "key_enoent"),
    (0x0002, "key_eexists"),
    (0x0003, "e2big"),
    (0x0004, "einval"),
    (0x0005, "not_stored"),
    (0x0006, "delta_badval"),
    (0x0020, "auth_error"),
    (0x0081, "unknown_command"),
    (0x0082, "enomem"),
];

pub fn opcode_name(op: u8) -> String {
    OPCODES
        .iter()
        .find(|(_, code)| *code == op)
        .map(|(name, _)| name.to_string())
        .unwrap_or(format!("0x{op:02x}"))
}

/// The extras a request of this opcode carries, in wire order, and their sizes.
fn extras_layout(op: u8) -> &'static [(&'static str, usize)] {
    match op {
        // set, add, replace and their quiet forms: flags, exptime.
        0x01..=0x03 | 0x11..=0x13 => &[("flags", 4), ("exp", 4)],
        // incr, decr (and quiet): delta, initial value, exptime.
        0x05 | 0x06 | 0x15 | 0x16 => &[("delta", 8), ("initial", 8), ("exp", 4)],
        // touch and the get-and-touch family: exptime.
        0x1c | 0x1d | 0x1e | 0x23 | 0x24 => &[("exp", 4)],
        // flush: optional exptime (only sent when `exp=` is given).
        0x08 | 0x18 => &[("exp", 4)],
        0x1b => &[("level", 4)],
        _ => &[],
    }
}

/// One request as written in a script: `OPCODE key=... value=... flags=N exp=N
/// delta=N initial=N cas=N opaque=N level=N extras=HEX magic=N datatype=N vbucket=N
/// keylen=N extlen=N bodylen=N`. Field values are templates (escapes, `{rep}`,
/// `{cas}`), resolved per server when sent.
#[derive(Clone)]
pub struct RequestSpec {
    pub opcode: u8,
    fields: Vec<(String, Template)>,
}

/// A request encoded for one server.
pub struct Encoded {
    pub bytes: Vec<u8>,
    pub key: Vec<u8>,
    pub opaque: u32,
}

const FIELDS: &[&str] = &[
    "key", "value", "flags", "exp", "delta", "initial", "cas", "opaque", "level", "extras",
    "magic", "datatype", "vbucket", "keylen", "extlen", "bodylen",
];

impl RequestSpec {
    pub fn parse(text: &str) -> Result<RequestSpec, String> {
        let mut words = text.split_whitespace();
        let op_word = words.next().ok_or("binary request without an opcode")?;
        let opcode = match OPCODES.iter().find(|(name, _)| *name == op_word) {
            Some((_, code)) => *code,
            None => parse_number(op_word.as_bytes())
                .and_then(|n| u8::try_from(n).ok())
                .ok_or_else(|| format!("unknown opcode `{op_word}`"))?,
        };
        let mut fields = Vec::new();
        for word in words {
            let (name, value) = word
                .split_once('=')
                .ok_or_else(|| format!("expected field=value, got `{word}`"))?;
            if !FIELDS.contains(&name) {
                return Err(format!("unknown binary request field `{name}`"));
            }
            fields.push((name.to_string(), parse_template(value)?));
        }
        Ok(RequestSpec { opcode, fields })
    }

    /// Builds the packet, resolving placeholders with `resolve`.
    pub fn encode(&self, resolve: &mut dyn FnMut(&Template) -> Vec<u8>) -> Result<Encoded, String> {
        let mut values: Vec<(&str, Vec<u8>)> = Vec::new();
        for (name, template) in &self.fields {
            values.push((name.as_str(), resolve(template)));
        }
        let bytes_of = |name: &str| {
            values
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.clone())
        };
        let number = |name: &str| -> Result<Option<u64>, String> {
            match bytes_of(name) {
                None => Ok(None),
                Some(raw) => parse_number(&raw)
                    .map(Some)
                    .ok_or_else(|| format!("field {name}= is not a number: {}", escape(&raw))),
            }
        };
        let key = bytes_of("key").unwrap_or_default();
        let value = bytes_of("value").unwrap_or_default();
        let extras = match bytes_of("extras") {
            Some(hex) => decode_hex(&hex)?,
            None => {
                let mut extras = Vec::new();
                for (name, size) in extras_layout(self.opcode) {
                    let given = number(name)?;
                    // flush only carries its exptime when one is given.
                    if given.is_none() && matches!(self.opcode, 0x08 | 0x18) {
                        continue;
                    }
                    let n = given.unwrap_or(0);
                    extras.extend_from_slice(&n.to_be_bytes()[8 - size..]);
                }
                extras
            }
        };
        let opaque = number("opaque")?.unwrap_or(0) as u32;
        let mut out = Vec::with_capacity(HEADER_LEN + extras.len() + key.len() + value.len());
        out.push(number("magic")?.unwrap_or(REQ_MAGIC as u64) as u8);
        out.push(self.opcode);
        out.extend_from_slice(
            &(number("keylen")?.unwrap_or(key.len() as u64) as u16).to_be_bytes(),
        );
        out.push(number("extlen")?.unwrap_or(extras.len() as u64) as u8);
        out.push(number("datatype")?.unwrap_or(0) as u8);
        out.extend_from_slice(&(number("vbucket")?.unwrap_or(0) as u16).to_be_bytes());
        let body = (extras.len() + key.len() + value.len()) as u64;
        out.extend_from_slice(&(number("bodylen")?.unwrap_or(body) as u32).to_be_bytes());
        out.extend_from_slice(&opaque.to_be_bytes());
        out.extend_from_slice(&number("cas")?.unwrap_or(0).to_be_bytes());
        out.extend_from_slice(&extras);
        out.extend_from_slice(&key);
        out.extend_from_slice(&value);
        Ok(Encoded {
            bytes: out,
            key,
            opaque,
        })
    }
}

/// A NOOP with a distinctive opaque: its response marks the end of a step's replies.
pub fn sentinel(opaque: u32) -> Vec<u8> {
    let mut out = vec![REQ_MAGIC, OP_NOOP, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    out.extend_from_slice(&opaque.to_be_bytes());
    out.extend_from_slice(&[0; 8]);
    out
}

/// A response packet split out of the stream.
pub struct Response {
    pub magic: u8,
    pub opcode: u8,
    pub datatype: u8,
    pub status: u16,
    pub opaque: u32,
    pub cas: u64,
    pub extras: Vec<u8>,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
}

/// Splits one complete response off the front of `buf`, or `None` if more bytes
/// are needed. A header whose lengths do not add up is returned as-is with what
/// can be read; rendering shows it.
pub fn split_response(buf: &[u8]) -> Option<(Response, usize)> {
    if buf.len() < HEADER_LEN {
        return None;
    }
    let keylen = u16::from_be_bytes([buf[2], buf[3]]) as usize;
    let extlen = buf[4] as usize;
    let bodylen = u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]) as usize;
    if buf.len() < HEADER_LEN + bodylen {
        return None;
    }
    let body = &buf[HEADER_LEN..HEADER_LEN + bodylen];
    let extras = body.get(..extlen.min(bodylen)).unwrap_or_default().to_vec();
    let key = body
        .get(extlen..(extlen + keylen).min(bodylen))
        .unwrap_or_default()
        .to_vec();
    let value = body
        .get((extlen + keylen).min(bodylen)..)
        .unwrap_or_default()
        .to_vec();
    let response = Response {
        magic: buf[0],
        opcode: buf[1],
        datatype: buf[5],
        status: u16::from_be_bytes([buf[6], buf[7]]),
        opaque: u32::from_be_bytes([buf[12], buf[13], buf[14], buf[15]]),
        cas: u64::from_be_bytes(
            buf[16..24]
                .try_into()
                .expect("8-byte slice of a 24-byte header"),
        ),
        extras,
        key,
        value,
    };
    Some((response, HEADER_LEN + bodylen))
}

/// One readable line per response; CAS values go through the normaliser, the
/// VERSION string and stat values are elided (they legitimately differ).
pub fn render(response: &Response, norm: &mut Normaliser) -> String {
    let status = STATUSES
        .iter()
        .find(|(code, _)| *code == response.status)
        .map(|(code, name)| format!("0x{code:04x}({name})"))
        .unwrap_or(format!("0x{:04x}", response.status));
    let mut line = format!(
        "RES {} status={status} opaque={}",
        opcode_name(response.opcode),
        response.opaque
    );
    if response.magic != RES_MAGIC {
        line.push_str(&format!(" magic=0x{:02x}", response.magic));
    }
    if response.datatype != 0 {
        line.push_str(&format!(" datatype={}", response.datatype));
    }
    if response.cas != 0 {
        line.push_str(&format!(" cas={}", norm.cas(response.cas)));
    }
    if !response.extras.is_empty() {
        line.push_str(&format!(" extras={}", encode_hex(&response.extras)));
    }
    if !response.key.is_empty() {
        line.push_str(&format!(" key=\"{}\"", escape(&response.key)));
    }
    if !response.value.is_empty() {
        let ok = response.status == 0;
        if ok && response.opcode == OP_VERSION {
            line.push_str(" value=<version>");
        } else if ok && response.opcode == OP_STAT {
            line.push_str(" value=<stat>");
        } else {
            line.push_str(&format!(" value=\"{}\"", escape(&response.value)));
        }
    }
    line
}

/// Whether this response is a `stat` entry (not the empty-key terminator): those
/// are collapsed into one line, as their names and count are implementation detail.
pub fn is_stat_entry(response: &Response) -> bool {
    response.opcode == OP_STAT && response.status == 0 && !response.key.is_empty()
}

fn parse_number(raw: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(raw).ok()?;
    if let Some(hex) = text.strip_prefix("0x") {
        return u64::from_str_radix(hex, 16).ok();
    }
    match text.strip_prefix('-') {
        // Negative numbers (exptimes) are sent as two's complement of their width.
        Some(digits) => digits.parse::<i64>().ok().map(|n| (-n) as u64),
        None => text.parse().ok(),
    }
}

fn decode_hex(raw: &[u8]) -> Result<Vec<u8>, String> {
    let text = std::str::from_utf8(raw).map_err(|_| "extras= must be hex")?;
    if text.len() % 2 != 0 {
        return Err(format!("odd number of hex digits in extras={text}"));
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).map_err(|e| e.to_string()))
        .collect()
}

fn encode_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_request_layout() {
        let spec = RequestSpec::parse("set key=k value=v flags=7 exp=-1 opaque=9").unwrap();
        let encoded = spec
            .encode(&mut |t: &Template| t.literal().unwrap())
            .unwrap();
        let mut want = vec![0x80, 0x01, 0, 1, 8, 0, 0, 0, 0, 0, 0, 10, 0, 0, 0, 9];
        want.extend_from_slice(&[0; 8]);
        want.extend_from_slice(&[0, 0, 0, 7, 0xff, 0xff, 0xff, 0xff, b'k', b'v']);
        assert_eq!(encoded.bytes, want);
    }

    #[test]
    fn responses_split_and_render() {
        let mut packet = vec![0x81, 0x00, 0, 0, 4, 0, 0, 1, 0, 0, 0, 13, 0, 0, 0, 3];
        packet.extend_from_slice(&7u64.to_be_bytes());
        packet.extend_from_slice(&[0, 0, 0, 0]);
        packet.extend_from_slice(b"Not found");
        let (response, used) = split_response(&packet).unwrap();
        assert_eq!(used, packet.len());
        assert!(split_response(&packet[..30]).is_none());
        let line = render(&response, &mut Normaliser::default());
        assert_eq!(line, "RES get status=0x0001(key_enoent) opaque=3 cas=<cas1> extras=00000000 value=\"Not found\"");
    }
}
