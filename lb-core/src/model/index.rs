//! The desired state kept up to date one object change at a time.
//!
//! A watch event touches one Service or one EndpointSlice; recomputing
//! [`desired_state`](super::desired_state) over a whole cluster for it costs
//! time proportional to the cluster (about a second at 100k Services). The
//! index keeps each Service's reading, each slice's endpoints grouped by
//! Service, and every claim on a contested frontend or health check port,
//! so a change only recomputes the Services it touches, and the result is
//! always what `desired_state` over the current objects would give (which
//! is, in fact, this index filled from scratch).

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::Metadata;

use super::claims::{Claims, Outcome};
use super::endpoints::{local_ready_count, read_slice, SliceEndpoints};
use super::health_checks::HealthClaims;
use super::service::ServiceShape;
use super::{
    name_problem, named_objects, object_ref, ConfigError, Desired, DesiredFrontend, Frontend,
    Named, ObjectRef,
};

/// Services and EndpointSlices, and the [`Desired`] state they give on one
/// node.
#[derive(Debug)]
pub struct DesiredIndex {
    /// This node's name: endpoints on it are local. Fixed for the index's
    /// life, since every slice's endpoints are read with it.
    node_name: Option<String>,
    /// This node's `topology.kubernetes.io/zone`, for zone hints.
    zone: Option<String>,
    services: BTreeMap<ObjectRef, Entry>,
    /// Each Service's problems (only Services that have some).
    service_errors: BTreeMap<ObjectRef, Vec<ConfigError>>,
    /// The Service each usable EndpointSlice belongs to.
    slice_owners: BTreeMap<ObjectRef, ObjectRef>,
    /// Each EndpointSlice's problems (only slices that have some).
    slice_errors: BTreeMap<ObjectRef, Vec<ConfigError>>,
    /// Per Service, the endpoints of each slice labelled with its name
    /// (kept while the Service is absent: it may come later).
    endpoints: BTreeMap<ObjectRef, ServiceSlices>,
    /// Unnamed and repeated objects of the last `replace_*` of each kind.
    naming_errors: NamingErrors,
    claims: Claims,
    health: HealthClaims,
    /// How many Services serve at least one frontend.
    serving: usize,
    /// Services whose frontends changed since `clear_changed`.
    changed: BTreeSet<ObjectRef>,
    /// Frontends whose entry in `desired` changed (added, removed, other
    /// backends or winner) since `clear_changed`.
    touched: BTreeSet<Frontend>,
    desired: Desired,
    /// `desired.errors` must be reassembled (see `finish`).
    errors_stale: bool,
}

/// A Service's reading, and how many frontends it serves now.
#[derive(Debug)]
struct Entry {
    shape: ServiceShape,
    serving: usize,
}

#[derive(Debug, Default, PartialEq, Eq)]
struct NamingErrors {
    services: Vec<ConfigError>,
    slices: Vec<ConfigError>,
}

impl DesiredIndex {
    /// An empty index for the node named `node_name`, whose endpoints are
    /// local (`BackendAddr::remote` false, served by externalTrafficPolicy
    /// Local frontends, counted by health checks). Without a name (or with
    /// an empty one, which no endpoint can match in kube-proxy either)
    /// every endpoint is remote.
    pub fn new(node_name: Option<String>) -> Self {
        DesiredIndex {
            node_name: node_name.filter(|n| !n.is_empty()),
            zone: None,
            services: BTreeMap::new(),
            service_errors: BTreeMap::new(),
            slice_owners: BTreeMap::new(),
            slice_errors: BTreeMap::new(),
            endpoints: BTreeMap::new(),
            naming_errors: NamingErrors::default(),
            claims: Claims::default(),
            health: HealthClaims::default(),
            serving: 0,
            changed: BTreeSet::new(),
            touched: BTreeSet::new(),
            desired: Desired::default(),
            errors_stale: false,
        }
    }

