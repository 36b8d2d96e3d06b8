//! Checks the Kubernetes manifests under `deploy/` without a cluster.
//!
//! Every YAML document there (kustomization.yaml aside) is deserialised into
//! its k8s-openapi type by `kind`; a kind the test does not know is a failure,
//! so a new object cannot slip in unchecked. A field k8s-openapi does not know
//! (a typo such as `mountPropogation`, or a field at the wrong level) is a
//! failure too: it would be silently dropped on the way in.
//!
//! Then the properties the agent and docs/kube-proxy-replacement.md rely on:
//! the ClusterRole grants read-only access to exactly what the agent watches,
//! the binding gives it to the DaemonSet's ServiceAccount, and the DaemonSet
//! runs with the documented host access and capabilities, no more.
//!
//! Needs no root and no cluster.

use std::{
    collections::BTreeSet,
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
};

use k8s_openapi::{
    api::{
        apps::v1::DaemonSet,
        core::v1::{Container, PodSpec, Probe, ServiceAccount},
        rbac::v1::{ClusterRole, ClusterRoleBinding},
    },
    apimachinery::pkg::util::intstr::IntOrString,
};
use serde::{de::DeserializeOwned, Deserialize as _, Serialize};

const DEPLOY_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy");

/// What lb-agent watches through the API, as (API group, resource): Services
/// (core/v1), EndpointSlices (discovery.k8s.io/v1) and Nodes (core/v1, its
/// own Node only, but RBAC cannot express that). This mirrors the agent's
/// watches: when the agent starts watching something else, add it here and
/// to deploy/rbac.yaml together.
const WATCHED_RESOURCES: &[(&str, &str)] = &[
    ("", "services"),
    ("discovery.k8s.io", "endpointslices"),
    ("", "nodes"),
];

/// The verbs a watch needs (initial get/list, then watch). The agent writes
/// nothing to the API.
const WATCH_VERBS: &[&str] = &["get", "list", "watch"];

/// Capabilities the agent container adds after dropping ALL: the ones the
/// agent itself names when one is missing (`agent::privileges::ALL`, which
/// docs/security.md documents), as Kubernetes spells them.
fn added_capabilities() -> BTreeSet<&'static str> {
    (lb_agent::agent::privileges::ALL.iter())
        .map(|cap| cap.name.trim_start_matches("CAP_"))
        .collect()
}

/// The agent's --healthz-bind port (kube-proxy's): /healthz and /livez.
const HEALTHZ_PORT: i32 = 10256;

/// Where the host's bpffs is, on the host and in the container.
const BPFFS: &str = "/sys/fs/bpf";

const NAMESPACE: &str = "kube-system";
const AGENT_CONTAINER: &str = "lb-agent";

/// "file #n (Kind name)": where a document came from, for messages.
type Origin = String;

/// Every object under deploy/, by kind.
#[derive(Default)]
struct Manifests {
    service_accounts: Vec<(Origin, ServiceAccount)>,
    cluster_roles: Vec<(Origin, ClusterRole)>,
    bindings: Vec<(Origin, ClusterRoleBinding)>,
    daemonsets: Vec<(Origin, DaemonSet)>,
}

/// The YAML files under deploy/ other than kustomization.yaml, sorted.
fn manifest_files() -> Vec<PathBuf> {
    let dir = Path::new(DEPLOY_DIR);
    let entries =
        fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()));
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("reading deploy/").path())
        .filter(|p| {
            p.is_file()
                && matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
                && !is_kustomization(p)
        })
        .collect();
    files.sort();
    files
}

fn is_kustomization(path: &Path) -> bool {
    matches!(
        path.file_name().and_then(|n| n.to_str()),
        Some("kustomization.yaml" | "kustomization.yml" | "Kustomization")
    )
}

