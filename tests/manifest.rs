//! The manifest stage as a user meets it: every field accepted, every rule enforced, and every
//! rejection naming the file, line, column and field path.

#![allow(clippy::result_large_err)] // ManifestError carries the source text; see src/manifest/mod.rs

use std::path::Path;

use proptest::prelude::*;
use slipway::manifest::{self, IdRef, Manifest, Source};

fn no_pkg(dir: &Path) -> Result<String, String> {
    Err(format!("unexpected @pkg: {}", dir.display()))
}

fn load(docs: &[(&str, &str)]) -> Result<manifest::Merged, manifest::ManifestError> {
    let sources = docs
        .iter()
        .map(|(name, text)| Source::new(*name, *text, Some(".".into())))
        .collect();
    manifest::load(sources, &no_pkg)
}

fn full() -> String {
    std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/manifests/full.yml"
    ))
    .unwrap()
}

#[test]
fn every_field_of_the_schema_is_accepted() {
    let merged = load(&[("full.yml", &full())]).expect("full.yml is valid");
    let m = &merged.manifest;
    let k = m.kernel.as_ref().unwrap();
    assert_eq!(k.cmdline.as_deref(), Some("console=ttyS0 console=tty0"));
    assert_eq!(k.ucode.as_deref(), Some("intel-ucode.cpio"));
    assert_eq!(
        k.slipway.as_ref().unwrap().modules,
        Some(manifest::ModuleSelection::List(vec![
            "dummy".into(),
            "tun".into()
        ]))
    );
    assert_eq!(m.init.len(), 2);
    assert_eq!(
        m.onboot[1].devices.as_ref().unwrap()[1].mode.as_deref(),
        Some("0666")
    );
    let getty = &m.services[0];
    assert_eq!(
        getty.capabilities_add,
        Some(vec!["CAP_SYS_ADMIN".to_string()])
    );
    assert_eq!(getty.uid, Some(IdRef::Name("shutdown".into())));
    let res = getty.resources.as_ref().unwrap();
    assert_eq!(res.memory.as_ref().unwrap().limit, Some(134_217_728));
    assert_eq!(
        res.block_io
            .as_ref()
            .unwrap()
            .throttle_write_iops_device
            .as_ref()
            .unwrap()[0]
            .rate,
        100
    );
    assert_eq!(
        getty
            .runtime
            .as_ref()
            .unwrap()
            .bind_ns
            .as_ref()
            .unwrap()
            .net
            .as_deref(),
        Some("/run/netns/getty")
    );
    let ext = m.services[1].slipway.as_ref().unwrap();
    assert_eq!(ext.healthcheck.as_ref().unwrap().retries, Some(3));
    assert_eq!(ext.stop_grace_period.as_deref(), Some("500ms"));
    assert_eq!(ext.init, Some(false));
    assert_eq!(m.files.len(), 5);
    assert_eq!(m.volumes[2].format.as_deref(), Some("oci"));
    assert_eq!(m.trust.as_ref().unwrap().org, vec!["linuxkit"]);
}

#[test]
fn printing_and_reparsing_gives_the_same_manifest() {
    let merged = load(&[("full.yml", &full())]).unwrap();
    let yaml = manifest::to_yaml(&merged.manifest);
    let again = load(&[("printed.yml", &yaml)]).expect("printed manifest parses");
    assert_eq!(again.manifest, merged.manifest);
}

#[test]
fn container_names_become_ids_from_100_in_onboot_onshutdown_services_order() {
    let merged = load(&[("full.yml", &full())]).unwrap();
    let ids = manifest::id_map(&merged.manifest);
    assert_eq!(ids["sysctl"], 100);
    assert_eq!(ids["format"], 101);
    assert_eq!(ids["shutdown"], 102);
    assert_eq!(ids["getty"], 103);
    assert_eq!(ids["web"], 104);
    let getty = &merged.manifest.services[0];
    assert_eq!(
        manifest::resolve_id(&ids, getty.uid.as_ref().unwrap()),
        Some(102)
    );
    let gids: Vec<_> = getty
        .additional_gids
        .as_ref()
        .unwrap()
        .iter()
        .map(|g| manifest::resolve_id(&ids, g).unwrap())
        .collect();
    assert_eq!(gids, [100, 100, 0]);
}

