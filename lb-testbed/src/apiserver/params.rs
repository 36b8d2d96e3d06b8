//! The query parameters of LIST and WATCH requests, parsed up front so that
//! anything malformed is a 400 Status rather than a guess.

use std::time::Duration;

use axum::extract::{FromRequestParts, Query};
use axum::http::request::Parts;
use axum::http::Uri;

use super::list::ContinueToken;
use super::selectors::ObjectFilter;
use super::status::ApiError;

/// How long a watch lasts when the client sets no `timeoutSeconds`: the API
/// server's default `--min-request-timeout`.
const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(1800);
/// Longer requested timeouts are cut to this, which keeps deadline
/// arithmetic far from overflowing.
const MAX_WATCH_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// The decoded query string, in order.
pub(crate) struct Params(Vec<(String, String)>);

impl Params {
    pub fn from_uri(uri: &Uri) -> Result<Params, ApiError> {
        Query::try_from_uri(uri)
            .map(|Query(pairs)| Params(pairs))
            .map_err(|rejection| ApiError::bad_request(rejection.body_text()))
    }

    pub fn into_pairs(self) -> Vec<(String, String)> {
        self.0
    }

    /// The first value of `key`; an empty value counts as unset, as in the
    /// API server.
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }

    /// Accepts what Go's `strconv.ParseBool` accepts.
    fn bool(&self, key: &str) -> Result<Option<bool>, ApiError> {
        self.get(key)
            .map(|v| match v {
                "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
                "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
                _ => Err(ApiError::bad_request(format!(
                    "{key}: invalid boolean {v:?}"
                ))),
            })
            .transpose()
    }

    fn number(&self, key: &str) -> Result<Option<u64>, ApiError> {
        self.get(key)
            .map(|v| {
                v.parse()
                    .map_err(|_| ApiError::bad_request(format!("{key}: invalid number {v:?}")))
            })
            .transpose()
    }

    /// `resourceVersion`, 0 when unset (which also means "any").
    fn resource_version(&self) -> Result<u64, ApiError> {
        self.get("resourceVersion")
            .map(|v| {
                v.parse()
                    .map_err(|_| ApiError::bad_request(format!("invalid resource version {v:?}")))
            })
            .transpose()
            .map(Option::unwrap_or_default)
    }

    pub fn is_watch(&self) -> Result<bool, ApiError> {
        Ok(self.bool("watch")?.unwrap_or(false))
    }

    /// The selection: the path's namespace plus the selector parameters.
    pub fn filter(&self, namespace: Option<String>) -> Result<ObjectFilter, ApiError> {
        ObjectFilter::new(
            namespace,
            self.get("labelSelector").unwrap_or_default(),
            self.get("fieldSelector").unwrap_or_default(),
        )
        .map_err(ApiError::bad_request)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Params {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Params, ApiError> {
        Params::from_uri(&parts.uri)
    }
}

/// Which state a LIST shows.
pub(crate) enum ListFrom {
    /// The latest state.
    Latest,
    /// The state at exactly this version (`resourceVersionMatch=Exact`).
    Exact(u64),
    /// The next page of an earlier list, from that list's snapshot.
    Continue(ContinueToken),
}

pub(crate) struct ListQuery {
    pub from: ListFrom,
    /// The requested resourceVersion (0 if unset): the state must not be
    /// older than it.
    pub resource_version: u64,
    /// Page size; `None` for everything.
    pub limit: Option<usize>,
}

impl ListQuery {
    pub fn parse(params: &Params) -> Result<ListQuery, ApiError> {
        let resource_version = params.resource_version()?;
        let rv_set = params.get("resourceVersion").is_some();
        let exact = match params.get("resourceVersionMatch") {
            None => false,
            Some(_) if !rv_set => {
                return Err(ApiError::bad_request(
                    "resourceVersionMatch is forbidden unless resourceVersion is provided",
                ))
            }
            Some("NotOlderThan") => false,
            Some("Exact") if resource_version == 0 => {
                return Err(ApiError::bad_request(
                    "resourceVersionMatch \"Exact\" is forbidden for resourceVersion \"0\"",
                ))
            }
            Some("Exact") => true,
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "unsupported resourceVersionMatch {other:?}"
                )))
            }
        };
        let from = match params.get("continue") {
            Some(_) if rv_set => {
                return Err(ApiError::bad_request(
                    "specifying resource version is not allowed when using continue",
                ))
            }
            Some(token) => ListFrom::Continue(
                ContinueToken::decode(token)
                    .ok_or_else(|| ApiError::bad_request("continue key is not valid"))?,
            ),
            None if exact => ListFrom::Exact(resource_version),
            None => ListFrom::Latest,
        };
        let limit = params
            .number("limit")?
            .filter(|&limit| limit > 0)
            .map(|limit| usize::try_from(limit).unwrap_or(usize::MAX));
        Ok(ListQuery {
            from,
            resource_version,
            limit,
        })
    }
}

/// Where a WATCH starts.
pub(crate) enum WatchStart {
    /// At the latest version, optionally after a synthetic ADDED event for
    /// every selected object (`resourceVersion` unset or 0, or
    /// `sendInitialEvents=true`).
    Now { initial_events: bool },
    /// After this version: replays the changes since then.
    After(u64),
}

pub(crate) struct WatchQuery {
    pub start: WatchStart,
    /// The requested resourceVersion (0 if unset).
    pub resource_version: u64,
    /// `allowWatchBookmarks`.
    pub bookmarks: bool,
    /// `sendInitialEvents=true`: a bookmark annotated
    /// `k8s.io/initial-events-end` follows the initial events.
    pub announce_initial_end: bool,
    pub timeout: Duration,
}

impl WatchQuery {
    pub fn parse(params: &Params) -> Result<WatchQuery, ApiError> {
        let resource_version = params.resource_version()?;
        let bookmarks = params.bool("allowWatchBookmarks")?.unwrap_or(false);
        let send_initial_events = params.bool("sendInitialEvents")?;
        if send_initial_events == Some(true) && !bookmarks {
            return Err(ApiError::bad_request(
                "sendInitialEvents requires allowWatchBookmarks=true",
            ));
        }
        let start = match send_initial_events {
            Some(true) => WatchStart::Now {
                initial_events: true,
            },
            initial if resource_version == 0 => WatchStart::Now {
                initial_events: initial != Some(false),
            },
            _ => WatchStart::After(resource_version),
        };
        let timeout = params
            .number("timeoutSeconds")?
            .map_or(DEFAULT_WATCH_TIMEOUT, Duration::from_secs)
            .min(MAX_WATCH_TIMEOUT);
        Ok(WatchQuery {
            start,
            resource_version,
            bookmarks,
            announce_initial_end: send_initial_events == Some(true),
            timeout,
        })
    }
}
