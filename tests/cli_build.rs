//! `slipway build` as a pipeline meets it: dry runs, standard input, exit codes, nothing written
//! on failure.

use assert_cmd::Command;
use predicates::prelude::*;

fn slipway() -> Command {
    Command::cargo_bin("slipway").unwrap()
}

#[test]
fn dry_run_prints_the_merged_manifest() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("a.yml"),
        "init: [busybox:1]\nservices:\n  - name: a\n    image: a:1\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("b.yml"), "init: [busybox:2]\n").unwrap();
    let out = slipway()
        .current_dir(dir.path())
        .args(["build", "--dry-run", "a.yml", "b.yml"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let text = String::from_utf8(out).unwrap();
    assert!(
        text.contains("- busybox:1\n") && text.contains("- busybox:2\n"),
        "{text}"
    );
    assert!(text.contains("name: a"), "{text}");
}

#[test]
fn dry_run_reads_standard_input_and_json_names_the_output() {
    slipway()
        .args(["build", "--dry-run", "--json", "-"])
        .write_stdin("services:\n  - name: a\n    image: a:1\n")
        .assert()
        .success()
        .stdout(
            predicate::str::contains("\"name\": \"moby\"")
                .and(predicate::str::contains("\"services\"")),
        );
}

#[test]
fn a_bad_manifest_fails_with_location_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bad.yml"),
        "services:\n  - name: a\n    image: a:1\n    capabilities: [CAP_NOPE]\n",
    )
    .unwrap();
    slipway()
        .current_dir(dir.path())
        .args(["build", "--dir", "out", "bad.yml"])
        .assert()
        .failure()
        .stderr(predicate::str::contains(
            "bad.yml:4:20: services[0].capabilities[0]: unknown capability CAP_NOPE",
        ));
    assert!(!dir.path().join("out").exists());
    let entries: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(entries.len(), 1, "only the manifest is there");
}

#[test]
fn trust_is_accepted_with_a_warning() {
    slipway()
        .args(["build", "--dry-run", "-"])
        .write_stdin("trust:\n  org: [linuxkit]\n")
        .assert()
        .success()
        .stderr(predicate::str::contains(
            "`trust` is accepted for compatibility and ignored",
        ));
}

#[test]
fn every_subcommand_explains_itself() {
    for sub in ["build", "run", "pkg", "cache"] {
        slipway()
            .args([sub, "--help"])
            .assert()
            .success()
            .stdout(predicate::str::contains("Usage"));
    }
    slipway()
        .arg("--version")
        .assert()
        .success()
        .stdout(predicate::str::contains("slipway "));
}
