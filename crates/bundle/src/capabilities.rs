//! The Linux capabilities a manifest may name, and the `all` / `none` keywords.

/// Every capability LinuxKit accepts (its `allCaps`), which is every capability of Linux 6.x.
pub const ALL: &[&str] = &[
    "CAP_AUDIT_CONTROL",
    "CAP_AUDIT_READ",
    "CAP_AUDIT_WRITE",
    "CAP_BLOCK_SUSPEND",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_KILL",
    "CAP_LEASE",
    "CAP_LINUX_IMMUTABLE",
    "CAP_MAC_ADMIN",
    "CAP_MAC_OVERRIDE",
    "CAP_MKNOD",
    "CAP_NET_ADMIN",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_RAW",
    "CAP_PERFMON",
    "CAP_SETFCAP",
    "CAP_SETGID",
    "CAP_SETPCAP",
    "CAP_SETUID",
    "CAP_SYSLOG",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_CHROOT",
    "CAP_SYS_MODULE",
    "CAP_SYS_NICE",
    "CAP_SYS_PACCT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_WAKE_ALARM",
];

/// What one entry of a capabilities list means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cap {
    All,
    None,
    One(&'static str),
}

/// Parses a capability as LinuxKit does: case-insensitive, `CAP_` prefix optional.
pub fn parse(name: &str) -> Option<Cap> {
    match name.to_ascii_lowercase().as_str() {
        "all" => return Some(Cap::All),
        "none" => return Some(Cap::None),
        _ => {}
    }
    let upper = name.to_ascii_uppercase();
    let full = if upper.starts_with("CAP_") {
        upper
    } else {
        format!("CAP_{upper}")
    };
    ALL.iter().find(|c| **c == full).map(|c| Cap::One(c))
}

/// Expands a list (with `all`/`none`) to a sorted, de-duplicated set of capability names.
pub fn expand(list: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for name in list {
        match parse(name) {
            Some(Cap::All) => out = ALL.iter().map(|s| s.to_string()).collect(),
            Some(Cap::None) => out.clear(),
            Some(Cap::One(c)) => out.push(c.to_string()),
            None => {}
        }
    }
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_case_insensitive_and_prefix_optional() {
        assert_eq!(parse("net_admin"), Some(Cap::One("CAP_NET_ADMIN")));
        assert_eq!(parse("CAP_SYS_ADMIN"), Some(Cap::One("CAP_SYS_ADMIN")));
        assert_eq!(parse("ALL"), Some(Cap::All));
        assert_eq!(parse("CAP_MAKE_COFFEE"), None);
    }

    #[test]
    fn keywords_expand() {
        assert_eq!(expand(&["all".into()]).len(), ALL.len());
        assert!(expand(&["CAP_CHOWN".into(), "none".into()]).is_empty());
        assert_eq!(
            expand(&["CAP_KILL".into(), "kill".into()]),
            vec!["CAP_KILL"]
        );
    }
}
