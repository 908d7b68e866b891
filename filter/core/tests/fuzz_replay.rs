//! Replays every committed fuzz corpus entry and crash reproducer through the same properties
//! the fuzz targets check (`make fuzz` grows the corpus; this runs on stable in `make test`).

use std::path::Path;

mod props;

use props::{check_config, check_decide, check_framing, check_token, check_wsframe};

type Check = fn(&[u8]) -> Result<(), String>;

/// A fuzz target: its name (that of its corpus and artifacts directories) and its property.
struct Target {
    name: &'static str,
    check: Check,
}

const TARGETS: [Target; 5] = [
    Target {
        name: "token",
        check: check_token,
    },
    Target {
        name: "decide",
        check: check_decide,
    },
    Target {
        name: "config",
        check: check_config,
    },
    Target {
        name: "framing",
        check: check_framing,
    },
    Target {
        name: "wsframe",
        check: check_wsframe,
    },
];

#[test]
fn every_corpus_and_crash_file_holds_its_property() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    for Target { name, check } in TARGETS {
        let mut seen = 0;
        for dir in [
            fuzz.join("corpus").join(name),
            fuzz.join("artifacts").join(name),
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
            "no corpus for fuzz target {name}: run `make fuzz`"
        );
    }
}
