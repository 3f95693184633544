//! Fuzz target `meta`: see `meshcached_fuzz::checks::meta` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| meshcached_fuzz::checks::meta::check(data));
