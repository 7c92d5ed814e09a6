//! The persistent state disk (`pkg/format`, `pkg/mount`, `examples/state-disk.yml`): the first
//! boot finds a blank virtio disk, partitions and formats it and mounts it under /var, where a
//! service writes a file; the second boot with the same disk formats nothing and the service
//! finds the file (its count goes from 1 to 2). QEMU is started here with its own command line.
//!
//! Needs qemu-system-x86.

mod qemu_direct;

use std::time::Duration;

use qemu_direct::{boot, cache, raw_drive, slipway};

#[test]
fn a_state_disk_is_formatted_once_and_keeps_a_file_across_boots() {
    let dir = tempfile::tempdir().unwrap();
    let out = slipway(cache())
        .args(["build", "--name", "state", "--dir"])
        .arg(dir.path())
        .args([
            "examples/state-disk.yml",
            "tests/data/state-disk-poweroff.yml",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "build failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let disk = dir.path().join("disk.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let drive = raw_drive(&disk, ",if=virtio");
    let prefix = dir.path().join("state");

    let first = boot(&prefix, "", &drive, Duration::from_secs(240));
    let text = &first.console;
    for marker in [
        "format: /dev/vda1: ext4 filesystem labelled STATE",
        "mountie: /dev/vda1 (ext4, label STATE) mounted on /var/lib/state",
        "slipway-state: boot 1 of this disk",
    ] {
        assert!(text.contains(marker), "first boot: no {marker:?}:\n{text}");
    }
    assert!(first.clean, "first boot: no clean poweroff:\n{text}");
    // The host agrees: an MBR with one Linux partition now.
    let head = std::fs::read(&disk).unwrap();
    assert_eq!(&head[510..512], &[0x55, 0xaa], "no partition table");
    assert_eq!(head[446 + 4], 0x83, "not a Linux partition");

    let second = boot(&prefix, "", &drive, Duration::from_secs(240));
    let text = &second.console;
    for marker in [
        "format: /dev/vda1 holds the filesystem labelled STATE: nothing to do",
        "mountie: /dev/vda1 (ext4, label STATE) mounted on /var/lib/state",
        "slipway-state: boot 2 of this disk",
    ] {
        assert!(text.contains(marker), "second boot: no {marker:?}:\n{text}");
    }
    assert!(second.clean, "second boot: no clean poweroff:\n{text}");
}
