//! libFuzzer target: `hubsweep::fuzzing::spec`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hubsweep::fuzzing::spec(data));
