//! Fuzz target `decide`: the property `check_decide` (tests/props) on arbitrary bytes.
#![no_main]

#[path = "../../tests/props/mod.rs"]
mod props;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Err(e) = props::check_decide(data) {
        panic!("decide property failed: {e}");
    }
});
