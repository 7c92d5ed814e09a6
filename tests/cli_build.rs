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

/// A workspace of small packages built from local files only (no network): a pretend kernel with
/// one module, an init, and an "app" image holding 1 MiB of incompressible data, so that a copy
/// more or less of it shows in the initrd's size.
struct Workspace {
    dir: tempfile::TempDir,
}

/// xorshift bytes: gzip cannot shrink them, so sizes in the initrd follow sizes in the tree.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

impl Workspace {
    fn new() -> Workspace {
        let dir = tempfile::tempdir().unwrap();
        let package = |name: &str, files: &[(&str, Vec<u8>)]| {
            let root = dir.path().join(name);
            for (path, data) in files {
                let path = root.join("rootfs").join(path);
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(path, data).unwrap();
            }
            std::fs::write(
                root.join("build.yml"),
                format!("image: {name}\norg: test\ncontents:\n  - files: rootfs\n    to: /\n"),
            )
            .unwrap();
        };
        // One module of the default set, with its index, so that the image ships it.
        let mut modules = tar::Builder::new(Vec::new());
        let dir_of_modules = "lib/modules/6.1.0-test";
        let module_path = "kernel/drivers/block/virtio_blk.ko";
        let dep = format!("{module_path}:\n");
        for (path, data) in [
            (module_path, noise(20_000, 7)),
            ("modules.dep", dep.into_bytes()),
        ] {
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            header.set_uid(0);
            header.set_gid(0);
            header.set_mtime(0);
            modules
                .append_data(&mut header, format!("{dir_of_modules}/{path}"), &data[..])
                .unwrap();
        }
        let modules = modules.into_inner().unwrap();
        package(
            "kernel",
            &[("kernel", noise(300_000, 1)), ("kernel.tar", modules)],
        );
        package("init", &[("init", noise(50_000, 2))]);
        package("app", &[("bin/app", noise(1 << 20, 3))]);
        Workspace { dir }
    }

    /// A manifest with `services` containers of the app image.
    fn manifest(&self, name: &str, services: usize) -> std::path::PathBuf {
        let mut text = String::from(
            "kernel:\n  image: \"@pkg:kernel\"\n  cmdline: console=ttyS0\ninit:\n  - \"@pkg:init\"\nservices:\n",
        );
        for i in 0..services {
            text.push_str(&format!(
                "  - name: s{i}\n    image: \"@pkg:app\"\n    command: [/bin/app]\n"
            ));
        }
        let path = self.dir.path().join(format!("{name}.yml"));
        std::fs::write(&path, text).unwrap();
        path
    }

    fn build(&self, args: &[&str]) -> Command {
        let mut cmd = slipway();
        cmd.current_dir(self.dir.path())
            .env("SLIPWAY_CACHE", self.dir.path().join("store"))
            .arg("build")
            .args(args);
        cmd
    }
}

fn decompressed_initrd(path: &std::path::Path) -> Vec<u8> {
    let mut out = Vec::new();
    std::io::Read::read_to_end(
        &mut flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap()),
        &mut out,
    )
    .unwrap();
    out
}

#[test]
fn ten_services_of_one_image_cost_one_copy_of_it() {
    let ws = Workspace::new();
    let out = ws.dir.path().join("out");
    for (name, services) in [("one", 1), ("ten", 10)] {
        let manifest = ws.manifest(name, services);
        ws.build(&["--dir", out.to_str().unwrap()])
            .arg(&manifest)
            .assert()
            .success();
    }
    let size = |name: &str| {
        std::fs::metadata(out.join(format!("{name}-initrd.img")))
            .unwrap()
            .len()
    };
    let (one, ten) = (size("one"), size("ten"));
    // Nine more copies of 1 MiB would add 9 MiB; nine more bundles of links add a few KiB.
    assert!(one > 1 << 20, "the app's data is in the initrd: {one}");
    assert!(
        ten < one + 64 * 1024,
        "ten services: {ten} bytes, one service: {one} bytes"
    );

    // GNU cpio lists the ten names of the one file with a link count of 10.
    let listing = std::process::Command::new("cpio")
        .args(["-itv", "--quiet"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(&decompressed_initrd(&out.join("ten-initrd.img")))?;
            child.wait_with_output()
        })
        .unwrap();
    let listing = String::from_utf8(listing.stdout).unwrap();
    let apps: Vec<&str> = listing
        .lines()
        .filter(|l| l.ends_with("/bin/app"))
        .collect();
    assert_eq!(apps.len(), 10, "{listing}");
    for line in apps {
        assert!(line.starts_with("-rw-r--r--  10 "), "{line}");
    }
}

