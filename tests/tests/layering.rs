//! The house style's crate-dependency table, enforced: data flows cloud → edgehub → metamanager
//! (in edgecore) → edged-shim, and nothing reaches around a layer.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

/// Workspace package → the workspace packages it may depend on (any kind of dependency).
fn allowed() -> BTreeMap<&'static str, BTreeSet<&'static str>> {
    BTreeMap::from([
        ("edgecore-config", BTreeSet::new()),
        ("edgehub", BTreeSet::from(["edgecore-config"])),
        ("edged-shim", BTreeSet::from(["edgecore-config"])),
        (
            "edgecore",
            BTreeSet::from(["edgecore-config", "edgehub", "edged-shim"]),
        ),
        (
            "edgecore-tests",
            BTreeSet::from(["edgecore-config", "edgehub", "edged-shim", "edgecore"]),
        ),
    ])
}

#[test]
fn workspace_dependencies_follow_the_layering_table() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let packages = meta["packages"].as_array().unwrap();
    let members: BTreeSet<String> = packages
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_owned())
        .collect();
    let table = allowed();
    let mut violations = Vec::new();
    for p in packages {
        let name = p["name"].as_str().unwrap();
        let Some(ok) = table.get(name) else {
            violations.push(format!("{name} is not in the layering table"));
            continue;
        };
        for d in p["dependencies"].as_array().unwrap() {
            let dep = d["name"].as_str().unwrap();
            if members.contains(dep) && !ok.contains(dep) {
                violations.push(format!("{name} -> {dep}"));
            }
        }
    }
    assert!(
        violations.is_empty(),
        "edges not in the table: {violations:?}"
    );
    assert_eq!(members.len(), table.len(), "every package is checked");
}
