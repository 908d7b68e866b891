//! Fuzz target `token`: the property `wsgate_core::props::check_token` on arbitrary bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Err(e) = wsgate_core::props::check_token(data) {
        panic!("token property failed: {e}");
    }
});