#[test]
fn tar_output_links_shared_files_to_their_first_path() {
    let ws = Workspace::new();
    let manifest = ws.manifest("three", 3);
    let tar_path = ws.dir.path().join("three.tar");
    ws.build(&["-f", "tar", "-o", tar_path.to_str().unwrap()])
        .arg(&manifest)
        .assert()
        .success();
    let mut links = Vec::new();
    let mut archive = tar::Archive::new(std::fs::File::open(&tar_path).unwrap());
    for entry in archive.entries().unwrap() {
        let entry = entry.unwrap();
        let path = entry.path().unwrap().to_string_lossy().into_owned();
        if path.ends_with("bin/app") {
            let link = entry.link_name().unwrap().map(|l| l.display().to_string());
            links.push((path, entry.header().entry_type(), link));
        }
    }
    let first = "containers/services/s0/lower/bin/app".to_string();
    assert_eq!(
        links,
        [
            (first.clone(), tar::EntryType::Regular, None),
            (
                "containers/services/s1/lower/bin/app".into(),
                tar::EntryType::Link,
                Some(first.clone())
            ),
            (
                "containers/services/s2/lower/bin/app".into(),
                tar::EntryType::Link,
                Some(first)
            ),
        ]
    );
    // GNU tar extracts them as one inode.
    let root = ws.dir.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let status = std::process::Command::new("tar")
        .arg("-xf")
        .arg(&tar_path)
        .arg("-C")
        .arg(&root)
        .status()
        .unwrap();
    assert!(status.success());
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(root.join("containers/services/s2/lower/bin/app")).unwrap();
    assert_eq!((meta.nlink(), meta.len()), (3, 1 << 20));
}

#[test]
fn two_builds_with_shared_files_are_byte_identical_in_every_format() {
    let ws = Workspace::new();
    let manifest = ws.manifest("repro", 4);
    let outs = [ws.dir.path().join("a"), ws.dir.path().join("b")];
    for out in &outs {
        ws.build(&[
            "-f",
            "kernel+initrd,tar-kernel-initrd,tar",
            "--dir",
            out.to_str().unwrap(),
        ])
        .arg(&manifest)
        .assert()
        .success();
    }
    for name in [
        "repro-kernel",
        "repro-initrd.img",
        "repro-cmdline",
        "repro-initrd.tar",
        "repro.tar",
    ] {
        let a = std::fs::read(outs[0].join(name)).unwrap();
        let b = std::fs::read(outs[1].join(name)).unwrap();
        assert!(!a.is_empty() && a == b, "{name} differs between two builds");
    }
}