    /// Sets this node's zone (its `topology.kubernetes.io/zone` label),
    /// which selects the endpoints zone hints give it. A node's zone
    /// rarely changes, so every Service is recomputed.
    pub fn set_zone(&mut self, zone: Option<String>) {
        let zone = zone.filter(|z| !z.is_empty());
        if zone == self.zone {
            return;
        }
        self.zone = zone;
        let services: Vec<ObjectRef> = self.services.keys().cloned().collect();
        for service in &services {
            self.refresh_endpoints(service);
        }
        self.finish();
    }

    /// The frontends, health checks, errors and IPv6 skips of the current
    /// objects.
    pub fn desired(&self) -> &Desired {
        &self.desired
    }

    pub fn into_desired(self) -> Desired {
        self.desired
    }

    /// A Service was created or changed. Objects from the API server always
    /// have a name; an unnamed one cannot be told apart from others and is
    /// ignored (`replace_services` reports it).
    pub fn apply_service(&mut self, service: &Service) {
        match named(service) {
            Some(named) => self.upsert_service(&named),
            None => tracing::debug!("unnamed (or impossibly named) Service ignored"),
        }
        self.finish();
    }

    pub fn delete_service(&mut self, service: &ObjectRef) {
        self.remove_service(service);
        self.finish();
    }

    /// An EndpointSlice was created or changed (perhaps moved to another
    /// Service by its label). Unnamed ones are ignored as in `apply_service`.
    pub fn apply_slice(&mut self, slice: &EndpointSlice) {
        match named(slice) {
            Some(named) => self.upsert_slice(&named),
            None => tracing::debug!("unnamed (or impossibly named) EndpointSlice ignored"),
        }
        self.finish();
    }

    pub fn delete_slice(&mut self, slice: &ObjectRef) {
        self.remove_slice(slice);
        self.finish();
    }

