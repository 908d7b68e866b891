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

/// The filter's settings as each kind carries them: WasmPlugin `spec.pluginConfig`,
/// TrafficExtension `spec.wasm.pluginConfig`, EnvoyFilter a JSON string in the Wasm config.
/// (A kustomize patch that leaves the settings alone has none.)
fn plugin_configs(doc: &serde_json::Value) -> Vec<serde_json::Value> {
    let configs = match doc["kind"].as_str() {
        Some("WasmPlugin") => vec![doc["spec"]["pluginConfig"].clone()],
        Some("TrafficExtension") => vec![doc["spec"]["wasm"]["pluginConfig"].clone()],
        Some("EnvoyFilter") => doc["spec"]["configPatches"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| {
                p["patch"]["value"]["typed_config"]["config"]["configuration"]["value"].as_str()
            })
            .map(|text| serde_json::from_str(text).expect("the EnvoyFilter's config is JSON"))
            .collect(),
        _ => Vec::new(),
    };
    configs.into_iter().filter(|c| !c.is_null()).collect()
}

#[test]
fn every_shipped_filter_config_compiles_and_they_agree() {
    let mut configs = Vec::new();
    for (f, doc) in documents() {
        for cfg in plugin_configs(&doc) {
            let json = serde_json::to_vec(&cfg).expect("json");
            let policy =
                Policy::from_json(&json).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            assert!(!policy.routes.is_empty(), "{}: no routes", f.display());
            configs.push((f.clone(), cfg));
        }
    }
    let kinds = configs.len();
    assert_eq!(
        kinds, 3,
        "one WasmPlugin, one TrafficExtension and one EnvoyFilter config: {configs:?}"
    );
    for (f, cfg) in &configs[1..] {
        assert_eq!(
            cfg,
            &configs[0].1,
            "{} must carry the same settings as {}",
            f.display(),
            configs[0].0.display()
        );
    }
}
