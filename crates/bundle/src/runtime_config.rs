//! The OCI runtime `config.json` of a container, from its manifest entry (label defaults already
//! applied, see `manifest::label`), its image config and the uid/gid map.
//!
//! LinuxKit's defaults, so that LinuxKit packages behave the same: a new mount namespace always;
//! a new pid namespace unless `pid: host`; host network, ipc and uts unless asked otherwise;
//! `/proc`, `/dev`, `/dev/pts`, `/sys` and `/sys/fs/cgroup` mounted; binds `rw,rbind,rshared`.
//! Built as JSON directly (keys in a fixed order, arrays sorted where LinuxKit sorts them) because
//! the bytes are what an image contains and must be reproducible.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};

use crate::{self as manifest, IdRef, Image, Mount, capabilities};

/// The OCI runtime spec version written.
pub const OCI_VERSION: &str = "1.0.2";

const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Where a named volume is found at run time.
pub fn volume_path(name: &str) -> String {
    slipway_layout::volume(name)
}

/// Generates the runtime config. `image` is the image's own config (entrypoint, cmd, env, cwd).
pub fn runtime_config(
    c: &Image,
    image: Option<&oci_spec::image::Config>,
    ids: &BTreeMap<String, u32>,
) -> Value {
    let id = |r: &Option<IdRef>| {
        r.as_ref()
            .and_then(|r| manifest::resolve_id(ids, r))
            .unwrap_or(0)
    };
    let readonly = c.readonly.unwrap_or(false);

    let args: Vec<String> = match &c.command {
        Some(cmd) => cmd.clone(),
        None => image
            .map(|i| {
                i.entrypoint()
                    .iter()
                    .flatten()
                    .chain(i.cmd().iter().flatten())
                    .cloned()
                    .collect()
            })
            .unwrap_or_default(),
    };
    let mut env: Vec<String> = match &c.env {
        Some(env) => env.clone(),
        None => image.and_then(|i| i.env().clone()).unwrap_or_default(),
    };
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(0, DEFAULT_PATH.to_string());
    }
    let cwd = c
        .cwd
        .clone()
        .or_else(|| {
            image
                .and_then(|i| i.working_dir().clone())
                .filter(|w| !w.is_empty())
        })
        .unwrap_or_else(|| "/".to_string());

    let caps = capabilities::expand(c.capabilities.as_deref().unwrap_or(&[]));
    let ambient = capabilities::expand(c.ambient.as_deref().unwrap_or(&[]));
    let all: BTreeSet<&String> = caps.iter().chain(&ambient).collect();

    let mut user = json!({ "uid": id(&c.uid), "gid": id(&c.gid) });
    if let Some(gids) = &c.additional_gids {
        let gids: Vec<u32> = gids
            .iter()
            .filter_map(|g| manifest::resolve_id(ids, g))
            .collect();
        user["additionalGids"] = json!(gids);
    }

    let mut process = json!({
        "terminal": false,
        "user": user,
        "args": args,
        "env": env,
        "cwd": cwd,
        "capabilities": {
            "bounding": all,
            "effective": caps,
            "inheritable": all,
            "permitted": all,
            "ambient": ambient,
        },
        "rlimits": c.rlimits.iter().flatten().map(|r| rlimit(r)).collect::<Vec<_>>(),
        "noNewPrivileges": c.no_new_privileges.unwrap_or(false),
    });
    if let Some(adj) = c.oom_score_adj {
        process["oomScoreAdj"] = json!(adj);
    }

    let mut linux = json!({
        "namespaces": namespaces(c),
        "maskedPaths": c.masked_paths.clone().unwrap_or_default(),
        "readonlyPaths": c.readonly_paths.clone().unwrap_or_default(),
    });
    let mut resources = c
        .resources
        .as_ref()
        .map(|r| serde_json::to_value(r).expect("resources serialise"))
        .unwrap_or(json!({}));
    let (devices, rules) = devices(c);
    if !rules.is_empty() {
        let mut all_rules = resources
            .get("devices")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        all_rules.extend(rules);
        resources["devices"] = Value::Array(all_rules);
    }
    if resources.as_object().is_some_and(|o| !o.is_empty()) {
        linux["resources"] = resources;
    }
    if !devices.is_empty() {
        linux["devices"] = json!(devices);
    }
    if let Some(s) = &c.sysctl {
        linux["sysctl"] = json!(s);
    }
    if let Some(m) = &c.uid_mappings {
        linux["uidMappings"] = json!(m);
    }
    if let Some(m) = &c.gid_mappings {
        linux["gidMappings"] = json!(m);
    }
    if let Some(p) = &c.rootfs_propagation {
        linux["rootfsPropagation"] = json!(p);
    }
    if let Some(p) = &c.cgroups_path {
        linux["cgroupsPath"] = json!(p);
    }

    let mut spec = json!({
        "ociVersion": OCI_VERSION,
        "process": process,
        "root": { "path": "rootfs", "readonly": readonly },
    });
    if let Some(h) = &c.hostname {
        spec["hostname"] = json!(h);
    }
    let (mounts, host_dev) = mounts(c, readonly);
    spec["mounts"] = json!(mounts);
    if let Some(dev) = host_dev {
        spec["hooks"] = json!({ "createContainer": [dev_bind_hook(&dev)] });
    }
    spec["linux"] = linux;
    let annotations = annotations(c);
    if !annotations.is_empty() {
        spec["annotations"] = json!(annotations);
    }
    spec
}