#[test]
fn image_references_expand_docker_hub_short_names() {
    use std::str::FromStr;
    let merged = load(&[("full.yml", &full())]).unwrap();
    let r = oci_client::Reference::from_str(&merged.manifest.onshutdown[0].image).unwrap();
    assert_eq!(r.whole(), "docker.io/library/busybox:1.36");
    let pinned = oci_client::Reference::from_str(&merged.manifest.init[1]).unwrap();
    assert!(pinned.digest().unwrap().starts_with("sha256:4b1f39d8"));
}

// ---- merging ----

const A: &str = "kernel:\n  image: k:1\n  cmdline: console=ttyS0\n  ucode: u.cpio\ninit: [i:1]\nservices:\n  - name: a\n    image: a:1\n";
const B: &str =
    "kernel:\n  image: k:2\n  ucode: \"\"\ninit: [i:2]\nservices:\n  - name: b\n    image: b:1\n";

#[test]
fn later_files_win_for_kernel_fields_and_lists_concatenate() {
    let m = load(&[("a.yml", A), ("b.yml", B)]).unwrap().manifest;
    let k = m.kernel.unwrap();
    assert_eq!(k.image.as_deref(), Some("k:2"));
    assert_eq!(
        k.cmdline.as_deref(),
        Some("console=ttyS0"),
        "an absent field keeps the earlier value"
    );
    assert_eq!(
        k.ucode.as_deref(),
        Some(""),
        "a present empty ucode clears it, as in LinuxKit"
    );
    assert_eq!(m.init, ["i:1", "i:2"]);
    assert_eq!(
        m.services
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>(),
        ["a", "b"]
    );
}

#[test]
fn a_later_kernel_module_selection_replaces_an_earlier_one() {
    let a = "kernel:\n  image: k:1\n  x-slipway:\n    modules: [dummy]\n";
    let b = "kernel:\n  x-slipway:\n    modules: all\n";
    let k = load(&[("a.yml", a), ("b.yml", b)])
        .unwrap()
        .manifest
        .kernel
        .unwrap();
    assert_eq!(k.image.as_deref(), Some("k:1"));
    assert_eq!(
        k.slipway.unwrap().modules,
        Some(manifest::ModuleSelection::Set("all".into()))
    );
}

#[test]
fn a_service_name_repeated_in_a_later_file_is_reported_there() {
    let b = "services:\n  - name: c\n    image: c:1\n  - name: a\n    image: a:2\n";
    let err = load(&[("a.yml", A), ("b.yml", b)]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "b.yml:4:11: services[1].name: duplicate service name `a`"
    );
}

#[test]
fn names_from_another_file_resolve() {
    let b = "files:\n  - path: etc/x\n    contents: x\n    uid: a\n";
    load(&[("a.yml", A), ("b.yml", b)]).expect("uid `a` names a service of a.yml");
}

#[test]
fn pkg_templates_name_the_package_image_relative_to_the_manifest() {
    let text =
        "init:\n  - \"@pkg:../pkg/init\"\nservices:\n  - name: s\n    image: \"@pkg:../pkg/s\"\n";
    let source = Source::new("dir/m.yml", text, Some("dir".into()));
    let tagger = |p: &Path| {
        Ok(format!(
            "slipway/{}:abc",
            p.display().to_string().replace("../", "").replace('/', "-")
        ))
    };
    let m = manifest::load(vec![source], &tagger).unwrap().manifest;
    assert_eq!(m.init[0], "slipway/dir-pkg-init:abc");
    assert_eq!(m.services[0].image, "slipway/dir-pkg-s:abc");

    let failing = |_: &Path| Err("no build.yml".to_string());
    let source = Source::new("m.yml", text, Some(".".into()));
    let err = manifest::load(vec![source], &failing).unwrap_err();
    assert_eq!(
        err.to_string(),
        "m.yml:2:5: init[0]: cannot resolve `@pkg:../pkg/init`: no build.yml"
    );
}

// ---- bad inputs: each names file:line:column and the field path ----

fn rejects(text: &str, expected: &str) {
    let err = load(&[("bad.yml", text)]).expect_err(expected);
    assert_eq!(err.to_string(), expected);
}

const SVC: &str = "services:\n  - name: s\n    image: busybox\n";

#[test]
fn bad_unknown_top_level_key() {
    rejects(
        "kernal:\n  image: k\n",
        "bad.yml:1:1: kernal: unknown field `kernal`, expected one of kernel, init, onboot, onshutdown, services, files, volumes, trust",
    );
}

#[test]
fn bad_unknown_container_key() {
    let err = load(&[("bad.yml", &format!("{SVC}    colour: red\n"))]).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("bad.yml:4:5: services[0].colour: unknown field `colour`"),
        "{err}"
    );
}

