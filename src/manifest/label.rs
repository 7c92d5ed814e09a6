//! The `org.mobyproject.config` image label: a package's defaults for containers of its image.
//!
//! Precedence, as in LinuxKit: a field written in the manifest (even an empty list) replaces the
//! label's; `capabilities.add` and `binds.add` append to the label's lists instead. Defaults from
//! the image config itself (entrypoint, env, working dir) come after both and are applied when the
//! OCI runtime config is generated.

use super::path::FieldPath;
use super::schema::Image;

/// The label key LinuxKit packages use.
pub const LABEL: &str = "org.mobyproject.config";

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("the {LABEL} label of {image} is invalid: {path}: {message}")]
pub struct LabelError {
    pub image: String,
    pub path: String,
    pub message: String,
}

/// Parses a label value (JSON, or YAML) into the container fields it sets.
pub fn parse_label(image: &str, text: &str) -> Result<Image, LabelError> {
    let fail = |path: &str, message: String| LabelError {
        image: image.to_string(),
        path: path.to_string(),
        message,
    };
    let value: serde_json::Value = serde_saphyr::from_str(text).map_err(|e| {
        fail(
            "(label)",
            e.to_string().lines().next().unwrap_or("").to_string(),
        )
    })?;
    let serde_json::Value::Object(mut map) = value else {
        return Err(fail(
            "(label)",
            "expected a mapping of container fields".into(),
        ));
    };
    for key in ["name", "image"] {
        if map.contains_key(key) {
            return Err(fail(key, format!("{key} cannot be set in metadata label")));
        }
        map.insert(key.into(), serde_json::Value::String(String::new()));
    }
    serde_path_to_error::deserialize(serde_json::Value::Object(map)).map_err(|e| {
        fail(
            &FieldPath::from_serde(e.path()).to_string(),
            e.inner().to_string(),
        )
    })
}

/// Applies a manifest entry over its image's label defaults.
pub fn apply_label(entry: &Image, label: &Image) -> Image {
    let mut out = label.clone();
    out.name = entry.name.clone();
    out.image = entry.image.clone();
    macro_rules! replace {
        ($($field:ident),*) => { $( if entry.$field.is_some() { out.$field = entry.$field.clone(); } )* };
    }
    replace!(
        ambient,
        mounts,
        devices,
        tmpfs,
        command,
        env,
        cwd,
        net,
        pid,
        ipc,
        uts,
        userns,
        hostname,
        readonly,
        masked_paths,
        readonly_paths,
        uid,
        gid,
        additional_gids,
        no_new_privileges,
        oom_score_adj,
        rootfs_propagation,
        cgroups_path,
        resources,
        sysctl,
        rlimits,
        uid_mappings,
        gid_mappings,
        annotations,
        runtime,
        slipway
    );
    out.capabilities = appended(
        &entry.capabilities,
        &entry.capabilities_add,
        &label.capabilities,
        &label.capabilities_add,
    );
    out.capabilities_add = None;
    out.binds = appended(
        &entry.binds,
        &entry.binds_add,
        &label.binds,
        &label.binds_add,
    );
    out.binds_add = None;
    out
}

/// `list` from the manifest wins; otherwise the label's list followed by both `.add` lists.
fn appended(
    list: &Option<Vec<String>>,
    add: &Option<Vec<String>>,
    label_list: &Option<Vec<String>>,
    label_add: &Option<Vec<String>>,
) -> Option<Vec<String>> {
    if list.is_some() {
        return list.clone();
    }
    if label_list.is_none() && add.is_none() && label_add.is_none() {
        return None;
    }
    let mut out = label_list.clone().unwrap_or_default();
    out.extend(label_add.iter().flatten().cloned());
    out.extend(add.iter().flatten().cloned());
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(yaml: &str) -> Image {
        serde_saphyr::from_str(yaml).unwrap()
    }

    #[test]
    fn manifest_fields_override_label_fields() {
        let label = parse_label(
            "x",
            r#"{"pid":"host","readonly":true,"env":["A=1"],"capabilities":["CAP_SYS_ADMIN"]}"#,
        )
        .unwrap();
        let merged = apply_label(
            &entry("name: a\nimage: x\nreadonly: false\nenv: []\n"),
            &label,
        );
        assert_eq!(merged.pid.as_deref(), Some("host"));
        assert_eq!(merged.readonly, Some(false));
        assert_eq!(merged.env, Some(vec![]));
        assert_eq!(merged.capabilities, Some(vec!["CAP_SYS_ADMIN".to_string()]));
        assert_eq!(merged.name, "a");
    }

    #[test]
    fn add_lists_append_to_the_label() {
        let label =
            parse_label("x", "binds: [/dev:/dev]\ncapabilities: [CAP_SYS_ADMIN]\n").unwrap();
        let merged = apply_label(
            &entry(
                "name: a\nimage: x\nbinds.add: [/var:/var]\ncapabilities.add: [CAP_NET_ADMIN]\n",
            ),
            &label,
        );
        assert_eq!(
            merged.binds,
            Some(vec!["/dev:/dev".to_string(), "/var:/var".to_string()])
        );
        assert_eq!(
            merged.capabilities,
            Some(vec![
                "CAP_SYS_ADMIN".to_string(),
                "CAP_NET_ADMIN".to_string()
            ])
        );
        assert_eq!(merged.binds_add, None);
    }

    #[test]
    fn a_manifest_list_replaces_the_label_list_and_ignores_add() {
        let label = parse_label("x", "binds: [/dev:/dev]\n").unwrap();
        let merged = apply_label(
            &entry("name: a\nimage: x\nbinds: [/etc:/etc]\nbinds.add: [/var:/var]\n"),
            &label,
        );
        assert_eq!(merged.binds, Some(vec!["/etc:/etc".to_string()]));
    }

    #[test]
    fn label_may_not_set_name_or_unknown_fields() {
        assert_eq!(
            parse_label("img", r#"{"name":"x"}"#).unwrap_err().path,
            "name"
        );
        let e = parse_label("img", r#"{"capabilities":["CAP_A"],"colour":"red"}"#).unwrap_err();
        assert!(e.message.contains("unknown field `colour`"), "{e}");
        assert!(
            e.to_string()
                .starts_with("the org.mobyproject.config label of img is invalid")
        );
    }
}
