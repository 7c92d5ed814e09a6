//! Where things are in a Slipway image: the contract between the builder, which writes these
//! paths, and the init and the engine, which read them at boot. One crate with no dependencies
//! holds them so that all three agree and none depends on another's code.
//!
//! ```text
//! /init                                         PID 1 (pkg/init)
//! /usr/bin/slipway-engine                       the container engine (pkg/engine)
//! /containers/onboot/000-NAME/                  bundles run in order at boot
//! /containers/onshutdown/000-NAME/              bundles run in order at poweroff
//! /containers/services/NAME/                    bundles the engine (or the init) supervises
//! /containers/volumes/NAME/{lower,tmp,merged}/  named volumes
//! /etc/slipway/manifest.yml                     the manifest as built, every image pinned by digest
//! /run/slipway/                                 runtime state (tmpfs)
//! /var/lib/slipway/                             what `slipway-engine run` pulls and creates
//! ```
//!
//! Paths are absolute, as the running system sees them; the builder's tree takes them as they are
//! (it drops the leading `/`).

/// The container bundles, one folder per section.
pub const CONTAINERS: &str = "/containers";
/// Bundles run one after the other at boot (`000-NAME`, in manifest order).
pub const ONBOOT: &str = "/containers/onboot";
/// Bundles run one after the other at poweroff (`000-NAME`).
pub const ONSHUTDOWN: &str = "/containers/onshutdown";
/// Long-running services (`NAME`), supervised by the engine when the image has one.
pub const SERVICES: &str = "/containers/services";
/// Named volumes (`NAME/{lower,tmp,merged}`).
pub const VOLUMES: &str = "/containers/volumes";

/// The manifest as built, every image pinned by digest.
pub const MANIFEST: &str = "/etc/slipway/manifest.yml";

/// The engine's program, started by the init when present.
pub const ENGINE: &str = "/usr/bin/slipway-engine";
/// The engine's API socket.
pub const ENGINE_SOCKET: &str = "/run/slipway/engine.sock";
/// The runtime state of the engine's containers.
pub const ENGINE_STATE: &str = "/run/slipway/engine";
/// The runtime state of the containers the init runs itself (onboot, onshutdown, services
/// without an engine).
pub const INIT_STATE: &str = "/run/slipway/containers";
/// Each service's log is `LOG_DIR/NAME.log`.
pub const LOG_DIR: &str = "/var/log";

/// Bundles of the containers `slipway-engine run` creates.
pub const RUN_CONTAINERS: &str = "/var/lib/slipway/containers";
/// Images `slipway-engine run` unpacked, one folder per manifest digest.
pub const RUN_IMAGES: &str = "/var/lib/slipway/images";
/// The OCI store `slipway-engine run` pulls into.
pub const RUN_STORE: &str = "/var/lib/slipway/store";

/// Where a container finds the named volume `name` (the overlay the init mounts at boot).
pub fn volume(name: &str) -> String {
    format!("{VOLUMES}/{name}/merged")
}

/// In the small initrd of `kernel+squashfs` and `kernel+iso`: the root is on a block device that
/// the kernel command line names (`root=`), and this initrd holds only what mounts it.
pub const ROOT_ON_DEVICE: &str = "/etc/slipway/root-on-device";
