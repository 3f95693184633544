//! Target `text`: any bytes as a client stream (text and meta commands, or binary if the
//! first byte says so), with a small item size limit so that refused values are common.
//!
//! Input: `limit:u8 seed:u64 stream...`; the limit is 16 bytes to 32 KiB.

use super::client::check_stream;
use super::input::Input;

pub fn check(data: &[u8]) {
    let mut input = Input(data);
    let max_value = 16usize << (input.u8() % 12);
    let seed = input.u64();
    check_stream(input.rest(), max_value, seed);
}
