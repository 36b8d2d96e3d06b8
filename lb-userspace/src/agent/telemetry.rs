//! Health (/healthz, /livez) and Prometheus metrics (/metrics) of the agent.
