//! Containers from images that are not in the OS image (`slipway-engine run IMAGE`): pulling
//! and unpacking the image with the builder's OCI library (slipway-oci), and writing the container's
//! bundle (`CONTAINERS/NAME/{config.json, lower, rootfs/}`) the way the builder writes service
//! bundles.
//!
//! `slipway_oci::resolve` runs its own multi-threaded tokio runtime, and the engine must stay
//! one thread (libcontainer forks containers with a raw clone3), so the daemon never pulls
//! itself: it runs `slipway-engine pull-image` as a child process ([`pull_in_child`]) and reads
//! the [`PulledImage`] it prints.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use slipway_oci::{PullOptions, Store};

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;

use crate::request::{Checked, File, MountKind};
use crate::spec::{
    HEALTH_ANNOTATION, IMAGE_ANNOTATION, IMAGE_DIGEST_ANNOTATION, INIT_ANNOTATION, LABEL_PREFIX,
    RESTART_ANNOTATION, STOP_GRACE_ANNOTATION,
};

/// Sources are boxed: the builder's errors are large, and these travel in every `Result`.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("opening the image store {path}: {source}")]
    Store {
        path: PathBuf,
        source: Box<slipway_oci::StoreError>,
    },
    /// The builder's error names the reference already.
    #[error("{source}")]
    Resolve {
        image: String,
        source: Box<slipway_oci::OciError>,
    },
    #[error("unpacking {image} into {path}: {source}")]
    Unpack {
        image: String,
        path: PathBuf,
        source: Box<slipway_oci::FlattenError>,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("running {program} pull-image {image}: {source}")]
    Spawn {
        program: PathBuf,
        image: String,
        source: std::io::Error,
    },
    #[error("pulling {image}: {message}")]
    Pull { image: String, message: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RunError + '_ {
    move |source| RunError::Io {
        path: path.to_owned(),
        source,
    }
}

/// What `pull-image` prints: the image, resolved and unpacked.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PulledImage {
    /// The full reference (`127.0.0.1:5000/busybox:latest`).
    pub reference: String,
    /// The digest of the platform's image manifest; the unpacked tree is `IMAGES/<hex>/`.
    pub digest: String,
    pub config: oci_spec::image::ImageConfiguration,
}

impl PulledImage {
    /// Where [`pull_image`] unpacked it under `images`.
    pub fn dir(&self, images: &Path) -> PathBuf {
        images.join(self.digest.trim_start_matches("sha256:"))
    }
}

/// Resolves `reference` (store first, then its registry; loopback registries over plain HTTP)
/// and unpacks it into `images/<manifest-digest-hex>/` unless it is there already. The tree is
/// unpacked into a temporary directory and renamed into place, so a directory under that name
/// is always complete. Blocking: runs its own tokio runtime (the `pull-image` subcommand).
pub fn pull_image(
    store: &Path,
    images: &Path,
    reference: &str,
    insecure: &[String],
) -> Result<PulledImage, RunError> {
    let store = Store::open(store).map_err(|source| RunError::Store {
        path: store.to_owned(),
        source: Box::new(source),
    })?;
    let options = PullOptions {
        insecure_registries: insecure.to_vec(),
        ..PullOptions::default()
    };
    let image =
        slipway_oci::resolve(&store, reference, &options).map_err(|source| RunError::Resolve {
            image: reference.to_owned(),
            source: Box::new(source),
        })?;
    let pulled = PulledImage {
        reference: image.reference.clone(),
        digest: image.digest.to_string(),
        config: image.config.clone(),
    };
    let dest = pulled.dir(images);
    if !dest.is_dir() {
        fs::create_dir_all(images).map_err(io(images))?;
        let tmp = images.join(format!(
            ".tmp-{}-{}",
            image.digest.hex(),
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&tmp);
        slipway_oci::unpack_to_dir(&store, &image, &tmp).map_err(|source| RunError::Unpack {
            image: pulled.reference.clone(),
            path: tmp.clone(),
            source: Box::new(source),
        })?;
        if let Err(e) = fs::rename(&tmp, &dest) {
            let _ = fs::remove_dir_all(&tmp);
            // Another pull of the same image won the race: its tree is as good as ours.
            if !dest.is_dir() {
                return Err(io(&dest)(e));
            }
        }
    }
    Ok(pulled)
}

/// Runs `program pull-image --store STORE --dest IMAGES REFERENCE` and reads what it prints.
/// A failure carries the child's last line of error output.
pub async fn pull_in_child(
    program: &Path,
    store: &Path,
    images: &Path,
    reference: &str,
    insecure: &[String],
) -> Result<PulledImage, RunError> {
    let mut command = tokio::process::Command::new(program);
    command
        .arg("pull-image")
        .arg("--store")
        .arg(store)
        .arg("--dest")
        .arg(images);
    child_output(command, reference, insecure).await
}

/// What `resolve-digest` prints: the digest of the manifest (or index) a reference names in
/// its registry, for the swarm agent's `GET /distribution/{name}/json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResolvedDigest {
    pub reference: String,
    pub digest: String,
    pub media_type: String,
    pub size: u64,
}

