//! The discovery documents clients read before using an API: `/version`,
//! `/api`, `/apis` and the resource list of each served group version,
//! derived from [`Resource::ALL`] so they list exactly what is served.

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::routing::get;
use axum::{Json, Router};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    APIGroup, APIGroupList, APIResource, APIResourceList, APIVersions, GroupVersionForDiscovery,
};
use k8s_openapi::apimachinery::pkg::version::Info;

use super::resource::Resource;
use super::shared::Shared;

/// The only verbs served.
const VERBS: [&str; 3] = ["get", "list", "watch"];

pub(crate) fn routes(mut router: Router<Arc<Shared>>) -> Router<Arc<Shared>> {
    router = router
        .route("/version", get(|| async { Json(version()) }))
        .route("/api", get(|| async { Json(core_versions()) }))
        .route("/apis", get(|| async { Json(groups()) }));
    // Several resources share a group version, and a path routes once.
    let group_versions: BTreeSet<_> = Resource::ALL
        .iter()
        .map(|r| (r.group_version_path(), r.info().api_version))
        .collect();
    for (path, api_version) in group_versions {
        router = router.route(
            &path,
            get(move || async move { Json(resources(api_version)) }),
        );
    }
    router
}

fn version() -> Info {
    Info {
        major: "1".into(),
        minor: "33".into(),
        git_version: "v1.33.0-lb-fake".into(),
        git_tree_state: "clean".into(),
        compiler: "gc".into(),
        platform: "linux/amd64".into(),
        ..Info::default()
    }
}

/// The versions of the core group (`/api/v1`).
fn core_versions() -> APIVersions {
    let versions: BTreeSet<_> = Resource::ALL
        .iter()
        .map(|r| r.info())
        .filter(|info| info.group.is_empty())
        .map(|info| info.version.to_owned())
        .collect();
    APIVersions {
        versions: versions.into_iter().collect(),
        server_address_by_client_cidrs: Vec::new(),
    }
}

/// The named groups (`/apis/<group>/<version>`).
fn groups() -> APIGroupList {
    let group_versions: BTreeSet<_> = Resource::ALL
        .iter()
        .map(|r| r.info())
        .filter(|info| !info.group.is_empty())
        .map(|info| (info.group, info.api_version, info.version))
        .collect();
    let groups = group_versions
        .into_iter()
        .map(|(group, api_version, version)| {
            let version = GroupVersionForDiscovery {
                group_version: api_version.into(),
                version: version.into(),
            };
            APIGroup {
                name: group.into(),
                preferred_version: Some(version.clone()),
                server_address_by_client_cidrs: None,
                versions: vec![version],
            }
        })
        .collect();
    APIGroupList { groups }
}

fn resources(api_version: &str) -> APIResourceList {
    let resources = Resource::ALL
        .iter()
        .map(|r| r.info())
        .filter(|info| info.api_version == api_version)
        .map(|info| APIResource {
            name: info.plural.into(),
            singular_name: info.kind.to_lowercase(),
            namespaced: info.namespaced,
            kind: info.kind.into(),
            verbs: VERBS.map(String::from).to_vec(),
            ..APIResource::default()
        })
        .collect();
    APIResourceList {
        group_version: api_version.into(),
        resources,
    }
}
