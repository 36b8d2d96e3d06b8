//! `service list`: the service map regrouped per frontend, joined with the
//! backend and rev-NAT maps, and checked for the inconsistencies that make
//! the datapath drop or mis-NAT packets.

use std::{collections::BTreeMap, fmt};

use lb_common::{RevNatId, ServiceValue, FILTER_BACKENDS, FILTER_FRONTENDS};
use serde::Serialize;

use super::{
    decode::{Endpoint, IpPort},
    table::{or_dash, Table},
    MapId, Report, Snapshot,
};

/// The maps [`service_list`] needs.
pub const READS: &[MapId] = &[
    MapId::Services,
    MapId::Backends,
    MapId::RevNat,
    MapId::SvcNames,
    MapId::Filter,
];

/// JSON: `{"services": [Service, ...]}`, sorted by frontend.
#[derive(Debug, Serialize)]
pub struct ServiceList {
    pub services: Vec<Service>,
}

#[derive(Debug, Serialize)]
pub struct Service {
    pub frontend: Endpoint,
    /// The Kubernetes Service, `namespace/name[:port]`; null when the
    /// agent has not named the frontend (yet).
    pub service: Option<String>,
    /// From the master entry (slot 0); null when it is missing, as are
    /// `count` and `flags`.
    pub rev_nat_id: Option<RevNatId>,
    /// Backend slots the datapath picks from (`1..=count`).
    pub count: Option<u16>,
    /// Backend slots the node's own clients (pods, host-network sockets)
    /// pick from (`1..=internal_count`): more than `count` only for an
    /// external frontend with externalTrafficPolicy Local, whose slots
    /// after `count` hold the cluster's other endpoints.
    pub internal_count: Option<u16>,
    pub flags: Option<u16>,
    /// Every backend slot in the map, by slot number.
    pub slots: Vec<Slot>,
    /// Empty when the frontend is consistent.
    pub problems: Vec<Problem>,
}

#[derive(Debug, Serialize)]
pub struct Slot {
    pub slot: u16,
    pub backend_id: u32,
    /// Null when `backend_id` is not in the backend map.
    pub backend: Option<Endpoint>,
}

/// JSON: `{"kind": "<snake_case variant>", <fields>}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Problem {
    /// Slots exist but no master entry: the datapath ignores the frontend.
    MasterMissing,
    /// A slot within `1..=internal_count` has no entry.
    SlotMissing { slot: u16 },
    /// A slot names a backend id that the backend map lacks.
    BackendMissing { slot: u16, backend_id: u32 },
    /// A slot above `internal_count`, never picked: left over by an update.
    SlotBeyondCount { slot: u16 },
    /// The rev-NAT id is not in the rev-NAT map.
    RevNatMissing { rev_nat_id: RevNatId },
    /// The rev-NAT map restores another address than this frontend's.
    RevNatMismatch {
        rev_nat_id: RevNatId,
        target: IpPort,
    },
    /// The filter is in use and the frontend's bit is clear.
    FrontendNotInFilter,
    /// The filter is in use and a slot's backend has no bit.
    BackendNotInFilter { slot: u16 },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::MasterMissing => {
                write!(
                    f,
                    "no master entry (slot 0): the datapath ignores this frontend"
                )
            }
            Problem::SlotMissing { slot } => {
                write!(
                    f,
                    "slot {slot} has no entry: packets that pick it are dropped"
                )
            }
            Problem::BackendMissing { slot, backend_id } => write!(
                f,
                "slot {slot}: backend {backend_id} is not in {}: packets that pick it are dropped",
                lb_common::MapId::Backends.name()
            ),
            Problem::SlotBeyondCount { slot } => {
                write!(
                    f,
                    "slot {slot} is beyond the count: never picked, left over"
                )
            }
            Problem::RevNatMissing { rev_nat_id } => write!(
                f,
                "rev-NAT id {rev_nat_id} is not in {}: replies are not reverse-NATed",
                lb_common::MapId::RevNat.name()
            ),
            Problem::RevNatMismatch { rev_nat_id, target } => {
                write!(
                    f,
                    "rev-NAT id {rev_nat_id} restores {target}, not this frontend"
                )
            }
            Problem::FrontendNotInFilter => write!(
                f,
                "no bit in {}: the datapath passes its packets as no Service",
                lb_common::MapId::Filter.name()
            ),
            Problem::BackendNotInFilter { slot } => write!(
                f,
                "slot {slot}: the backend has no bit in {}: its replies are not reverse-NATed",
                lb_common::MapId::Filter.name()
            ),
        }
    }
}

