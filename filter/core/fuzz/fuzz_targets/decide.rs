//! Fuzz target `decide`: the property `wsgate_core::props::check_decide` on arbitrary bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Err(e) = wsgate_core::props::check_decide(data) {
        panic!("decide property failed: {e}");
    }
});
