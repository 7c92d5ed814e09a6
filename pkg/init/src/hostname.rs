//! The machine's hostname: /etc/hostname, else derived from eth0's MAC address.

use std::fs;
use std::path::Path;

/// `/etc/hostname` if it names something; else `slipway-<MAC of eth0 without colons>`; else
/// `slipway`. Paths are relative to `root` so tests can use a prepared tree.
pub fn choose(root: &Path) -> String {
    let etc = fs::read_to_string(root.join("etc/hostname")).ok();
    let mac = fs::read_to_string(root.join("sys/class/net/eth0/address")).ok();
    choose_from(etc.as_deref(), mac.as_deref())
}

pub fn choose_from(etc_hostname: Option<&str>, eth0_mac: Option<&str>) -> String {
    if let Some(name) = etc_hostname.map(str::trim).filter(|n| !n.is_empty()) {
        return name.to_owned();
    }
    match eth0_mac.map(|m| m.trim().replace(':', "")) {
        Some(mac) if !mac.is_empty() && mac.chars().all(|c| c.is_ascii_hexdigit()) => {
            format!("slipway-{}", mac.to_ascii_lowercase())
        }
        _ => "slipway".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etc_hostname_wins() {
        assert_eq!(
            choose_from(Some("box1\n"), Some("52:54:00:12:34:56\n")),
            "box1"
        );
    }

    #[test]
    fn mac_of_eth0_without_colons_when_no_etc_hostname() {
        assert_eq!(
            choose_from(Some("  \n"), Some("52:54:00:AB:34:56\n")),
            "slipway-525400ab3456"
        );
        assert_eq!(
            choose_from(None, Some("52:54:00:12:34:56")),
            "slipway-525400123456"
        );
    }

    #[test]
    fn plain_slipway_without_either() {
        assert_eq!(choose_from(None, None), "slipway");
        assert_eq!(choose_from(None, Some("garbage!")), "slipway");
    }

    #[test]
    fn reads_files_under_a_root() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("sys/class/net/eth0")).unwrap();
        fs::write(
            dir.path().join("sys/class/net/eth0/address"),
            "de:ad:be:ef:00:01\n",
        )
        .unwrap();
        assert_eq!(choose(dir.path()), "slipway-deadbeef0001");
        fs::create_dir_all(dir.path().join("etc")).unwrap();
        fs::write(dir.path().join("etc/hostname"), "named\n").unwrap();
        assert_eq!(choose(dir.path()), "named");
    }
}
