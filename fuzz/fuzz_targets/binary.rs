//! Fuzz target `binary`: see `meshcached_fuzz::checks::binary` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| meshcached_fuzz::checks::binary::check(data));
