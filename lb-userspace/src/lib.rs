//! The agent that keeps the load balancer's maps in sync with Kubernetes
//! Services and EndpointSlices, and the library behind `lbctl`.
