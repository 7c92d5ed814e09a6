//! The rules a manifest must follow beyond its shape (LinuxKit's, plus Slipway's extension key).
//! Each rule reports the field path of the merged manifest; `Merged::locate` turns it into the
//! file, line and column where the offending value was written.

use std::collections::{BTreeMap, HashSet};
use std::str::FromStr;

use regex::Regex;

use super::capabilities;
use super::error::ManifestError;
use super::merge::Merged;
use super::path::FieldPath;
use super::schema::{
    File, IdRef, Image, Kernel, Manifest, ModuleSelection, Mount, Volume, resolve_id,
};

/// The 16 resource limits LinuxKit accepts in `rlimits` (without the `RLIMIT_` prefix).
const RLIMITS: &[&str] = &[
    "as",
    "core",
    "cpu",
    "data",
    "fsize",
    "locks",
    "memlock",
    "msgqueue",
    "nice",
    "nofile",
    "nproc",
    "rss",
    "rtprio",
    "rttime",
    "sigpending",
    "stack",
];

const PROPAGATIONS: &[&str] = &[
    "shared",
    "slave",
    "private",
    "rshared",
    "rslave",
    "rprivate",
    "unbindable",
    "runbindable",
];

/// Checks every rule; the first violation is returned.
pub fn validate(merged: &Merged) -> Result<(), ManifestError> {
    Checker {
        merged,
        m: &merged.manifest,
        ids: id_map(&merged.manifest),
    }
    .run()
}

/// The uid/gid every container name stands for: 100, 101, ... in onboot, onshutdown, services order.
pub fn id_map(m: &Manifest) -> BTreeMap<String, u32> {
    let mut ids = BTreeMap::new();
    let all = m.onboot.iter().chain(&m.onshutdown).chain(&m.services);
    for (n, image) in all.enumerate() {
        ids.insert(image.name.clone(), 100 + n as u32);
    }
    ids
}

/// Parses a duration of `x-slipway` (`500ms`, `1s`, `2m`).
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(text)
        .map_err(|e| format!("invalid duration {text:?}: {e} (write it like 1s or 500ms)"))
}

struct Checker<'a> {
    merged: &'a Merged,
    m: &'a Manifest,
    ids: BTreeMap<String, u32>,
}

type Check = Result<(), ManifestError>;

