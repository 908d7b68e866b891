//! Fuzz target `framing`: the property `check_framing` (tests/props) on arbitrary bytes.
#![no_main]

#[path = "../../tests/props/mod.rs"]
mod props;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Err(e) = props::check_framing(data) {
        panic!("framing property failed: {e}");
    }
});