/// Annotation keys through which the engine learns a service's `x-slipway` settings.
pub const RESTART_ANNOTATION: &str = "org.slipway.restart";
pub const DEPENDS_ON_ANNOTATION: &str = "org.slipway.dependsOn";
pub const HEALTHCHECK_ANNOTATION: &str = "org.slipway.healthcheck";
pub const STOP_GRACE_PERIOD_ANNOTATION: &str = "org.slipway.stopGracePeriod";
pub const INIT_ANNOTATION: &str = "org.slipway.init";
/// How long the init lets an onboot or onshutdown container run (humantime text).
pub const TIMEOUT_ANNOTATION: &str = "org.slipway.timeout";

/// The manifest's annotations plus `x-slipway`, which travels to the engine in the bundle (the
/// OCI spec's place for runtime-specific settings).
fn annotations(c: &Image) -> BTreeMap<String, String> {
    let mut out = c.annotations.clone().unwrap_or_default();
    if let Some(ext) = &c.slipway {
        if let Some(restart) = &ext.restart {
            out.insert(RESTART_ANNOTATION.into(), restart.clone());
        }
        if let Some(deps) = &ext.depends_on {
            out.insert(DEPENDS_ON_ANNOTATION.into(), deps.join(","));
        }
        if let Some(hc) = &ext.healthcheck {
            let json = serde_json::to_string(hc).expect("a health check serialises");
            out.insert(HEALTHCHECK_ANNOTATION.into(), json);
        }
        if let Some(grace) = &ext.stop_grace_period {
            out.insert(STOP_GRACE_PERIOD_ANNOTATION.into(), grace.clone());
        }
        if let Some(init) = ext.init {
            out.insert(INIT_ANNOTATION.into(), init.to_string());
        }
        if let Some(timeout) = &ext.timeout {
            out.insert(TIMEOUT_ANNOTATION.into(), timeout.clone());
        }
    }
    out
}

fn namespace_entry(kind: &str, value: Option<&str>, default_new: bool) -> Option<Value> {
    match value.unwrap_or("") {
        "host" | "root" => None,
        "" if !default_new => None,
        "" | "new" | "none" => Some(json!({ "type": kind })),
        path => Some(json!({ "type": kind, "path": path })),
    }
}

fn namespaces(c: &Image) -> Vec<Value> {
    let mut out = vec![json!({ "type": "mount" })];
    out.extend(namespace_entry("pid", c.pid.as_deref(), true));
    out.extend(namespace_entry("network", c.net.as_deref(), false));
    out.extend(namespace_entry("ipc", c.ipc.as_deref(), false));
    out.extend(namespace_entry("uts", c.uts.as_deref(), false));
    out.extend(namespace_entry("user", c.userns.as_deref(), false));
    out
}

fn mount(destination: &str, kind: &str, source: &str, options: &[&str]) -> Mount {
    Mount {
        destination: Some(destination.into()),
        kind: Some(kind.into()),
        source: Some(source.into()),
        options: Some(options.iter().map(|s| s.to_string()).collect()),
        ..Default::default()
    }
}

