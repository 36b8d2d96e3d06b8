//! Which objects a request selects: the namespace in its path, its
//! `labelSelector` and its `fieldSelector`, with the API server's syntax and
//! semantics (e.g. `key!=value` also selects objects without the label).

use serde_json::{Map, Value};

/// Everything a LIST or WATCH request filters on.
pub(crate) struct ObjectFilter {
    namespace: Option<String>,
    labels: Vec<LabelRequirement>,
    fields: Vec<FieldRequirement>,
}

impl ObjectFilter {
    /// Errors describe the malformed selector, for a 400 response.
    pub fn new(
        namespace: Option<String>,
        label_selector: &str,
        field_selector: &str,
    ) -> Result<ObjectFilter, String> {
        Ok(ObjectFilter {
            namespace,
            labels: parse_labels(label_selector)?,
            fields: parse_fields(field_selector)?,
        })
    }

    pub fn matches(&self, object: &Value) -> bool {
        let metadata = &object["metadata"];
        let field = |name: &str| metadata[name].as_str().unwrap_or_default();
        let labels = metadata["labels"].as_object();
        self.namespace
            .as_deref()
            .is_none_or(|ns| field("namespace") == ns)
            && self.labels.iter().all(|r| r.matches(labels))
            && self.fields.iter().all(|r| r.matches(field(r.field)))
    }
}

enum LabelRequirement {
    Exists(String),
    NotExists(String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
}

impl LabelRequirement {
    fn matches(&self, labels: Option<&Map<String, Value>>) -> bool {
        let value = |key: &str| labels.and_then(|l| l.get(key)).and_then(Value::as_str);
        match self {
            LabelRequirement::Exists(key) => value(key).is_some(),
            LabelRequirement::NotExists(key) => value(key).is_none(),
            LabelRequirement::In(key, values) => {
                value(key).is_some_and(|v| values.iter().any(|w| w == v))
            }
            LabelRequirement::NotIn(key, values) => {
                !value(key).is_some_and(|v| values.iter().any(|w| w == v))
            }
        }
    }
}

/// Parses `a=b,c!=d,e,!f,g in (h,i),j notin (k)` (`==` also means `=`).
/// An empty selector selects everything.
fn parse_labels(selector: &str) -> Result<Vec<LabelRequirement>, String> {
    if selector.trim().is_empty() {
        return Ok(Vec::new());
    }
    split_top_level(selector)
        .into_iter()
        .map(|requirement| {
            parse_label_requirement(requirement.trim())
                .map_err(|why| format!("unable to parse requirement {requirement:?}: {why}"))
        })
        .collect()
}

fn parse_label_requirement(requirement: &str) -> Result<LabelRequirement, String> {
    if let Some(key) = requirement.strip_prefix('!') {
        return Ok(LabelRequirement::NotExists(label_key(key)?));
    }
    if let Some((head, set)) = requirement.split_once('(') {
        let set = set.strip_suffix(')').ok_or("missing closing parenthesis")?;
        let values = set
            .split(',')
            .map(|v| label_value(v.trim()))
            .collect::<Result<Vec<_>, _>>()?;
        return match head.split_whitespace().collect::<Vec<_>>()[..] {
            [key, "in"] => Ok(LabelRequirement::In(label_key(key)?, values)),
            [key, "notin"] => Ok(LabelRequirement::NotIn(label_key(key)?, values)),
            _ => Err("expected `key in (...)` or `key notin (...)`".into()),
        };
    }
    // `!=` before `=`, which it contains; `==` is a synonym of `=`.
    if let Some((key, value)) = requirement.split_once("!=") {
        return Ok(LabelRequirement::NotIn(
            label_key(key)?,
            vec![label_value(value)?],
        ));
    }
    if let Some((key, value)) = requirement
        .split_once("==")
        .or_else(|| requirement.split_once('='))
    {
        return Ok(LabelRequirement::In(
            label_key(key)?,
            vec![label_value(value)?],
        ));
    }
    Ok(LabelRequirement::Exists(label_key(requirement)?))
}

/// Splits on the commas that separate requirements, not those inside a
/// `(...)` value set.
fn split_top_level(selector: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in selector.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&selector[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&selector[start..]);
    parts
}

/// `[prefix/]name`, where both parts use the label alphabet.
fn label_key(key: &str) -> Result<String, String> {
    let key = key.trim();
    let name = key.rsplit_once('/').map_or(key, |(_, name)| name);
    let valid = !name.is_empty()
        && key.matches('/').count() <= 1
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c));
    if valid {
        Ok(key.to_owned())
    } else {
        Err(format!("invalid label key {key:?}"))
    }
}

/// Possibly empty; letters, digits, `-`, `_` and `.`.
fn label_value(value: &str) -> Result<String, String> {
    let value = value.trim();
    if value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        Ok(value.to_owned())
    } else {
        Err(format!("invalid label value {value:?}"))
    }
}

/// The fields every resource can be selected on. Real API servers add a few
/// per type (e.g. `spec.clusterIP`), which nothing here needs.
const SELECTABLE_FIELDS: [&str; 2] = ["metadata.name", "metadata.namespace"];

struct FieldRequirement {
    /// One of [`SELECTABLE_FIELDS`], as the metadata key (`name`, `namespace`).
    field: &'static str,
    value: String,
    equal: bool,
}

impl FieldRequirement {
    fn matches(&self, actual: &str) -> bool {
        (actual == self.value) == self.equal
    }
}

/// Parses `metadata.name=x,metadata.namespace!=y` (`==` also means `=`).
fn parse_fields(selector: &str) -> Result<Vec<FieldRequirement>, String> {
    if selector.trim().is_empty() {
        return Ok(Vec::new());
    }
    selector.split(',').map(parse_field_requirement).collect()
}

fn parse_field_requirement(requirement: &str) -> Result<FieldRequirement, String> {
    let (field, value, equal) = if let Some((f, v)) = requirement.split_once("!=") {
        (f, v, false)
    } else if let Some((f, v)) = requirement
        .split_once("==")
        .or_else(|| requirement.split_once('='))
    {
        (f, v, true)
    } else {
        return Err(format!(
            "invalid field selector requirement {requirement:?}"
        ));
    };
    let field = field.trim();
    let known = SELECTABLE_FIELDS
        .iter()
        .find(|&&known| known == field)
        .ok_or_else(|| {
            format!("{field:?} is not a known field selector: only \"metadata.name\", \"metadata.namespace\"")
        })?;
    Ok(FieldRequirement {
        field: known.trim_start_matches("metadata."),
        value: value.trim().to_owned(),
        equal,
    })
}