#[test]
fn bad_missing_image() {
    rejects(
        "onboot:\n  - name: s\n",
        "bad.yml:2:5: onboot[0]: required field `image` is missing",
    );
}

#[test]
fn bad_missing_name() {
    rejects(
        "onboot:\n  - image: busybox\n",
        "bad.yml:2:5: onboot[0]: required field `name` is missing",
    );
}

#[test]
fn bad_type_list_expected() {
    let err = load(&[("bad.yml", &format!("{SVC}    capabilities: 5\n"))]).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("bad.yml:4:19: services[0].capabilities: "),
        "{err}"
    );
}

#[test]
fn bad_type_bool_expected() {
    let err = load(&[("bad.yml", &format!("{SVC}    readonly: maybe\n"))]).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("bad.yml:4:15: services[0].readonly: "),
        "{err}"
    );
}

#[test]
fn bad_yaml_syntax() {
    let err = load(&[("bad.yml", "services:\n  - name: s\n    image: \"x\n")]).unwrap_err();
    assert_eq!(err.to_string(), "bad.yml:3:12: services[0]: unclosed quote");
}

#[test]
fn bad_unknown_capability() {
    rejects(
        &format!("{SVC}    capabilities:\n      - CAP_CHOWN\n      - CAP_MAKE_COFFEE\n"),
        "bad.yml:6:9: services[0].capabilities[1]: unknown capability CAP_MAKE_COFFEE",
    );
}

#[test]
fn bad_unknown_added_capability() {
    rejects(
        &format!("{SVC}    capabilities.add: [CAP_FLY]\n"),
        "bad.yml:4:24: services[0].capabilities.add[0]: unknown capability CAP_FLY",
    );
}

#[test]
fn bad_duplicate_service() {
    rejects(
        &format!("{SVC}  - name: s\n    image: busybox\n"),
        "bad.yml:4:11: services[1].name: duplicate service name `s`",
    );
}

#[test]
fn bad_volume_name() {
    rejects(
        "volumes:\n  - name: My_Volume\n",
        "bad.yml:2:11: volumes[0].name: invalid volume name `My_Volume`: use only a-z, 0-9, `_` and `-`",
    );
}

#[test]
fn bad_duplicate_volume() {
    rejects(
        "volumes:\n  - name: v\n  - name: v\n",
        "bad.yml:3:11: volumes[1].name: duplicate volume name `v`",
    );
}

#[test]
fn bad_file_with_nothing() {
    rejects(
        "files:\n  - path: etc/x\n    mode: \"0644\"\n",
        "bad.yml:2:5: files[0]: contents of file (etc/x) not specified: give one of contents, source, metadata, directory or symlink",
    );
}

#[test]
fn bad_file_with_two_things() {
    rejects(
        "files:\n  - path: etc/x\n    contents: a\n    source: /etc/hostname\n",
        "bad.yml:4:13: files[0].source: file etc/x has both contents and source: give exactly one of contents, source, metadata, directory or symlink",
    );
}

#[test]
fn bad_file_mode() {
    rejects(
        "files:\n  - path: etc/x\n    contents: a\n    mode: \"0999\"\n",
        "bad.yml:4:11: files[0].mode: invalid mode `0999`: expected octal, e.g. \"0644\"",
    );
}

#[test]
fn bad_metadata_format() {
    rejects(
        "files:\n  - path: etc/x\n    metadata: toml\n",
        "bad.yml:3:15: files[0].metadata: unknown metadata format `toml`: expected yaml or json",
    );
}

#[test]
fn bad_image_reference() {
    rejects(
        "onboot:\n  - name: s\n    image: \"Busy Box:1\"\n",
        "bad.yml:3:12: onboot[0].image: invalid image reference `Busy Box:1`: invalid reference format",
    );
}

#[test]
fn bad_uid_name() {
    rejects(
        &format!("{SVC}    uid: nobody\n"),
        "bad.yml:4:10: services[0].uid: `nobody` is neither a number nor the name of a container",
    );
}

#[test]
fn bad_bind_format() {
    rejects(
        &format!("{SVC}    binds:\n      - /dev\n"),
        "bad.yml:5:9: services[0].binds[0]: invalid bind `/dev`: expected SOURCE:DESTINATION[:OPTIONS]",
    );
}

#[test]
fn bad_bind_to_undeclared_volume() {
    rejects(
        &format!("{SVC}    binds:\n      - cache:/cache\n"),
        "bad.yml:5:9: services[0].binds[0]: `cache` is not an absolute path, nor a volume declared in `volumes`",
    );
}

