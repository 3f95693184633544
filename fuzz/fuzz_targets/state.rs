//! Fuzz target `state`: see `meshcached_fuzz::checks::state` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| meshcached_fuzz::checks::state::check(data));
