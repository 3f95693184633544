//! meshcached's fuzz targets: each target in `fuzz_targets/` hands its input to one
//! function of [`checks`], which decodes it and panics if an invariant fails. The corpus
//! replay test of the main crate (`tests/fuzz_corpus.rs`) includes the very same `checks`
//! module, so every committed corpus file is checked on stable, without libFuzzer.

pub mod checks;
