//! Fuzz target `config`: the property `wsgate_core::props::check_config` on arbitrary bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Err(e) = wsgate_core::props::check_config(data) {
        panic!("config property failed: {e}");
    }
});
