//! Fuzz target `text`: see `meshcached_fuzz::checks::text` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| meshcached_fuzz::checks::text::check(data));
