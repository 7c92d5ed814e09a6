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
    build_and_boot_with(out, name, manifests, &[])
}

/// [`build_and_boot`], with more `slipway run qemu` options (`run_args`).
fn build_and_boot_with(out: &Path, name: &str, manifests: &[&str], run_args: &[&str]) -> Output {
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
        .args(run_args)
        .arg(out.join(name))
        .timeout(std::time::Duration::from_secs(300))
        .output()
        .unwrap()
}

/// Builds `manifest` (text) in the `tar` format and returns the names of the kernel modules in
/// it, and its `modules.dep`.
fn shipped_modules(manifest: &str) -> (Vec<String>, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.yml");
    std::fs::write(&path, manifest).unwrap();
    slipway(cache())
        .args(["build", "-f", "tar", "--name", "m", "--dir"])
        .arg(dir.path())
        .arg(&path)
        .assert()
        .success();
    let file = std::fs::File::open(dir.path().join("m.tar")).unwrap();
    let mut archive = tar::Archive::new(file);
    let (mut names, mut dep) = (Vec::new(), String::new());
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().to_string_lossy().into_owned();
        if !path.starts_with("lib/modules/") {
            continue;
        }
        if let Some(name) = path.strip_suffix(".ko") {
            names.push(name.rsplit('/').next().unwrap().replace('-', "_"));
        } else if path.ends_with("/modules.dep") {
            std::io::Read::read_to_string(&mut entry, &mut dep).unwrap();
        }
    }
    names.sort();
    (names, dep)
}

/// A manifest with the kernel and the init, and `extra` (YAML) appended.
fn kernel_manifest(extra: &str) -> String {
    format!(
        "kernel:\n  image: \"@pkg:{root}/kernel\"\n  cmdline: \"console=ttyS0\"\n{extra}\
         init:\n  - \"@pkg:{root}/pkg/init\"\n",
        root = root().display()
    )
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
            "onboot 000-dhcpcd",
            "onboot 001-hello",
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

#[test]
fn ten_services_of_one_image_share_its_files_and_all_run() {
    let dir = tempfile::tempdir().unwrap();
    let root = root().display().to_string();
    let mut manifest = format!(
        "kernel:\n  image: \"@pkg:{root}/kernel\"\n  cmdline: \"console=ttyS0 panic=-1\"\n\
         init:\n  - \"@pkg:{root}/pkg/init\"\nservices:\n"
    );
    for i in 0..10 {
        manifest.push_str(&format!(
            "  - name: s{i}\n    image: \"@pkg:{root}/pkg/busybox\"\n    devices:\n\
             \x20     - {{path: /dev/console, type: c, major: 5, minor: 1, mode: \"0620\"}}\n\
             \x20   command: [/bin/sh, -c, \"echo slipway-test: shared service {i} up >/dev/console; \
             trap 'exit 0' TERM; while :; do sleep 1; done\"]\n"
        ));
    }
    // Powers off once all ten run (`share[d]` keeps this command line out of its own count).
    manifest.push_str(&format!(
        "  - name: poweroff\n    image: \"@pkg:{root}/pkg/busybox\"\n    pid: host\n\
         \x20   capabilities: [CAP_KILL]\n\
         \x20   command: [/bin/sh, -c, \"until [ $(ps -o args | grep -c 'slipway-test: share[d] service') -ge 10 ]; \
         do sleep 1; done; poweroff\"]\n"
    ));
    let path = dir.path().join("shared.yml");
    std::fs::write(&path, manifest).unwrap();
    let cache = cache();
    let built = slipway(cache)
        .args(["build", "--json", "--name", "shared", "--dir"])
        .arg(dir.path())
        .arg(&path)
        .assert()
        .success()
        .get_output()
        .clone();
    let doc: serde_json::Value = serde_json::from_slice(&built.stdout).unwrap();
    let parts = doc["size"]["parts"].as_array().unwrap();
    let s0 = parts.iter().find(|p| p["name"] == "s0").unwrap();
    let busybox = s0["bytes"].as_u64().unwrap();
    for p in parts
        .iter()
        .filter(|p| p["name"] != "s0" && p["kind"] == "service")
    {
        assert!(
            p["shared"].as_u64().unwrap() + 4096 > busybox,
            "{} does not share s0's files: {p}",
            p["name"]
        );
    }
    assert!(doc["size"]["shared_bytes"].as_u64().unwrap() > 9 * (busybox - 4096));

    let out = slipway(cache)
        .args(["run", "qemu", "--mem", "1024", "--timeout", "240"])
        .arg(dir.path().join("shared"))
        .timeout(std::time::Duration::from_secs(300))
        .output()
        .unwrap();
    let text = console(&out);
    for i in 0..10 {
        position(&text, &format!("slipway-test: shared service {i} up"));
    }
    assert!(out.status.success(), "{text}");
}

/// N of `WHO stopped in N ms` in the engine's shutdown log on the console (`service NAME`, or
/// `every service` for the whole shutdown).
fn stop_time(console: &str, who: &str) -> u64 {
    let needle = format!("{who} stopped in ");
    let at = position(console, &needle) + needle.len();
    console[at..]
        .split(' ')
        .next()
        .and_then(|ms| ms.parse().ok())
        .unwrap_or_else(|| panic!("no stop time for {who}:\n{console}"))
}

#[test]
fn a_poweroff_stops_services_that_ignore_sigterm_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("sleepers.yml");
    // Two `sleep` services, which as their namespace's PID 1 would ignore SIGTERM; a third
    // without the engine's init shows what that costs (its grace period). The poweroff comes
    // once they all run.
    let sleeper = |name: &str, x_slipway: &str| {
        format!(
            "  - name: {name}\n    image: \"@pkg:{root}/pkg/busybox\"\n    command: [/bin/sleep, \"1000\"]\n{x_slipway}",
            root = root().display()
        )
    };
    std::fs::write(
        &manifest,
        format!(
            "kernel:\n  image: \"@pkg:{root}/kernel\"\n  cmdline: \"console=ttyS0 panic=-1\"\n\
             init:\n  - \"@pkg:{root}/pkg/init\"\n  - \"@pkg:{root}/pkg/engine\"\n\
             services:\n{a}{b}{bare}\
             \x20 - name: poweroff\n    image: \"@pkg:{root}/pkg/busybox\"\n    pid: host\n    capabilities: [CAP_KILL]\n\
             \x20   command: [/bin/sh, -c, \"sleep 1; poweroff\"]\n\
             \x20   x-slipway:\n      dependsOn: [sleeper-a, sleeper-b, bare]\n",
            root = root().display(),
            a = sleeper("sleeper-a", ""),
            b = sleeper("sleeper-b", ""),
            bare = sleeper(
                "bare",
                "    x-slipway:\n      init: false\n      stopGracePeriod: 3s\n"
            ),
        ),
    )
    .unwrap();
    let out = build_and_boot(dir.path(), "sleepers", &[manifest.to_str().unwrap()]);
    let text = console(&out);
    for name in ["sleeper-a", "sleeper-b", "bare"] {
        let started = position(&text, &format!("service {name}: started"));
        assert!(started < position(&text, "SIGUSR2 received"), "{text}");
    }
    // The engine's own clock: from each service's stop request to its end.
    for name in ["sleeper-a", "sleeper-b"] {
        let ms = stop_time(&text, &format!("service {name}"));
        assert!(ms < 1000, "{name} took {ms} ms:\n{text}");
    }
    assert!(stop_time(&text, "service bare") >= 3000, "{text}");
    // Side by side: the shutdown took the bare service's grace period, not more.
    let total = stop_time(&text, "every service");
    assert!((3000..6000).contains(&total), "{text}");
    assert!(out.status.success(), "{text}");
}

