//! A package's OCI image: one gzip layer, its config and manifest, written to the store and named.
//!
//! The config and manifest are written as JSON with a fixed key order and no `created` time, so
//! the manifest digest depends only on the image's content. (oci-spec's types keep labels in a
//! HashMap, whose order changes from run to run; that is why the JSON is built here.)

use std::collections::BTreeMap;

use oci_spec::image::{Descriptor, MediaType};
use serde_json::{Map, Value, json};

use super::PkgError;
use super::layer::Layer;
use crate::oci::{Digest, Store};

/// The PATH of every package image (Docker's default).
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What goes into the image config besides the layer.
#[derive(Debug, Clone, Default)]
pub struct ImageSpec {
    pub labels: BTreeMap<String, String>,
    pub env: Option<Vec<String>>,
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    pub workdir: Option<String>,
}

/// The config JSON (amd64/linux, one layer).
pub fn config_json(spec: &ImageSpec, layer: &Layer) -> Vec<u8> {
    let mut config = Map::new();
    let env = spec
        .env
        .clone()
        .unwrap_or_else(|| vec![DEFAULT_PATH.to_string()]);
    config.insert("Env".into(), json!(env));
    if let Some(e) = &spec.entrypoint {
        config.insert("Entrypoint".into(), json!(e));
    }
    if let Some(c) = &spec.cmd {
        config.insert("Cmd".into(), json!(c));
    }
    if let Some(w) = &spec.workdir {
        config.insert("WorkingDir".into(), json!(w));
    }
    if !spec.labels.is_empty() {
        config.insert("Labels".into(), json!(spec.labels));
    }
    let doc = json!({
        "architecture": "amd64",
        "os": "linux",
        "config": Value::Object(config),
        "rootfs": { "type": "layers", "diff_ids": [layer.diff_id] },
    });
    serde_json::to_vec(&doc).expect("a JSON value always serialises")
}

/// The manifest JSON for a config blob and a layer blob.
pub fn manifest_json(config: &[u8], layer: &Layer) -> Vec<u8> {
    let doc = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": Digest::of(config).to_string(),
            "size": config.len(),
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": Digest::of(&layer.gz).to_string(),
            "size": layer.gz.len(),
        }],
    });
    serde_json::to_vec(&doc).expect("a JSON value always serialises")
}

/// Writes the blobs and names the image `reference` (full form) in the store. Returns the
/// manifest digest.
pub fn store_image(
    store: &Store,
    reference: &str,
    spec: &ImageSpec,
    layer: &Layer,
) -> Result<Digest, PkgError> {
    let store_err = |source| PkgError::Store {
        reference: reference.to_string(),
        source,
    };
    let config = config_json(spec, layer);
    let manifest = manifest_json(&config, layer);
    // Shared GC lock: a concurrent `cache clean` must not collect blobs before they are named.
    let _guard = store.guard().map_err(store_err)?;
    store.put_blob(&layer.gz).map_err(store_err)?;
    store.put_blob(&config).map_err(store_err)?;
    let digest = store.put_blob(&manifest).map_err(store_err)?;
    let desc = Descriptor::new(
        MediaType::ImageManifest,
        manifest.len() as u64,
        digest.to_oci(),
    );
    store.tag(reference, desc).map_err(store_err)?;
    Ok(digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_parses_as_an_oci_config_with_labels_and_path() {
        let layer = Layer {
            gz: vec![1, 2, 3],
            diff_id: format!("sha256:{}", "0".repeat(64)),
        };
        let mut spec = ImageSpec::default();
        spec.labels.insert("b".into(), "2".into());
        spec.labels.insert("a".into(), "1".into());
        let config = config_json(&spec, &layer);
        assert_eq!(config, config_json(&spec, &layer));
        let parsed: oci_spec::image::ImageConfiguration = serde_json::from_slice(&config).unwrap();
        assert_eq!(parsed.architecture(), &oci_spec::image::Arch::Amd64);
        let c = parsed.config().as_ref().unwrap();
        assert_eq!(c.env().as_ref().unwrap(), &vec![DEFAULT_PATH.to_string()]);
        assert_eq!(c.labels().as_ref().unwrap()["a"], "1");
        let manifest: oci_spec::image::ImageManifest =
            serde_json::from_slice(&manifest_json(&config, &layer)).unwrap();
        assert_eq!(manifest.layers()[0].size(), 3);
        assert_eq!(
            manifest.config().digest().to_string(),
            Digest::of(&config).to_string()
        );
    }
}
