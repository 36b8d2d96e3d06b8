//! Bad input never costs a valid Service anything: property tests over
//! generated objects, each broken Service or EndpointSlice beside a set of
//! valid ones. The model must not panic, must report the broken object
//! exactly once (naming it and the field), and must program every valid
//! Service as if the broken one, or its broken part, were absent. The full
//! computation and the index fed one event at a time must agree.

pub(crate) mod objects;

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use proptest::prelude::*;
use proptest::sample::Index;

use super::*;
use objects::{
    bad_service, bad_slice, build_valid, service_fault, shape, slice, slice_fault, valid_set, Bad,
    Shape,
};

const NODE: &str = "node-a";

/// Generated cases per property: enough to hit every fault with many
/// valid sets, within a few seconds.
const CASES: u32 = 2_000;

/// `cases` per property; failures are not written to files (a failing
/// case, shrunk, is in the test output and becomes a unit test).
fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn desired(services: &[Service], slices: &[EndpointSlice]) -> Desired {
    desired_state(
        Some(NODE),
        services.iter().map(|s| (s, None)),
        slices.iter().map(|s| (s, None)),
    )
}

/// The frontends of every Service but `except`.
fn frontends_but(desired: &Desired, except: &ObjectRef) -> BTreeMap<Frontend, DesiredFrontend> {
    (desired.frontends.iter())
        .filter(|(_, wanted)| wanted.service != *except)
        .map(|(fe, wanted)| (*fe, wanted.clone()))
        .collect()
}

/// Exactly one error, about `bad`'s object and field.
fn assert_one_error<T>(desired: &Desired, bad: &Bad<T>) -> Result<(), TestCaseError> {
    prop_assert_eq!(desired.errors.len(), 1, "errors: {:?}", desired.errors);
    let error = &desired.errors[0];
    prop_assert_eq!(&error.object, &bad.label);
    prop_assert_eq!(&error.field, &bad.field);
    prop_assert!(!error.message.is_empty());
    Ok(())
}

/// The index fed the valid objects, then `event`, gives what a full
/// computation over all of them gives.
fn assert_index_agrees(
    services: &[Service],
    slices: &[EndpointSlice],
    event: impl FnOnce(&mut DesiredIndex),
    full: &Desired,
) -> Result<(), TestCaseError> {
    let mut index = DesiredIndex::new(Some(NODE.into()));
    index.replace_slices(slices.iter().map(|s| (s, None)));
    index.replace_services(services.iter().map(|s| (s, None)));
    event(&mut index);
    prop_assert_eq!(&index.desired().frontends, &full.frontends);
    prop_assert_eq!(&index.desired().health_checks, &full.health_checks);
    Ok(())
}

proptest! {
    #![proptest_config(config(CASES))]

    #[test]
    fn bad_service_is_reported_once_and_valid_services_are_untouched(
        valid in valid_set(),
        shape in shape(),
        fault in service_fault(),
    ) {
        let (services, slices) = build_valid(&valid);
        let alone = desired(&services, &slices);
        prop_assert!(alone.errors.is_empty(), "valid set has errors: {:?}", alone.errors);
        let bad = bad_service(&shape, &fault, &valid);
        let mut all = services.clone();
        all.push(bad.object.clone());
        let with_bad = desired(&all, &slices);

        assert_one_error(&with_bad, &bad)?;
        prop_assert_eq!(frontends_but(&with_bad, &bad.oref), frontends_but(&alone, &bad.oref));
        if bad.oref.name != "bad" {
            // A second copy of a valid Service: ignored entirely.
            prop_assert_eq!(&with_bad.frontends, &alone.frontends);
        }
        prop_assert_eq!(&with_bad.health_checks, &alone.health_checks);
        // Objects from the API server always have a name (an unnamed one
        // is ignored as an event), and never two with the same one.
        if bad.label != "Service" && bad.oref.name == "bad" {
            assert_index_agrees(&services, &slices, |i| i.apply_service(&bad.object), &with_bad)?;
        }
    }

    #[test]
    fn bad_slice_is_reported_once_and_only_its_broken_part_is_lost(
        valid in valid_set(),
        shape in shape(),
        fault in slice_fault(),
        owner in any::<Index>(),
    ) {
        let (services, slices) = build_valid(&valid);
        let (bad, repaired) = bad_slice(&shape, &fault, &owner, &valid);
        let mut all = slices.clone();
        all.push(bad.object.clone());
        let with_bad = desired(&services, &all);

        assert_one_error(&with_bad, &bad)?;
        let mut without_broken_part = slices.clone();
        without_broken_part.extend(repaired);
        let expected = desired(&services, &without_broken_part);
        prop_assert!(expected.errors.is_empty(), "{:?}", expected.errors);
        prop_assert_eq!(&with_bad.frontends, &expected.frontends);
        prop_assert_eq!(&with_bad.health_checks, &expected.health_checks);
        if bad.label != "EndpointSlice" {
            assert_index_agrees(&services, &slices, |i| i.apply_slice(&bad.object), &with_bad)?;
        }
    }
}

