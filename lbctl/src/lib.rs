//! The library behind `lbctl`, the inspector of the maps lb-agent pins.
//!
//! Reading and showing are split so that all but the reading runs without
//! root or a kernel: [`read_snapshot`] copies the pinned maps, still in
//! lb-common's types and byte order, into a plain [`Snapshot`]; each command
//! module turns a snapshot into a [`Report`], which prints as an aligned
//! table or as JSON ([`render`]).
//!
//! Commands and the maps they read (`READS` in each module):
//! * `map list`: [`maplist`], from [`list_maps`] (every map, pin by pin);
//! * `map dump NAME`: [`dump`], one map;
//! * `service list`: [`services`]; `backend list`: [`backends`];
//! * `ct list`: [`conntrack`]; `stats`: [`stats`] (`--services` there too,
//!   `--backends` in [`backend_stats`]).
//!
//! JSON documents are stable: field names are those of the report structs
//! (documented there), IPv4 addresses are strings, ports and counters are
//! numbers, protocols are `"tcp"`, `"udp"` or the protocol number as a
//! string, conntrack directions `"forward"`, `"reply"` or the number as a
//! string, durations are integers in nanoseconds (`*_ns`).

pub mod affinity;
pub mod backend_stats;
pub mod backends;
pub mod checks;
pub mod conntrack;
pub mod decode;
pub mod diagnose;
pub mod dump;
pub mod explain;
pub mod lint;
pub mod maplist;
pub mod maps;
pub mod progs;
pub mod read_only;
pub mod services;
pub mod snapshot;
pub mod stats;
mod table;
#[cfg(test)]
mod testutil;

pub use lb_common::MapId;
pub use maps::{list_maps, read_snapshot, ReadError};
pub use snapshot::Snapshot;

/// Where lb-agent pins its maps unless told otherwise.
pub const DEFAULT_BPFFS: &str = "/sys/fs/bpf/lb";

/// What a command produces: a document that prints as a table or as JSON.
pub trait Report: serde::Serialize {
    /// Human-readable aligned table(s), each line ending with a newline.
    fn table(&self) -> String;

    /// Inconsistencies found in the maps; non-zero makes `lbctl` exit 1.
    fn findings(&self) -> usize {
        0
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Table,
    /// Pretty-printed JSON of the report.
    Json,
}

/// The report as `format`, ending with a newline.
pub fn render(report: &impl Report, format: Format) -> String {
    match format {
        Format::Table => report.table(),
        Format::Json => {
            // Reports are plain structs with string map keys, which
            // serde_json always accepts.
            let mut json = serde_json::to_string_pretty(report).expect("reports serialize to JSON");
            json.push('\n');
            json
        }
    }
}
