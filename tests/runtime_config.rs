//! The generated OCI runtime config of containers, field by field, against LinuxKit's defaults,
//! image-label defaults and manifest overrides.

use std::collections::BTreeMap;

use serde_json::{Value, json};
use slipway::assemble::runtime_config::runtime_config;
use slipway::manifest::{Image, label};

fn image(yaml: &str) -> Image {
    serde_saphyr::from_str(yaml).unwrap()
}

fn image_config(json: Value) -> oci_spec::image::Config {
    serde_json::from_value(json).unwrap()
}

fn mount<'a>(spec: &'a Value, dest: &str) -> &'a Value {
    spec["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["destination"] == dest)
        .unwrap_or_else(|| panic!("no mount at {dest}"))
}

fn ns_types(spec: &Value) -> Vec<&str> {
    spec["linux"]["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["type"].as_str().unwrap())
        .collect()
}

#[test]
fn a_bare_container_gets_linuxkit_defaults() {
    let cfg = image_config(
        json!({"Entrypoint": ["/bin/sh"], "Cmd": ["-c", "true"], "Env": ["A=1"], "WorkingDir": "/work"}),
    );
    let spec = runtime_config(&image("name: a\nimage: x\n"), Some(&cfg), &BTreeMap::new());
    assert_eq!(spec["ociVersion"], "1.0.2");
    assert_eq!(
        spec["process"]["args"],
        json!(["/bin/sh", "-c", "true"]),
        "entrypoint + cmd"
    );
    assert_eq!(spec["process"]["env"][1], "A=1");
    assert!(
        spec["process"]["env"][0]
            .as_str()
            .unwrap()
            .starts_with("PATH="),
        "a PATH is always there"
    );
    assert_eq!(spec["process"]["cwd"], "/work");
    assert_eq!(spec["process"]["terminal"], false);
    assert_eq!(spec["process"]["user"], json!({"uid": 0, "gid": 0}));
    assert_eq!(spec["process"]["capabilities"]["effective"], json!([]));
    assert_eq!(spec["process"]["noNewPrivileges"], false);
    assert_eq!(spec["root"], json!({"path": "rootfs", "readonly": false}));
    assert_eq!(
        ns_types(&spec),
        ["mount", "pid"],
        "new mount and pid namespaces; host net, ipc, uts"
    );
    assert_eq!(
        mount(&spec, "/proc")["options"],
        json!(["nosuid", "nodev", "noexec", "relatime"])
    );
    assert_eq!(mount(&spec, "/dev")["type"], "tmpfs");
    assert_eq!(
        mount(&spec, "/dev")["options"],
        json!(["nosuid", "strictatime", "mode=755", "size=65536k"])
    );
    assert_eq!(mount(&spec, "/dev/pts")["type"], "devpts");
    assert_eq!(
        mount(&spec, "/sys")["options"],
        json!(["nosuid", "noexec", "nodev"])
    );
    assert_eq!(
        mount(&spec, "/sys/fs/cgroup")["options"],
        json!(["nosuid", "noexec", "nodev", "relatime", "ro"])
    );
    let dests: Vec<_> = spec["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["destination"].as_str().unwrap())
        .collect();
    let mut sorted = dests.clone();
    sorted.sort();
    assert_eq!(dests, sorted, "mounts are sorted by destination");
    serde_json::from_value::<oci_spec::runtime::Spec>(spec).expect("a valid OCI runtime spec");
}

#[test]
fn manifest_fields_override_image_config_and_defaults() {
    let cfg = image_config(json!({"Entrypoint": ["/bin/sh"], "Env": ["A=1"]}));
    let ids = BTreeMap::from([("dhcpcd".to_string(), 100), ("getty".to_string(), 101)]);
    let c = image(
        "name: getty\nimage: x\ncommand: [/sbin/getty, ttyS0]\nenv: [PATH=/bin, B=2]\ncwd: /root\nreadonly: true\n\
         capabilities: [CAP_SYS_ADMIN, net_admin]\nambient: [CAP_NET_RAW]\nuid: dhcpcd\ngid: getty\nadditionalGids: [5, root]\n\
         net: new\npid: host\nipc: new\nuts: /run/ns/uts\nhostname: box\nnoNewPrivileges: true\noomScoreAdj: -100\n\
         binds: [/dev:/dev, data:/data:ro]\ntmpfs: [/run:size=1m]\nrlimits: [\"nofile,1024,unlimited\"]\n\
         sysctl: {net.ipv4.ip_forward: \"1\"}\nmaskedPaths: [/proc/kcore]\nreadonlyPaths: [/proc/sys]\n\
         devices:\n  - {path: /dev/console, type: c, major: 5, minor: 1, mode: \"0620\"}\n  - {path: all, type: b}\n\
         resources: {memory: {limit: 1048576}}\nrootfsPropagation: shared\ncgroupsPath: /svc/getty\n\
         annotations: {a: b}\n",
    );
    let spec = runtime_config(&c, Some(&cfg), &ids);
    let p = &spec["process"];
    assert_eq!(p["args"], json!(["/sbin/getty", "ttyS0"]));
    assert_eq!(p["env"], json!(["PATH=/bin", "B=2"]));
    assert_eq!(p["cwd"], "/root");
    assert_eq!(
        p["user"],
        json!({"uid": 100, "gid": 101, "additionalGids": [5, 0]})
    );
    assert_eq!(
        p["capabilities"]["effective"],
        json!(["CAP_NET_ADMIN", "CAP_SYS_ADMIN"])
    );
    assert_eq!(
        p["capabilities"]["bounding"],
        json!(["CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_SYS_ADMIN"])
    );
    assert_eq!(p["capabilities"]["ambient"], json!(["CAP_NET_RAW"]));
    assert_eq!(
        p["rlimits"],
        json!([{"type": "RLIMIT_NOFILE", "soft": 1024, "hard": u64::MAX}])
    );
    assert_eq!(p["noNewPrivileges"], true);
    assert_eq!(p["oomScoreAdj"], -100);
    assert_eq!(spec["root"]["readonly"], true);
    assert_eq!(spec["hostname"], "box");
    assert_eq!(ns_types(&spec), ["mount", "network", "ipc", "uts"]);
    assert_eq!(spec["linux"]["namespaces"][3]["path"], "/run/ns/uts");
    assert_eq!(
        mount(&spec, "/dev")["type"],
        "tmpfs",
        "a bind of /dev keeps the container's own /dev for youki's nodes"
    );
    assert_eq!(
        spec["hooks"]["createContainer"][0]["args"],
        json!(["slipway-dev-bind", "/dev", "rw", "rbind", "rshared"]),
        "and binds the host's /dev over it from a hook"
    );
    assert_eq!(
        mount(&spec, "/data")["source"],
        "/containers/volumes/data/merged"
    );
    assert_eq!(mount(&spec, "/data")["options"], json!(["ro", "rbind"]));
    assert_eq!(mount(&spec, "/run")["options"], json!(["size=1m"]));
    assert_eq!(
        mount(&spec, "/sys")["options"],
        json!(["nosuid", "noexec", "nodev", "ro"]),
        "readonly makes /sys ro"
    );
    let linux = &spec["linux"];
    assert_eq!(linux["sysctl"]["net.ipv4.ip_forward"], "1");
    assert_eq!(linux["maskedPaths"], json!(["/proc/kcore"]));
    assert_eq!(linux["devices"][0]["fileMode"], 0o620);
    assert_eq!(linux["resources"]["memory"]["limit"], 1_048_576);
    assert_eq!(
        linux["resources"]["devices"][0],
        json!({"allow": true, "type": "c", "major": 5, "minor": 1, "access": "rwm"})
    );
    assert_eq!(
        linux["resources"]["devices"][1],
        json!({"allow": true, "type": "b", "access": "rwm"})
    );
    assert_eq!(linux["rootfsPropagation"], "shared");
    assert_eq!(linux["cgroupsPath"], "/svc/getty");
    assert_eq!(spec["annotations"]["a"], "b");
    serde_json::from_value::<oci_spec::runtime::Spec>(spec).expect("a valid OCI runtime spec");
}

#[test]
fn label_defaults_apply_unless_the_manifest_says_otherwise() {
    let l = label::parse_label(
        "x",
        r#"{"pid":"host","capabilities":["CAP_SYS_ADMIN"],"binds":["/dev:/dev"]}"#,
    )
    .unwrap();
    let c = label::apply_label(
        &image("name: a\nimage: x\ncapabilities.add: [CAP_KILL]\nbinds.add: [/var:/var]\n"),
        &l,
    );
    let spec = runtime_config(&c, None, &BTreeMap::new());
    assert_eq!(ns_types(&spec), ["mount"], "pid: host from the label");
    assert_eq!(
        spec["process"]["capabilities"]["effective"],
        json!(["CAP_KILL", "CAP_SYS_ADMIN"])
    );
    assert_eq!(
        spec["hooks"]["createContainer"][0]["args"][1], "/dev",
        "the label's /dev bind, through the hook"
    );
    assert_eq!(mount(&spec, "/var")["type"], "bind");
}

#[test]
fn mounts_infer_missing_types_and_destinations() {
    let c = image(
        "name: a\nimage: x\nmounts:\n  - {type: cgroup, options: [rw]}\n  - {source: mqueue}\n  - {destination: /dev}\n",
    );
    let spec = runtime_config(&c, None, &BTreeMap::new());
    assert_eq!(mount(&spec, "/sys/fs/cgroup")["options"], json!(["rw"]));
    assert_eq!(mount(&spec, "/dev/mqueue")["type"], "mqueue");
    assert_eq!(mount(&spec, "/dev")["type"], "tmpfs");
}

#[test]
fn x_slipway_travels_to_the_engine_as_annotations() {
    let c = image(
        "name: api\nimage: x\nannotations: {a: b}\nx-slipway:\n  restart: on-failure:3\n  dependsOn: [db, cache]\n\
         \x20 healthcheck:\n    test: [/bin/check, -q]\n    interval: 1s\n    retries: 2\n\
         \x20 stopGracePeriod: 1m30s\n  init: false\n",
    );
    let spec = runtime_config(&c, None, &BTreeMap::new());
    let a = &spec["annotations"];
    assert_eq!(a["a"], "b");
    assert_eq!(a["org.slipway.restart"], "on-failure:3");
    assert_eq!(a["org.slipway.dependsOn"], "db,cache");
    assert_eq!(a["org.slipway.stopGracePeriod"], "1m30s");
    assert_eq!(a["org.slipway.init"], "false");
    let onboot = image("name: setup\nimage: x\nx-slipway:\n  timeout: 2m\n");
    let spec = runtime_config(&onboot, None, &BTreeMap::new());
    assert_eq!(spec["annotations"]["org.slipway.timeout"], "2m");
    let hc: Value = serde_json::from_str(a["org.slipway.healthcheck"].as_str().unwrap()).unwrap();
    assert_eq!(
        hc,
        json!({"test": ["/bin/check", "-q"], "interval": "1s", "retries": 2})
    );
}

#[test]
fn a_relative_mount_destination_is_taken_relative_to_root() {
    let c = image(
        "name: a\nimage: x\nmounts:\n  - type: overlay\n    source: overlay\n    destination: writeable-host-etc\n    options: [rw, lowerdir=/etc]\n",
    );
    let spec = runtime_config(&c, None, &BTreeMap::new());
    assert_eq!(mount(&spec, "/writeable-host-etc")["type"], "overlay");
}

#[test]
fn binding_the_hosts_dev_keeps_a_tmpfs_dev_and_binds_it_from_a_hook() {
    let c = image("name: getty\nimage: x\nbinds: [\"/dev:/dev\", \"/run:/run\"]\n");
    let spec = runtime_config(&c, None, &BTreeMap::new());
    // youki fills the container's own /dev (its default nodes would collide with the host's)...
    assert_eq!(mount(&spec, "/dev")["type"], "tmpfs");
    assert_eq!(mount(&spec, "/run")["type"], "bind");
    // ...and the hook binds the host's /dev over it afterwards.
    assert_eq!(
        spec["hooks"]["createContainer"],
        json!([{"path": "/proc/self/exe", "args": ["slipway-dev-bind", "/dev", "rw", "rbind", "rshared"]}])
    );
    let plain = runtime_config(&image("name: a\nimage: x\n"), None, &BTreeMap::new());
    assert!(plain.get("hooks").is_none());
}
