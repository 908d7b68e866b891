//! Fuzz target `config`: the property `check_config` (tests/props) on arbitrary bytes.
#![no_main]

#[path = "../../tests/props/mod.rs"]
mod props;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Err(e) = props::check_config(data) {
        panic!("config property failed: {e}");
    }
});
