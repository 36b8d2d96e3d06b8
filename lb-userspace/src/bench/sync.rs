//! Control-plane benchmark: initial sync and change-to-map latency at scale.
