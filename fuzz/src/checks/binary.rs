//! Target `binary`: a binary-protocol client stream (its first byte is the request magic,
//! so the connection is binary whatever follows).
//!
//! Input: `limit:u8 seed:u64 stream...`, the stream without its first byte (0x80).

use super::client::check_stream;
use super::input::Input;
use meshcached::protocol::binary::consts::REQUEST_MAGIC;

pub fn check(data: &[u8]) {
    let mut input = Input(data);
    let max_value = 16usize << (input.u8() % 12);
    let seed = input.u64();
    let mut stream = vec![REQUEST_MAGIC];
    stream.extend_from_slice(input.rest());
    check_stream(&stream, max_value, seed);
}
