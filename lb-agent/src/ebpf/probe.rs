//! What the running kernel offers, asked before the programs load: the
//! kernel floor the datapath needs, and helpers some kernels refuse.

use std::path::Path;

use aya::util::KernelVersion;

/// The oldest kernel the datapath is built and tested for: tcx links need
/// 6.6, but TC attaches through netlink below it (see `attach.rs`).
pub const KERNEL_FLOOR: (u8, u8) = (5, 15);

/// Where the kernel publishes its BTF, which CO-RE relocations need.
const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// `Err` with one line naming what is missing when the kernel is below
/// [`KERNEL_FLOOR`] or has no BTF.
pub fn kernel_floor() -> Result<(), String> {
    let (major, minor) = KERNEL_FLOOR;
    match KernelVersion::current() {
        Ok(v) if v < KernelVersion::new(major, minor, 0) => {
            return Err(format!(
                "kernel {v:?} is too old: lb-agent needs Linux >= {major}.{minor}"
            ));
        }
        Ok(_) => {}
        Err(e) => return Err(format!("cannot read the kernel version: {e}")),
    }
    if !Path::new(VMLINUX_BTF).exists() {
        return Err(format!(
            "the kernel has no BTF ({VMLINUX_BTF} is missing): lb-agent needs CONFIG_DEBUG_INFO_BTF=y"
        ));
    }
    Ok(())
}

/// Whether XDP programs may call `bpf_xdp_adjust_meta` (some kernels
/// refuse the helper to every XDP program). Loads a four-instruction XDP
/// program that calls it; needs the same privileges as the datapath.
pub fn xdp_adjust_meta() -> bool {
    const BPF_PROG_LOAD: libc::c_long = 5;
    const BPF_PROG_TYPE_XDP: u32 = 6;
    const HELPER_XDP_ADJUST_META: i32 = 54;
    // struct bpf_insn: code, dst|src << 4, off, imm.
    let insn = |code: u8, dst: u8, imm: i32| -> u64 {
        (code as u64) | ((dst as u64) << 8) | ((imm as u32 as u64) << 32)
    };
    let insns = [
        insn(0xb7, 2, -4),                     // r2 = -4 (r1: the context)
        insn(0x85, 0, HELPER_XDP_ADJUST_META), // call bpf_xdp_adjust_meta
        insn(0xb7, 0, 2),                      // r0 = XDP_PASS
        insn(0x95, 0, 0),                      // exit
    ];
    let license = c"GPL";
    // union bpf_attr for BPF_PROG_LOAD: prog_type, insn_cnt, insns,
    // license, then fields left zero.
    let mut attr = [0u64; 16];
    attr[0] = BPF_PROG_TYPE_XDP as u64 | ((insns.len() as u64) << 32);
    attr[1] = insns.as_ptr() as u64;
    attr[2] = license.as_ptr() as u64;
    // SAFETY: `attr` is laid out as BPF_PROG_LOAD expects and outlives the
    // call; the program and license it points at too.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD,
            attr.as_mut_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    if fd < 0 {
        return false;
    }
    // SAFETY: a fresh fd the kernel just gave us.
    unsafe { libc::close(fd as i32) };
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_kernel_is_above_the_floor() {
        assert_eq!(kernel_floor(), Ok(()));
    }
}
