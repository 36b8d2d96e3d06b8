//! sessionAffinity ClientIP: a client's new flows to a frontend go to the
//! backend its previous flow got, while the last one is less than the
//! frontend's timeout old (kube-proxy's `recent` match: the clock restarts
//! at every new connection).

use aya_ebpf::helpers::bpf_ktime_get_coarse_ns;
use lb_common::{AffinityKey, AffinityValue, Backend, ServiceValue};

use crate::{maps::AFFINITY, select};

/// The backend the client's last flow got, if affinity applies, is still
/// fresh, and the backend still exists.
// Not inlined: a BPF subprogram keeps its locals off the caller's stack,
// which the uplink program (with the reject subprogram) needs to stay
// under the verifier's 512-byte limit.
#[inline(never)]
pub fn recall(master: &ServiceValue, client_be: u32) -> Option<(u32, Backend)> {
    if master.affinity_timeout_s == 0 {
        return None;
    }
    let key = AffinityKey {
        rev_nat_id: master.rev_nat_id,
        client_addr_be: client_be,
    };
    // SAFETY: copied out at once.
    let last = unsafe { AFFINITY.get(&key).copied() }?;
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    let timeout_ns = master.affinity_timeout_s as u64 * 1_000_000_000;
    if now.wrapping_sub(last.last_used_ns) >= timeout_ns {
        return None;
    }
    let backend = select::backend(last.backend_id)?;
    Some((last.backend_id, backend))
}

/// Records the backend of the client's new flow (affinity frontends only).
#[inline(never)]
pub fn remember(master: &ServiceValue, client_be: u32, backend_id: u32) {
    if master.affinity_timeout_s == 0 {
        return;
    }
    let key = AffinityKey {
        rev_nat_id: master.rev_nat_id,
        client_addr_be: client_be,
    };
    let value = AffinityValue {
        backend_id,
        _pad: 0,
        last_used_ns: unsafe { bpf_ktime_get_coarse_ns() },
    };
    let _ = AFFINITY.insert(&key, &value, 0);
}
