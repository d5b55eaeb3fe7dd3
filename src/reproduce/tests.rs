use super::*;

fn manifest(tolerances: Vec<Tolerance>) -> Manifest {
    Manifest {
        schema_version: crate::ledger::SCHEMA_VERSION,
        tool: crate::ledger::Tool {
            name: "hubsweep".into(),
            version: "0".into(),
        },
        sweep: "s".into(),
        output: "local://datasets/a/b".into(),
        spec: crate::ledger::SpecText {
            file_name: "s.yaml".into(),
            text: String::new(),
            sha256: String::new(),
            canonical_sha256: String::new(),
        },
        tolerances,
    }
}

#[test]
fn tolerance_comes_from_the_manifest_then_defaults_then_overrides() {
    let recorded = Tolerance {
        device: "cuda".into(),
        dtype: "f16".into(),
        relative: 0.5,
        bitwise: true,
    };
    let none = ToleranceOverrides::default();
    let with = manifest(vec![recorded.clone()]);
    assert_eq!(tolerance(&with, "cuda", "f16", none), recorded);
    // An old manifest without tolerances gets the built-in table.
    let old = manifest(Vec::new());
    let cpu = tolerance(&old, "cpu", "f32", none);
    assert!(cpu.bitwise && cpu.relative == 1e-9, "{cpu:?}");
    assert!(!tolerance(&old, "cuda", "bf16", none).bitwise);
    let overridden = tolerance(
        &with,
        "cuda",
        "f16",
        ToleranceOverrides {
            relative: Some(1e-3),
            bitwise: Some(false),
        },
    );
    assert_eq!((overridden.relative, overridden.bitwise), (1e-3, false));
}

#[test]
fn scratch_names_are_valid_repo_names() {
    use super::scratch::scratch_name;
    let head = "0123456789abcdef0123";
    assert_eq!(
        scratch_name("quickstart", head, 1),
        "quickstart-0123456789ab"
    );
    assert_eq!(scratch_name("a b/c", head, 3), "a-b-c-0123456789ab-3");
    assert!(RepoId::new(SCRATCH_NAMESPACE, &scratch_name("x:y", head, 2)).is_ok());
}