impl Checker<'_> {
    fn err(&self, path: &FieldPath, message: impl Into<String>) -> ManifestError {
        let (source, local) = self.merged.locate(path);
        ManifestError::value(source, &local, message)
    }

    fn run(&self) -> Check {
        let root = FieldPath::root();
        if let Some(k) = &self.m.kernel {
            if let Some(image) = &k.image {
                self.reference(&root.key("kernel").key("image"), image)?;
            }
            self.kernel_extension(k)?;
        }
        for (i, r) in self.m.init.iter().enumerate() {
            self.reference(&root.key("init").index(i), r)?;
        }
        self.volumes()?;
        for section in ["onboot", "onshutdown", "services"] {
            let list = match section {
                "onboot" => &self.m.onboot,
                "onshutdown" => &self.m.onshutdown,
                _ => &self.m.services,
            };
            for (i, image) in list.iter().enumerate() {
                self.container(&root.key(section).index(i), image, section == "services")?;
            }
        }
        let mut seen = HashSet::new();
        for (i, s) in self.m.services.iter().enumerate() {
            if !seen.insert(&s.name) {
                return Err(self.err(
                    &root.key("services").index(i).key("name"),
                    format!("duplicate service name `{}`", s.name),
                ));
            }
        }
        for (i, f) in self.m.files.iter().enumerate() {
            self.file(&root.key("files").index(i), f)?;
        }
        Ok(())
    }

    /// `kernel: x-slipway: modules:` is `default`, `all` or a list of module names.
    fn kernel_extension(&self, k: &Kernel) -> Check {
        let p = FieldPath::root()
            .key("kernel")
            .key("x-slipway")
            .key("modules");
        match k.slipway.as_ref().and_then(|x| x.modules.as_ref()) {
            None => Ok(()),
            Some(ModuleSelection::Set(s)) if s == "default" || s == "all" => Ok(()),
            Some(ModuleSelection::Set(s)) => Err(self.err(
                &p,
                format!(
                    "unknown module set `{s}`: expected default, all or a list of module names"
                ),
            )),
            Some(ModuleSelection::List(names)) => {
                let name_re = Regex::new("^[A-Za-z0-9_-]+$").expect("static regex");
                for (i, name) in names.iter().enumerate() {
                    if !name_re.is_match(name) {
                        return Err(self.err(
                            &p.index(i),
                            format!("invalid module name `{name}`: use the module's name, such as e1000e or nls_cp437"),
                        ));
                    }
                }
                Ok(())
            }
        }
    }

    fn reference(&self, path: &FieldPath, reference: &str) -> Check {
        if reference.is_empty() {
            return Err(self.err(path, "image reference is empty"));
        }
        oci_client::Reference::from_str(reference)
            .map(|_| ())
            .map_err(|e| self.err(path, format!("invalid image reference `{reference}`: {e}")))
    }

    fn volumes(&self) -> Check {
        let name_re = Regex::new("^[a-z0-9_-]*$").expect("static regex");
        let mut seen = HashSet::new();
        for (i, v) in self.m.volumes.iter().enumerate() {
            let p = FieldPath::root().key("volumes").index(i);
            if v.name.is_empty() || !name_re.is_match(&v.name) {
                return Err(self.err(
                    &p.key("name"),
                    format!(
                        "invalid volume name `{}`: use only a-z, 0-9, `_` and `-`",
                        v.name
                    ),
                ));
            }
            if !seen.insert(&v.name) {
                return Err(self.err(
                    &p.key("name"),
                    format!("duplicate volume name `{}`", v.name),
                ));
            }
            if let Some(image) = &v.image {
                self.reference(&p.key("image"), image)?;
            }
            match v.format.as_deref() {
                None | Some("filesystem") | Some("oci") => {}
                Some(other) => {
                    return Err(self.err(
                        &p.key("format"),
                        format!("unknown volume format `{other}`: expected `filesystem` or `oci`"),
                    ));
                }
            }
            if v.platforms.is_some() && v.format.as_deref() != Some("oci") {
                return Err(self.err(
                    &p.key("platforms"),
                    "`platforms` only applies to volumes with `format: oci`",
                ));
            }
        }
        Ok(())
    }

    fn volume(&self, name: &str) -> Option<&Volume> {
        self.m.volumes.iter().find(|v| v.name == name)
    }

    fn container(&self, p: &FieldPath, c: &Image, is_service: bool) -> Check {
        if c.name.is_empty() {
            return Err(self.err(&p.key("name"), "container name is empty"));
        }
        self.reference(&p.key("image"), &c.image)?;
        for (key, list) in [
            ("capabilities", &c.capabilities),
            ("capabilities.add", &c.capabilities_add),
            ("ambient", &c.ambient),
        ] {
            for (i, cap) in list.iter().flatten().enumerate() {
                if capabilities::parse(cap).is_none() {
                    return Err(self.err(&p.key(key).index(i), format!("unknown capability {cap}")));
                }
            }
        }
        for (key, list) in [("binds", &c.binds), ("binds.add", &c.binds_add)] {
            for (i, bind) in list.iter().flatten().enumerate() {
                self.bind(&p.key(key).index(i), bind)?;
            }
        }
        for (i, mount) in c.mounts.iter().flatten().enumerate() {
            self.mount(&p.key("mounts").index(i), mount)?;
        }
        for (i, d) in c.devices.iter().flatten().enumerate() {
            let dp = p.key("devices").index(i);
            if !matches!(d.kind.as_str(), "a" | "b" | "c" | "u" | "p") {
                return Err(self.err(
                    &dp.key("type"),
                    format!("unknown device type `{}`: expected a, b, c, u or p", d.kind),
                ));
            }
            if d.path == "all" {
                continue;
            }
            if !d.path.starts_with('/') {
                return Err(self.err(
                    &dp.key("path"),
                    format!("device path `{}` must be absolute (or `all`)", d.path),
                ));
            }
            match &d.mode {
                None => {
                    return Err(self.err(
                        &dp,
                        format!("device {} needs a `mode` (octal, e.g. \"0666\")", d.path),
                    ));
                }
                Some(mode) if u32::from_str_radix(mode, 8).is_err() => {
                    return Err(self.err(
                        &dp.key("mode"),
                        format!("invalid mode `{mode}`: expected octal, e.g. \"0666\""),
                    ));
                }
                _ => {}
            }
        }
        for (i, t) in c.tmpfs.iter().flatten().enumerate() {
            if !t.starts_with('/') {
                return Err(self.err(
                    &p.key("tmpfs").index(i),
                    format!("tmpfs `{t}` must start with an absolute destination"),
                ));
            }
        }
        if let Some(cwd) = &c.cwd
            && !cwd.starts_with('/')
        {
            return Err(self.err(
                &p.key("cwd"),
                format!("cwd `{cwd}` must be an absolute path"),
            ));
        }
        for key in ["net", "pid", "ipc", "uts", "userns"] {
            let value = match key {
                "net" => &c.net,
                "pid" => &c.pid,
                "ipc" => &c.ipc,
                "uts" => &c.uts,
                _ => &c.userns,
            };
            if let Some(v) = value
                && !(v.is_empty()
                    || ["host", "root", "new", "none"].contains(&v.as_str())
                    || v.starts_with('/'))
            {
                return Err(self.err(
                    &p.key(key),
                    format!(
                        "invalid {key} namespace `{v}`: expected host, new, none or a path to join"
                    ),
                ));
            }
        }
        if let Some(prop) = &c.rootfs_propagation
            && !PROPAGATIONS.contains(&prop.as_str())
        {
            return Err(self.err(
                &p.key("rootfsPropagation"),
                format!(
                    "invalid rootfsPropagation `{prop}`: expected one of {}",
                    PROPAGATIONS.join(", ")
                ),
            ));
        }
        self.id(&p.key("uid"), c.uid.as_ref())?;
        self.id(&p.key("gid"), c.gid.as_ref())?;
        for (i, g) in c.additional_gids.iter().flatten().enumerate() {
            self.id(&p.key("additionalGids").index(i), Some(g))?;
        }
        for (i, r) in c.rlimits.iter().flatten().enumerate() {
            self.rlimit(&p.key("rlimits").index(i), r)?;
        }
        if let Some(ext) = &c.slipway {
            self.extension(&p.key("x-slipway"), ext, &c.name, is_service)?;
        }
        Ok(())
    }

    fn bind(&self, p: &FieldPath, bind: &str) -> Check {
        let parts: Vec<&str> = bind.splitn(3, ':').collect();
        if parts.len() < 2 || parts[0].is_empty() || parts[1].is_empty() {
            return Err(self.err(
                p,
                format!("invalid bind `{bind}`: expected SOURCE:DESTINATION[:OPTIONS]"),
            ));
        }
        if !parts[1].starts_with('/') {
            return Err(self.err(
                p,
                format!("invalid bind `{bind}`: the destination must be an absolute path"),
            ));
        }
        let read_only = parts
            .get(2)
            .is_some_and(|o| o.split(',').any(|o| o == "ro"));
        self.volume_use(p, parts[0], read_only)
    }

    fn mount(&self, p: &FieldPath, m: &Mount) -> Check {
        if m.destination.is_none() && m.kind.is_none() && m.source.is_none() {
            return Err(self.err(
                p,
                "a mount needs at least a destination, a type or a source",
            ));
        }
        // The OCI runtime spec still allows a relative destination, taken relative to `/`, and
        // LinuxKit's own tests write one (`destination: writeable-host-etc`): accepted, with a
        // warning, as LinuxKit does; the bundle writer makes it absolute.
        if let Some(d) = &m.destination
            && !d.starts_with('/')
        {
            if d.is_empty() {
                return Err(self.err(&p.key("destination"), "mount destination is empty"));
            }
            let at = self.err(
                &p.key("destination"),
                format!("mount destination `{d}` is relative: taken as `/{d}`"),
            );
            tracing::warn!("{at}");
        }
        if let Some(src) = &m.source {
            let read_only = m.options.iter().flatten().any(|o| o == "ro");
            if m.kind.as_deref().is_none_or(|k| k == "bind") {
                return self.volume_use(&p.key("source"), src, read_only);
            }
        }
        Ok(())
    }

    /// A bind or mount source that is not an absolute path names a volume.
    fn volume_use(&self, p: &FieldPath, source: &str, read_only: bool) -> Check {
        if source.starts_with('/') {
            return Ok(());
        }
        match self.volume(source) {
            None => Err(self.err(
                p,
                format!("`{source}` is not an absolute path, nor a volume declared in `volumes`"),
            )),
            Some(v) if v.readonly == Some(true) && !read_only => Err(self.err(
                p,
                format!(
                    "volume `{source}` is read-only, but is bound read-write: add the `ro` option"
                ),
            )),
            Some(_) => Ok(()),
        }
    }

    fn id(&self, p: &FieldPath, id: Option<&IdRef>) -> Check {
        match id {
            Some(id) if resolve_id(&self.ids, id).is_none() => {
                let IdRef::Name(name) = id else {
                    unreachable!("numbers always resolve")
                };
                Err(self.err(
                    p,
                    format!("`{name}` is neither a number nor the name of a container"),
                ))
            }
            _ => Ok(()),
        }
    }

    fn rlimit(&self, p: &FieldPath, r: &str) -> Check {
        let parts: Vec<&str> = r.split(',').map(str::trim).collect();
        if parts.len() != 3 {
            return Err(self.err(p, format!("invalid rlimit `{r}`: expected NAME,SOFT,HARD")));
        }
        let lower = parts[0].to_ascii_lowercase();
        let name = lower.strip_prefix("rlimit_").unwrap_or(&lower);
        if !RLIMITS.contains(&name) {
            return Err(self.err(
                p,
                format!(
                    "unknown rlimit `{}`: expected one of {}",
                    parts[0],
                    RLIMITS.join(", ")
                ),
            ));
        }
        for v in &parts[1..] {
            if *v != "unlimited" && v.parse::<u64>().is_err() {
                return Err(self.err(
                    p,
                    format!(
                        "invalid rlimit value `{v}` in `{r}`: expected a number or `unlimited`"
                    ),
                ));
            }
        }
        Ok(())
    }

    fn extension(
        &self,
        p: &FieldPath,
        ext: &super::schema::Extension,
        name: &str,
        is_service: bool,
    ) -> Check {
        if let Some(restart) = &ext.restart {
            let ok = match restart.as_str() {
                "no" | "always" | "on-failure" => true,
                other => other
                    .strip_prefix("on-failure:")
                    .is_some_and(|n| n.parse::<u32>().is_ok()),
            };
            if !ok {
                return Err(self.err(
                    &p.key("restart"),
                    format!("invalid restart policy `{restart}`: expected no, always, on-failure or on-failure:N"),
                ));
            }
        }
        for (i, dep) in ext.depends_on.iter().flatten().enumerate() {
            let dp = p.key("dependsOn").index(i);
            if !is_service {
                return Err(self.err(&dp, "`dependsOn` applies to services only"));
            }
            if dep == name {
                return Err(self.err(&dp, format!("service `{name}` cannot depend on itself")));
            }
            if !self.m.services.iter().any(|s| &s.name == dep) {
                return Err(self.err(&dp, format!("`{dep}` is not a service of this manifest")));
            }
        }
        if let Some(grace) = &ext.stop_grace_period {
            let gp = p.key("stopGracePeriod");
            if !is_service {
                return Err(self.err(&gp, "`stopGracePeriod` applies to services only"));
            }
            parse_duration(grace).map_err(|e| self.err(&gp, e))?;
        }
        if let Some(timeout) = &ext.timeout {
            let tp = p.key("timeout");
            if is_service {
                return Err(self.err(
                    &tp,
                    "`timeout` applies to onboot and onshutdown containers only",
                ));
            }
            parse_duration(timeout).map_err(|e| self.err(&tp, e))?;
        }
        if ext.init.is_some() && !is_service {
            return Err(self.err(&p.key("init"), "`init` applies to services only"));
        }
        if let Some(hc) = &ext.healthcheck {
            let hp = p.key("healthcheck");
            if hc.test.is_empty() {
                return Err(self.err(&hp.key("test"), "the health check command is empty"));
            }
            for (key, value) in [
                ("interval", &hc.interval),
                ("timeout", &hc.timeout),
                ("startPeriod", &hc.start_period),
            ] {
                if let Some(v) = value {
                    parse_duration(v).map_err(|e| self.err(&hp.key(key), e))?;
                }
            }
        }
        Ok(())
    }

    fn file(&self, p: &FieldPath, f: &File) -> Check {
        if f.path.trim_matches('/').is_empty() {
            return Err(self.err(&p.key("path"), "file path is empty"));
        }
        let given: Vec<&str> = [
            ("contents", f.contents.is_some()),
            ("source", f.source.is_some()),
            ("metadata", f.metadata.is_some()),
            ("directory", f.directory == Some(true)),
            ("symlink", f.symlink.is_some()),
        ]
        .iter()
        .filter(|(_, set)| *set)
        .map(|(k, _)| *k)
        .collect();
        match given.as_slice() {
            [] => {
                return Err(self.err(
                    p,
                    format!("contents of file ({}) not specified: give one of contents, source, metadata, directory or symlink", f.path),
                ));
            }
            [_] => {}
            [_, second, ..] => {
                return Err(self.err(
                    &p.key(second),
                    format!("file {} has both {}: give exactly one of contents, source, metadata, directory or symlink", f.path, given.join(" and ")),
                ));
            }
        }
        if let Some(meta) = &f.metadata
            && meta != "yaml"
            && meta != "json"
        {
            return Err(self.err(
                &p.key("metadata"),
                format!("unknown metadata format `{meta}`: expected yaml or json"),
            ));
        }
        if let Some(mode) = &f.mode
            && u32::from_str_radix(mode, 8).map_or(true, |m| m > 0o7777)
        {
            return Err(self.err(
                &p.key("mode"),
                format!("invalid mode `{mode}`: expected octal, e.g. \"0644\""),
            ));
        }
        self.id(&p.key("uid"), f.uid.as_ref())?;
        self.id(&p.key("gid"), f.gid.as_ref())
    }
}
