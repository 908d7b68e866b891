//! Fuzz target `wsframe`: the property `check_wsframe` (tests/props) on arbitrary bytes.
#![no_main]

#[path = "../../tests/props/mod.rs"]
mod props;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Err(e) = props::check_wsframe(data) {
        panic!("wsframe property failed: {e}");
    }
});