#[test]
fn bad_read_only_volume_bound_read_write() {
    rejects(
        &format!("volumes:\n  - name: v\n    readonly: true\n{SVC}    binds:\n      - v:/v\n"),
        "bad.yml:8:9: services[0].binds[0]: volume `v` is read-only, but is bound read-write: add the `ro` option",
    );
}

#[test]
fn bad_device_without_mode() {
    rejects(
        &format!(
            "{SVC}    devices:\n      - path: /dev/console\n        type: c\n        major: 5\n        minor: 1\n"
        ),
        "bad.yml:5:9: services[0].devices[0]: device /dev/console needs a `mode` (octal, e.g. \"0666\")",
    );
}

#[test]
fn bad_rlimit() {
    rejects(
        &format!("{SVC}    rlimits: [\"nofiles,1,2\"]\n"),
        "bad.yml:4:15: services[0].rlimits[0]: unknown rlimit `nofiles`: expected one of as, core, cpu, data, fsize, locks, memlock, msgqueue, nice, nofile, nproc, rss, rtprio, rttime, sigpending, stack",
    );
}

#[test]
fn bad_namespace_value() {
    rejects(
        &format!("{SVC}    pid: shared\n"),
        "bad.yml:4:10: services[0].pid: invalid pid namespace `shared`: expected host, new, none or a path to join",
    );
}

#[test]
fn bad_restart_policy() {
    rejects(
        &format!("{SVC}    x-slipway:\n      restart: sometimes\n"),
        "bad.yml:5:16: services[0].x-slipway.restart: invalid restart policy `sometimes`: expected no, always, on-failure or on-failure:N",
    );
}

#[test]
fn bad_dependency() {
    rejects(
        &format!("{SVC}    x-slipway:\n      dependsOn: [db]\n"),
        "bad.yml:5:19: services[0].x-slipway.dependsOn[0]: `db` is not a service of this manifest",
    );
}

#[test]
fn bad_stop_grace_period() {
    rejects(
        &format!("{SVC}    x-slipway:\n      stopGracePeriod: forever\n"),
        "bad.yml:5:24: services[0].x-slipway.stopGracePeriod: invalid duration \"forever\": expected number at 0 (write it like 1s or 500ms)",
    );
}

#[test]
fn stop_settings_apply_to_services_only() {
    rejects(
        "onboot:\n  - name: o\n    image: busybox\n    x-slipway:\n      stopGracePeriod: 1s\n",
        "bad.yml:5:24: onboot[0].x-slipway.stopGracePeriod: `stopGracePeriod` applies to services only",
    );
    rejects(
        "onboot:\n  - name: o\n    image: busybox\n    x-slipway:\n      init: false\n",
        "bad.yml:5:13: onboot[0].x-slipway.init: `init` applies to services only",
    );
}

#[test]
fn bad_init_flag() {
    rejects(
        &format!("{SVC}    x-slipway:\n      init: sometimes\n"),
        "bad.yml:5:13: services[0].x-slipway.init: invalid boolean",
    );
}

#[test]
fn bad_healthcheck_duration() {
    rejects(
        &format!(
            "{SVC}    x-slipway:\n      healthcheck:\n        test: [\"true\"]\n        interval: soon\n"
        ),
        "bad.yml:7:19: services[0].x-slipway.healthcheck.interval: invalid duration \"soon\": expected number at 0 (write it like 1s or 500ms)",
    );
}

#[test]
fn bad_kernel_key() {
    let err = load(&[("bad.yml", "kernel:\n  image: k\n  cmdlin: x\n")]).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("bad.yml:3:3: kernel.cmdlin: unknown field `cmdlin`"),
        "{err}"
    );
}

#[test]
fn bad_kernel_module_set() {
    rejects(
        "kernel:\n  image: k\n  x-slipway:\n    modules: some\n",
        "bad.yml:4:14: kernel.x-slipway.modules: unknown module set `some`: expected default, all or a list of module names",
    );
}

#[test]
fn bad_kernel_module_name() {
    rejects(
        "kernel:\n  image: k\n  x-slipway:\n    modules: [e1000, ../evil]\n",
        "bad.yml:4:22: kernel.x-slipway.modules[1]: invalid module name `../evil`: use the module's name, such as e1000e or nls_cp437",
    );
}

#[test]
fn bad_kernel_extension_key() {
    let err = load(&[(
        "bad.yml",
        "kernel:\n  image: k\n  x-slipway:\n    module: [tun]\n",
    )])
    .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("bad.yml:4:5: kernel.x-slipway.module: unknown field `module`"),
        "{err}"
    );
}

