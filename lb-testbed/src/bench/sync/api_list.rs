//! The fake API server's own share of the initial sync: one client listing
//! every Service and EndpointSlice the way the agent's reflectors do (kube-rs,
//! 500 objects per page), with nothing else running. The fake server is no
//! etcd-backed API server, so its cost is reported, not assumed away.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _, Result};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams};
use kube::Client;

use crate::netns::NetNs;

/// kube-rs's (and client-go's) default page size, which the agent uses.
pub const PAGE_SIZE: u32 = 500;

/// Lists everything through `kubeconfig` from inside `ns`; returns the time
/// taken, after checking that `expected` objects of each kind came back.
pub fn time_full_list(ns: &NetNs, kubeconfig: &Path, expected: usize) -> Result<Duration> {
    let kubeconfig = kubeconfig.to_owned();
    ns.run(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("building a runtime for the list client")?
            .block_on(list_all(kubeconfig, expected))
    })?
}

async fn list_all(kubeconfig: PathBuf, expected: usize) -> Result<Duration> {
    let config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(&kubeconfig)?,
        &Default::default(),
    )
    .await
    .context("reading the fake API server's kubeconfig")?;
    let client = Client::try_from(config).context("building the list client")?;
    let start = Instant::now();
    let services = count_pages(Api::<Service>::all(client.clone())).await?;
    let slices = count_pages(Api::<EndpointSlice>::all(client)).await?;
    let took = start.elapsed();
    ensure!(
        services == expected && slices == expected,
        "the fake API server listed {services} Services and {slices} EndpointSlices, not {expected} of each"
    );
    Ok(took)
}

/// Follows the continue tokens to the end; returns the number of objects.
async fn count_pages<K>(api: Api<K>) -> Result<usize>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let mut params = ListParams::default().limit(PAGE_SIZE);
    let mut count = 0;
    loop {
        let page = api.list(&params).await.context("listing")?;
        count += page.items.len();
        match page.metadata.continue_.filter(|token| !token.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(count),
        }
    }
}
