//! Who gets a health check node port that several Services claim: the first
//! by namespace/name, as for frontends. The API server allocates these ports
//! to one Service each, so sharing is a manifest mistake and rare: every
//! claim is kept per port, and a port's winner is found again whenever one
//! of its claims changes.

use std::collections::BTreeMap;

use super::{HealthCheck, ObjectRef};

#[derive(Debug, Default)]
pub(super) struct HealthClaims {
    /// Per port, the claiming Services and their local endpoint counts.
    by_port: BTreeMap<u16, BTreeMap<ObjectRef, usize>>,
    /// The port each claiming Service claims.
    by_service: BTreeMap<ObjectRef, u16>,
}

impl HealthClaims {
    /// `service` now claims `wanted` (a port and its local endpoint count),
    /// or nothing. Keeps `checks` (the ports served) up to date and adds to
    /// `affected` the Services whose errors may have changed: every claimant
    /// of a port that got a new winner.
    pub(super) fn set(
        &mut self,
        checks: &mut BTreeMap<u16, HealthCheck>,
        service: &ObjectRef,
        wanted: Option<(u16, usize)>,
        affected: &mut Vec<ObjectRef>,
    ) {
        let before = self.by_service.get(service).copied();
        if let Some(port) = before.filter(|&p| Some(p) != wanted.map(|(w, _)| w)) {
            self.by_service.remove(service);
            if let Some(claims) = self.by_port.get_mut(&port) {
                claims.remove(service);
                if claims.is_empty() {
                    self.by_port.remove(&port);
                }
            }
            self.serve(checks, port, affected);
        }
        if let Some((port, local_endpoints)) = wanted {
            self.by_service.insert(service.clone(), port);
            let claims = self.by_port.entry(port).or_default();
            claims.insert(service.clone(), local_endpoints);
            self.serve(checks, port, affected);
        }
    }

    /// Serves `port` for its first claimant, if any.
    fn serve(
        &self,
        checks: &mut BTreeMap<u16, HealthCheck>,
        port: u16,
        affected: &mut Vec<ObjectRef>,
    ) {
        let claims = self.by_port.get(&port);
        let first = claims.and_then(BTreeMap::first_key_value);
        let before = match first {
            Some((service, &local_endpoints)) => {
                let check = HealthCheck {
                    service: service.clone(),
                    local_endpoints,
                };
                checks.insert(port, check)
            }
            None => checks.remove(&port),
        };
        let before = before.map(|check| check.service);
        if before.as_ref() != first.map(|(service, _)| service) {
            affected.extend(before);
            affected.extend(claims.into_iter().flat_map(BTreeMap::keys).cloned());
        }
    }
}