#[test]
fn bad_resources_key() {
    let err = load(&[(
        "bad.yml",
        &format!("{SVC}    resources:\n      memory:\n        limt: 5\n"),
    )])
    .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("bad.yml:6:9: services[0].resources.memory.limt: unknown field `limt`"),
        "{err}"
    );
}

#[test]
fn bad_input_shows_the_offending_line() {
    let err = load(&[("bad.yml", &format!("{SVC}    capabilities: [CAP_NOPE]\n"))]).unwrap_err();
    let mut out = String::new();
    miette::GraphicalReportHandler::new_themed(miette::GraphicalTheme::unicode_nocolor())
        .render_report(&mut out, &err)
        .unwrap();
    assert!(out.contains("    capabilities: [CAP_NOPE]"), "{out}");
    assert!(out.contains("bad.yml:4:20"), "{out}");
}

// ---- property: merge, print, re-parse ----

fn arb_image(prefix: &'static str) -> impl Strategy<Value = manifest::Image> {
    (
        "[a-z]{1,8}",
        prop::option::of(prop::collection::vec(
            "CAP_(CHOWN|KILL|NET_ADMIN|SYS_ADMIN)",
            0..3,
        )),
        prop::option::of(prop::collection::vec("[A-Z]{1,5}=[a-z0-9 :]{0,8}", 0..3)),
        prop::option::of(any::<bool>()),
        prop::option::of(prop::collection::vec("/[a-z]{1,6}:/[a-z]{1,6}(:ro)?", 0..2)),
        prop::option::of("(host|new)"),
        prop::option::of(-1000i32..1000),
    )
        .prop_map(
            move |(name, caps, env, ro, binds, pid, oom)| manifest::Image {
                name: format!("{prefix}{name}"),
                image: format!("docker.io/library/{name}:1"),
                capabilities: caps,
                env,
                readonly: ro,
                binds,
                pid,
                oom_score_adj: oom,
                ..Default::default()
            },
        )
}

fn arb_manifest(prefix: &'static str) -> impl Strategy<Value = Manifest> {
    (
        prop::option::of((
            "[a-z]{1,6}:[0-9]",
            prop::option::of("console=ttyS0( quiet)?"),
        )),
        prop::collection::vec("[a-z]{1,6}/[a-z]{1,6}:v[0-9]", 0..3),
        prop::collection::vec(arb_image(prefix), 0..3),
        prop::collection::vec(arb_image(prefix), 0..3),
        prop::collection::vec(("[a-z]{1,6}", "[ -~]{0,20}"), 0..3),
    )
        .prop_map(move |(kernel, init, onboot, services, files)| {
            let mut services = services;
            for (i, s) in services.iter_mut().enumerate() {
                s.name = format!("{}{i}", s.name);
            }
            Manifest {
                kernel: kernel.map(|(image, cmdline)| manifest::Kernel {
                    image: Some(image),
                    cmdline,
                    ..Default::default()
                }),
                init,
                onboot,
                services,
                files: files
                    .into_iter()
                    .map(|(p, c)| manifest::File {
                        path: format!("etc/{p}"),
                        contents: Some(c),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn merging_then_printing_then_reparsing_is_the_identity(a in arb_manifest("a"), b in arb_manifest("b")) {
        let ya = manifest::to_yaml(&a);
        let yb = manifest::to_yaml(&b);
        let merged = load(&[("a.yml", &ya), ("b.yml", &yb)]).expect("generated manifests are valid");
        let printed = manifest::to_yaml(&merged.manifest);
        let again = load(&[("merged.yml", &printed)]).expect("printed merge parses");
        prop_assert_eq!(&again.manifest, &merged.manifest);
        prop_assert_eq!(merged.manifest.services.len(), a.services.len() + b.services.len());
    }
}

#[test]
fn timeout_applies_to_onboot_and_onshutdown_only_and_is_a_duration() {
    rejects(
        &format!("{SVC}    x-slipway:\n      timeout: 1s\n"),
        "bad.yml:5:16: services[0].x-slipway.timeout: `timeout` applies to onboot and onshutdown containers only",
    );
    rejects(
        "onboot:\n  - name: o\n    image: busybox\n    x-slipway:\n      timeout: soon\n",
        "bad.yml:5:16: onboot[0].x-slipway.timeout: invalid duration \"soon\": expected number at 0 (write it like 1s or 500ms)",
    );
}