pub fn service_list(snapshot: &Snapshot) -> ServiceList {
    let mut frontends: BTreeMap<Endpoint, BTreeMap<u16, ServiceValue>> = BTreeMap::new();
    for (key, value) in &snapshot.services {
        frontends
            .entry(Endpoint::frontend(key))
            .or_default()
            .insert(key.slot, *value);
    }
    let services = frontends
        .into_iter()
        .map(|(frontend, slots)| service(snapshot, frontend, slots))
        .collect();
    ServiceList { services }
}

fn service(
    snapshot: &Snapshot,
    frontend: Endpoint,
    mut entries: BTreeMap<u16, ServiceValue>,
) -> Service {
    let master = entries.remove(&0);
    let mut problems = Vec::new();
    match master {
        None => problems.push(Problem::MasterMissing),
        Some(master) => {
            let rev_nat_id = master.rev_nat_id;
            match snapshot.revnat.get(&rev_nat_id).map(IpPort::revnat) {
                None => problems.push(Problem::RevNatMissing { rev_nat_id }),
                Some(target) if target != frontend.ip_port() => {
                    problems.push(Problem::RevNatMismatch { rev_nat_id, target })
                }
                Some(_) => {}
            }
            let used = master.for_internal_clients().count;
            let missing = (1..=used).filter(|slot| !entries.contains_key(slot));
            problems.extend(missing.map(|slot| Problem::SlotMissing { slot }));
            let vip_be = u32::from_ne_bytes(frontend.ip.octets());
            let (port_be, proto) = (frontend.port.to_be(), frontend.proto.0);
            if !snapshot.in_filter(FILTER_FRONTENDS, vip_be, port_be, proto) {
                problems.push(Problem::FrontendNotInFilter);
            }
        }
    }
    let mut slots = Vec::with_capacity(entries.len());
    for (slot, entry) in entries {
        let backend = snapshot
            .backends
            .get(&entry.backend_id)
            .map(Endpoint::backend);
        match snapshot.backends.get(&entry.backend_id) {
            None => problems.push(Problem::BackendMissing {
                slot,
                backend_id: entry.backend_id,
            }),
            Some(b) if !snapshot.in_filter(FILTER_BACKENDS, b.addr_be, b.port_be, b.proto) => {
                problems.push(Problem::BackendNotInFilter { slot })
            }
            Some(_) => {}
        }
        if master.is_some_and(|m| slot > m.for_internal_clients().count) {
            problems.push(Problem::SlotBeyondCount { slot });
        }
        slots.push(Slot {
            slot,
            backend_id: entry.backend_id,
            backend,
        });
    }
    let name = master
        .and_then(|m| snapshot.svc_names.get(&m.rev_nat_id))
        .map(|n| n.as_str().to_owned());
    Service {
        frontend,
        service: name,
        rev_nat_id: master.map(|m| m.rev_nat_id),
        count: master.map(|m| m.count),
        internal_count: master.map(|m| m.internal_count),
        flags: master.map(|m| m.flags),
        slots,
        problems,
    }
}

/// `count`, and `+n` when the node's own clients have `n` more slots.
fn count_cell(service: &Service) -> String {
    match (service.count, service.internal_count) {
        (Some(count), Some(internal)) if internal > count => {
            format!("{count}+{}", internal - count)
        }
        (count, _) => or_dash(count),
    }
}

