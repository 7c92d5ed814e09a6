//! The manifest's named volumes, mounted at boot before any container runs (LinuxKit's
//! `005-volumes`): the builder lays each out as `/containers/volumes/NAME/{lower,tmp,merged}`,
//! with the volume's image (if any) in `lower/`, and containers bind `merged/`. A writable volume
//! gets a tmpfs on `tmp/` holding the upper and work directories of an overlay on `merged/`; a
//! read-only one has no `tmp/` (the builder leaves it out) and gets `lower/` bound read-only on
//! `merged/`, since an overlay without an upper layer needs two lower ones on older kernels.

use std::ffi::CString;
use std::fs;
use std::io;
use std::path::Path;

use rustix::mount::{
    MountFlags, MountPropagationFlags, mount, mount_bind, mount_change, mount_remount,
};

/// Mounts every volume under `dir`; returns the names mounted, and says what failed (a volume
/// that cannot be mounted does not stop the boot: the containers binding it fail instead).
pub fn mount_all(dir: &Path, say: impl Fn(String)) -> Vec<String> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    names.retain(|name| match mount_one(&dir.join(name)) {
        Ok(()) => true,
        Err(e) => {
            say(format!("volume {name}: {e}"));
            false
        }
    });
    names
}

fn mount_one(volume: &Path) -> io::Result<()> {
    let (lower, tmp, merged) = (
        volume.join("lower"),
        volume.join("tmp"),
        volume.join("merged"),
    );
    if !tmp.is_dir() {
        mount_bind(&lower, &merged)?;
        mount_remount(&merged, MountFlags::BIND | MountFlags::RDONLY, c"")?;
        return Ok(());
    }
    mount("tmpfs", &tmp, "tmpfs", MountFlags::empty(), c"mode=0755")?;
    fs::create_dir(tmp.join("upper"))?;
    fs::create_dir(tmp.join("work"))?;
    let data = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        tmp.join("upper").display(),
        tmp.join("work").display()
    );
    let data = CString::new(data).map_err(io::Error::other)?;
    mount(
        "overlay",
        &merged,
        "overlay",
        MountFlags::empty(),
        data.as_c_str(),
    )?;
    // Containers bind it with `rshared` by default: the mount must be shared to be.
    mount_change(&merged, MountPropagationFlags::SHARED)?;
    Ok(())
}