fn load() -> Manifests {
    let files = manifest_files();
    assert!(
        !files.is_empty(),
        "no YAML manifests found under {DEPLOY_DIR}"
    );
    let mut m = Manifests::default();
    for path in files {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let text = fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        for (index, document) in serde_yaml::Deserializer::from_str(&text).enumerate() {
            let value = serde_yaml::Value::deserialize(document)
                .unwrap_or_else(|e| panic!("{name} document #{}: not YAML: {e}", index + 1));
            if value.is_null() {
                continue; // an empty document (a stray `---`)
            }
            let kind = value
                .get("kind")
                .and_then(|k| k.as_str())
                .unwrap_or_else(|| panic!("{name} document #{}: no `kind` field", index + 1))
                .to_string();
            let object_name = value
                .get("metadata")
                .and_then(|md| md.get("name"))
                .and_then(|n| n.as_str())
                .unwrap_or("<no name>");
            let origin = format!("{name} #{} ({kind} {object_name})", index + 1);
            match kind.as_str() {
                "ServiceAccount" => m.service_accounts.push(typed(origin, value)),
                "ClusterRole" => m.cluster_roles.push(typed(origin, value)),
                "ClusterRoleBinding" => m.bindings.push(typed(origin, value)),
                "DaemonSet" => m.daemonsets.push(typed(origin, value)),
                other => panic!(
                    "{origin}: kind {other:?} is not one this test knows (ServiceAccount, \
                     ClusterRole, ClusterRoleBinding, DaemonSet); add it to \
                     lb-testbed/tests/deploy_manifests.rs with checks of its own"
                ),
            }
        }
    }
    m
}

/// Deserialises `value` into `T` (k8s-openapi checks apiVersion and kind) and
/// fails if serialising it back loses or changes anything: k8s-openapi skips
/// unknown fields, so that is how a misspelt or misplaced field shows.
fn typed<T: DeserializeOwned + Serialize>(origin: Origin, value: serde_yaml::Value) -> (Origin, T) {
    let object: T = serde_yaml::from_value(value.clone())
        .unwrap_or_else(|e| panic!("{origin}: does not deserialise as its kind: {e}"));
    let original = serde_json::to_value(&value).expect("YAML value as JSON");
    let round_trip = serde_json::to_value(&object).expect("k8s-openapi object as JSON");
    let mut differences = String::new();
    diff(&original, &round_trip, "", &mut differences);
    assert!(
        differences.is_empty(),
        "{origin}: fields that k8s-openapi does not know or reads differently \
         (misspelt, misplaced or mistyped?):\n{differences}"
    );
    (origin, object)
}

/// Appends one line per path where `a` (the manifest) and `b` (the round
/// trip) differ.
fn diff(a: &serde_json::Value, b: &serde_json::Value, path: &str, out: &mut String) {
    use serde_json::Value;
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            for (key, av) in a {
                let p = format!("{path}.{key}");
                match b.get(key) {
                    Some(bv) => diff(av, bv, &p, out),
                    None => writeln!(out, "  {p}: dropped (unknown field)").unwrap(),
                }
            }
            for key in b.keys().filter(|k| !a.contains_key(*k)) {
                writeln!(out, "  {path}.{key}: appeared on the round trip").unwrap();
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (av, bv)) in a.iter().zip(b).enumerate() {
                diff(av, bv, &format!("{path}[{i}]"), out);
            }
        }
        _ if a == b => {}
        _ => writeln!(out, "  {path}: {a} became {b}").unwrap(),
    }
}

fn only<'a, T>(items: &'a [(Origin, T)], what: &str) -> &'a (Origin, T) {
    assert_eq!(
        items.len(),
        1,
        "expected exactly one {what} under deploy/, found {}: {:?}",
        items.len(),
        items.iter().map(|(o, _)| o).collect::<Vec<_>>()
    );
    &items[0]
}

fn daemonset(m: &Manifests) -> (&Origin, &DaemonSet, &PodSpec) {
    let (origin, ds) = only(&m.daemonsets, "DaemonSet");
    let pod = ds
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .unwrap_or_else(|| panic!("{origin}: no pod template spec"));
    (origin, ds, pod)
}

fn agent_container<'a>(origin: &str, pod: &'a PodSpec) -> &'a Container {
    pod.containers
        .iter()
        .find(|c| c.name == AGENT_CONTAINER)
        .unwrap_or_else(|| panic!("{origin}: no container named {AGENT_CONTAINER:?}"))
}

