//! What the engine reads from a container's cgroup: how many processes the kernel's OOM killer
//! killed in it. Read when a run ends, before the runtime removes the cgroup; each run has a
//! cgroup of its own, so the count is the run's.
//!
//! The cgroup is the bundle's `linux.cgroupsPath` (libcontainer's cgroupfs manager puts an
//! absolute path under each hierarchy's root). On cgroup v2 (Slipway's images) the count is the
//! `oom_kill` line of `memory.events`; on v1 or hybrid hosts, where the memory controller is in
//! its own hierarchy, the `oom_kill` line of `memory.oom_control`.

use std::path::{Path, PathBuf};

/// Where cgroup hierarchies are mounted.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The `cgroupsPath` of `bundle/config.json`, when it names one.
pub fn cgroups_path(bundle: &Path) -> Option<PathBuf> {
    let text = std::fs::read(bundle.join("config.json")).ok()?;
    let config: serde_json::Value = serde_json::from_slice(&text).ok()?;
    let path = config["linux"]["cgroupsPath"].as_str()?;
    // `slice:prefix:name` is systemd's notation, which the engine does not use.
    (!path.contains(':')).then(|| PathBuf::from(path.trim_start_matches('/')))
}

/// Makes the parents of a bundle's cgroup on a cgroup v2 host, before helper processes create
/// containers side by side: libcgroups makes each missing component with `create_dir` after an
/// existence check, so two containers under one new parent race and one fails with EEXIST.
pub fn make_parents(root: &Path, bundle: &Path) -> std::io::Result<()> {
    let Some(parent) = cgroups_path(bundle).and_then(|p| p.parent().map(Path::to_path_buf)) else {
        return Ok(());
    };
    if parent.as_os_str().is_empty() || !root.join("cgroup.controllers").exists() {
        return Ok(());
    }
    std::fs::create_dir_all(root.join(parent))
}

/// The `oom_kill` count of the cgroup `path` (relative to each hierarchy's root) under `root`,
/// from cgroup v2's `memory.events` or else v1's `memory.oom_control`. `None` when neither
/// can be read (no memory controller, or the cgroup is gone).
pub fn oom_kills(root: &Path, path: &Path) -> Option<u64> {
    [
        (root.join(path).join("memory.events")),
        (root.join("memory").join(path).join("memory.oom_control")),
    ]
    .iter()
    .find_map(|file| {
        let text = std::fs::read_to_string(file).ok()?;
        text.lines()
            .find_map(|line| line.strip_prefix("oom_kill "))
            .and_then(|n| n.trim().parse().ok())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_count_comes_from_v2_events_or_v1_oom_control() {
        let dir = tempfile::tempdir().unwrap();
        let v1 = dir.path().join("memory/engine/web");
        std::fs::create_dir_all(&v1).unwrap();
        std::fs::write(
            v1.join("memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
        )
        .unwrap();
        assert_eq!(oom_kills(dir.path(), Path::new("engine/web")), Some(2));
        let v2 = dir.path().join("engine/web");
        std::fs::create_dir_all(&v2).unwrap();
        std::fs::write(
            v2.join("memory.events"),
            "low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\noom_group_kill 0\n",
        )
        .unwrap();
        assert_eq!(oom_kills(dir.path(), Path::new("engine/web")), Some(1));
        assert_eq!(oom_kills(dir.path(), Path::new("engine/gone")), None);

        let bundle = dir.path().join("bundle");
        std::fs::create_dir_all(&bundle).unwrap();
        std::fs::write(
            bundle.join("config.json"),
            r#"{"linux": {"cgroupsPath": "/slipway/web"}}"#,
        )
        .unwrap();
        assert_eq!(cgroups_path(&bundle), Some(PathBuf::from("slipway/web")));
        std::fs::write(bundle.join("config.json"), r#"{"linux": {}}"#).unwrap();
        assert_eq!(cgroups_path(&bundle), None);
    }

    #[test]
    fn parents_are_made_on_cgroup_v2_only() {
        let root = tempfile::tempdir().unwrap();
        let bundle = tempfile::tempdir().unwrap();
        std::fs::write(
            bundle.path().join("config.json"),
            r#"{"linux": {"cgroupsPath": "/slipway/services/web"}}"#,
        )
        .unwrap();
        make_parents(root.path(), bundle.path()).unwrap();
        assert!(!root.path().join("slipway").exists(), "not a v2 hierarchy");
        std::fs::write(root.path().join("cgroup.controllers"), "cpu memory\n").unwrap();
        make_parents(root.path(), bundle.path()).unwrap();
        assert!(root.path().join("slipway/services").is_dir());
        assert!(
            !root.path().join("slipway/services/web").exists(),
            "the leaf is the helper's"
        );
        make_parents(root.path(), bundle.path()).unwrap();
    }
}
