//! Boot tests: build the real packages (kernel, init, busybox), build an image from a manifest,
//! boot it under QEMU (TCG) and read the serial console.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::OnceLock;

use assert_cmd::Command;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The store the boot tests share, with the packages built once per run (an unchanged package is
/// not rebuilt: its tag is the hash of its inputs).
fn cache() -> &'static Path {
    static CACHE: OnceLock<PathBuf> = OnceLock::new();
    CACHE.get_or_init(|| {
        let cache = root().join("target/slipway-test-cache");
        slipway(&cache)
            .args(["pkg", "build", "kernel", "pkg/init", "pkg/busybox"])
            .assert()
            .success();
        cache
    })
}

fn slipway(cache: &Path) -> Command {
    let mut cmd = Command::cargo_bin("slipway").unwrap();
    cmd.current_dir(root()).env("SLIPWAY_CACHE", cache);
    cmd
}

/// Builds the manifests (paths relative to the repository) into `out` and boots the result,
/// with `--boot-report`.
fn build_and_boot(out: &Path, name: &str, manifests: &[&str]) -> Output {
    let cache = cache();
    let mut build = slipway(cache);
    build
        .args(["build", "--name", name, "--dir"])
        .arg(out)
        .args(manifests);
    build.assert().success();
    slipway(cache)
        .args([
            "run",
            "qemu",
            "--boot-report",
            "--mem",
            "1024",
            "--timeout",
            "240",
        ])
        .arg(out.join(name))
        .timeout(std::time::Duration::from_secs(300))
        .output()
        .unwrap()
}

fn console(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn position(text: &str, marker: &str) -> usize {
    text.find(marker)
        .unwrap_or_else(|| panic!("console lacks {marker:?}:\n{text}"))
}

/// The init's timeline line on the console, parsed, after checking that its steps are in
/// increasing time and that `--boot-report` printed them as a table right after it.
fn boot_timeline(text: &str) -> Vec<slipway::run::boot_report::Step> {
    let line = text
        .lines()
        .find(|l| l.contains(slipway::run::boot_report::MARKER))
        .unwrap_or_else(|| panic!("no boot timeline on the console:\n{text}"));
    let steps = slipway::run::boot_report::parse_line(line)
        .unwrap_or_else(|| panic!("unreadable boot timeline {line:?}"));
    for pair in steps.windows(2) {
        assert!(pair[0].ms < pair[1].ms, "steps out of order in {line:?}");
    }
    let table = slipway::run::boot_report::table(&steps);
    let after = &text[position(text, line)..];
    assert!(
        after.contains(&table),
        "--boot-report printed no table after the line:\n{text}"
    );
    steps
}

fn step_names(steps: &[slipway::run::boot_report::Step]) -> Vec<&str> {
    steps.iter().map(|s| s.step.as_str()).collect()
}

/// Every container start used to print libcgroups' "Controller rdma is not yet implemented".
fn assert_no_cgroup_noise(text: &str) {
    assert!(
        !text.contains("not yet implemented"),
        "libcgroups noise on the console:\n{text}"
    );
}

#[test]
fn minimal_example_boots_runs_its_containers_and_powers_off() {
    let dir = tempfile::tempdir().unwrap();
    let out = build_and_boot(
        dir.path(),
        "minimal",
        &[
            "examples/minimal.yml",
            "examples/poweroff.yml",
            "tests/data/boot-json.yml",
        ],
    );
    let text = console(&out);
    assert_no_cgroup_noise(&text);
    let steps = boot_timeline(&text);
    let names = step_names(&steps);
    let start = names.iter().position(|s| *s == "kernel");
    assert!(
        start.is_some_and(|k| names[k..].starts_with(&[
            "kernel",
            "mounts",
            "modules",
            "onboot 000-hello",
            "engine"
        ])),
        "{names:?}"
    );
    assert!(
        names
            .last()
            .is_some_and(|s| s.starts_with("first service ")),
        "{names:?}"
    );
    // The same steps in /run/slipway/boot.json, as a service read it.
    let json_at = position(&text, "slipway-test: boot.json ");
    let json_line = text[json_at..].lines().next().unwrap();
    let json: serde_json::Value = serde_json::from_str(
        json_line
            .trim_start_matches("slipway-test: boot.json ")
            .trim(),
    )
    .unwrap_or_else(|e| panic!("boot.json: {e}: {json_line:?}"));
    let from_json: Vec<(String, u64)> = json
        .as_array()
        .expect("boot.json is a list")
        .iter()
        .map(|s| {
            (
                s["step"].as_str().expect("step").to_owned(),
                s["ms"].as_u64().expect("ms"),
            )
        })
        .collect();
    let from_line: Vec<(String, u64)> = steps.iter().map(|s| (s.step.clone(), s.ms)).collect();
    assert_eq!(from_json, from_line);
    let onboot = position(&text, "slipway-onboot: hello from an onboot container");
    let web = position(&text, "slipway-service: web serving on :8080");
    let service = position(&text, "slipway-service: shell ready on the console");
    assert!(
        web < service,
        "the shell waits for web to be healthy:\n{text}"
    );
    let banner = position(&text, "built-in shell (ash)");
    assert!(service < banner, "the console shell did not start:\n{text}");
    assert!(
        !text.contains("slipway-service: shell exited"),
        "the console shell ended:\n{text}"
    );
    let shutdown = position(&text, "slipway-onshutdown: goodbye");
    assert!(
        onboot < service && service < shutdown,
        "markers out of order:\n{text}"
    );
    assert!(
        out.status.success(),
        "the guest did not power off cleanly: {:?}\n{text}",
        out.status
    );
}

#[test]
fn a_failing_onboot_container_is_reported_and_boot_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("failing.yml");
    std::fs::write(
        &manifest,
        format!(
            "kernel:\n  image: \"@pkg:{root}/kernel\"\n  cmdline: \"console=ttyS0 panic=-1\"\n\
             init:\n  - \"@pkg:{root}/pkg/init\"\n\
             onboot:\n  - name: broken\n    image: \"@pkg:{root}/pkg/busybox\"\n    command: [/bin/sh, -c, \"echo about to fail; exit 1\"]\n\
             \x20 - name: after\n    image: \"@pkg:{root}/pkg/busybox\"\n    command: [/bin/echo, \"slipway-test: boot went on\"]\n",
            root = root().display()
        ),
    )
    .unwrap();
    let out = build_and_boot(
        dir.path(),
        "failing",
        &[manifest.to_str().unwrap(), "examples/poweroff.yml"],
    );
    let text = console(&out);
    let failed = position(&text, "about to fail");
    let reported = position(&text, "000-broken");
    let after = position(&text, "slipway-test: boot went on");
    assert!(failed < after && reported < after, "{text}");
    assert!(
        text.contains("status 1"),
        "the exit status is reported:\n{text}"
    );
    assert_no_cgroup_noise(&text);
    // Without the engine, the init starts the services and knows the first start itself.
    let steps = boot_timeline(&text);
    let names = step_names(&steps);
    assert!(
        names.ends_with(&[
            "onboot 000-broken",
            "onboot 001-after",
            "first service poweroff"
        ]),
        "{names:?}"
    );
    assert!(out.status.success(), "{text}");
}