impl Report for ServiceList {
    /// One row per backend slot, the frontend's columns only on its first;
    /// then the problems, one line each.
    fn table(&self) -> String {
        let header = [
            "FRONTEND", "SERVICE", "REVNAT", "COUNT", "FLAGS", "SLOT", "BACKEND", "ADDRESS",
        ];
        let mut table = Table::new(header);
        for service in &self.services {
            let mut frontend_cells = vec![
                service.frontend.to_string(),
                or_dash(service.service.as_deref()),
                or_dash(service.rev_nat_id),
                count_cell(service),
                or_dash(service.flags.map(|flags| format!("{flags:#06x}"))),
            ];
            if service.slots.is_empty() {
                frontend_cells.extend(["-", "-", "-"].map(String::from));
                table.row(frontend_cells);
                continue;
            }
            for slot in &service.slots {
                let address = match slot.backend {
                    Some(backend) => backend.to_string(),
                    None => format!("! not in {}", lb_common::MapId::Backends.name()),
                };
                // After the first slot, blanks under the frontend columns.
                let mut row = std::mem::replace(&mut frontend_cells, vec![String::new(); 5]);
                row.extend([slot.slot.to_string(), slot.backend_id.to_string(), address]);
                table.row(row);
            }
        }
        let mut out = table.render();
        if self.findings() > 0 {
            out.push_str(&format!("\nInconsistencies ({}):\n", self.findings()));
            for service in &self.services {
                for problem in &service.problems {
                    out.push_str(&format!("  {}: {problem}\n", service.frontend));
                }
            }
        }
        out
    }

