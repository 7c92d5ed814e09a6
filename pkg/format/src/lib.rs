//! The block devices of a machine as `format` and `mountie` see them: the disks sysfs lists, their
//! partitions, the partition table and filesystem each carries, and a device node to open each by.
//!
//! Both programs run as onboot containers. A container's `/dev` is its own (the runtime creates
//! the standard nodes there, so the host's `/dev` cannot be bound over it), so they create the
//! node of the disk they use themselves, from the device number sysfs gives, in a directory of
//! their own: their image label gives them CAP_MKNOD and the cgroup rule for block devices.

/// The `format` program (`main.rs`, and the init's multi-call binary by that name).
pub mod command;

use std::fs;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// Where sysfs lists block devices.
pub const SYS_BLOCK: &str = "/sys/block";

/// Where the programs create the device nodes they open.
pub const NODE_DIR: &str = "/dev/slipway-disk";

/// Disks that are never a state disk: RAM disks, loop devices, CD-ROMs, floppies, device-mapper
/// and software RAID volumes, network block devices.
const NOT_DISKS: &[&str] = &["loop", "ram", "zram", "sr", "fd", "dm-", "md", "nbd"];

/// A whole disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    /// The kernel's name: `vda`, `sda`, `nvme0n1`.
    pub name: String,
    pub major: u32,
    pub minor: u32,
    /// Size in 512-byte sectors.
    pub sectors: u64,
    /// Its partitions, by number.
    pub partitions: Vec<Part>,
}

/// A partition of a disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// `vda1`, `nvme0n1p1`.
    pub name: String,
    pub number: u32,
    pub major: u32,
    pub minor: u32,
}

/// The disks of `sys_block`, by name (`vda` before `vdb`), without the devices of [`NOT_DISKS`].
pub fn disks(sys_block: &Path) -> Vec<Disk> {
    let mut found = Vec::new();
    let Ok(entries) = fs::read_dir(sys_block) else {
        return found;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if NOT_DISKS.iter().any(|p| name.starts_with(p)) {
            continue;
        }
        let dir = sys_block.join(&name);
        if let Some(disk) = read_disk(&dir, &name) {
            found.push(disk);
        }
    }
    found.sort_by(|a, b| a.name.cmp(&b.name));
    found
}

