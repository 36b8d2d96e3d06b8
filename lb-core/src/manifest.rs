//! Reads Kubernetes manifests from a directory: the agent's configuration
//! when it runs without an API server, and the input of `lbctl` checks.
//!
//! Only Services (`v1`) and EndpointSlices (`discovery.k8s.io/v1`) matter;
//! `v1` `List`s (what `kubectl get -o yaml` prints) are unpacked, every
//! other kind is ignored. A file or object that cannot be read becomes a
//! [`ConfigError`] and never stops the others from loading.

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_wrong_types;

use std::fs;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_yaml::Value;

use crate::model::{self, object_label, ConfigError, Desired};

/// An object and where it was read from.
#[derive(Debug, Clone, PartialEq)]
pub struct Sourced<T> {
    pub source: PathBuf,
    /// 0-based position of the YAML document in the file.
    pub doc_index: usize,
    pub object: T,
}

/// Everything [`load_dir`] found, in file and document order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LoadedManifests {
    pub services: Vec<Sourced<Service>>,
    pub slices: Vec<Sourced<EndpointSlice>>,
    pub errors: Vec<ConfigError>,
}

impl LoadedManifests {
    /// The frontends these objects ask for on the node named `node_name`.
    /// Its `errors` are the model's only; loading errors stay in
    /// `self.errors`.
    pub fn desired_state(&self, node_name: Option<&str>) -> Desired {
        model::desired_state(
            node_name,
            self.services
                .iter()
                .map(|s| (&s.object, Some(s.source.as_path()))),
            self.slices
                .iter()
                .map(|s| (&s.object, Some(s.source.as_path()))),
        )
    }
}

/// Loads every manifest file in `dir` (see [`manifest_files`]).
pub fn load_dir(dir: &Path) -> LoadedManifests {
    let mut loaded = LoadedManifests::default();
    match manifest_files(dir) {
        Ok(files) => files.iter().for_each(|file| load_file(file, &mut loaded)),
        Err(e) => loaded.errors.push(ConfigError::new(
            Some(dir),
            "",
            "",
            format!("cannot list directory: {e}"),
        )),
    }
    loaded
}

/// A hash of the names and contents of `dir`'s manifest files: polling it
/// tells whether anything changed without parsing YAML.
pub fn fingerprint_dir(dir: &Path) -> io::Result<u64> {
    let mut hasher = DefaultHasher::new();
    for file in manifest_files(dir)? {
        file.file_name().hash(&mut hasher);
        fs::read(&file)?.hash(&mut hasher);
    }
    Ok(hasher.finish())
}

/// The `*.yaml` and `*.yml` files directly in `dir`, sorted by name.
/// Hidden files are skipped: editors write their temporary copies as such.
fn manifest_files(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let is_manifest = name.ends_with(".yaml") || name.ends_with(".yml");
        if is_manifest && !name.starts_with('.') && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

fn load_file(file: &Path, loaded: &mut LoadedManifests) {
    let text = match fs::read_to_string(file) {
        Ok(text) => text,
        Err(e) => {
            loaded.errors.push(ConfigError::new(
                Some(file),
                "",
                "",
                format!("cannot read: {e}"),
            ));
            return;
        }
    };
    for (index, document) in serde_yaml::Deserializer::from_str(&text).enumerate() {
        let doc = Document { file, index };
        match Value::deserialize(document) {
            Ok(Value::Null) => {}
            Ok(value) => doc.load(value, None, loaded),
            Err(e) => {
                // The parser cannot resynchronise after a syntax error (the
                // iterator would repeat it forever), so the rest of the file
                // is lost; the documents before it are loaded.
                loaded.errors.push(doc.error(
                    &doc.position(None),
                    "",
                    format!("invalid YAML: {e}"),
                ));
                break;
            }
        }
    }
}

/// One YAML document of a manifest file.
struct Document<'a> {
    file: &'a Path,
    index: usize,
}

