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

use crate::spec::RESTART_ANNOTATION;

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
pub fn pull_image(store: &Path, images: &Path, reference: &str) -> Result<PulledImage, RunError> {
    let store = Store::open(store).map_err(|source| RunError::Store {
        path: store.to_owned(),
        source: Box::new(source),
    })?;
    let image =
        slipway_oci::resolve(&store, reference, &PullOptions::default()).map_err(|source| {
            RunError::Resolve {
                image: reference.to_owned(),
                source: Box::new(source),
            }
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
) -> Result<PulledImage, RunError> {
    let output = tokio::process::Command::new(program)
        .arg("pull-image")
        .arg("--store")
        .arg(store)
        .arg("--dest")
        .arg(images)
        .arg(reference)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|source| RunError::Spawn {
            program: program.to_owned(),
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
/// directory; the image tree is shared, never written) and an empty `rootfs/`. Written under a
/// temporary name and renamed into place.
pub fn write_bundle(
    containers: &Path,
    images: &Path,
    name: &str,
    image: &PulledImage,
    cmd: Option<Vec<String>>,
    restart: Option<&str>,
) -> Result<PathBuf, RunError> {
    let bundle = containers.join(name);
    let tmp = containers.join(format!(".tmp-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    let written = (|| {
        fs::create_dir_all(tmp.join("rootfs")).map_err(io(&tmp))?;
        let lower = std::path::absolute(image.dir(images)).map_err(io(images))?;
        std::os::unix::fs::symlink(&lower, tmp.join("lower")).map_err(io(&tmp.join("lower")))?;
        let manifest = slipway_bundle::Image {
            name: name.to_owned(),
            image: image.reference.clone(),
            command: cmd,
            readonly: Some(false),
            annotations: restart.map(|r| [(RESTART_ANNOTATION.to_owned(), r.to_owned())].into()),
            ..Default::default()
        };
        let config = slipway_bundle::runtime_config(
            &manifest,
            image.config.config().as_ref(),
            &Default::default(),
        );
        let path = tmp.join("config.json");
        let text = serde_json::to_vec_pretty(&config).expect("JSON values serialize");
        fs::write(&path, text).map_err(io(&path))?;
        fs::rename(&tmp, &bundle).map_err(io(&bundle))
    })();
    if written.is_err() {
        let _ = fs::remove_dir_all(&tmp);
    }
    written.map(|()| bundle)
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

    #[test]
    fn names_come_from_the_repository() {
        assert_eq!(name_base("127.0.0.1:5000/lib/busybox:1.36"), "busybox");
        assert_eq!(name_base("alpine"), "alpine");
        assert_eq!(name_base("x/.hidden@sha256:abcd"), "hidden");
        assert_eq!(name_base("registry:5000/"), "container");
        assert!(crate::spec::valid_name(&name_base("a/b+c:d")));
    }
}
