//! `map list`: our maps as the kernel sees them, one row per pin (read by
//! [`super::list_maps`]).

use std::path::PathBuf;

use serde::Serialize;

use super::{
    table::{or_dash, Table},
    Report,
};

/// JSON: `{"maps": [MapStatus, ...]}`, in `lb_common::MapId::ALL` order.
#[derive(Debug, Serialize)]
pub struct MapList {
    pub maps: Vec<MapStatus>,
}

#[derive(Debug, Serialize)]
pub struct MapStatus {
    pub name: &'static str,
    pub pin: PathBuf,
    /// Null when the map could not be opened.
    pub meta: Option<MapMeta>,
    /// Entries read; null when the map could not be read.
    pub entries: Option<usize>,
    /// Null when the map was opened and read, e.g. `"not pinned"` otherwise.
    pub error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct MapMeta {
    /// Kernel map id (as in `bpftool map show id N`).
    pub id: u32,
    /// `hash`, `lru_hash`, `percpu_array`, ...
    #[serde(rename = "type")]
    pub map_type: String,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
}

impl Report for MapList {
    fn table(&self) -> String {
        let header = [
            "NAME", "ID", "TYPE", "KEY", "VALUE", "MAX", "ENTRIES", "PIN", "ERROR",
        ];
        let mut table = Table::new(header).right_align(&[1, 3, 4, 5, 6]);
        for map in &self.maps {
            let meta = map.meta.as_ref();
            table.row(vec![
                map.name.to_owned(),
                or_dash(meta.map(|m| m.id)),
                or_dash(meta.map(|m| &m.map_type)),
                or_dash(meta.map(|m| m.key_size)),
                or_dash(meta.map(|m| m.value_size)),
                or_dash(meta.map(|m| m.max_entries)),
                or_dash(map.entries),
                map.pin.display().to_string(),
                map.error.clone().unwrap_or_default(),
            ]);
        }
        table.render()
    }

    /// Maps that could not be opened or read.
    fn findings(&self) -> usize {
        self.maps.iter().filter(|m| m.error.is_some()).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{render, Format};

    #[test]
    fn missing_pin_is_a_finding() {
        let list = MapList {
            maps: vec![
                MapStatus {
                    name: "lb_svc_v4",
                    pin: "/sys/fs/bpf/lb/lb_svc_v4".into(),
                    meta: Some(MapMeta {
                        id: 42,
                        map_type: "hash".into(),
                        key_size: 12,
                        value_size: 12,
                        max_entries: 65536,
                    }),
                    entries: Some(3),
                    error: None,
                },
                MapStatus {
                    name: "lb_ct_v4",
                    pin: "/sys/fs/bpf/lb/lb_ct_v4".into(),
                    meta: None,
                    entries: None,
                    error: Some("not pinned".into()),
                },
            ],
        };
        assert_eq!(list.findings(), 1);
        assert_eq!(
            list.table(),
            "\
NAME       ID  TYPE  KEY  VALUE    MAX  ENTRIES  PIN                       ERROR
lb_svc_v4  42  hash   12     12  65536        3  /sys/fs/bpf/lb/lb_svc_v4
lb_ct_v4    -  -       -      -      -        -  /sys/fs/bpf/lb/lb_ct_v4   not pinned
"
        );
        let json: serde_json::Value = serde_json::from_str(&render(&list, Format::Json)).unwrap();
        assert_eq!(json["maps"][0]["meta"]["type"], "hash");
        assert_eq!(
            json["maps"][1],
            serde_json::json!({
                "name": "lb_ct_v4", "pin": "/sys/fs/bpf/lb/lb_ct_v4",
                "meta": null, "entries": null, "error": "not pinned"
            })
        );
    }
}