/// The value of `--flag=value` or `--flag value` in the container's args.
fn arg_value<'a>(container: &'a Container, flag: &str) -> Option<&'a str> {
    let args = container.args.as_deref().unwrap_or_default();
    let prefix = format!("{flag}=");
    args.iter().enumerate().find_map(|(i, a)| {
        if let Some(v) = a.strip_prefix(&prefix) {
            Some(v)
        } else if a == flag {
            args.get(i + 1).map(String::as_str)
        } else {
            None
        }
    })
}

#[test]
fn every_manifest_is_a_known_kind_with_known_fields() {
    let m = load();
    assert!(
        !m.service_accounts.is_empty(),
        "deploy/ has no ServiceAccount"
    );
    assert!(!m.cluster_roles.is_empty(), "deploy/ has no ClusterRole");
    assert!(!m.bindings.is_empty(), "deploy/ has no ClusterRoleBinding");
    assert!(!m.daemonsets.is_empty(), "deploy/ has no DaemonSet");
}

#[test]
fn kustomization_lists_every_manifest() {
    let path = Path::new(DEPLOY_DIR).join("kustomization.yaml");
    let text =
        fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let k: serde_yaml::Value = serde_yaml::from_str(&text).expect("kustomization.yaml: not YAML");
    let listed: BTreeSet<String> = k
        .get("resources")
        .and_then(|r| r.as_sequence())
        .expect("kustomization.yaml: no `resources` list")
        .iter()
        .map(|r| {
            r.as_str()
                .expect("kustomization.yaml: a resource is not a string")
                .to_string()
        })
        .collect();
    let present: BTreeSet<String> = manifest_files()
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        listed, present,
        "kustomization.yaml `resources` must list exactly the manifests in deploy/ \
         (left: listed, right: present), or `kubectl apply -k deploy/` installs a different set"
    );
}

#[test]
fn cluster_role_grants_read_only_access_to_exactly_the_watched_resources() {
    let m = load();
    let (origin, role) = only(&m.cluster_roles, "ClusterRole");
    assert!(
        role.aggregation_rule.is_none(),
        "{origin}: an aggregationRule would let other roles add permissions to the agent's"
    );
    let rules = role.rules.as_deref().unwrap_or_default();
    assert!(!rules.is_empty(), "{origin}: has no rules");

    let mut granted = BTreeSet::new();
    for (i, rule) in rules.iter().enumerate() {
        let at = format!("{origin} rule #{}", i + 1);
        assert!(
            rule.non_resource_urls
                .as_deref()
                .unwrap_or_default()
                .is_empty(),
            "{at}: grants nonResourceURLs; the agent only watches API resources"
        );
        assert!(
            rule.resource_names
                .as_deref()
                .unwrap_or_default()
                .is_empty(),
            "{at}: resourceNames cannot restrict list/watch and would break the agent's watches"
        );
        let groups = rule.api_groups.as_deref().unwrap_or_default();
        let resources = rule.resources.as_deref().unwrap_or_default();
        for (field, values) in [
            ("apiGroups", groups),
            ("resources", resources),
            ("verbs", &rule.verbs[..]),
        ] {
            assert!(
                !values.iter().any(|v| v.contains('*')),
                "{at}: wildcard in {field} {values:?}; grant each watched resource by name"
            );
        }
        let writes: Vec<&String> = rule
            .verbs
            .iter()
            .filter(|v| !WATCH_VERBS.contains(&v.as_str()))
            .collect();
        assert!(
            writes.is_empty(),
            "{at}: verbs {writes:?} beyond {WATCH_VERBS:?}; the agent writes nothing to the API"
        );
        for group in groups {
            for resource in resources {
                for verb in &rule.verbs {
                    granted.insert((group.clone(), resource.clone(), verb.clone()));
                }
            }
        }
    }

    let needed: BTreeSet<(String, String, String)> = WATCHED_RESOURCES
        .iter()
        .flat_map(|(group, resource)| {
            WATCH_VERBS
                .iter()
                .map(move |verb| (group.to_string(), resource.to_string(), verb.to_string()))
        })
        .collect();
    let missing: Vec<_> = needed.difference(&granted).collect();
    assert!(
        missing.is_empty(),
        "{origin}: does not grant (apiGroup, resource, verb) {missing:?}, which the agent's \
         watches need: they would fail with 403 Forbidden"
    );
    let extra: Vec<_> = granted.difference(&needed).collect();
    assert!(
        extra.is_empty(),
        "{origin}: grants (apiGroup, resource, verb) {extra:?}, which the agent does not watch; \
         keep the role to exactly {WATCHED_RESOURCES:?} x {WATCH_VERBS:?}"
    );
}