#[test]
fn two_builds_of_a_manifest_give_identical_bytes_in_every_format() {
    let cache = cache();
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    for dir in &dirs {
        slipway(cache)
            .args([
                "build",
                "-f",
                "kernel+initrd,tar-kernel-initrd,tar",
                "--name",
                "repro",
                "--dir",
            ])
            .arg(dir.path())
            .arg("examples/minimal.yml")
            .assert()
            .success();
    }
    let names = [
        "repro-kernel",
        "repro-initrd.img",
        "repro-cmdline",
        "repro-initrd.tar",
        "repro.tar",
    ];
    for name in names {
        let a = std::fs::read(dirs[0].path().join(name)).unwrap();
        let b = std::fs::read(dirs[1].path().join(name)).unwrap();
        assert!(!a.is_empty(), "{name} is empty");
        assert!(a == b, "{name} differs between two builds");
    }
}

#[test]
fn the_engine_starts_a_dependent_after_its_dependency_is_healthy_and_restarts_a_killed_service() {
    let dir = tempfile::tempdir().unwrap();
    let out = build_and_boot(
        dir.path(),
        "chaos",
        &["examples/minimal.yml", "tests/data/chaos.yml"],
    );
    let text = console(&out);
    let serving = position(&text, "slipway-service: web serving on :8080");
    let shell = position(&text, "slipway-service: shell ready on the console");
    assert!(
        serving < shell,
        "the shell started before web was healthy:\n{text}"
    );
    let killed = position(&text, "slipway-test: killing web");
    assert!(
        text[killed..].contains("slipway-service: web serving on :8080"),
        "the killed service did not come back:\n{text}"
    );
    position(&text, "slipway-onshutdown: goodbye");
    assert!(out.status.success(), "{text}");
}
