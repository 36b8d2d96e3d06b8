//! LIST: one page of the selected objects, from a consistent snapshot. Later
//! pages come from the same snapshot, identified by the continue token, like
//! etcd-backed lists; once the history no longer covers it they fail with
//! 410 Expired and the client must start over.

use serde_json::{json, Value};

use super::params::{ListFrom, ListQuery};
use super::resource::{ObjectKey, Resource};
use super::selectors::ObjectFilter;
use super::status::ApiError;
use super::store::{Page, Store};

/// Where the next page starts: after `after` in the snapshot at `rv`.
/// Encoded as `rv/namespace/name`, which no name can make ambiguous since
/// namespaces and names contain no `/`.
pub(crate) struct ContinueToken {
    rv: u64,
    after: ObjectKey,
}

impl ContinueToken {
    pub fn decode(token: &str) -> Option<ContinueToken> {
        let mut parts = token.splitn(3, '/');
        let rv = parts.next()?.parse().ok()?;
        let namespace = parts.next()?.to_owned();
        let name = parts.next()?.to_owned();
        Some(ContinueToken {
            rv,
            after: ObjectKey { namespace, name },
        })
    }

    fn encode(&self) -> String {
        format!("{}/{}/{}", self.rv, self.after.namespace, self.after.name)
    }
}

/// The `<Kind>List` object answering `query`.
pub(crate) fn page(
    store: &Store,
    resource: Resource,
    filter: &ObjectFilter,
    query: &ListQuery,
) -> Result<Value, ApiError> {
    let current = store.current_rv();
    if query.resource_version > current {
        return Err(ApiError::too_large(query.resource_version, current));
    }
    let (at, after) = match &query.from {
        ListFrom::Latest => (None, None),
        ListFrom::Exact(rv) => (Some(*rv), None),
        ListFrom::Continue(token) => (Some(token.rv), Some(&token.after)),
    };
    let Page { rv, objects, more } = store
        .page(resource, at, after, query.limit, |object| {
            filter.matches(object)
        })
        .map_err(|expired| match after {
            Some(_) => ApiError::continue_expired(),
            None => ApiError::expired(&expired),
        })?;
    let last = objects.last().map(|(key, _)| key.clone());
    let items: Vec<Value> = objects.into_iter().map(|(_, o)| Value::clone(&o)).collect();
    let mut metadata = json!({ "resourceVersion": rv.to_string() });
    if let (Some(after), true) = (last, more) {
        metadata["continue"] = ContinueToken { rv, after }.encode().into();
    }

    let info = resource.info();
    Ok(json!({
        "kind": info.list_kind,
        "apiVersion": info.api_version,
        "metadata": metadata,
        "items": items,
    }))
}
