//! The scenarios, one module per section of the catalogue.

pub mod affinity;
pub mod clusterip;
pub mod loadbalancer;
pub mod nodeport;
pub mod policies;
pub mod reject;
pub mod source_ip;
pub mod terminating;
pub mod topology;
pub mod udp_conntrack;

use super::{Case, NotRun};

pub fn all() -> Vec<Case> {
    [
        clusterip::cases(),
        reject::cases(),
        nodeport::cases(),
        affinity::cases(),
        source_ip::cases(),
        policies::cases(),
        terminating::cases(),
        udp_conntrack::cases(),
        loadbalancer::cases(),
        topology::cases(),
    ]
    .into_iter()
    .flatten()
    .collect()
}

pub fn not_run() -> Vec<NotRun> {
    [
        clusterip::not_run(),
        reject::not_run(),
        nodeport::not_run(),
        affinity::not_run(),
        source_ip::not_run(),
        policies::not_run(),
        terminating::not_run(),
        udp_conntrack::not_run(),
        loadbalancer::not_run(),
        topology::not_run(),
    ]
    .into_iter()
    .flatten()
    .collect()
}
