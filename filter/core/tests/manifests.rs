//! The `pluginConfig` in `istio/` is parsed by the filter's own config parser, so the manifests
//! a platform team applies and the code cannot drift: a manifest with a typo fails here.
// A test crate: its helpers may panic (clippy only exempts `#[test]` functions themselves).
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::path::{Path, PathBuf};

use serde::Deserialize;
use wsgate_core::Policy;

fn istio_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../istio")
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("istio/ exists") {
        let path = entry.expect("readable").path();
        if path.is_dir() {
            yaml_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
}

/// Every document of every manifest, as JSON values.
fn documents() -> Vec<(PathBuf, serde_json::Value)> {
    let mut files = Vec::new();
    yaml_files(&istio_dir(), &mut files);
    files.sort();
    assert!(
        files.len() >= 10,
        "expected the istio/ manifests, found {files:?}"
    );
    let mut docs = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).expect("readable");
        for doc in serde_norway::Deserializer::from_str(&text) {
            let v = serde_json::Value::deserialize(doc)
                .unwrap_or_else(|e| panic!("{}: not valid YAML: {e}", f.display()));
            if !v.is_null() {
                docs.push((f.clone(), v));
            }
        }
    }
    docs
}

#[test]
fn every_manifest_parses_and_has_kind_and_name() {
    for (f, doc) in documents() {
        assert!(
            doc["kind"].is_string(),
            "{}: a document without kind",
            f.display()
        );
        let is_kustomization = doc["kind"] == "Kustomization";
        assert!(
            is_kustomization || doc["metadata"]["name"].is_string(),
            "{}: a {} without metadata.name",
            f.display(),
            doc["kind"]
        );
    }
}

#[test]
fn wasmplugin_and_envoyfilter_configs_compile_and_agree() {
    let mut plugin_configs = Vec::new();
    for (f, doc) in documents() {
        match doc["kind"].as_str() {
            Some("WasmPlugin") if doc["spec"]["pluginConfig"].is_object() => {
                let json = serde_json::to_vec(&doc["spec"]["pluginConfig"]).expect("json");
                let policy =
                    Policy::from_json(&json).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
                assert!(!policy.routes.is_empty(), "{}: no routes", f.display());
                plugin_configs.push(doc["spec"]["pluginConfig"].clone());
            }
            Some("EnvoyFilter") => {
                let patches = doc["spec"]["configPatches"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                for p in patches {
                    let cfg =
                        &p["patch"]["value"]["typed_config"]["config"]["configuration"]["value"];
                    if let Some(text) = cfg.as_str() {
                        let policy = Policy::from_json(text.as_bytes())
                            .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
                        assert!(!policy.routes.is_empty());
                        let value: serde_json::Value = serde_json::from_str(text).expect("json");
                        plugin_configs.push(value);
                    }
                }
            }
            _ => {}
        }
    }
    assert_eq!(
        plugin_configs.len(),
        2,
        "one WasmPlugin and one EnvoyFilter config"
    );
    assert_eq!(
        plugin_configs[0], plugin_configs[1],
        "the EnvoyFilter variant must carry the WasmPlugin's pluginConfig"
    );
}