    fn findings(&self) -> usize {
        self.services.iter().map(|s| s.problems.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use lb_common::{filter_slot, RevNat, FILTER_VALID, FILTER_VALID_WORD};

    use super::*;
    use crate::{render, testutil::*, Format};

    #[test]
    fn consistent_service_decodes_byte_order() {
        let mut s = Snapshot::default();
        add_service(&mut s, "10.96.0.10", 80, 1, &[7, 9]);
        add_backend(&mut s, 7, "10.244.1.5", 8080);
        add_backend(&mut s, 9, "10.244.2.6", 8080);
        s.svc_names
            .insert(1, lb_common::SvcName::new("default/web:http"));
        let list = service_list(&s);
        assert_eq!(list.findings(), 0);
        assert_eq!(
            list.table(),
            "\
FRONTEND           SERVICE           REVNAT  COUNT  FLAGS   SLOT  BACKEND  ADDRESS
10.96.0.10:80/tcp  default/web:http  1       2      0x0000  1     7        10.244.1.5:8080/tcp
                                                            2     9        10.244.2.6:8080/tcp
"
        );
        let json: serde_json::Value = serde_json::from_str(&render(&list, Format::Json)).unwrap();
        assert_eq!(
            json["services"][0]["frontend"],
            serde_json::json!({"ip": "10.96.0.10", "port": 80, "proto": "tcp"})
        );
        assert_eq!(
            json["services"][0]["slots"][1]["backend"]["ip"],
            "10.244.2.6"
        );
        assert_eq!(json["services"][0]["problems"], serde_json::json!([]));
        assert_eq!(json["services"][0]["service"], "default/web:http");
    }

    #[test]
    fn slots_for_the_nodes_own_clients_are_counted_not_flagged() {
        let mut s = Snapshot::default();
        add_service(&mut s, "192.0.2.10", 80, 1, &[7, 9]);
        add_backend(&mut s, 7, "10.244.2.5", 8080);
        add_backend(&mut s, 9, "10.244.3.6", 8080);
        // A Local load-balancer IP without local endpoints: no slot for
        // traffic from outside, both for this node's pods.
        let master = s.services.get_mut(&svc_key("192.0.2.10", 80, 0)).unwrap();
        (master.count, master.internal_count) = (0, 2);
        let list = service_list(&s);
        assert_eq!(list.findings(), 0, "{}", list.table());
        assert!(list.table().contains("  0+2    "), "{}", list.table());
        // One slot short of what the node's clients pick from: flagged.
        s.services.remove(&svc_key("192.0.2.10", 80, 2));
        let problems = &service_list(&s).services[0].problems;
        assert_eq!(problems, &[Problem::SlotMissing { slot: 2 }]);
    }

    #[test]
    fn missing_backend_is_flagged() {
        let mut s = Snapshot::default();
        add_service(&mut s, "10.96.0.10", 80, 1, &[7, 9]);
        add_backend(&mut s, 7, "10.244.1.5", 8080);
        let list = service_list(&s);
        assert_eq!(list.findings(), 1);
        let table = list.table();
        assert!(
            table.contains("2     9        ! not in lb_backend_v1\n"),
            "{table}"
        );
        assert!(
            table.ends_with(
                "\nInconsistencies (1):\n  10.96.0.10:80/tcp: slot 2: backend 9 is not in \
                 lb_backend_v1: packets that pick it are dropped\n"
            ),
            "{table}"
        );
        let json: serde_json::Value = serde_json::from_str(&render(&list, Format::Json)).unwrap();
        assert_eq!(
            json["services"][0]["slots"][1]["backend"],
            serde_json::Value::Null
        );
        assert_eq!(
            json["services"][0]["problems"],
            serde_json::json!([{"kind": "backend_missing", "slot": 2, "backend_id": 9}])
        );
    }

    #[test]
    fn slot_count_master_and_revnat_problems() {
        let mut s = Snapshot::default();
        add_service(&mut s, "10.96.0.10", 80, 1, &[7, 9]);
        add_backend(&mut s, 7, "10.244.1.5", 8080);
        add_backend(&mut s, 9, "10.244.2.6", 8080);
        // Slot 2 gone, a stale slot 3, and rev-NAT 1 pointing elsewhere.
        s.services.remove(&svc_key("10.96.0.10", 80, 2));
        s.services.insert(
            svc_key("10.96.0.10", 80, 3),
            ServiceValue {
                backend_id: 9,
                ..Default::default()
            },
        );
        s.revnat.insert(
            1,
            RevNat {
                addr_be: ip_be("10.96.0.11"),
                port_be: 80u16.to_be(),
                _pad: 0,
            },
        );
        // A frontend with a slot but no master entry.
        s.services.insert(
            svc_key("10.96.0.20", 53, 1),
            ServiceValue {
                backend_id: 7,
                ..Default::default()
            },
        );

        let list = service_list(&s);
        let problems: Vec<_> = list.services.iter().map(|s| &s.problems).collect();
        assert_eq!(
            problems,
            [
                &vec![
                    Problem::RevNatMismatch {
                        rev_nat_id: 1,
                        target: IpPort {
                            ip: "10.96.0.11".parse().unwrap(),
                            port: 80
                        }
                    },
                    Problem::SlotMissing { slot: 2 },
                    Problem::SlotBeyondCount { slot: 3 },
                ],
                &vec![Problem::MasterMissing],
            ]
        );
        assert!(list
            .table()
            .contains("10.96.0.20:53/tcp  -        -       -      -       1     7"));
    }

    #[test]
    fn frontends_and_backends_missing_from_a_valid_filter_are_flagged() {
        let mut s = Snapshot::default();
        add_service(&mut s, "10.96.0.10", 80, 1, &[7]);
        add_backend(&mut s, 7, "10.244.1.5", 8080);
        let problems = |s: &Snapshot| service_list(s).services[0].problems.clone();
        // No filter read, or one not valid yet: nothing to say.
        assert_eq!(problems(&s), []);
        s.filter = vec![0; FILTER_VALID_WORD as usize + 1];
        assert_eq!(problems(&s), []);
        s.filter[FILTER_VALID_WORD as usize] = FILTER_VALID;
        assert_eq!(
            problems(&s),
            [
                Problem::FrontendNotInFilter,
                Problem::BackendNotInFilter { slot: 1 }
            ]
        );
        let (w, mask) = filter_slot(FILTER_FRONTENDS, ip_be("10.96.0.10"), 80u16.to_be(), 6);
        s.filter[w as usize] |= mask;
        let (w, mask) = filter_slot(FILTER_BACKENDS, ip_be("10.244.1.5"), 8080u16.to_be(), 6);
        s.filter[w as usize] |= mask;
        assert_eq!(problems(&s), []);
    }

    #[test]
    fn frontend_without_backends_is_consistent() {
        let mut s = Snapshot::default();
        add_service(&mut s, "10.96.0.10", 80, 1, &[]);
        let list = service_list(&s);
        assert_eq!(list.findings(), 0);
        assert!(list
            .table()
            .ends_with("10.96.0.10:80/tcp  -        1       0      0x0000  -     -        -\n"));
    }
}
