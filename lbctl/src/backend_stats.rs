//! `stats --backends`: packets and bytes forwarded to each backend, with
//! the Services whose slots name it. The datapath counts at the DNAT, so
//! these are the client-to-backend packets of the flows this node
//! balanced (replies are the backends' and not counted here).

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::{
    decode::Endpoint,
    table::{or_dash, Table},
    MapId, Report, Snapshot,
};

/// The maps [`backend_stats`] needs.
pub const READS: &[MapId] = &[
    MapId::Backends,
    MapId::Services,
    MapId::SvcNames,
    MapId::BackendStats,
];

/// JSON: `{"backends": [BackendStats, ...]}`, by backend id.
#[derive(Debug, Serialize)]
pub struct BackendStatsList {
    pub backends: Vec<BackendStats>,
}

#[derive(Debug, Serialize)]
pub struct BackendStats {
    pub id: u32,
    pub address: Endpoint,
    /// The Services (`namespace/name[:port]`, or the frontend when the
    /// agent has not named it) whose slots name this backend, sorted.
    pub services: Vec<String>,
    /// Null when the backend has no counters (an agent older than the
    /// counters map, or a backend written by hand).
    pub packets: Option<u64>,
    pub bytes: Option<u64>,
}

pub fn backend_stats(snapshot: &Snapshot) -> BackendStatsList {
    let name = |key: &lb_common::ServiceKey| {
        let master = snapshot
            .services
            .get(&lb_common::ServiceKey { slot: 0, ..*key });
        let named = master.and_then(|m| snapshot.svc_names.get(&m.rev_nat_id));
        named.map_or_else(
            || Endpoint::frontend(key).to_string(),
            |n| n.as_str().to_owned(),
        )
    };
    let mut services: BTreeMap<u32, BTreeSet<String>> = BTreeMap::new();
    for (key, slot) in snapshot.services.iter().filter(|(k, _)| k.slot != 0) {
        services
            .entry(slot.backend_id)
            .or_default()
            .insert(name(key));
    }
    let backends = (snapshot.backends.iter())
        .map(|(&id, backend)| {
            let counter = snapshot.backend_stats.get(&id);
            BackendStats {
                id,
                address: Endpoint::backend(backend),
                services: services
                    .remove(&id)
                    .unwrap_or_default()
                    .into_iter()
                    .collect(),
                packets: counter.map(|c| c.packets),
                bytes: counter.map(|c| c.bytes),
            }
        })
        .collect();
    BackendStatsList { backends }
}

impl Report for BackendStatsList {
    fn table(&self) -> String {
        let header = ["BACKEND", "ID", "SERVICES", "PACKETS", "BYTES"];
        let mut table = Table::new(header).right_align(&[1, 3, 4]);
        for b in &self.backends {
            let services = if b.services.is_empty() {
                "-".to_owned()
            } else {
                b.services.join(",")
            };
            table.row(vec![
                b.address.to_string(),
                b.id.to_string(),
                services,
                or_dash(b.packets),
                or_dash(b.bytes),
            ]);
        }
        table.render()
    }
}

#[cfg(test)]
mod tests {
    use lb_common::StatsCounter;

    use super::*;
    use crate::{render, testutil::*, Format};

    #[test]
    fn counters_are_shown_per_backend_with_its_services() {
        let mut s = Snapshot::default();
        add_service(&mut s, "10.96.0.10", 80, 1, &[7, 9]);
        add_service(&mut s, "10.96.0.11", 80, 2, &[7]);
        add_backend(&mut s, 7, "10.244.1.5", 8080);
        add_backend(&mut s, 9, "10.244.2.6", 8080);
        s.svc_names
            .insert(1, lb_common::SvcName::new("default/web"));
        let counted = StatsCounter {
            packets: 3,
            bytes: 180,
        };
        s.backend_stats.insert(7, counted);
        let list = backend_stats(&s);
        assert_eq!(
            list.table(),
            "\
BACKEND              ID  SERVICES                       PACKETS  BYTES
10.244.1.5:8080/tcp   7  10.96.0.11:80/tcp,default/web        3    180
10.244.2.6:8080/tcp   9  default/web                          -      -
"
        );
        let json: serde_json::Value = serde_json::from_str(&render(&list, Format::Json)).unwrap();
        assert_eq!(json["backends"][0]["packets"], 3);
        assert_eq!(json["backends"][1]["bytes"], serde_json::Value::Null);
    }
}
