//! `stats`: packets and bytes per verdict reason, summed over CPUs.

use serde::Serialize;

use super::{
    decode::{is_drop, reason_name},
    table::Table,
    MapId, Report, Snapshot,
};

/// The maps [`stats`] needs.
pub const READS: &[MapId] = &[MapId::Stats];

/// JSON: `{"reasons": [ReasonStats, ...]}`, by index.
#[derive(Debug, Serialize)]
pub struct Stats {
    pub reasons: Vec<ReasonStats>,
}

#[derive(Debug, Serialize)]
pub struct ReasonStats {
    /// Index in the stats map (`lb_common::stats`).
    pub index: u32,
    pub name: String,
    /// Whether the datapath drops the packets counted here.
    pub drop: bool,
    pub packets: u64,
    pub bytes: u64,
    /// Packets per second since the previous read (`--watch` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pps: Option<f64>,
}

/// All reasons, or with `nonzero` only those that counted packets.
pub fn stats(snapshot: &Snapshot, nonzero: bool) -> Stats {
    let reasons = (0..)
        .zip(&snapshot.stats)
        .filter(|(_, counter)| !nonzero || counter.packets > 0)
        .map(|(index, counter)| ReasonStats {
            index,
            name: reason_name(index).into_owned(),
            drop: is_drop(index as usize),
            packets: counter.packets,
            bytes: counter.bytes,
            pps: None,
        })
        .collect();
    Stats { reasons }
}

/// `now` with each reason's packet rate since `before`, `secs` earlier.
pub fn with_rates(mut now: Stats, before: &Stats, secs: f64) -> Stats {
    for r in &mut now.reasons {
        let earlier = before.reasons.iter().find(|b| b.index == r.index);
        let delta = r.packets.saturating_sub(earlier.map_or(0, |b| b.packets));
        r.pps = Some(delta as f64 / secs.max(1e-9));
    }
    now
}

impl Report for Stats {
    fn table(&self) -> String {
        let watching = self.reasons.iter().any(|r| r.pps.is_some());
        let mut header = vec!["REASON", "PACKETS", "BYTES"];
        if watching {
            header.push("PKT/S");
        }
        header.push("DROP");
        let mut table = Table::new(header).right_align(&[1, 2, 3]);
        for reason in &self.reasons {
            let mut row = vec![
                reason.name.clone(),
                reason.packets.to_string(),
                reason.bytes.to_string(),
            ];
            if watching {
                row.push(format!("{:.0}", reason.pps.unwrap_or(0.0)));
            }
            row.push(if reason.drop { "drop" } else { "" }.to_owned());
            table.row(row);
        }
        table.render()
    }
}

#[cfg(test)]
mod tests {
    use lb_common::{stats::Reason, StatsCounter};

    use super::*;
    use crate::{render, Format};

    #[test]
    fn drops_marked_and_zeros_hidden() {
        let mut s = Snapshot {
            stats: vec![StatsCounter::default(); 14],
            ..Default::default()
        };
        s.stats[0] = StatsCounter {
            packets: 3,
            bytes: 180,
        };
        s.stats[Reason::DropNoBackends.index() as usize] = StatsCounter {
            packets: 12,
            bytes: 1_000_000,
        };
        assert_eq!(stats(&s, false).reasons.len(), 14);
        let report = stats(&s, true);
        let mut later = s.clone();
        later.stats[0].packets = 23;
        let rates = with_rates(stats(&later, true), &report, 2.0);
        assert_eq!(rates.reasons[0].pps, Some(10.0));
        assert!(rates.table().contains("PKT/S"));
        assert_eq!(
            report.table(),
            "\
REASON            PACKETS    BYTES  DROP
pass_not_ipv4           3      180
drop_no_backends       12  1000000  drop
"
        );
        let json: serde_json::Value = serde_json::from_str(&render(&report, Format::Json)).unwrap();
        assert_eq!(
            json["reasons"][1],
            serde_json::json!({
                "index": 9, "name": "drop_no_backends", "drop": true, "packets": 12, "bytes": 1_000_000
            })
        );
    }
}

/// The maps [`service_stats`] needs.
pub const SERVICE_READS: &[MapId] = &[MapId::Services, MapId::SvcNames, MapId::SvcStats];

/// JSON: `{"services": [FrontendStats, ...]}`, by frontend.
#[derive(Debug, Serialize)]
pub struct ServiceStats {
    pub services: Vec<FrontendStats>,
}

#[derive(Debug, Serialize)]
pub struct FrontendStats {
    pub frontend: super::decode::Endpoint,
    pub service: Option<String>,
    /// Packets (and bytes) forwarded to the frontend's backends at XDP.
    pub packets: u64,
    pub bytes: u64,
    /// Packets dropped (Local policy without endpoints, source ranges) or
    /// refused (no endpoints: RST / ICMP) at the frontend.
    pub refused: u64,
}

/// Per-frontend counters, summed over CPUs.
pub fn service_stats(snapshot: &Snapshot) -> ServiceStats {
    let counter = |slot: u32| {
        snapshot
            .svc_stats
            .get(slot as usize)
            .copied()
            .unwrap_or_default()
    };
    let services = snapshot
        .services
        .iter()
        .filter(|(key, _)| key.slot == 0)
        .map(|(key, master)| {
            let id = master.rev_nat_id;
            let (reached, refused) = (counter(id * 2), counter(id * 2 + 1));
            FrontendStats {
                frontend: super::decode::Endpoint::frontend(key),
                service: snapshot.svc_names.get(&id).map(|n| n.as_str().to_owned()),
                packets: reached.packets,
                bytes: reached.bytes,
                refused: refused.packets,
            }
        })
        .collect();
    ServiceStats { services }
}

impl Report for ServiceStats {
    fn table(&self) -> String {
        let header = ["FRONTEND", "SERVICE", "PACKETS", "BYTES", "REFUSED"];
        let mut table = Table::new(header).right_align(&[2, 3, 4]);
        for s in &self.services {
            table.row(vec![
                s.frontend.to_string(),
                super::table::or_dash(s.service.as_deref()),
                s.packets.to_string(),
                s.bytes.to_string(),
                s.refused.to_string(),
            ]);
        }
        table.render()
    }
}
