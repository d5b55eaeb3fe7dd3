//! libFuzzer target: `hubsweep::fuzzing::ledger`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hubsweep::fuzzing::ledger(data));