/// Asks the registry for the manifest `reference` names and returns its digest (nothing is
/// pulled). Blocking: runs its own tokio runtime (the `resolve-digest` subcommand).
pub fn resolve_digest(reference: &str, insecure: &[String]) -> Result<ResolvedDigest, RunError> {
    use slipway_oci::registry::Registry;
    let failed = |source: slipway_oci::OciError| RunError::Resolve {
        image: reference.to_owned(),
        source: Box::new(source),
    };
    let r = slipway_oci::resolve::parse_reference(reference).map_err(failed)?;
    let options = PullOptions::default();
    let bytes = slipway_oci::resolve::block_on(async {
        let registry = Registry::new(&r, insecure, &options.net)?;
        registry
            .authenticate(&r, oci_client::RegistryOperation::Pull)
            .await?;
        registry.manifest_raw(&r).await
    })
    .map_err(failed)?;
    let media_type = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| {
            v.get("mediaType")
                .and_then(|m| m.as_str())
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "application/vnd.oci.image.manifest.v1+json".to_owned());
    Ok(ResolvedDigest {
        reference: r.whole(),
        digest: slipway_oci::Digest::of(&bytes).to_string(),
        media_type,
        size: bytes.len() as u64,
    })
}

/// Runs `program resolve-digest REFERENCE` and reads what it prints.
pub async fn resolve_digest_in_child(
    program: &Path,
    reference: &str,
    insecure: &[String],
) -> Result<ResolvedDigest, RunError> {
    let mut command = tokio::process::Command::new(program);
    command.arg("resolve-digest");
    child_output(command, reference, insecure).await
}

/// Runs a pulling child with the insecure registries and the reference as its last
/// arguments, and parses the JSON it prints; a failure carries its last line of error output.
async fn child_output<T: serde::de::DeserializeOwned>(
    mut command: tokio::process::Command,
    reference: &str,
    insecure: &[String],
) -> Result<T, RunError> {
    let program = PathBuf::from(command.as_std().get_program());
    for registry in insecure {
        command.arg("--insecure-registry").arg(registry);
    }
    // Its own process group, like the other helpers: the stray reaper (`reap_strays`) takes
    // zombies that lead no group, and would take this child's status from tokio (ECHILD).
    let output = command
        .arg(reference)
        .process_group(0)
        .stdin(std::process::Stdio::null())
        // Its own process group, as every helper's: the daemon's stray reaper
        // (`supervisor::reap_strays`) takes zombies that lead no group, and would otherwise
        // reap this child before tokio waits for it ("No child processes", a failed pull).
        .process_group(0)
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|source| RunError::Spawn {
            program: program.clone(),
            image: reference.to_owned(),
            source,
        })?;
    let failed = |message: String| RunError::Pull {
        image: reference.to_owned(),
        message,
    };
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let last = stderr
            .lines()
            .rev()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .unwrap_or("no error output");
        return Err(failed(format!(
            "{} ({})",
            last.trim_start_matches("slipway-engine: "),
            output.status
        )));
    }
    serde_json::from_slice(&output.stdout).map_err(|e| failed(format!("unexpected output: {e}")))
}

