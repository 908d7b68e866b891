//! Fuzz target `token`: the property `check_token` (tests/props) on arbitrary bytes.
#![no_main]

#[path = "../../tests/props/mod.rs"]
mod props;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Err(e) = props::check_token(data) {
        panic!("token property failed: {e}");
    }
});
