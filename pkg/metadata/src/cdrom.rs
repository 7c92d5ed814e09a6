//! The `cdrom` provider: a CD (or any disk) holding an ISO 9660 filesystem labelled `cidata`, or
//! any CD-ROM, mounted read-only; its `config` (what `linuxkit metadata create` and `slipway run
//! qemu --data` write) or `user-data` (cloud-init's NoCloud) is the userdata.
//!
//! Like `format` and `mountie`, the container makes the device's node itself in its own /dev
//! (CAP_MKNOD and a cgroup rule for block devices in the package's label).

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use rustix::mount::{MountFlags, UnmountFlags};
use slipway_disk::{SYS_BLOCK, node, read_disk};

use super::{Found, Outcome};

/// The mount point: a folder of the package image (mounting over it writes nothing to the
/// read-only root).
const MOUNT_POINT: &str = "/cdrom";
const FILES: &[&str] = &["config", "user-data"];

/// The ISO 9660 volume label at the primary volume descriptor (sector 16), if `path` has one.
fn iso_label(path: &Path) -> Option<String> {
    let mut f = fs::File::open(path).ok()?;
    f.seek(SeekFrom::Start(16 * 2048)).ok()?;
    let mut pvd = [0u8; 72];
    f.read_exact(&mut pvd).ok()?;
    if pvd[0] != 1 || &pvd[1..6] != b"CD001" {
        return None;
    }
    Some(String::from_utf8_lossy(&pvd[40..72]).trim().to_string())
}

pub fn probe() -> Outcome {
    let mut names: Vec<String> = match fs::read_dir(SYS_BLOCK) {
        Ok(entries) => entries
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with("loop") && !n.starts_with("ram"))
            .collect(),
        Err(e) => return Outcome::Failed(format!("listing {SYS_BLOCK}: {e}")),
    };
    names.sort();
    let mut candidates = Vec::new();
    for name in &names {
        let Some(disk) = read_disk(&Path::new(SYS_BLOCK).join(name), name) else {
            continue;
        };
        let Ok(path) = node(name, disk.major, disk.minor) else {
            continue;
        };
        match iso_label(&path) {
            Some(label) if label.eq_ignore_ascii_case("cidata") => {
                candidates.insert(0, (name.clone(), path))
            }
            Some(_) if name.starts_with("sr") => candidates.push((name.clone(), path)),
            _ => {}
        }
    }
    let Some((name, path)) = candidates.into_iter().next() else {
        return Outcome::Absent("no CD with an ISO 9660 filesystem".into());
    };
    if let Err(e) = fs::create_dir_all(MOUNT_POINT) {
        return Outcome::Failed(format!("creating {MOUNT_POINT}: {e}"));
    }
    if let Err(e) = rustix::mount::mount(&path, MOUNT_POINT, "iso9660", MountFlags::RDONLY, c"") {
        return Outcome::Failed(format!(
            "mounting /dev/{name} (iso9660) on {MOUNT_POINT}: {e}"
        ));
    }
    let mut outcome = Outcome::Absent(format!("/dev/{name} has no {}", FILES.join(" or ")));
    for file in FILES {
        match fs::read(Path::new(MOUNT_POINT).join(file)) {
            Ok(data) => {
                println!("metadata: cdrom: read {file} from /dev/{name}");
                outcome = Outcome::Found(Found {
                    userdata: Some(data),
                    files: Vec::new(),
                });
                break;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                outcome = Outcome::Failed(format!("reading {file} on /dev/{name}: {e}"));
                break;
            }
        }
    }
    let _ = rustix::mount::unmount(MOUNT_POINT, UnmountFlags::empty());
    outcome
}
