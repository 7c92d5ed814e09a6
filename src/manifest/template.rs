//! LinuxKit's `@pkg:DIR` template: an image reference that names the image of a package folder
//! (DIR relative to the manifest), by the tag `slipway pkg show-tag DIR` prints.

use std::path::Path;

use super::error::ManifestError;
use super::merge::Document;
use super::path::FieldPath;

pub const PREFIX: &str = "@pkg:";

/// Something that knows a package folder's image reference (the package builder, or a test double).
pub type PkgTagger<'a> = &'a dyn Fn(&Path) -> Result<String, String>;

/// Replaces every `@pkg:` image reference of the document (kernel, init, containers, volumes).
pub fn expand(doc: &mut Document, tagger: PkgTagger<'_>) -> Result<(), ManifestError> {
    let source = doc.source.clone();
    let root = FieldPath::root();
    let one = |path: FieldPath, value: &mut String| -> Result<(), ManifestError> {
        let Some(dir) = value.strip_prefix(PREFIX) else {
            return Ok(());
        };
        let Some(base) = &source.dir else {
            return Err(ManifestError::value(
                &source,
                &path,
                "@pkg: templates need a manifest file (not standard input)",
            ));
        };
        let tag = tagger(&base.join(dir)).map_err(|e| {
            ManifestError::value(&source, &path, format!("cannot resolve `{value}`: {e}"))
        })?;
        *value = tag;
        Ok(())
    };
    let m = &mut doc.manifest;
    if let Some(image) = m.kernel.as_mut().and_then(|k| k.image.as_mut()) {
        one(root.key("kernel").key("image"), image)?;
    }
    for (i, r) in m.init.iter_mut().enumerate() {
        one(root.key("init").index(i), r)?;
    }
    for (section, list) in [
        ("onboot", &mut m.onboot),
        ("onshutdown", &mut m.onshutdown),
        ("services", &mut m.services),
    ] {
        for (i, c) in list.iter_mut().enumerate() {
            one(root.key(section).index(i).key("image"), &mut c.image)?;
        }
    }
    for (i, v) in m.volumes.iter_mut().enumerate() {
        if let Some(image) = v.image.as_mut() {
            one(root.key("volumes").index(i).key("image"), image)?;
        }
    }
    Ok(())
}