    /// Makes `services` the whole set of Services (a re-list, or manifests
    /// re-read), each with the file it came from, if any. Unchanged
    /// Services cost a re-read only.
    pub fn replace_services<'a>(
        &mut self,
        services: impl IntoIterator<Item = (&'a Service, Option<&'a Path>)>,
    ) {
        let mut naming = Vec::new();
        let named = named_objects(services, &mut naming);
        for gone in absent(self.services.keys(), &named) {
            self.remove_service(&gone);
        }
        for service in &named {
            self.upsert_service(service);
        }
        self.set_naming_errors(|n| &mut n.services, naming);
        self.finish();
    }

    /// Ends a re-list whose Services came one by one through
    /// [`Self::apply_service`]: those not `listed` are gone. (Applying a
    /// list as it streams in, and deleting only at its end, never holds
    /// the whole list in memory and never drops a Service still there.)
    pub fn retain_services(&mut self, listed: &BTreeSet<ObjectRef>) {
        let gone: Vec<ObjectRef> = self
            .services
            .keys()
            .filter(|s| !listed.contains(*s))
            .cloned()
            .collect();
        for service in &gone {
            self.remove_service(service);
        }
        self.finish();
    }

    /// [`Self::retain_services`] for EndpointSlices.
    pub fn retain_slices(&mut self, listed: &BTreeSet<ObjectRef>) {
        // A slice with errors may have no owner (a bad address type).
        let known = self.slice_owners.keys().chain(self.slice_errors.keys());
        let gone: BTreeSet<ObjectRef> = known.filter(|s| !listed.contains(*s)).cloned().collect();
        for slice in &gone {
            self.remove_slice(slice);
        }
        self.finish();
    }

    /// Makes `slices` the whole set of EndpointSlices; see `replace_services`.
    pub fn replace_slices<'a>(
        &mut self,
        slices: impl IntoIterator<Item = (&'a EndpointSlice, Option<&'a Path>)>,
    ) {
        let mut naming = Vec::new();
        let named = named_objects(slices, &mut naming);
        // A slice with errors may have no owner (a bad address type).
        let known = self.slice_owners.keys().chain(self.slice_errors.keys());
        for gone in absent(known, &named) {
            self.remove_slice(&gone);
        }
        for slice in &named {
            self.upsert_slice(slice);
        }
        self.set_naming_errors(|n| &mut n.slices, naming);
        self.finish();
    }

    /// Services whose frontends (or their backends) changed since the last
    /// [`clear_changed`](Self::clear_changed), including Services that no
    /// longer serve any. A `replace_*` goes through intermediate states, so
    /// it may add a Service that ends up as it was.
    pub fn changed_services(&self) -> &BTreeSet<ObjectRef> {
        &self.changed
    }

    /// The frontends whose entry in [`desired`](Self::desired) changed
    /// since the last [`clear_changed`](Self::clear_changed): every other
    /// frontend is as it was then, so a sync that programmed that state
    /// has only these to look at (kube-proxy's partial sync).
    pub fn touched_frontends(&self) -> &BTreeSet<Frontend> {
        &self.touched
    }

    pub fn clear_changed(&mut self) {
        self.changed.clear();
        self.touched.clear();
    }

    /// How many Services there are (whether or not they serve anything).
    pub fn service_count(&self) -> usize {
        self.services.len()
    }

    /// How many EndpointSlices belong to a Service (labelled with its name,
    /// IPv4); the others are not kept.
    pub fn slice_count(&self) -> usize {
        self.slice_owners.len()
    }

    /// How many Services serve at least one frontend.
    pub fn serving_services(&self) -> usize {
        self.serving
    }

    /// The frontends `service` serves, in the order of its ports.
    pub fn frontends_of<'s>(
        &'s self,
        service: &'s ObjectRef,
    ) -> impl Iterator<Item = (&'s Frontend, &'s DesiredFrontend)> + 's {
        let claimed = self.services.get(service).into_iter();
        claimed
            .flat_map(|entry| entry.shape.claimed())
            .filter_map(|f| self.desired.frontends.get_key_value(&f))
            .filter(move |(_, w)| w.service == *service)
    }

    fn upsert_service(&mut self, service: &Named<'_, Service>) {
        let shape = ServiceShape::read(service);
        let oref = &service.oref;
        let before = match self.services.get_mut(oref) {
            Some(entry) if entry.shape == shape => return,
            Some(entry) => {
                let before = entry.shape.claimed().collect();
                entry.shape = shape;
                before
            }
            None => {
                let entry = Entry { shape, serving: 0 };
                self.services.insert(oref.clone(), entry);
                Vec::new()
            }
        };
        self.refresh(oref, before);
    }

    fn remove_service(&mut self, service: &ObjectRef) {
        let Some(entry) = self.services.remove(service) else {
            return;
        };
        // Its withdrawals below find no entry left to count down.
        if entry.serving > 0 {
            self.serving -= 1;
        }
        self.refresh(service, entry.shape.claimed().collect());
    }

    fn upsert_slice(&mut self, slice: &Named<'_, EndpointSlice>) {
        let mut errors = Vec::new();
        let read = read_slice(slice, self.node_name.as_deref(), &mut errors);
        let oref = &slice.oref;
        let owner = self.slice_owners.get(oref);
        let same_endpoints = match (&read, owner) {
            (Some((service, eps)), Some(old)) => {
                service == old && self.endpoints[old].get(oref) == Some(eps)
            }
            (None, None) => true,
            _ => false,
        };
        let same_errors = self
            .slice_errors
            .get(oref)
            .map_or(errors.is_empty(), |e| *e == errors);
        if same_endpoints && same_errors {
            return;
        }
        let before = self.take_slice(oref);
        if !errors.is_empty() {
            self.slice_errors.insert(oref.clone(), errors);
            self.errors_stale = true;
        }
        let after = read.map(|(service, eps)| {
            self.slice_owners.insert(oref.clone(), service.clone());
            let slices = self.endpoints.entry(service.clone()).or_default();
            slices.insert(oref.clone(), eps);
            service
        });
        if let Some(service) = &before {
            self.refresh_endpoints(service);
        }
        if let Some(service) = after.filter(|s| before.as_ref() != Some(s)) {
            self.refresh_endpoints(&service);
        }
    }

    fn remove_slice(&mut self, slice: &ObjectRef) {
        if let Some(service) = self.take_slice(slice) {
            self.refresh_endpoints(&service);
        }
    }

    /// Forgets a slice; returns the Service it belonged to.
    fn take_slice(&mut self, slice: &ObjectRef) -> Option<ObjectRef> {
        if self.slice_errors.remove(slice).is_some() {
            self.errors_stale = true;
        }
        let service = self.slice_owners.remove(slice)?;
        if let Some(slices) = self.endpoints.get_mut(&service) {
            slices.remove(slice);
            if slices.is_empty() {
                self.endpoints.remove(&service);
            }
        }
        Some(service)
    }

    /// The endpoints of `service` changed (which matters only if it exists).
    fn refresh_endpoints(&mut self, service: &ObjectRef) {
        if let Some(entry) = self.services.get(service) {
            let before = entry.shape.claimed().collect();
            self.refresh(service, before);
        }
    }

    /// Brings everything `service` affects up to date, given the frontends
    /// it claimed `before` its reading or its endpoints changed.
    fn refresh(&mut self, service: &ObjectRef, before: Vec<Frontend>) {
        let shape = self.services.get(service).map(|entry| &entry.shape);
        let slices = self
            .endpoints
            .get(service)
            .into_iter()
            .flat_map(ServiceSlices::values);
        let zone = self.zone.as_deref();
        let wanted = shape.map_or_else(Vec::new, |s| s.frontends(service, slices.clone(), zone));
        let health_check = shape
            .and_then(|s| s.health_check)
            .map(|port| (port, local_ready_count(slices)));
        if shape.is_some_and(|s| s.ipv6) {
            self.desired.ipv6_skipped.insert(service.clone());
        } else {
            self.desired.ipv6_skipped.remove(service);
        }
        // Other Services whose errors may change (rarely any).
        let mut others = Vec::new();
        let checks = &mut self.desired.health_checks;
        self.health.set(checks, service, health_check, &mut others);
        others.retain(|other| other != service);
        for frontend in before {
            if wanted.iter().all(|(f, _)| *f != frontend) {
                let frontends = &mut self.desired.frontends;
                let outcome = self.claims.withdraw(frontends, frontend, service);
                self.record(service, frontend, outcome, &mut others);
            }
        }
        for (frontend, wanted) in wanted {
            let outcome = self
                .claims
                .claim(&mut self.desired.frontends, frontend, wanted);
            self.record(service, frontend, outcome, &mut others);
        }
        self.recheck_errors(service);
        others.sort();
        others.dedup();
        for other in &others {
            self.recheck_errors(other);
        }
    }

    /// Notes what a claim or withdrawal by `service` changed; a new winner
    /// changes the errors of every Service claiming the frontend.
    fn record(
        &mut self,
        service: &ObjectRef,
        frontend: Frontend,
        outcome: Outcome,
        others: &mut Vec<ObjectRef>,
    ) {
        if outcome != Outcome::Unchanged {
            self.touched.insert(frontend);
        }
        match outcome {
            Outcome::Unchanged => {}
            Outcome::Updated => self.note_changed(service.clone()),
            Outcome::NewWinner { before, after } => {
                for (affected, gained) in [(before, false), (after, true)] {
                    let Some(affected) = affected else { continue };
                    self.count_serving(&affected, gained);
                    if affected != *service {
                        others.push(affected.clone());
                    }
                    self.note_changed(affected);
                }
                let losers = self.claims.losers(&frontend);
                others.extend(losers.filter(|s| *s != service).cloned());
            }
        }
    }

    fn note_changed(&mut self, service: ObjectRef) {
        if !self.changed.contains(&service) {
            self.changed.insert(service);
        }
    }

    /// `service` gained or lost one frontend.
    fn count_serving(&mut self, service: &ObjectRef, gained: bool) {
        let Some(entry) = self.services.get_mut(service) else {
            return; // being removed: counted then
        };
        if gained {
            entry.serving += 1;
            if entry.serving == 1 {
                self.serving += 1;
            }
        } else {
            entry.serving -= 1;
            if entry.serving == 0 {
                self.serving -= 1;
            }
        }
    }

    fn recheck_errors(&mut self, service: &ObjectRef) {
        let winners = &self.desired.frontends;
        let checks = &self.desired.health_checks;
        let errors = self.services.get(service).map_or_else(Vec::new, |entry| {
            let winner = |f: &Frontend| winners.get(f).map(|w| &w.service);
            let health = entry.shape.health_check.and_then(|port| checks.get(&port));
            entry
                .shape
                .errors(service, winner, health.map(|h| &h.service))
        });
        let stale = if errors.is_empty() {
            self.service_errors.remove(service).is_some()
        } else if self.service_errors.get(service) != Some(&errors) {
            self.service_errors.insert(service.clone(), errors);
            true
        } else {
            false
        };
        self.errors_stale |= stale;
    }

    fn set_naming_errors(
        &mut self,
        kind: impl FnOnce(&mut NamingErrors) -> &mut Vec<ConfigError>,
        errors: Vec<ConfigError>,
    ) {
        let current = kind(&mut self.naming_errors);
        if *current != errors {
            *current = errors;
            self.errors_stale = true;
        }
    }

    /// Reassembles `desired.errors` if any changed, once per public call:
    /// Services' then slices' errors, each kind's unnamed and repeated
    /// objects first, then by namespace/name. A change that touches no
    /// error (nearly all of them) costs nothing here.
    fn finish(&mut self) {
        if !std::mem::take(&mut self.errors_stale) {
            return;
        }
        let n = &self.naming_errors;
        self.desired.errors = n
            .services
            .iter()
            .chain(self.service_errors.values().flatten())
            .chain(&n.slices)
            .chain(self.slice_errors.values().flatten())
            .cloned()
            .collect();
    }
}