/// The name the multi-call binary (pkg/init) answers to as the hook that binds a host directory
/// on a container's /dev: see [`dev_bind_hook`].
pub const DEV_BIND_HOOK: &str = "slipway-dev-bind";

/// A bind mount on `/dev` (LinuxKit's getty, format and mount bind the host's /dev) cannot be an
/// ordinary mount of the spec: youki makes its default nodes (/dev/null, /dev/tty, the /dev/fd
/// links, ...) in the container's /dev after the mounts, and on the host's /dev they exist
/// already (EEXIST), and making them there would change the host's /dev. runc skips its /dev
/// setup when /dev is a bind; youki cannot be told to. So the container keeps its own tmpfs /dev
/// for youki to fill, and a createContainer hook (run in the container's mount namespace after
/// youki's /dev setup, before the root is entered) binds the host's directory over it. The hook
/// is the runtime's own binary (`/proc/self/exe` of the container's init process) under
/// [`DEV_BIND_HOOK`], given the source and the mount options.
fn dev_bind_hook(dev: &Mount) -> Value {
    let mut args = vec![
        DEV_BIND_HOOK.to_string(),
        dev.source.clone().unwrap_or_else(|| "/dev".into()),
    ];
    args.extend(dev.options.iter().flatten().cloned());
    json!({ "path": "/proc/self/exe", "args": args })
}

/// Default mounts, then the manifest's mounts, binds and tmpfs; later ones replace earlier ones at
/// the same destination. Sorted by destination so parents are mounted before children. A bind on
/// `/dev` is returned apart (see [`dev_bind_hook`]) and the default tmpfs stays in its place.
fn mounts(c: &Image, readonly: bool) -> (Vec<Value>, Option<Mount>) {
    let ro = |mut opts: Vec<&'static str>| {
        if readonly {
            opts.push("ro");
        }
        opts
    };
    let mut by_dest: BTreeMap<String, Mount> = BTreeMap::new();
    let mut put = |m: Mount| {
        if let Some(d) = m.destination.clone() {
            by_dest.insert(d, m);
        }
    };
    put(mount(
        "/proc",
        "proc",
        "proc",
        &["nosuid", "nodev", "noexec", "relatime"],
    ));
    let dev_tmpfs = mount(
        "/dev",
        "tmpfs",
        "tmpfs",
        &ro(vec!["nosuid", "strictatime", "mode=755", "size=65536k"]),
    );
    put(dev_tmpfs.clone());
    put(mount(
        "/dev/pts",
        "devpts",
        "devpts",
        &[
            "nosuid",
            "noexec",
            "newinstance",
            "ptmxmode=0666",
            "mode=0620",
        ],
    ));
    put(mount(
        "/sys",
        "sysfs",
        "sysfs",
        &ro(vec!["nosuid", "noexec", "nodev"]),
    ));
    put(mount(
        "/sys/fs/cgroup",
        "cgroup",
        "cgroup",
        &["nosuid", "noexec", "nodev", "relatime", "ro"],
    ));
    for m in c.mounts.iter().flatten() {
        put(infer_mount(m));
    }
    for b in c.binds.iter().flatten() {
        let mut parts = b.splitn(3, ':');
        let (src, dst, opts) = (
            parts.next().unwrap_or(""),
            parts.next().unwrap_or(""),
            parts.next(),
        );
        let source = if src.starts_with('/') {
            src.to_string()
        } else {
            volume_path(src)
        };
        let options: Vec<String> = match opts {
            None => vec!["rw".into(), "rbind".into(), "rshared".into()],
            Some(o) => o
                .split(',')
                .map(String::from)
                .chain(std::iter::once("rbind".into()))
                .collect(),
        };
        put(Mount {
            destination: Some(dst.into()),
            kind: Some("bind".into()),
            source: Some(source),
            options: Some(options),
            ..Default::default()
        });
    }
    for t in c.tmpfs.iter().flatten() {
        let (dst, opts) = t.split_once(':').unwrap_or((t, ""));
        let options: Vec<String> = opts
            .split(',')
            .filter(|o| !o.is_empty())
            .map(String::from)
            .collect();
        put(Mount {
            destination: Some(dst.into()),
            kind: Some("tmpfs".into()),
            source: Some("tmpfs".into()),
            options: Some(options),
            ..Default::default()
        });
    }
    let mut host_dev = None;
    if by_dest
        .get("/dev")
        .is_some_and(|m| m.kind.as_deref() == Some("bind"))
    {
        host_dev = by_dest.insert("/dev".into(), dev_tmpfs);
    }
    let mounts = by_dest
        .into_values()
        .map(|m| {
            let mut v = json!({
                "destination": m.destination,
                "type": m.kind,
                "source": m.source,
                "options": m.options.unwrap_or_default(),
            });
            if let Some(u) = m.uid_mappings {
                v["uidMappings"] = json!(u);
            }
            if let Some(g) = m.gid_mappings {
                v["gidMappings"] = json!(g);
            }
            v
        })
        .collect();
    (mounts, host_dev)
}

