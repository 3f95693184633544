//! Target `meta`: a client stream made of meta commands, so that the fuzzer spends its time
//! in the meta decoder (flags, base64 keys, `ms` data blocks) rather than finding `mg` first.
//!
//! Input: `limit:u8 seed:u64` then lines; each line's first byte picks the command put in
//! front of the rest of it (or nothing, for data blocks).

use super::client::check_stream;
use super::input::Input;

const COMMANDS: [&[u8]; 7] = [b"mg ", b"ms ", b"md ", b"ma ", b"me ", b"mn", b""];

pub fn check(data: &[u8]) {
    let mut input = Input(data);
    let max_value = 16usize << (input.u8() % 12);
    let seed = input.u64();
    let mut stream = Vec::new();
    for line in input.rest().split_inclusive(|&b| b == b'\n') {
        let (pick, body) = line
            .split_first()
            .expect("split_inclusive yields no empty line");
        stream.extend_from_slice(COMMANDS[usize::from(*pick) % COMMANDS.len()]);
        stream.extend_from_slice(body);
    }
    check_stream(&stream, max_value, seed);
}