/// One disk's sysfs folder; None if it is not readable as one.
pub fn read_disk(dir: &Path, name: &str) -> Option<Disk> {
    let (major, minor) = parse_dev(&fs::read_to_string(dir.join("dev")).ok()?)?;
    let sectors = fs::read_to_string(dir.join("size"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let mut partitions = Vec::new();
    for entry in fs::read_dir(dir).ok()?.flatten() {
        let part_dir = entry.path();
        let Some(number) = fs::read_to_string(part_dir.join("partition"))
            .ok()
            .and_then(|t| t.trim().parse().ok())
        else {
            continue;
        };
        let Some((major, minor)) = fs::read_to_string(part_dir.join("dev"))
            .ok()
            .and_then(|t| parse_dev(&t))
        else {
            continue;
        };
        partitions.push(Part {
            name: entry.file_name().to_string_lossy().into_owned(),
            number,
            major,
            minor,
        });
    }
    partitions.sort_by_key(|p| p.number);
    Some(Disk {
        name: name.to_string(),
        major,
        minor,
        sectors,
        partitions,
    })
}

/// `MAJOR:MINOR` as sysfs writes it.
pub fn parse_dev(text: &str) -> Option<(u32, u32)> {
    let (major, minor) = text.trim().split_once(':')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// The name of partition `number` of `disk`: `vda1`, but `nvme0n1p1` and `mmcblk0p1` when the
/// disk's name ends in a digit.
pub fn partition_name(disk: &str, number: u32) -> String {
    if disk.ends_with(|c: char| c.is_ascii_digit()) {
        format!("{disk}p{number}")
    } else {
        format!("{disk}{number}")
    }
}

/// The kernel's name for a device given as `/dev/vda` or `vda`.
pub fn device_name(device: &str) -> &str {
    device.strip_prefix("/dev/").unwrap_or(device)
}

/// A block device node for `name` with this number in [`NODE_DIR`], created if missing.
pub fn node(name: &str, major: u32, minor: u32) -> io::Result<PathBuf> {
    node_in(Path::new(NODE_DIR), name, major, minor)
}

/// [`node`] in another folder (tests).
pub fn node_in(dir: &Path, name: &str, major: u32, minor: u32) -> io::Result<PathBuf> {
    use rustix::fs::{FileType, Mode, mknodat};
    fs::create_dir_all(dir)?;
    let path = dir.join(name);
    let _ = fs::remove_file(&path);
    mknodat(
        rustix::fs::CWD,
        &path,
        FileType::BlockDevice,
        Mode::from_raw_mode(0o600),
        rustix::fs::makedev(major, minor),
    )?;
    Ok(path)
}

/// What a device holds at its start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// Nothing a reader recognises: a blank disk.
    Blank,
    /// An MBR or a GPT.
    PartitionTable,
    /// A filesystem, with its type as mount(2) names it and its label.
    Filesystem { fstype: String, label: String },
}

/// What the device at `path` holds (its first 128 KiB).
pub fn probe(path: &Path) -> io::Result<Content> {
    let mut file = fs::File::open(path)?;
    let mut head = vec![0u8; 128 * 1024];
    let mut filled = 0;
    while filled < head.len() {
        match file.read(&mut head[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    head.truncate(filled);
    // btrfs keeps its superblock at 64 KiB.
    let mut btrfs = vec![0u8; 0x1000];
    let btrfs_ok =
        file.seek(SeekFrom::Start(0x10000)).is_ok() && file.read_exact(&mut btrfs).is_ok();
    Ok(recognise(&head, btrfs_ok.then_some(btrfs.as_slice())))
}

/// [`probe`] on bytes: `head` from the device's start, `btrfs` its 4 KiB at 64 KiB.
pub fn recognise(head: &[u8], btrfs: Option<&[u8]>) -> Content {
    let at = |offset: usize, len: usize| head.get(offset..offset + len);
    // ext2/3/4: the superblock at 1024, magic 0xEF53 at +56, the label at +120 (16 bytes).
    if at(1024 + 56, 2) == Some(&[0x53, 0xef]) {
        return Content::Filesystem {
            fstype: "ext4".into(),
            label: label(at(1024 + 120, 16).unwrap_or_default()),
        };
    }
    // XFS: "XFSB" at 0, the label at 108 (12 bytes).
    if at(0, 4) == Some(b"XFSB") {
        return Content::Filesystem {
            fstype: "xfs".into(),
            label: label(at(108, 12).unwrap_or_default()),
        };
    }
    // btrfs: "_BHRfS_M" at 64 KiB + 64, the label at 64 KiB + 299 (256 bytes).
    if let Some(sb) = btrfs
        && sb.get(64..72) == Some(b"_BHRfS_M")
    {
        return Content::Filesystem {
            fstype: "btrfs".into(),
            label: label(sb.get(299..299 + 256).unwrap_or_default()),
        };
    }
    // GPT: "EFI PART" in LBA 1; MBR: the 0x55AA signature with at least one partition entry.
    if at(512, 8) == Some(b"EFI PART") {
        return Content::PartitionTable;
    }
    if at(510, 2) == Some(&[0x55, 0xaa])
        && (0..4).any(|i| at(446 + 16 * i + 4, 1).is_some_and(|t| t[0] != 0))
    {
        return Content::PartitionTable;
    }
    Content::Blank
}

fn label(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_of_disks_whose_name_ends_in_a_digit_get_a_p() {
        assert_eq!(partition_name("vda", 1), "vda1");
        assert_eq!(partition_name("nvme0n1", 1), "nvme0n1p1");
        assert_eq!(device_name("/dev/sdb"), "sdb");
    }

    #[test]
    fn sysfs_is_read_into_disks_and_partitions() {
        let d = tempfile::tempdir().unwrap();
        let put = |p: &str, t: &str| {
            let path = d.path().join(p);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, t).unwrap();
        };
        put("vdb/dev", "254:16\n");
        put("vdb/size", "131072\n");
        put("vda/dev", "254:0\n");
        put("vda/size", "2048\n");
        put("vda/vda1/dev", "254:1\n");
        put("vda/vda1/partition", "1\n");
        put("loop0/dev", "7:0\n");
        put("loop0/size", "0\n");
        put("sr0/dev", "11:0\n");
        put("sr0/size", "100\n");
        put("bogus/dev", "nonsense\n");
        let found = disks(d.path());
        let names: Vec<&str> = found.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["vda", "vdb"]);
        assert_eq!(found[0].partitions[0].name, "vda1");
        assert_eq!(
            (found[1].major, found[1].minor, found[1].sectors),
            (254, 16, 131072)
        );
    }

    #[test]
    fn filesystems_and_partition_tables_are_recognised() {
        let mut head = vec![0u8; 4096];
        assert_eq!(recognise(&head, None), Content::Blank);
        head[510] = 0x55;
        head[511] = 0xaa;
        assert_eq!(recognise(&head, None), Content::Blank, "no partition entry");
        head[446 + 4] = 0x83;
        assert_eq!(recognise(&head, None), Content::PartitionTable);
        let mut ext = vec![0u8; 4096];
        ext[1024 + 56] = 0x53;
        ext[1024 + 57] = 0xef;
        ext[1024 + 120..1024 + 125].copy_from_slice(b"STATE");
        assert_eq!(
            recognise(&ext, None),
            Content::Filesystem {
                fstype: "ext4".into(),
                label: "STATE".into()
            }
        );
        assert_eq!(
            recognise(&[1, 2, 3], None),
            Content::Blank,
            "short reads are fine"
        );
    }
}