/// LinuxKit's inference: a missing type comes from the source (`proc`, `sysfs`, `devpts`,
/// `mqueue`, `cgroup`) or is `tmpfs` for `/dev`; a missing destination comes from the type; a
/// volume name as a bind source becomes the volume's path.
fn infer_mount(m: &Mount) -> Mount {
    let mut m = m.clone();
    const SPECIAL: [(&str, &str); 5] = [
        ("proc", "/proc"),
        ("sysfs", "/sys"),
        ("devpts", "/dev/pts"),
        ("mqueue", "/dev/mqueue"),
        ("cgroup", "/sys/fs/cgroup"),
    ];
    if m.kind.is_none() {
        let from_source = m
            .source
            .as_deref()
            .and_then(|s| SPECIAL.iter().find(|(k, _)| *k == s))
            .map(|(k, _)| k.to_string());
        m.kind = from_source
            .or_else(|| (m.destination.as_deref() == Some("/dev")).then(|| "tmpfs".to_string()));
    }
    if m.destination.is_none() {
        m.destination = m
            .kind
            .as_deref()
            .and_then(|k| SPECIAL.iter().find(|(t, _)| *t == k))
            .map(|(_, d)| d.to_string());
    }
    // A relative destination is relative to `/` (the OCI runtime spec's compatibility rule).
    if let Some(d) = &m.destination
        && !d.starts_with('/')
    {
        m.destination = Some(format!("/{d}"));
    }
    if m.source.is_none() {
        m.source = m.kind.clone();
    }
    if let Some(src) = &m.source
        && m.kind.as_deref().is_none_or(|k| k == "bind")
        && !src.starts_with('/')
    {
        m.source = Some(volume_path(src));
    }
    m
}

/// Device nodes to create, and the cgroup rules that allow them.
fn devices(c: &Image) -> (Vec<Value>, Vec<Value>) {
    let mut nodes = Vec::new();
    let mut rules = Vec::new();
    for d in c.devices.iter().flatten() {
        if d.path == "all" {
            rules.push(json!({ "allow": true, "type": d.kind, "access": "rwm" }));
            continue;
        }
        let mode = d
            .mode
            .as_deref()
            .and_then(|m| u32::from_str_radix(m, 8).ok())
            .unwrap_or(0o600);
        nodes.push(json!({
            "path": d.path, "type": d.kind, "major": d.major.unwrap_or(0), "minor": d.minor.unwrap_or(0),
            "fileMode": mode, "uid": 0, "gid": 0,
        }));
        rules.push(json!({ "allow": true, "type": d.kind, "major": d.major, "minor": d.minor, "access": "rwm" }));
    }
    (nodes, rules)
}

/// `nofile,1024,unlimited` -> `{type: RLIMIT_NOFILE, soft, hard}` (validated by the manifest stage).
fn rlimit(text: &str) -> Value {
    let parts: Vec<&str> = text.split(',').map(str::trim).collect();
    let name = parts[0].to_ascii_uppercase();
    let name = if name.starts_with("RLIMIT_") {
        name
    } else {
        format!("RLIMIT_{name}")
    };
    let value = |i: usize| match parts.get(i) {
        Some(&"unlimited") => u64::MAX,
        Some(s) => s.parse().unwrap_or(0),
        None => 0,
    };
    json!({ "type": name, "soft": value(1), "hard": value(2) })
}