#[test]
fn a_module_in_etc_modules_is_loaded_and_the_disk_and_nic_work_on_ahci_and_e1000() {
    let dir = tempfile::tempdir().unwrap();
    let out = build_and_boot_with(
        dir.path(),
        "modules",
        &["tests/data/modules.yml", "examples/poweroff.yml"],
        &["--disk", "size=64M,bus=ahci", "--nic-model", "e1000"],
    );
    let text = console(&out);
    position(&text, "slipway-test: module dummy loaded");
    position(&text, "slipway-test: disk sda present");
    position(&text, "slipway-test: eth0 driver e1000");
    assert!(out.status.success(), "{text}");
}

#[test]
fn the_default_module_set_holds_drivers_for_common_machines_and_nothing_unasked() {
    let (names, dep) = shipped_modules(&kernel_manifest(""));
    for needed in [
        "virtio_net",
        "virtio_blk",
        "virtio_scsi",
        "ahci",
        "nvme",
        "sr_mod",
        "e1000",
        "e1000e",
        "vmxnet3",
        "vmw_pvscsi",
        "hv_netvsc",
        "xen_blkfront",
        "ena",
        "gve",
        "ext4",
        "vfat",
        "nls_cp437",
        "squashfs",
        "isofs",
        "overlay",
    ] {
        assert!(
            names.iter().any(|n| n == needed),
            "{needed} not shipped: {names:?}"
        );
    }
    assert!(!names.iter().any(|n| n == "dummy"), "dummy shipped unasked");
    assert!(names.len() < 300, "{} modules shipped", names.len());
    // The index lists exactly what is shipped, dependencies included.
    let mut listed: Vec<String> = dep
        .lines()
        .flat_map(|l| l.split([':', ' ']))
        .filter(|p| p.ends_with(".ko"))
        .map(|p| {
            p.rsplit('/')
                .next()
                .unwrap()
                .trim_end_matches(".ko")
                .replace('-', "_")
        })
        .collect();
    listed.sort();
    listed.dedup();
    assert_eq!(listed, names);

    // A list adds to the default set, and so does /etc/modules-load.d; tun and dummy need
    // nothing else.
    let (added, _) = shipped_modules(&kernel_manifest(
        "  x-slipway:\n    modules: [tun]\n\
         files:\n  - path: etc/modules-load.d/test.conf\n    contents: \"dummy\\n\"\n",
    ));
    let mut expected = names.clone();
    expected.extend(["dummy".to_string(), "tun".to_string()]);
    expected.sort();
    assert_eq!(added, expected);
    let (all, _) = shipped_modules(&kernel_manifest("  x-slipway:\n    modules: all\n"));
    assert!(all.len() > 3000, "`all` ships {} modules", all.len());
    let (default, _) = shipped_modules(&kernel_manifest("  x-slipway:\n    modules: default\n"));
    assert_eq!(default, names);
}

#[test]
fn a_named_module_the_kernel_lacks_fails_the_build_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            kernel_manifest("  x-slipway:\n    modules: [e1000, no_such_driver]\n"),
            "kernel.x-slipway.modules[1]: kernel 6.",
        ),
        (
            kernel_manifest(
                "files:\n  - path: etc/modules\n    contents: \"tun\\nno_such_driver\\n\"\n",
            ),
            "files[0]: /etc/modules line 2: kernel 6.",
        ),
    ];
    for (i, (manifest, expected)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("m{i}.yml"));
        std::fs::write(&path, manifest).unwrap();
        let out = slipway(cache())
            .args(["build", "--name", "m", "--dir"])
            .arg(dir.path().join("out"))
            .arg(&path)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{manifest}");
        assert!(
            err.contains(expected) && err.contains("has no module `no_such_driver`"),
            "{err}"
        );
    }
}
