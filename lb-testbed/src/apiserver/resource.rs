//! The resource types the fake API server serves, where they live in the URL
//! space, and how a stored object is keyed.

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::ListableResource;
use serde_json::Value;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Resource {
    Services,
    EndpointSlices,
    Nodes,
}

/// The names Kubernetes uses for a resource, taken from k8s-openapi so they
/// cannot drift from what kube-rs expects.
pub(crate) struct Info {
    /// `v1` or `group/version`.
    pub api_version: &'static str,
    /// Empty for the core group.
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub list_kind: &'static str,
    /// The URL path segment, e.g. `endpointslices`.
    pub plural: &'static str,
    pub namespaced: bool,
}

const fn info_of<K: ListableResource>(namespaced: bool) -> Info {
    Info {
        api_version: K::API_VERSION,
        group: K::GROUP,
        version: K::VERSION,
        kind: K::KIND,
        list_kind: K::LIST_KIND,
        plural: K::URL_PATH_SEGMENT,
        namespaced,
    }
}

impl Resource {
    pub const ALL: [Resource; 3] = [
        Resource::Services,
        Resource::EndpointSlices,
        Resource::Nodes,
    ];

    pub fn info(self) -> Info {
        match self {
            Resource::Services => info_of::<Service>(true),
            Resource::EndpointSlices => info_of::<EndpointSlice>(true),
            Resource::Nodes => info_of::<Node>(false),
        }
    }

    /// Where the resource's group version is served: `/api/v1` for the core
    /// group, `/apis/<group>/<version>` for the others.
    pub fn group_version_path(self) -> String {
        let info = self.info();
        if info.group.is_empty() {
            format!("/api/{}", info.version)
        } else {
            format!("/apis/{}", info.api_version)
        }
    }

    /// Position in per-resource tables.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// Identifies an object within its resource. Ordered like the API server
/// orders list results (namespace, then name), which pagination relies on.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct ObjectKey {
    /// Empty for cluster-scoped objects.
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn of(object: &Value) -> ObjectKey {
        let field = |name: &str| {
            object["metadata"][name]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        };
        ObjectKey {
            namespace: field("namespace"),
            name: field("name"),
        }
    }
}