#[test]
fn binding_gives_the_role_to_the_daemonset_service_account() {
    let m = load();
    let (role_origin, role) = only(&m.cluster_roles, "ClusterRole");
    let role_name = role
        .metadata
        .name
        .as_deref()
        .unwrap_or_else(|| panic!("{role_origin}: no name"));
    let (ds_origin, ds, pod) = daemonset(&m);
    let namespace = ds
        .metadata
        .namespace
        .as_deref()
        .unwrap_or_else(|| panic!("{ds_origin}: no namespace"));
    let account = pod.service_account_name.as_deref().unwrap_or_else(|| {
        panic!("{ds_origin}: no serviceAccountName; the pod would run as `default`, unbound")
    });

    let (sa_origin, sa) = m
        .service_accounts
        .iter()
        .find(|(_, sa)| sa.metadata.name.as_deref() == Some(account))
        .unwrap_or_else(|| {
            panic!("{ds_origin}: uses ServiceAccount {account:?}, which deploy/ does not define")
        });
    assert_eq!(
        sa.metadata.namespace.as_deref(),
        Some(namespace),
        "{sa_origin}: must be in the DaemonSet's namespace"
    );
    let automount = pod
        .automount_service_account_token
        .or(sa.automount_service_account_token)
        .unwrap_or(true);
    assert!(
        automount,
        "{ds_origin}: the service account token is not mounted; the agent's in-cluster \
         config needs it"
    );

    let bound: Vec<&(Origin, ClusterRoleBinding)> = m
        .bindings
        .iter()
        .filter(|(_, b)| {
            b.role_ref.api_group == "rbac.authorization.k8s.io"
                && b.role_ref.kind == "ClusterRole"
                && b.role_ref.name == role_name
        })
        .collect();
    assert_eq!(
        bound.len(),
        1,
        "expected exactly one ClusterRoleBinding with roleRef ClusterRole {role_name:?} \
         (apiGroup rbac.authorization.k8s.io), found {}",
        bound.len()
    );
    let (binding_origin, binding) = bound[0];
    let subjects = binding.subjects.as_deref().unwrap_or_default();
    assert_eq!(
        subjects.len(),
        1,
        "{binding_origin}: must bind the agent's role to the agent's ServiceAccount only, \
         has subjects {subjects:?}"
    );
    let subject = &subjects[0];
    assert!(
        subject.kind == "ServiceAccount"
            && subject.name == account
            && subject.namespace.as_deref() == Some(namespace)
            && subject.api_group.as_deref().unwrap_or_default().is_empty(),
        "{binding_origin}: subject must be ServiceAccount {namespace}/{account} (the one \
         {ds_origin} runs as), is {subject:?}"
    );
}