/// An object from the API server, which has no file; `None` for a name
/// the API server would have refused (see `replace_services`).
fn named<T: Metadata<Ty = ObjectMeta>>(object: &T) -> Option<Named<'_, T>> {
    let oref = object_ref(object.metadata()).filter(|oref| name_problem(oref).is_none())?;
    Some(Named {
        oref,
        object,
        file: None,
    })
}

/// The `known` objects not in `present` (sorted by name, as
/// `named_objects` returns them).
fn absent<'k, T>(
    known: impl Iterator<Item = &'k ObjectRef>,
    present: &[Named<'_, T>],
) -> Vec<ObjectRef> {
    known
        .filter(|k| present.binary_search_by(|p| p.oref.cmp(k)).is_err())
        .cloned()
        .collect()
}

/// The slices of one Service, by name: a few (one per 100 endpoints), so
/// a sorted vector, where a tree would allocate room for eleven.
#[derive(Debug, Default)]
struct ServiceSlices(Vec<(ObjectRef, SliceEndpoints)>);

impl ServiceSlices {
    fn position(&self, slice: &ObjectRef) -> Result<usize, usize> {
        self.0.binary_search_by(|(name, _)| name.cmp(slice))
    }

    fn get(&self, slice: &ObjectRef) -> Option<&SliceEndpoints> {
        let i = self.position(slice).ok()?;
        Some(&self.0[i].1)
    }

    fn insert(&mut self, slice: ObjectRef, endpoints: SliceEndpoints) {
        match self.position(&slice) {
            Ok(i) => self.0[i].1 = endpoints,
            Err(i) => self.0.insert(i, (slice, endpoints)),
        }
    }

    fn remove(&mut self, slice: &ObjectRef) {
        if let Ok(i) = self.position(slice) {
            self.0.remove(i);
        }
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn values(&self) -> impl Iterator<Item = &SliceEndpoints> + Clone {
        self.0.iter().map(|(_, endpoints)| endpoints)
    }
}