/// Writes the bundle `containers/NAME/`: `config.json` made by the builder's own
/// `runtime_config` (writable root, so the runtime mounts an overlay on `rootfs/`), `lower`
/// (a symlink to the unpacked image, which slipway-runtime takes as the overlay's lower
/// directory; the image tree is shared, never written), an empty `rootfs/` and, when the
/// request has files, `files/`: a tmpfs of the container's own holding them (so secrets never
/// reach a disk), bound read-only at their targets. Written under a temporary name and renamed
/// into place; a failure leaves nothing behind.
pub fn write_bundle(
    dirs: &Dirs,
    name: &str,
    image: &PulledImage,
    request: &Checked,
) -> Result<PathBuf, RunError> {
    let containers = &dirs.containers;
    let bundle = std::path::absolute(containers.join(name)).map_err(io(containers))?;
    let tmp = containers.join(format!(".tmp-{name}-{}", std::process::id()));
    let _ = remove_bundle(&tmp);
    let written = (|| {
        fs::create_dir_all(tmp.join("rootfs")).map_err(io(&tmp))?;
        let lower = std::path::absolute(image.dir(&dirs.images)).map_err(io(&dirs.images))?;
        std::os::unix::fs::symlink(&lower, tmp.join("lower")).map_err(io(&tmp.join("lower")))?;
        let user = request.user.clone().or_else(|| {
            image
                .config
                .config()
                .as_ref()
                .and_then(|c| c.user().clone())
        });
        let (uid, gid) = image_user(image, user.as_deref().unwrap_or(""), &lower)?;
        let config = image.config.config().clone().unwrap_or_default();
        let command = request.command.line(
            config.entrypoint().as_deref().unwrap_or_default(),
            config.cmd().as_deref().unwrap_or_default(),
        );
        if command.first().is_none_or(String::is_empty) {
            return Err(RunError::Pull {
                image: image.reference.clone(),
                message: "the image has no entrypoint or cmd and the request gives no command"
                    .to_owned(),
            });
        }
        let mut env = config.env().clone().unwrap_or_default();
        for e in &request.env {
            let key = e.split('=').next().unwrap_or("");
            env.retain(|old| old.split('=').next() != Some(key));
            env.push(e.clone());
        }
        let mut mounts = Vec::new();
        for m in &request.mounts {
            let mut options = match m.kind {
                MountKind::Tmpfs => vec!["nosuid".to_owned(), "nodev".to_owned()],
                _ => vec!["rbind".to_owned()],
            };
            if m.readonly {
                options.push("ro".to_owned());
            }
            let source = match (m.kind, &m.source) {
                (MountKind::Volume, Some(volume)) => {
                    let path = std::path::absolute(dirs.volumes.join(volume))
                        .map_err(io(&dirs.volumes))?;
                    fs::create_dir_all(&path).map_err(io(&path))?;
                    path.to_string_lossy().into_owned()
                }
                (_, Some(path)) => path.to_string_lossy().into_owned(),
                (_, None) => "tmpfs".to_owned(),
            };
            mounts.push(slipway_bundle::Mount {
                destination: Some(m.target.clone()),
                kind: Some(
                    if m.kind == MountKind::Tmpfs {
                        "tmpfs"
                    } else {
                        "bind"
                    }
                    .to_owned(),
                ),
                source: Some(source),
                options: Some(options),
                ..Default::default()
            });
        }
        if !request.files.is_empty() {
            let dir = tmp.join("files");
            write_files(&dir, &request.files)?;
            for (i, file) in request.files.iter().enumerate() {
                mounts.push(slipway_bundle::Mount {
                    destination: Some(file.target.clone()),
                    kind: Some("bind".to_owned()),
                    source: Some(
                        bundle
                            .join("files")
                            .join(i.to_string())
                            .to_string_lossy()
                            .into_owned(),
                    ),
                    options: Some(vec!["rbind".to_owned(), "ro".to_owned()]),
                    ..Default::default()
                });
            }
        }
        let mut annotations = BTreeMap::new();
        if let Some(restart) = request.restart {
            annotations.insert(RESTART_ANNOTATION.to_owned(), restart.to_string());
        }
        if let Some(health) = &request.health {
            annotations.insert(HEALTH_ANNOTATION.to_owned(), health.clone());
        }
        if let Some(grace) = request.stop_grace {
            annotations.insert(
                STOP_GRACE_ANNOTATION.to_owned(),
                humantime::format_duration(grace).to_string(),
            );
        }
        if let Some(init) = request.init {
            annotations.insert(INIT_ANNOTATION.to_owned(), init.to_string());
        }
        annotations.insert(IMAGE_ANNOTATION.to_owned(), image.reference.clone());
        annotations.insert(IMAGE_DIGEST_ANNOTATION.to_owned(), image.digest.clone());
        for (k, v) in &request.labels {
            annotations.insert(format!("{LABEL_PREFIX}{k}"), v.clone());
        }
        let defaults = safe_defaults(name, uid, gid);
        let resources = &request.resources;
        let manifest = slipway_bundle::Image {
            name: name.to_owned(),
            image: image.reference.clone(),
            command: Some(command),
            env: Some(env),
            cwd: request.workdir.clone(),
            readonly: Some(false),
            net: Some(if request.host_network { "host" } else { "new" }.to_owned()),
            hostname: Some(request.hostname.clone().unwrap_or_else(|| name.to_owned())),
            mounts: Some(mounts),
            annotations: Some(annotations),
            resources: Some(slipway_bundle::Resources {
                pids: Some(slipway_bundle::Pids {
                    limit: resources.pids.unwrap_or(RUN_PIDS_LIMIT),
                }),
                memory: resources.memory.map(|limit| slipway_bundle::Memory {
                    limit: Some(limit),
                    ..Default::default()
                }),
                cpu: resources.nano_cpus.map(|nano| slipway_bundle::Cpu {
                    quota: Some(nano / (1_000_000_000 / CPU_PERIOD as i64)),
                    period: Some(CPU_PERIOD),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..defaults
        };
        let config = slipway_bundle::runtime_config(&manifest, Some(&config), &Default::default());
        let path = tmp.join("config.json");
        let text = serde_json::to_vec_pretty(&config).expect("JSON values serialize");
        fs::write(&path, text).map_err(io(&path))?;
        fs::rename(&tmp, &bundle).map_err(io(&bundle))
    })();
    if written.is_err() {
        let _ = remove_bundle(&tmp);
    }
    written.map(|()| bundle)
}

/// The CFS period a `nanoCpus` limit is expressed in (Docker's 100 ms).
pub const CPU_PERIOD: u64 = 100_000;

/// Mounts a tmpfs on `dir` and writes the files there, `dir/0`, `dir/1`, ...: each with its
/// owner and mode.
fn write_files(dir: &Path, files: &[File]) -> Result<(), RunError> {
    use rustix::mount::{MountFlags, mount};
    fs::create_dir_all(dir).map_err(io(dir))?;
    let size: usize = files.iter().map(|f| f.data.len() + 4096).sum::<usize>() + 4096;
    mount(
        "tmpfs",
        dir,
        "tmpfs",
        MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
        std::ffi::CString::new(format!("mode=0755,size={size}"))
            .ok()
            .as_deref(),
    )
    .map_err(|e| io(dir)(e.into()))?;
    for (i, file) in files.iter().enumerate() {
        let path = dir.join(i.to_string());
        fs::write(&path, &file.data).map_err(io(&path))?;
        std::os::unix::fs::chown(&path, Some(file.uid), Some(file.gid)).map_err(io(&path))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(file.mode)).map_err(io(&path))?;
    }
    Ok(())
}

/// Removes a bundle directory: first its files' tmpfs (detached), then the tree.
pub fn remove_bundle(bundle: &Path) -> std::io::Result<()> {
    let files = bundle.join("files");
    if files.exists() {
        let _ = rustix::mount::unmount(&files, rustix::mount::UnmountFlags::DETACH);
    }
    match fs::remove_dir_all(bundle) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Where `run` keeps what it makes.
#[derive(Debug, Clone)]
pub struct Dirs {
    pub containers: PathBuf,
    pub images: PathBuf,
    /// The directories of `volume` mounts, one per name, made on first use.
    pub volumes: PathBuf,
}

/// The processes a `run` container may have at once, so a fork bomb in an arbitrary image
/// cannot exhaust the system's (Podman's default).
pub const RUN_PIDS_LIMIT: i64 = 2048;

/// runc's default masked paths (and containerd's powercap): kernel state a container has no
/// business reading.
pub const MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// runc's default read-only paths.
pub const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// What a container of an arbitrary registry image gets, unlike a manifest's services (which
/// keep LinuxKit's defaults: host network, IPC and UTS): its own network (loopback only), IPC
/// and UTS namespaces (its hostname is its name), runc's masked and read-only paths, no new
/// privileges, the image's user and a pids limit.
fn safe_defaults(name: &str, uid: u32, gid: u32) -> slipway_bundle::Image {
    let strings = |list: &[&str]| list.iter().map(|p| (*p).to_owned()).collect();
    slipway_bundle::Image {
        net: Some("new".to_owned()),
        ipc: Some("new".to_owned()),
        uts: Some("new".to_owned()),
        hostname: Some(name.to_owned()),
        masked_paths: Some(strings(MASKED_PATHS)),
        readonly_paths: Some(strings(READONLY_PATHS)),
        no_new_privileges: Some(true),
        uid: Some(slipway_bundle::IdRef::Id(uid)),
        gid: Some(slipway_bundle::IdRef::Id(gid)),
        resources: Some(slipway_bundle::Resources {
            pids: Some(slipway_bundle::Pids {
                limit: RUN_PIDS_LIMIT,
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The uid and gid of the image's `USER` (`user`, `uid`, `user:group`, `uid:gid`; names looked
/// up in the image's `/etc/passwd` and `/etc/group`), root when it sets none.
fn image_user(image: &PulledImage, user: &str, root: &Path) -> Result<(u32, u32), RunError> {
    let user = user.trim();
    if user.is_empty() {
        return Ok((0, 0));
    }
    let (name, group) = match user.split_once(':') {
        Some((name, group)) => (name, Some(group)),
        None => (user, None),
    };
    let unknown = |what: &str, value: &str| RunError::Pull {
        image: image.reference.clone(),
        message: format!("user {user:?}: no {what} {value:?} in the image"),
    };
    let passwd = read_in_root(root, "etc/passwd");
    let entry = |file: &Option<String>, wanted: &str| -> Option<(u32, Option<u32>)> {
        file.as_deref()?.lines().find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            (fields.len() >= 4 && fields[0] == wanted).then(|| {
                let id = fields[2].parse().ok()?;
                Some((id, fields[3].parse().ok()))
            })?
        })
    };
    let (uid, primary) = match name.parse::<u32>() {
        // A number names no entry; its primary group is that of the entry with this uid.
        Ok(uid) => {
            let primary = passwd.as_deref().and_then(|text| {
                text.lines().find_map(|line| {
                    let fields: Vec<&str> = line.split(':').collect();
                    (fields.len() >= 4 && fields[2].parse() == Ok(uid))
                        .then(|| fields[3].parse().ok())?
                })
            });
            (uid, primary)
        }
        Err(_) => {
            let (uid, gid) = entry(&passwd, name).ok_or_else(|| unknown("user", name))?;
            (uid, gid)
        }
    };
    let gid = match group {
        None => primary.unwrap_or(0),
        Some(group) => match group.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => {
                let groups = read_in_root(root, "etc/group");
                entry(&groups, group)
                    .map(|e| e.0)
                    .ok_or_else(|| unknown("group", group))?
            }
        },
    };
    Ok((uid, gid))
}

/// A small file of the unpacked image, its path resolved inside `root` (a symlink in the
/// image cannot make the engine read a host file); `None` when it is missing or unreadable.
fn read_in_root(root: &Path, path: &str) -> Option<String> {
    use rustix::fs::{Mode, OFlags, ResolveFlags};
    use std::io::Read;
    let dir = rustix::fs::open(root, OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty()).ok()?;
    let fd = rustix::fs::openat2(
        &dir,
        path,
        OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
    )
    .ok()?;
    let mut text = String::new();
    fs::File::from(fd)
        .take(1 << 20)
        .read_to_string(&mut text)
        .ok()?;
    Some(text)
}

/// A container name from an image reference: its repository's last component, cleaned to the
/// characters [`crate::spec::valid_name`] allows (`127.0.0.1:5000/lib/busybox:1` -> `busybox`).
pub fn name_base(reference: &str) -> String {
    let without_digest = reference.split('@').next().unwrap_or("");
    let last = without_digest.rsplit('/').next().unwrap_or("");
    let repo = last.split(':').next().unwrap_or("");
    let cleaned: String = repo
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_.-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .take(40)
        .collect();
    let cleaned = cleaned.trim_start_matches(['.', '-']).to_owned();
    if cleaned.is_empty() {
        "container".to_owned()
    } else {
        cleaned
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pulled(user: Option<&str>) -> PulledImage {
        let mut config = oci_spec::image::Config::default();
        config.set_user(user.map(str::to_owned));
        config.set_cmd(Some(vec!["/bin/sh".to_owned()]));
        let mut image = oci_spec::image::ImageConfiguration::default();
        image.set_config(Some(config));
        PulledImage {
            reference: "127.0.0.1:5000/app:1".to_owned(),
            digest: format!("sha256:{}", "ab".repeat(32)),
            config: image,
        }
    }

    /// Writes a bundle for `image` whose tree is `images/<hex>` and returns its config.json.
    fn bundle_config(dir: &Path, image: &PulledImage) -> Result<serde_json::Value, RunError> {
        let images = dir.join("images");
        let tree = image.dir(&images);
        fs::create_dir_all(tree.join("etc")).unwrap();
        fs::write(
            tree.join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n",
        )
        .unwrap();
        fs::write(tree.join("etc/group"), "root:x:0:\nstaff:x:50:\n").unwrap();
        let containers = dir.join("containers");
        fs::create_dir_all(&containers).unwrap();
        let _ = fs::remove_dir_all(containers.join("app"));
        let dirs = Dirs {
            containers,
            images,
            volumes: dir.join("volumes"),
        };
        let request = crate::request::RunRequest {
            image: image.reference.clone(),
            ..Default::default()
        };
        let checked = request.check().ok().unwrap();
        let bundle = write_bundle(&dirs, "app", image, &checked)?;
        Ok(serde_json::from_slice(&fs::read(bundle.join("config.json")).unwrap()).unwrap())
    }

    #[test]
    fn run_containers_get_safe_defaults_and_the_images_user() {
        let dir = tempfile::tempdir().unwrap();
        let config = bundle_config(dir.path(), &pulled(Some("app"))).unwrap();
        let types: Vec<&str> = config["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["type"].as_str().unwrap())
            .collect();
        for kind in ["pid", "mount", "network", "ipc", "uts"] {
            assert!(types.contains(&kind), "{kind}: {types:?}");
        }
        assert!(
            config["linux"]["namespaces"]
                .as_array()
                .unwrap()
                .iter()
                .all(|n| n.get("path").is_none())
        );
        assert_eq!(config["hostname"], "app");
        assert_eq!(config["process"]["noNewPrivileges"], true);
        assert_eq!(config["process"]["user"]["uid"], 1000);
        assert_eq!(config["process"]["user"]["gid"], 1001);
        assert_eq!(
            config["linux"]["resources"]["pids"]["limit"],
            RUN_PIDS_LIMIT
        );
        assert_eq!(
            config["linux"]["maskedPaths"],
            serde_json::json!(MASKED_PATHS)
        );
        assert_eq!(
            config["linux"]["readonlyPaths"],
            serde_json::json!(READONLY_PATHS)
        );

        for (user, uid, gid) in [
            (None, 0, 0),
            (Some("42"), 42, 0),
            (Some("1000"), 1000, 1001),
            (Some("app:staff"), 1000, 50),
            (Some("7:8"), 7, 8),
        ] {
            let config = bundle_config(dir.path(), &pulled(user)).unwrap();
            assert_eq!(config["process"]["user"]["uid"], uid, "{user:?}");
            assert_eq!(config["process"]["user"]["gid"], gid, "{user:?}");
        }
        for user in ["nobody", "app:wheel"] {
            let err = bundle_config(dir.path(), &pulled(Some(user))).unwrap_err();
            assert!(err.to_string().contains("user"), "{err}");
        }
    }

    #[test]
    fn the_images_passwd_is_read_inside_its_tree() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("outside")).unwrap();
        fs::write(dir.path().join("outside/passwd"), "evil:x:5:5::/:/bin/sh\n").unwrap();
        let root = dir.path().join("root");
        fs::create_dir_all(root.join("etc")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("outside/passwd"), root.join("etc/passwd"))
            .unwrap();
        assert_eq!(read_in_root(&root, "etc/passwd"), None);
        std::os::unix::fs::symlink("../../outside/passwd", root.join("etc/p2")).unwrap();
        assert_eq!(read_in_root(&root, "etc/p2"), None);
    }

    #[test]
    fn names_come_from_the_repository() {
        assert_eq!(name_base("127.0.0.1:5000/lib/busybox:1.36"), "busybox");
        assert_eq!(name_base("alpine"), "alpine");
        assert_eq!(name_base("x/.hidden@sha256:abcd"), "hidden");
        assert_eq!(name_base("registry:5000/"), "container");
        assert!(crate::spec::valid_name(&name_base("a/b+c:d")));
    }
}