#[test]
fn daemonset_runs_unprivileged_with_exactly_the_documented_capabilities() {
    let m = load();
    let (origin, _, pod) = daemonset(&m);
    assert_eq!(
        pod.host_network,
        Some(true),
        "{origin}: hostNetwork must be true; the programs attach to the node-side pod veths \
         in the host network namespace"
    );
    let all = pod.init_containers.iter().flatten().chain(&pod.containers);
    for c in all {
        let privileged = c
            .security_context
            .as_ref()
            .and_then(|sc| sc.privileged)
            .unwrap_or(false);
        assert!(
            !privileged,
            "{origin}: container {:?} is privileged; the documented capabilities replace that",
            c.name
        );
    }

    let agent = agent_container(origin, pod);
    let sc = agent
        .security_context
        .as_ref()
        .unwrap_or_else(|| panic!("{origin}: the agent container has no securityContext"));
    let caps = sc
        .capabilities
        .as_ref()
        .unwrap_or_else(|| panic!("{origin}: the agent container sets no capabilities"));
    assert_eq!(
        caps.drop.as_deref().unwrap_or_default(),
        ["ALL".to_string()],
        "{origin}: capabilities.drop must be exactly [ALL], so only the added ones remain"
    );
    let added: BTreeSet<&str> = caps
        .add
        .as_deref()
        .unwrap_or_default()
        .iter()
        .map(String::as_str)
        .collect();
    let expected = added_capabilities();
    assert_eq!(
        added, expected,
        "{origin}: capabilities.add must be exactly the documented set (left: manifest, \
         right: agent::privileges::ALL); update docs/security.md and \
         docs/kube-proxy-replacement.md with a reason if it must change"
    );
    assert_eq!(
        caps.add.as_deref().unwrap_or_default().len(),
        expected.len(),
        "{origin}: capabilities.add lists a capability twice"
    );
    assert_eq!(
        sc.allow_privilege_escalation,
        Some(false),
        "{origin}: allowPrivilegeEscalation must be false"
    );
    assert_eq!(
        sc.run_as_user,
        Some(0),
        "{origin}: runAsUser must be 0: added capabilities reach only a uid-0 process"
    );
    assert_eq!(
        sc.read_only_root_filesystem,
        Some(true),
        "{origin}: readOnlyRootFilesystem must be true"
    );
    assert_eq!(
        sc.seccomp_profile.as_ref().map(|p| p.type_.as_str()),
        Some("Unconfined"),
        "{origin}: seccompProfile must be Unconfined (as documented): default profiles of \
         several runtimes allow bpf() only with CAP_SYS_ADMIN"
    );
}

#[test]
fn daemonset_mounts_the_host_bpffs() {
    let m = load();
    let (origin, _, pod) = daemonset(&m);
    let agent = agent_container(origin, pod);
    let volume = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.host_path.as_ref().is_some_and(|h| h.path == BPFFS))
        .unwrap_or_else(|| panic!("{origin}: no hostPath volume for the host's bpffs ({BPFFS})"));
    let mount = agent
        .volume_mounts
        .iter()
        .flatten()
        .find(|vm| vm.name == volume.name)
        .unwrap_or_else(|| {
            panic!(
                "{origin}: the agent container does not mount volume {:?} ({BPFFS})",
                volume.name
            )
        });
    assert_eq!(
        mount.mount_path, BPFFS,
        "{origin}: the host's bpffs must be mounted at {BPFFS} in the container"
    );
    assert_ne!(
        mount.read_only,
        Some(true),
        "{origin}: the bpffs mount must be writable: the agent pins its maps there"
    );
    assert_ne!(
        mount.mount_propagation.as_deref(),
        Some("Bidirectional"),
        "{origin}: Bidirectional propagation is rejected by the API server for a container \
         that is not privileged; pins persist in the host's bpffs without it"
    );
    let pin_dir = arg_value(agent, "--bpffs")
        .unwrap_or_else(|| panic!("{origin}: the agent has no --bpffs argument"));
    assert!(
        pin_dir.starts_with(&format!("{BPFFS}/")),
        "{origin}: --bpffs {pin_dir:?} must lie inside the mounted host bpffs ({BPFFS}), or the \
         pins die with the container"
    );
}

