//! Replays every committed fuzz corpus entry and crash reproducer through the same properties
//! the fuzz targets check (`make fuzz` grows the corpus; this runs on stable in `make test`).

use std::path::Path;

mod props;

use props::{check_config, check_decide, check_framing, check_token, check_wsframe};

type Check = fn(&[u8]) -> Result<(), String>;

const TARGETS: [(&str, Check); 5] = [
    ("token", check_token),
    ("decide", check_decide),
    ("config", check_config),
    ("framing", check_framing),
    ("wsframe", check_wsframe),
];

#[test]
fn every_corpus_and_crash_file_holds_its_property() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    for (target, check) in TARGETS {
        let mut seen = 0;
        for dir in [
            fuzz.join("corpus").join(target),
            fuzz.join("artifacts").join(target),
        ] {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries {
                let path = entry.unwrap().path();
                let data = std::fs::read(&path).unwrap();
                if let Err(e) = check(&data) {
                    panic!("{}: {e}", path.display());
                }
                seen += 1;
            }
        }
        assert!(
            seen > 0,
            "no corpus for fuzz target {target}: run `make fuzz`"
        );
    }
}