#[test]
fn the_size_report_lists_every_part_with_shared_content_counted_once() {
    let ws = Workspace::new();
    let manifest = ws.manifest("report", 3);
    let out = ws.dir.path().join("out");
    let output = ws
        .build(&["--json", "--dir", out.to_str().unwrap()])
        .arg(&manifest)
        .assert()
        .success()
        .get_output()
        .clone();
    let table = String::from_utf8(output.stderr).unwrap();
    let row = |start: &str| {
        table
            .lines()
            .find(|l| l.starts_with(start))
            .unwrap_or_else(|| panic!("no {start} row in:\n{table}"))
            .to_string()
    };
    assert!(row("kernel").contains("test/kernel:"), "{table}");
    // The module (20,000 bytes) and the indexes rewritten for it.
    assert!(row("modules").contains("19.6 KiB"), "{table}");
    assert!(row("init").contains("test/init:"), "{table}");
    assert!(row("services/s0").contains("1.0 MiB"), "{table}");
    // s0 holds the app's file first; s1 and s2 link to it (their config.json is their own).
    assert!(row("services/s0").ends_with("MiB"), "{table}");
    for s in ["services/s1", "services/s2"] {
        assert!(row(s).ends_with("1.0 MiB  1.0 MiB"), "{table}");
    }
    assert!(row("root").contains("saved 2.0 MiB"), "{table}");
    assert!(row(&out.join("report-initrd.img").display().to_string()).contains("kernel+initrd"));

    let doc: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let size = &doc["size"];
    let parts = size["parts"].as_array().unwrap();
    let kinds: Vec<&str> = parts.iter().map(|p| p["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "kernel", "modules", "init", "service", "service", "service", "other"
        ]
    );
    let s1 = &parts[4];
    assert_eq!(s1["name"], "s1");
    assert!(
        s1["image"].as_str().unwrap().contains("test/app:")
            && s1["image"].as_str().unwrap().contains("@sha256:")
    );
    let (bytes, shared) = (
        s1["bytes"].as_u64().unwrap(),
        s1["shared"].as_u64().unwrap(),
    );
    assert!(shared >= 1 << 20 && bytes - shared < 4096, "{s1}");
    assert_eq!(parts[3]["shared"], 0);
    assert_eq!(parts[0]["bytes"], 300_000 + "console=ttyS0".len() as u64);
    // The module and its modules.dep line.
    assert_eq!(
        parts[1]["bytes"],
        20_000 + "kernel/drivers/block/virtio_blk.ko:\n".len() as u64
    );
    let counted: u64 = parts[1..]
        .iter()
        .map(|p| p["bytes"].as_u64().unwrap() - p["shared"].as_u64().unwrap())
        .sum();
    assert_eq!(size["root_bytes"].as_u64().unwrap(), counted);
    let initrd = size["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["path"].as_str().unwrap().ends_with("report-initrd.img"))
        .unwrap();
    assert_eq!(initrd["format"], "kernel+initrd");
    assert_eq!(initrd["budgeted"], true);
    assert_eq!(
        initrd["bytes"].as_u64().unwrap(),
        std::fs::metadata(out.join("report-initrd.img"))
            .unwrap()
            .len()
    );
    assert_eq!(size["max_size"], serde_json::Value::Null);
}

#[test]
fn max_size_fails_an_image_over_budget_with_the_report_and_writes_nothing() {
    let ws = Workspace::new();
    let manifest = ws.manifest("budget", 2);
    let out = ws.dir.path().join("out");
    let failed = ws
        .build(&["--max-size", "1MiB", "--dir", out.to_str().unwrap()])
        .arg(&manifest)
        .assert()
        .failure()
        .get_output()
        .clone();
    let stderr = String::from_utf8(failed.stderr).unwrap();
    assert!(
        stderr.contains("services/s1"),
        "the report is printed:\n{stderr}"
    );
    assert!(
        stderr.contains("over 1.0 MiB")
            && stderr.contains("over the --max-size budget of 1048576 bytes (1.0 MiB)")
            && stderr.contains("budget-initrd.img is "),
        "{stderr}"
    );
    let left: Vec<_> = std::fs::read_dir(&out).unwrap().collect();
    assert!(left.is_empty(), "outputs left behind: {left:?}");

    // The same image within budget (SI units: 5M is 5,000,000 bytes).
    ws.build(&["--max-size", "5M", "--dir", out.to_str().unwrap()])
        .arg(&manifest)
        .assert()
        .success()
        .stderr(predicate::str::contains("within 4.8 MiB"));
    assert!(out.join("budget-initrd.img").exists());

    ws.build(&["--max-size", "lots"])
        .arg(&manifest)
        .assert()
        .failure()
        .stderr(predicate::str::contains("--max-size"));
}

#[test]
fn the_docker_format_streams_to_standard_output_without_the_kernel() {
    let ws = Workspace::new();
    let manifest = ws.manifest("two", 2);
    let out = ws
        .build(&["-f", "docker", "-o", "-"])
        .arg(&manifest)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut paths = Vec::new();
    let mut archive = tar::Archive::new(&out.stdout[..]);
    for entry in archive.entries().unwrap() {
        paths.push(
            entry
                .unwrap()
                .path()
                .unwrap()
                .to_string_lossy()
                .into_owned(),
        );
    }
    assert!(
        paths
            .iter()
            .any(|p| p.ends_with("services/s0/lower/bin/app")),
        "{paths:?}"
    );
    assert!(!paths.iter().any(|p| p.starts_with("boot")), "{paths:?}");
    // -o takes one streamable format.
    ws.build(&["-f", "docker,tar", "-o", "-"])
        .arg(&manifest)
        .assert()
        .failure()
        .stderr(predicates::str::contains(
            "use it with `-f tar` or `-f docker` alone",
        ));
}
