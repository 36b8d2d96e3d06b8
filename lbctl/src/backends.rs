//! `backend list`: the backend map, each backend with the frontend slots
//! that name it.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{decode::Endpoint, table::Table, MapId, Report, Snapshot};

/// The maps [`backend_list`] needs.
pub const READS: &[MapId] = &[MapId::Backends, MapId::Services];

/// JSON: `{"backends": [BackendEntry, ...]}`, sorted by id.
#[derive(Debug, Serialize)]
pub struct BackendList {
    pub backends: Vec<BackendEntry>,
}

#[derive(Debug, Serialize)]
pub struct BackendEntry {
    pub id: u32,
    pub address: Endpoint,
    /// `BACKEND_F_*` bits.
    pub flags: u8,
    /// The slots naming this backend, sorted; empty for an unused backend.
    pub frontends: Vec<SlotRef>,
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct SlotRef {
    pub frontend: Endpoint,
    pub slot: u16,
}

pub fn backend_list(snapshot: &Snapshot) -> BackendList {
    let mut refs: BTreeMap<u32, Vec<SlotRef>> = BTreeMap::new();
    for (key, value) in snapshot.services.iter().filter(|(key, _)| key.slot != 0) {
        let slot_ref = SlotRef {
            frontend: Endpoint::frontend(key),
            slot: key.slot,
        };
        refs.entry(value.backend_id).or_default().push(slot_ref);
    }
    let backends = snapshot
        .backends
        .iter()
        .map(|(&id, backend)| {
            let mut frontends = refs.remove(&id).unwrap_or_default();
            // The map's key order is by raw (network-order) bytes.
            frontends.sort();
            BackendEntry {
                id,
                address: Endpoint::backend(backend),
                flags: backend.flags,
                frontends,
            }
        })
        .collect();
    BackendList { backends }
}

impl Report for BackendList {
    fn table(&self) -> String {
        let mut table = Table::new(["ID", "ADDRESS", "FLAGS", "FRONTENDS"]).right_align(&[0]);
        for backend in &self.backends {
            let frontends: Vec<String> = backend
                .frontends
                .iter()
                .map(|r| format!("{} (slot {})", r.frontend, r.slot))
                .collect();
            table.row(vec![
                backend.id.to_string(),
                backend.address.to_string(),
                format!("{:#04x}", backend.flags),
                if frontends.is_empty() {
                    "-".to_owned()
                } else {
                    frontends.join(", ")
                },
            ]);
        }
        table.render()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{render, testutil::*, Format};

    #[test]
    fn backends_with_their_frontends() {
        let mut s = Snapshot::default();
        add_service(&mut s, "10.96.0.10", 80, 1, &[7]);
        add_service(&mut s, "10.96.0.9", 8080, 2, &[9, 7]);
        add_backend(&mut s, 7, "10.244.1.5", 8080);
        add_backend(&mut s, 12, "10.244.3.3", 53);
        let list = backend_list(&s);
        assert_eq!(
            list.table(),
            "\
ID  ADDRESS              FLAGS  FRONTENDS
 7  10.244.1.5:8080/tcp  0x00   10.96.0.9:8080/tcp (slot 2), 10.96.0.10:80/tcp (slot 1)
12  10.244.3.3:53/tcp    0x00   -
"
        );
        let json: serde_json::Value = serde_json::from_str(&render(&list, Format::Json)).unwrap();
        assert_eq!(
            json["backends"][0],
            serde_json::json!({
                "id": 7,
                "address": {"ip": "10.244.1.5", "port": 8080, "proto": "tcp"},
                "flags": 0,
                "frontends": [
                    {"frontend": {"ip": "10.96.0.9", "port": 8080, "proto": "tcp"}, "slot": 2},
                    {"frontend": {"ip": "10.96.0.10", "port": 80, "proto": "tcp"}, "slot": 1},
                ],
            })
        );
    }
}
