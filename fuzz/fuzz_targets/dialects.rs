//! Fuzz target `dialects`: see `meshcached_fuzz::checks::dialects` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| meshcached_fuzz::checks::dialects::check(data));