impl Document<'_> {
    /// Loads the object in `value`; `item` is its index if it is an item of a `List`.
    fn load(&self, value: Value, item: Option<usize>, loaded: &mut LoadedManifests) {
        let label = self.label(&value, item);
        let api_version = value.get("apiVersion").and_then(Value::as_str);
        let kind = value.get("kind").and_then(Value::as_str);
        match (api_version, kind) {
            (Some("v1"), Some("Service")) => {
                self.parse(value, item, &label, loaded, |l| &mut l.services)
            }
            (Some("discovery.k8s.io/v1"), Some("EndpointSlice")) => {
                self.parse(value, item, &label, loaded, |l| &mut l.slices)
            }
            (Some("v1"), Some("List")) if item.is_none() => self.load_list(value, loaded),
            (Some(api_version), Some(kind)) => {
                tracing::debug!(file = %self.file.display(), api_version, kind, "ignoring object");
            }
            (None, _) => loaded.errors.push(self.error(
                &label,
                field(item, "apiVersion"),
                "missing or not a string",
            )),
            (_, None) => loaded.errors.push(self.error(
                &label,
                field(item, "kind"),
                "missing or not a string",
            )),
        }
    }

    fn load_list(&self, mut list: Value, loaded: &mut LoadedManifests) {
        let label = self.label(&list, None);
        match list.get_mut("items").map(std::mem::take) {
            None | Some(Value::Null) => {}
            Some(Value::Sequence(items)) => {
                for (i, item) in items.into_iter().enumerate() {
                    self.load(item, Some(i), loaded);
                }
            }
            Some(_) => loaded
                .errors
                .push(self.error(&label, "items", "not a list")),
        }
    }

    /// Deserialises `value` as a `T` and stores it in the vector `into`
    /// picks, or records an error naming the offending field.
    fn parse<T: DeserializeOwned>(
        &self,
        value: Value,
        item: Option<usize>,
        label: &str,
        loaded: &mut LoadedManifests,
        into: impl FnOnce(&mut LoadedManifests) -> &mut Vec<Sourced<T>>,
    ) {
        match serde_path_to_error::deserialize::<_, T>(value) {
            Ok(object) => {
                let sourced = Sourced {
                    source: self.file.to_path_buf(),
                    doc_index: self.index,
                    object,
                };
                into(loaded).push(sourced);
            }
            Err(e) => {
                let path = e.path();
                let path = if path.iter().next().is_none() {
                    String::new()
                } else {
                    path.to_string()
                };
                loaded.errors.push(self.error(
                    label,
                    field(item, &path),
                    e.into_inner().to_string(),
                ));
            }
        }
    }

    /// How errors name the object in `value` before it is known to be
    /// valid: `Service default/web`, or by position when it has no name.
    fn label(&self, value: &Value, item: Option<usize>) -> String {
        let metadata = |key: &str| {
            value
                .get("metadata")
                .and_then(|m| m.get(key))
                .and_then(Value::as_str)
        };
        match (value.get("kind").and_then(Value::as_str), metadata("name")) {
            (Some(kind), Some(name)) => object_label(kind, metadata("namespace"), name),
            (Some(kind), None) => format!("{kind} in {}", self.position(item)),
            (None, _) => self.position(item),
        }
    }

    /// `document 3` (counting from 1, as people do), or `document 3, item 0` in a `List`.
    fn position(&self, item: Option<usize>) -> String {
        match item {
            None => format!("document {}", self.index + 1),
            Some(i) => format!("document {}, item {i}", self.index + 1),
        }
    }

    fn error(
        &self,
        object: &str,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> ConfigError {
        ConfigError::new(Some(self.file), object, field, message)
    }
}

/// The field path as seen from the document: inside a `List`, under `items[i]`.
fn field(item: Option<usize>, path: &str) -> String {
    match (item, path.is_empty()) {
        (None, _) => path.to_string(),
        (Some(i), true) => format!("items[{i}]"),
        (Some(i), false) => format!("items[{i}].{path}"),
    }
}
