//! The binary protocol's numbers: magic bytes, opcodes and status codes, with memcached's
//! own wording for each error status (clients print it, and tests compare it).
//!
//! Only the opcodes memcached 1.6 knows are named; VERBOSITY (0x1b) is deliberately absent
//! because memcached 1.6 no longer serves it (it answers "Unknown command").

/// Request magic byte; anything else closes the connection.
pub const REQUEST_MAGIC: u8 = 0x80;
/// Response magic byte.
pub const RESPONSE_MAGIC: u8 = 0x81;
/// Fixed header length of requests and responses.
pub const HEADER_LEN: usize = 24;

pub const GET: u8 = 0x00;
pub const SET: u8 = 0x01;
pub const ADD: u8 = 0x02;
pub const REPLACE: u8 = 0x03;
pub const DELETE: u8 = 0x04;
pub const INCREMENT: u8 = 0x05;
pub const DECREMENT: u8 = 0x06;
pub const QUIT: u8 = 0x07;
pub const FLUSH: u8 = 0x08;
pub const GETQ: u8 = 0x09;
pub const NOOP: u8 = 0x0a;
pub const VERSION: u8 = 0x0b;
pub const GETK: u8 = 0x0c;
pub const GETKQ: u8 = 0x0d;
pub const APPEND: u8 = 0x0e;
pub const PREPEND: u8 = 0x0f;
pub const STAT: u8 = 0x10;
pub const SETQ: u8 = 0x11;
pub const ADDQ: u8 = 0x12;
pub const REPLACEQ: u8 = 0x13;
pub const DELETEQ: u8 = 0x14;
pub const INCREMENTQ: u8 = 0x15;
pub const DECREMENTQ: u8 = 0x16;
pub const QUITQ: u8 = 0x17;
pub const FLUSHQ: u8 = 0x18;
pub const APPENDQ: u8 = 0x19;
pub const PREPENDQ: u8 = 0x1a;
pub const TOUCH: u8 = 0x1c;
pub const GAT: u8 = 0x1d;
pub const GATQ: u8 = 0x1e;
pub const SASL_LIST_MECHS: u8 = 0x20;
pub const SASL_AUTH: u8 = 0x21;
pub const SASL_STEP: u8 = 0x22;
pub const GATK: u8 = 0x23;
pub const GATKQ: u8 = 0x24;

pub const SUCCESS: u16 = 0x00;
pub const KEY_ENOENT: u16 = 0x01;
pub const KEY_EEXISTS: u16 = 0x02;
pub const E2BIG: u16 = 0x03;
pub const EINVAL: u16 = 0x04;
pub const NOT_STORED: u16 = 0x05;
pub const DELTA_BADVAL: u16 = 0x06;
pub const AUTH_ERROR: u16 = 0x20;
pub const UNKNOWN_COMMAND: u16 = 0x81;
pub const ENOMEM: u16 = 0x82;
/// "Temporary failure": memcached's protocol_binary.h names it; meshcached answers it to a
/// write its `--ack-replicas` peers did not acknowledge in time (retry, here or elsewhere).
pub const ETMPFAIL: u16 = 0x86;

/// The body memcached's `write_bin_error` sends for a status when no specific text is given.
pub fn message(status: u16) -> &'static str {
    match status {
        KEY_ENOENT => "Not found",
        KEY_EEXISTS => "Data exists for key.",
        E2BIG => "Too large.",
        EINVAL => "Invalid arguments",
        NOT_STORED => "Not stored.",
        DELTA_BADVAL => "Non-numeric server-side value for incr or decr",
        AUTH_ERROR => "Auth failure.",
        UNKNOWN_COMMAND => "Unknown command",
        ENOMEM => "Out of memory",
        _ => "",
    }
}

/// The opcode a quiet variant stands for, and whether it was quiet (memcached's
/// `dispatch_bin_command` folds them the same way before validating).
pub fn unquiet(opcode: u8) -> (u8, bool) {
    match opcode {
        GETQ => (GET, true),
        GETKQ => (GETK, true),
        GATQ => (GAT, true),
        GATKQ => (GATK, true),
        SETQ => (SET, true),
        ADDQ => (ADD, true),
        REPLACEQ => (REPLACE, true),
        APPENDQ => (APPEND, true),
        PREPENDQ => (PREPEND, true),
        DELETEQ => (DELETE, true),
        INCREMENTQ => (INCREMENT, true),
        DECREMENTQ => (DECREMENT, true),
        FLUSHQ => (FLUSH, true),
        QUITQ => (QUIT, true),
        other => (other, false),
    }
}
