//! Fuzz target `wsframe`: the property `wsgate_core::props::check_wsframe` on arbitrary bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Err(e) = wsgate_core::props::check_wsframe(data) {
        panic!("wsframe property failed: {e}");
    }
});
