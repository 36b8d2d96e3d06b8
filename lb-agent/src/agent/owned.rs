//! One owner per small map: what the agent last wrote there, and the one
//! path by which a wanted state is written, logged, or, failing, counted
//! (`lb_errors_total{kind="map_write"}`) and retried at the next call.

use lb_common::MapId;
use tracing::{info, warn};

use super::telemetry::Telemetry;
use crate::ebpf::MapWriter;

pub struct Owned<W: MapWriter> {
    writer: W,
    /// What the map holds: `None` until the first write succeeds.
    written: Option<W::State>,
}

impl<W: MapWriter> Owned<W> {
    pub fn new(writer: W) -> Self {
        Self {
            writer,
            written: None,
        }
    }

    /// Makes the map hold `wanted` unless it already does. True once it
    /// does.
    pub fn sync(&mut self, wanted: W::State, telemetry: &Telemetry) -> bool {
        if self.written.as_ref() == Some(&wanted) {
            return true;
        }
        let map = W::MAP.name();
        match self.writer.write(&wanted) {
            Ok(()) => {
                info!(map, state = ?wanted, "written");
                self.written = Some(wanted);
                true
            }
            Err(e) => {
                write_failed(telemetry, W::MAP, &e);
                false
            }
        }
    }
}

/// The one way a failed write to one of our maps is reported: logged with
/// the map's name and counted; the writer retries at its next pass.
pub fn write_failed(telemetry: &Telemetry, map: MapId, e: &anyhow::Error) {
    telemetry.error("map_write");
    warn!(map = map.name(), "writing: {e:#}");
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Records its writes; fails while `failing`.
    #[derive(Default)]
    struct Recorder {
        writes: Vec<u32>,
        failing: bool,
    }

    impl MapWriter for Recorder {
        type State = u32;
        const MAP: MapId = MapId::Config;

        fn write(&mut self, state: &u32) -> anyhow::Result<()> {
            if self.failing {
                anyhow::bail!("no room");
            }
            self.writes.push(*state);
            Ok(())
        }
    }

    fn map_write_errors(telemetry: &Telemetry) -> String {
        let metrics = telemetry.encode_metrics();
        let line = metrics
            .lines()
            .find(|l| l.starts_with("lb_errors_total{kind=\"map_write\"}"));
        line.unwrap_or("none").to_owned()
    }

    #[test]
    fn writes_what_changed_and_retries_what_failed() {
        let telemetry = Telemetry::new(Duration::from_secs(60));
        let mut owned = Owned::new(Recorder::default());
        assert!(owned.sync(1, &telemetry));
        assert!(owned.sync(1, &telemetry), "unchanged: not written again");
        owned.writer.failing = true;
        assert!(!owned.sync(2, &telemetry));
        assert!(
            map_write_errors(&telemetry).ends_with(" 1"),
            "{}",
            map_write_errors(&telemetry)
        );
        owned.writer.failing = false;
        assert!(owned.sync(2, &telemetry), "retried at the next pass");
        assert_eq!(owned.writer.writes, [1, 2]);
    }
}
