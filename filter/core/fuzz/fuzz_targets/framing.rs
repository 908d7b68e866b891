//! Fuzz target `framing`: the property `wsgate_core::props::check_framing` on arbitrary bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Err(e) = wsgate_core::props::check_framing(data) {
        panic!("framing property failed: {e}");
    }
});
