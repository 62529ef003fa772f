//! Kernel struct offsets for reading a wait's target at the syscall (`profiler_common::
//! wait_target`), from the kernel's BTF as the other kernel offsets are (aya has no CO-RE for
//! Rust programs). A kernel missing a member of the core chain (task → fd table → file →
//! inode) gets the capture off, with one warning; targets are then named from /proc only.
use profiler_common::wait_target::WaitTargetOffsets;

use super::kernel_btf::KernelBtf;

/// The offsets the kernel needs, `enabled` 0 if the core chain is not all there; `sockets`
/// and `paths` likewise for their parts.
pub fn wait_target_offsets(btf: Option<&KernelBtf>) -> WaitTargetOffsets {
    let Some(btf) = btf else { return WaitTargetOffsets::default() };
    let at = |ty: &str, path: &[&str]| btf.offset_of(ty, path);
    let core = [
        at("task_struct", &["files"]),
        at("files_struct", &["fdt"]),
        at("fdtable", &["max_fds"]),
        at("fdtable", &["fd"]),
        at("file", &["f_inode"]),
        at("inode", &["i_mode"]),
        at("inode", &["i_ino"]),
        at("inode", &["i_sb"]),
        at("super_block", &["s_dev"]),
    ];
    let paths = [
        at("file", &["f_path", "mnt"]),
        at("file", &["f_path", "dentry"]),
        at("dentry", &["d_parent"]),
        at("dentry", &["d_name", "name"]),
        at("mount", &["mnt"]),
        at("mount", &["mnt_parent"]),
        at("mount", &["mnt_mountpoint"]),
        at("vfsmount", &["mnt_root"]),
    ];
    let common = |member: &str| at("sock", &["__sk_common", member]);
    let sockets = [
        at("file", &["private_data"]),
        at("socket", &["sk"]),
        common("skc_family"),
        common("skc_state"),
        at("sock", &["sk_protocol"]),
        at("sock", &["sk_type"]),
        common("skc_daddr"),
        common("skc_rcv_saddr"),
        common("skc_dport"),
        common("skc_num"),
        common("skc_v6_daddr"),
        common("skc_v6_rcv_saddr"),
    ];
    let all = |found: &[Option<u32>]| found.iter().all(Option::is_some) as u32;
    let v = |found: Option<u32>| found.unwrap_or(0);
    let o = WaitTargetOffsets {
        enabled: all(&core),
        sockets: all(&sockets),
        paths: all(&paths),
        task_files: v(core[0]),
        files_fdt: v(core[1]),
        fdt_max_fds: v(core[2]),
        fdt_fd: v(core[3]),
        file_inode: v(core[4]),
        inode_mode: v(core[5]),
        inode_ino: v(core[6]),
        inode_sb: v(core[7]),
        sb_dev: v(core[8]),
        file_path_mnt: v(paths[0]),
        file_path_dentry: v(paths[1]),
        dentry_parent: v(paths[2]),
        dentry_name: v(paths[3]),
        mount_mnt: v(paths[4]),
        mount_parent: v(paths[5]),
        mount_mountpoint: v(paths[6]),
        vfsmount_root: v(paths[7]),
        file_private_data: v(sockets[0]),
        socket_sk: v(sockets[1]),
        sk_family: v(sockets[2]),
        sk_state: v(sockets[3]),
        sk_protocol: v(sockets[4]),
        sk_type: v(sockets[5]),
        sk_daddr: v(sockets[6]),
        sk_rcv_saddr: v(sockets[7]),
        sk_dport: v(sockets[8]),
        sk_num: v(sockets[9]),
        sk_v6_daddr: v(sockets[10]),
        sk_v6_rcv_saddr: v(sockets[11]),
    };
    WaitTargetOffsets { enabled: o.enabled, sockets: o.sockets & o.enabled, paths: o.paths & o.enabled, ..o }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_running_kernel_has_them_all() {
        let btf = KernelBtf::load().expect("/sys/kernel/btf/vmlinux");
        let o = wait_target_offsets(Some(&btf));
        assert_eq!((o.enabled, o.sockets, o.paths), (1, 1, 1), "{o:?}");
        // d_name is a qstr: a hash and length word, then the name pointer.
        assert_eq!(o.dentry_name, btf.offset_of("dentry", &["d_name"]).unwrap() + 8);
        // The addresses of struct sock_common come first, the family after them.
        assert!(o.sk_daddr < o.sk_family && o.sk_dport < o.sk_family, "{o:?}");
    }

    #[test]
    fn no_btf_no_capture() {
        assert_eq!(wait_target_offsets(None).enabled, 0);
    }
}