#[test]
fn daemonset_probes_use_the_agent_health_endpoints() {
    let m = load();
    let (origin, _, pod) = daemonset(&m);
    let agent = agent_container(origin, pod);
    let check = |probe: Option<&Probe>, kind: &str, path: &str| {
        let get = probe
            .and_then(|p| p.http_get.as_ref())
            .unwrap_or_else(|| panic!("{origin}: no HTTP GET {kind} probe"));
        assert_eq!(
            get.path.as_deref(),
            Some(path),
            "{origin}: the {kind} probe must GET {path}"
        );
        assert_eq!(
            get.port,
            IntOrString::Int(HEALTHZ_PORT),
            "{origin}: the {kind} probe must use port {HEALTHZ_PORT} (--healthz-bind)"
        );
        assert!(
            get.scheme.as_deref().unwrap_or("HTTP") == "HTTP",
            "{origin}: the {kind} probe must be plain HTTP"
        );
    };
    check(agent.liveness_probe.as_ref(), "liveness", "/livez");
    check(agent.readiness_probe.as_ref(), "readiness", "/healthz");
    let bind = arg_value(agent, "--healthz-bind")
        .unwrap_or_else(|| panic!("{origin}: the agent has no --healthz-bind argument"));
    assert!(
        bind.ends_with(&format!(":{HEALTHZ_PORT}")),
        "{origin}: --healthz-bind {bind:?} must listen on port {HEALTHZ_PORT}, where the \
         probes look"
    );
}

#[test]
fn daemonset_runs_on_every_node_and_knows_its_node() {
    let m = load();
    let (origin, ds, pod) = daemonset(&m);
    assert_eq!(
        ds.metadata.namespace.as_deref(),
        Some(NAMESPACE),
        "{origin}: must be in {NAMESPACE}, next to what it replaces"
    );
    assert_eq!(
        pod.priority_class_name.as_deref(),
        Some("system-node-critical"),
        "{origin}: priorityClassName must be system-node-critical"
    );
    let tolerates_all = pod.tolerations.iter().flatten().any(|t| {
        t.operator.as_deref() == Some("Exists")
            && t.key.as_deref().unwrap_or_default().is_empty()
            && t.effect.as_deref().unwrap_or_default().is_empty()
    });
    assert!(
        tolerates_all,
        "{origin}: needs a toleration with operator Exists and no key or effect, so it runs \
         on every node whatever its taints"
    );

    let agent = agent_container(origin, pod);
    let node_name = agent
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "NODE_NAME")
        .unwrap_or_else(|| panic!("{origin}: the agent has no NODE_NAME env var (--node-name)"));
    let field = node_name
        .value_from
        .as_ref()
        .and_then(|v| v.field_ref.as_ref())
        .map(|f| f.field_path.as_str());
    assert_eq!(
        field,
        Some("spec.nodeName"),
        "{origin}: NODE_NAME must come from the downward API field spec.nodeName"
    );

    // Without kube-proxy, the `kubernetes` Service's ClusterIP (what the
    // kubelet puts in KUBERNETES_SERVICE_HOST) is served by lb-agent itself,
    // and only for traffic entering through pod interfaces.
    let api_host = agent
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "KUBERNETES_SERVICE_HOST");
    assert!(
        api_host.is_some_and(|e| e.value.is_some() || e.value_from.is_some()),
        "{origin}: KUBERNETES_SERVICE_HOST must be set explicitly to the API server's address; \
         the ClusterIP the kubelet injects is unreachable from the host network without \
         kube-proxy"
    );
    assert_ne!(
        pod.dns_policy.as_deref(),
        Some("ClusterFirstWithHostNet"),
        "{origin}: the agent must not resolve names through the cluster DNS ClusterIP, which \
         host-network processes cannot reach without kube-proxy"
    );

    let strategy = ds
        .spec
        .as_ref()
        .and_then(|s| s.update_strategy.as_ref())
        .unwrap_or_else(|| panic!("{origin}: no updateStrategy"));
    assert_eq!(
        strategy.type_.as_deref(),
        Some("RollingUpdate"),
        "{origin}: updateStrategy must be RollingUpdate"
    );
    assert_eq!(
        strategy
            .rolling_update
            .as_ref()
            .and_then(|r| r.max_unavailable.as_ref()),
        Some(&IntOrString::Int(1)),
        "{origin}: a rollout must take down one node's agent at a time (maxUnavailable 1)"
    );
}
