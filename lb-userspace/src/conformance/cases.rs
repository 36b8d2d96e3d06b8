//! The scenarios, one module per section of the catalogue.

mod clusterip;
mod reject;

use super::{Case, NotRun};

pub fn all() -> Vec<Case> {
    [clusterip::cases(), reject::cases()]
        .into_iter()
        .flatten()
        .collect()
}

pub fn not_run() -> Vec<NotRun> {
    [clusterip::not_run()].into_iter().flatten().collect()
}
