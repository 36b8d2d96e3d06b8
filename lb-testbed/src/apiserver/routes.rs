//! The HTTP surface: the paths served, the request log and unavailability
//! switch in front of them, and the GET handlers.

use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::Value;

use super::discovery;
use super::list;
use super::params::{ListQuery, Params, WatchQuery};
use super::resource::{ObjectKey, Resource};
use super::shared::Shared;
use super::status::ApiError;
use super::watch;
use super::RecordedRequest;

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    let mut router = discovery::routes(Router::new());
    for resource in Resource::ALL {
        let info = resource.info();
        let base = resource.group_version_path();
        let all = format!("{base}/{}", info.plural);
        router = router.route(
            &all,
            get(
                move |State(shared): State<Arc<Shared>>, params: Params| async move {
                    collection(&shared, resource, None, &params)
                },
            ),
        );
        if info.namespaced {
            let in_namespace = format!("{base}/namespaces/{{namespace}}/{}", info.plural);
            router = router
                .route(
                    &in_namespace,
                    get(
                        move |State(shared): State<Arc<Shared>>,
                              Path(namespace): Path<String>,
                              params: Params| async move {
                            collection(&shared, resource, Some(namespace), &params)
                        },
                    ),
                )
                .route(
                    &format!("{in_namespace}/{{name}}"),
                    get(
                        move |State(shared): State<Arc<Shared>>,
                              Path((namespace, name)): Path<(String, String)>| async move {
                            object(&shared, resource, ObjectKey { namespace, name })
                        },
                    ),
                );
        } else {
            router = router.route(
                &format!("{all}/{{name}}"),
                get(
                    move |State(shared): State<Arc<Shared>>, Path(name): Path<String>| async move {
                        let namespace = String::new();
                        object(&shared, resource, ObjectKey { namespace, name })
                    },
                ),
            );
        }
    }
    router
        .fallback(|| async { ApiError::path_not_found() })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .layer(middleware::from_fn_with_state(shared.clone(), gate))
        .with_state(shared)
}

/// Logs every request, then refuses it while the server plays dead.
async fn gate(State(shared): State<Arc<Shared>>, request: Request, next: Next) -> Response {
    let uri = request.uri();
    shared.record(RecordedRequest {
        method: request.method().to_string(),
        path: uri.path().to_owned(),
        query: Params::from_uri(uri)
            .map(Params::into_pairs)
            .unwrap_or_default(),
    });
    if shared.is_unavailable() {
        return ApiError::unavailable().into_response();
    }
    next.run(request).await
}

/// GET on a collection: a LIST, or a WATCH with `watch=true`.
fn collection(
    shared: &Arc<Shared>,
    resource: Resource,
    namespace: Option<String>,
    params: &Params,
) -> Result<Response, ApiError> {
    let filter = params.filter(namespace)?;
    if params.is_watch()? {
        watch::respond(shared, resource, filter, WatchQuery::parse(params)?)
    } else {
        let query = ListQuery::parse(params)?;
        let list = list::page(&shared.store, resource, &filter, &query)?;
        Ok(Json(list).into_response())
    }
}

/// GET of one object by name.
fn object(shared: &Shared, resource: Resource, key: ObjectKey) -> Result<Json<Value>, ApiError> {
    match shared.store.get(resource, &key) {
        Some(object) => Ok(Json(Value::clone(&object))),
        None => Err(ApiError::object_not_found(resource, &key.name)),
    }
}