/// `n` (up to 64k) distinct ready pods `10.244.a.b`.
fn many_pods(n: usize) -> Vec<(u8, u8, bool)> {
    let byte = |x: usize| u8::try_from(x % 254 + 1).expect("1..=254");
    (0..n).map(|i| (byte(i / 254), byte(i), true)).collect()
}

proptest! {
    // Each case builds 10k endpoints: a few cases are enough.
    #![proptest_config(config(8))]

    /// 10k endpoints in one slice, one of them broken: all others serve.
    #[test]
    fn ten_thousand_endpoints_in_one_slice(broken in 0usize..10_000, text in "[a-z0-9.:]{0,20}") {
        let pods = many_pods(10_000);
        let shape = Shape { ports: vec![(80, "TCP")], node_ports: false, pods };
        let (services, _) = build_valid(&[("default".into(), shape.clone())]);
        let mut big = slice("default", "svc-0-1", Some("svc-0"), &shape);
        prop_assume!(text.parse::<std::net::Ipv4Addr>().is_err());
        big.endpoints[broken].addresses = vec![text];
        let d = desired(&services, &[big]);
        prop_assert_eq!(d.errors.len(), 1, "{:?}", d.errors);
        prop_assert_eq!(&d.errors[0].field, &format!("endpoints[{broken}].addresses[0]"));
        let (_, frontend) = d.frontends.iter().next().expect("the Service's frontend");
        prop_assert_eq!(frontend.backends.len(), 9_999);
    }
}

/// The cases the properties found, shrunk, kept as regressions.
mod found {
    use super::*;

    fn one_port() -> Shape {
        Shape {
            ports: vec![(80, "TCP")],
            node_ports: false,
            pods: vec![(1, 1, true)],
        }
    }

    fn service(edit: impl FnOnce(&mut Service)) -> Service {
        let mut service = objects::service("default", "web", "10.96.0.1", 30_000, &one_port());
        edit(&mut service);
        service
    }

    fn errors(service: Service) -> Vec<(String, String)> {
        (desired(&[service], &[]).errors.into_iter())
            .map(|e| (e.object, e.field))
            .collect()
    }

    #[test]
    fn empty_name_is_no_name() {
        let unnamed = service(|s| s.metadata.name = Some(String::new()));
        assert_eq!(
            errors(unnamed),
            [("Service".into(), "metadata.name".into())]
        );
    }

    #[test]
    fn bad_cluster_ip_is_reported_once() {
        let bad = service(|s| {
            let spec = s.spec.as_mut().unwrap();
            spec.cluster_ip = Some("10.96.0.256".into());
            spec.cluster_ips = Some(vec!["10.96.0.256".into()]);
        });
        let web = "Service default/web".to_string();
        assert_eq!(errors(bad), [(web, "spec.clusterIP".into())]);
    }

    #[test]
    fn missing_spec_is_reported() {
        let bad = service(|s| s.spec = None);
        let web = "Service default/web".to_string();
        assert_eq!(errors(bad), [(web, "spec".into())]);
    }

    #[test]
    fn slice_without_address_type_is_reported_until_it_goes() {
        let mut slice = objects::slice("default", "web-1", Some("web"), &one_port());
        slice.address_type = String::new();
        let mut index = DesiredIndex::new(Some(NODE.into()));
        index.replace_slices([(&slice, None)]);
        let errors = &index.desired().errors;
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(
            (errors[0].object.as_str(), errors[0].field.as_str()),
            ("EndpointSlice default/web-1", "addressType")
        );
        index.replace_slices([]);
        assert!(
            index.desired().errors.is_empty(),
            "{:?}",
            index.desired().errors
        );
    }

    #[test]
    fn huge_name_is_reported_shortened_and_not_programmed() {
        let bad = service(|s| s.metadata.name = Some("w".repeat(100_000)));
        let d = desired(&[bad], &[]);
        assert!(d.frontends.is_empty());
        let label = format!("Service default/{}… (100000 characters)", "w".repeat(40));
        assert_eq!(d.errors[0].object, label);
        assert_eq!(d.errors[0].field, "metadata.name");
        assert!(d.errors[0].to_string().len() < 200, "{}", d.errors[0]);
    }
}
