//! Long-lived TCP connections through a Service, for restart tests.
