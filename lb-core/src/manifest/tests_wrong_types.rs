//! Wrong types and missing fields in manifest files, as property tests:
//! valid Services and EndpointSlices in one file with one broken document
//! (a Service or an EndpointSlice) among them. The broken one gets exactly one error naming it and the
//! field; every other document still loads.

use std::fs;

use proptest::prelude::*;
use serde_yaml::{Mapping, Value};

use super::*;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::model::tests_bad_input::objects::{self, build_valid, shape, valid_set};

/// What is done to one field of the broken Service.
#[derive(Debug, Clone, Copy)]
enum Edit {
    /// The field gets this YAML value, of the wrong type.
    Set(&'static str, &'static str),
    /// The (required) field is taken out.
    Remove(&'static str),
}

fn service_edit() -> impl Strategy<Value = Edit> {
    prop::sample::select(vec![
        Edit::Set("spec.ports[0].port", "\"80\""),
        Edit::Set("spec.ports[0].port", "[80]"),
        Edit::Set("spec.ports[0].port", "80.5"),
        Edit::Set("spec.ports[0].port", "99999999999"),
        Edit::Set("spec.ports[0].port", "{number: 80}"),
        Edit::Set("spec.ports[0].nodePort", "true"),
        Edit::Set("spec.ports[0].protocol", "[TCP]"),
        Edit::Set("spec.ports", "{port: 80}"),
        Edit::Set("spec.ports", "80"),
        Edit::Set("spec.clusterIP", "[10.96.0.1]"),
        Edit::Set("spec.clusterIPs", "10.96.0.1"),
        Edit::Set("spec.type", "{a: b}"),
        Edit::Set("spec", "[]"),
        Edit::Set("spec", "web"),
        Edit::Set("metadata.labels", "[a, b]"),
        Edit::Set("metadata.namespace", "{}"),
        Edit::Set("spec.sessionAffinityConfig", "x"),
        Edit::Remove("spec.ports[0].port"),
    ])
}

fn slice_edit() -> impl Strategy<Value = Edit> {
    prop::sample::select(vec![
        Edit::Set("endpoints", "x"),
        Edit::Set("endpoints", "{a: b}"),
        Edit::Set("endpoints[0].addresses", "10.244.1.1"),
        Edit::Set("endpoints[0].conditions.ready", "\"yes\""),
        Edit::Set("endpoints[0].nodeName", "[node-a]"),
        Edit::Set("ports[0].port", "\"http\""),
        Edit::Set("ports", "{}"),
        Edit::Set("addressType", "[IPv4]"),
        Edit::Remove("addressType"),
    ])
}

/// The broken document: a Service or an EndpointSlice, and its edit.
#[derive(Debug, Clone, Copy)]
enum Broken {
    Service(Edit),
    Slice(Edit),
}

fn broken() -> impl Strategy<Value = Broken> {
    prop_oneof![
        service_edit().prop_map(Broken::Service),
        slice_edit().prop_map(Broken::Slice),
    ]
}

/// The value at `path` (`a.b[2].c`) in `root`, created as an empty
/// mapping where missing.
fn field_mut<'v>(root: &'v mut Value, path: &str) -> &'v mut Value {
    let mut value = root;
    for part in path.split('.') {
        let (key, index) = match part.split_once('[') {
            Some((key, rest)) => (key, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (part, None),
        };
        if !value.is_mapping() {
            *value = Value::Mapping(Mapping::new());
        }
        value = value
            .as_mapping_mut()
            .expect("just made a mapping")
            .entry(Value::from(key))
            .or_insert(Value::Null);
        if let Some(i) = index {
            value = &mut value[i];
        }
    }
    value
}

fn apply(edit: Edit, document: &mut Value) {
    match edit {
        Edit::Set(path, yaml) => {
            *field_mut(document, path) = serde_yaml::from_str(yaml).expect("test YAML");
        }
        Edit::Remove(path) => {
            let parent = match path.rsplit_once('.') {
                Some((parent, key)) => field_mut(document, parent)
                    .as_mapping_mut()
                    .map(|m| (m, key)),
                None => document.as_mapping_mut().map(|m| (m, path)),
            };
            if let Some((map, key)) = parent {
                map.remove(key);
            }
        }
    }
}

fn document<T: serde::Serialize>(object: &T) -> Value {
    serde_yaml::to_value(object).expect("k8s objects serialise")
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 500,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn wrong_type_is_one_error_and_the_other_documents_load(
        valid in valid_set(),
        shape in shape(),
        broken in broken(),
        position in any::<prop::sample::Index>(),
    ) {
        let (services, slices) = build_valid(&valid);
        let mut documents: Vec<Value> = services.iter().map(document).collect();
        documents.extend(slices.iter().map(document));
        let (mut bad, edit, kind, name) = match broken {
            Broken::Service(edit) => {
                let service = objects::service("zz-bad", "bad", "10.97.0.1", 32_000, &shape);
                (document(&service), edit, "Service", "bad")
            }
            Broken::Slice(edit) => {
                let slice = objects::slice("zz-bad", "bad-slice", Some("bad"), &shape);
                (document(&slice), edit, "EndpointSlice", "bad-slice")
            }
        };
        apply(edit, &mut bad);
        let at = position.index(documents.len() + 1);
        documents.insert(at, bad);
        let text: Vec<String> = (documents.iter())
            .map(|d| serde_yaml::to_string(d).expect("YAML"))
            .collect();
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("all.yaml");
        fs::write(&file, text.join("---\n")).expect("write");

        let loaded = load_dir(dir.path());
        // A missing number reads as 0 (k8s-openapi's default), which the
        // model then reports: what the user sees is both lists.
        let desired = loaded.desired_state(Some("node-a"));
        let errors: Vec<&ConfigError> = loaded.errors.iter().chain(&desired.errors).collect();
        prop_assert_eq!(errors.len(), 1, "{:?}", errors);
        let error = errors[0];
        let (Edit::Set(field, _) | Edit::Remove(field)) = edit;
        // A namespace that is not a string: the default one.
        let namespace = if field == "metadata.namespace" { "default" } else { "zz-bad" };
        prop_assert_eq!(&error.object, &format!("{kind} {namespace}/{name}"));
        prop_assert_eq!(&error.field, field, "{}", error);
        prop_assert_eq!(error.file.as_deref(), Some(file.as_path()));
        let is_bad = |meta: &ObjectMeta| meta.name.as_deref() == Some(name);
        let loaded_services: Vec<Service> = (loaded.services.iter())
            .filter(|s| !is_bad(&s.object.metadata))
            .map(|s| s.object.clone())
            .collect();
        let loaded_slices: Vec<EndpointSlice> = (loaded.slices.iter())
            .filter(|s| !is_bad(&s.object.metadata))
            .map(|s| s.object.clone())
            .collect();
        prop_assert_eq!(loaded_services, services);
        prop_assert_eq!(loaded_slices, slices);
    }
}
