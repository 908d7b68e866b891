//! The workspace's crate graph, as docs/architecture.md draws it: the filter's policy stays out
//! of the native programs, and the wire formats stay free of I/O.
//!
//! Read from the manifests as text (a dependency is a `name = ...` line in a dependency table),
//! so that adding an edge the design forbids fails `cargo test`, not a review.

use std::path::{Path, PathBuf};

/// Every Cargo.toml of the repository (the fuzz crate's too), skipping build output.
fn manifests(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        let name = e.file_name();
        let name = name.to_string_lossy();
        if p.is_dir() {
            if !(name == "target" || name.starts_with('.') || name == "node_modules") {
                manifests(&p, out);
            }
        } else if name == "Cargo.toml" {
            out.push(p);
        }
    }
}

/// The crate names a manifest depends on, in any `[*dependencies]` table.
fn dependencies(manifest: &str) -> Vec<String> {
    let mut deps = Vec::new();
    let mut in_deps = false;
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_deps = line
                .trim_matches(|c| c == '[' || c == ']')
                .ends_with("dependencies");
        } else if in_deps {
            if let Some((name, _)) = line.split_once('=') {
                if !name.trim().starts_with('#') {
                    deps.push(name.trim().to_string());
                }
            }
        }
    }
    deps
}

fn package(manifest: &str) -> Option<String> {
    manifest
        .lines()
        .map(str::trim)
        .find_map(|l| l.strip_prefix("name = "))
        .map(|n| n.trim_matches('"').to_string())
}

fn graph() -> Vec<(String, Vec<String>)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut found = Vec::new();
    manifests(&root, &mut found);
    found
        .iter()
        .filter_map(|p| {
            let text = std::fs::read_to_string(p).ok()?;
            Some((package(&text)?, dependencies(&text)))
        })
        .collect()
}

/// Whether `program` (which must be in the workspace) depends on `dep`. Test support: a crate
/// that is missing fails the test that asks.
#[allow(clippy::panic)]
fn imports(g: &[(String, Vec<String>)], program: &str, dep: &str) -> bool {
    let (_, deps) = g
        .iter()
        .find(|(name, _)| name == program)
        .unwrap_or_else(|| panic!("{program} not found in the workspace"));
    deps.iter().any(|d| d == dep)
}

#[test]
fn only_the_glue_and_the_fuzz_targets_import_the_filter_core() {
    let g = graph();
    assert!(g.len() >= 8, "found only {} crates: {g:?}", g.len());
    let importers: Vec<&str> = g
        .iter()
        .filter(|(_, deps)| deps.iter().any(|d| d == "wsgate-core"))
        .map(|(name, _)| name.as_str())
        .collect();
    for name in &importers {
        assert!(
            ["wsgate-filter", "wsgate-core-fuzz"].contains(name),
            "{name} imports wsgate-core: the filter's policy belongs to the filter only"
        );
    }
}

#[test]
fn every_program_speaks_the_wire_formats_of_proto() {
    let g = graph();
    for program in [
        "wsgate-core",
        "wsgate-tunnel",
        "wsgate-sidecar",
        "wsgate-client",
        "wsgate-bench",
    ] {
        assert!(
            imports(&g, program, "wsgate-proto"),
            "{program} does not import wsgate-proto"
        );
    }
}

#[test]
fn both_tunnel_ends_run_the_one_engine() {
    let g = graph();
    for program in ["wsgate-sidecar", "wsgate-client"] {
        assert!(
            imports(&g, program, "wsgate-tunnel"),
            "{program} does not run its sessions on wsgate-tunnel"
        );
    }
}

#[test]
fn the_wire_formats_do_no_io() {
    let g = graph();
    for io in ["tokio", "futures-util", "bytes", "mio", "async-trait"] {
        assert!(
            !imports(&g, "wsgate-proto", io),
            "wsgate-proto depends on {io}: the wire formats must stay pure"
        );
    }
}
