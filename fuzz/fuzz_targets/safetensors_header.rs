//! libFuzzer target: `hubsweep::fuzzing::safetensors_header`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hubsweep::fuzzing::safetensors_header(data));
