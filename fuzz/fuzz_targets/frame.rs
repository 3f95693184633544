//! Fuzz target `frame`: see `meshcached_fuzz::checks::frame` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| meshcached_fuzz::checks::frame::check(data));
