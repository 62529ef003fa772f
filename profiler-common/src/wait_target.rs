//! What a long wait's descriptor referred to, read by the kernel from the fd table at the
//! syscall's return (`sys_exit`), while the descriptor is still the one the call waited on: a
//! file opened and closed inside one request, or a connection made per request, is named even
//! though userspace only sees the event after the descriptor is gone (or reused).
//!
//! Kernel struct offsets come from the kernel's BTF in userspace ([`WaitTargetOffsets`], one
//! load-time global); a zero `enabled` (a kernel whose BTF lacks one of the core members)
//! turns the capture off, and userspace names targets from /proc as before.

/// Parts of a file's path recorded at most (leaf first), and bytes per part (a longer name is
/// cut, and the path marked incomplete). A power of two: the kernel masks the index with it.
pub const MAX_PATH_PARTS: usize = 16;
pub const PATH_PART_LEN: usize = 48;
/// Mount points crossed at most on the way to the root.
pub const MAX_MOUNT_HOPS: usize = 4;

/// `flags` bits of a [`WaitTargetEvent`].
pub mod target_flags {
    /// The fd table had a file at that descriptor (else nothing else is set).
    pub const FILE: u32 = 1;
    /// The path parts reach the root of the mount tree (else the path is a tail: deeper than
    /// [`super::MAX_PATH_PARTS`], a name longer than a part, or a read failed).
    pub const PATH_COMPLETE: u32 = 2;
    /// A socket whose `struct sock` was read: family, protocol, type, state and, for inet,
    /// addresses and ports are set.
    pub const SOCKET: u32 = 4;
}

/// `i_mode` file types (`S_IFMT` bits, uapi).
pub mod file_type {
    pub const MASK: u32 = 0o170000;
    pub const SOCKET: u32 = 0o140000;
    pub const REGULAR: u32 = 0o100000;
    pub const BLOCK: u32 = 0o060000;
    pub const DIRECTORY: u32 = 0o040000;
    pub const CHAR: u32 = 0o020000;
    pub const FIFO: u32 = 0o010000;
}

/// The record the kernel sends just before the `OffCpu` stack event of the same wait
/// (`EventKind::WaitTarget`); userspace pairs them by tid, syscall and argument.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WaitTargetEvent {
    pub kind: u32,
    pub pid: u32,
    pub tid: u32,
    /// [`target_flags`] bits.
    pub flags: u32,
    pub syscall_nr: i64,
    /// The argument recorded for the wait (the descriptor).
    pub arg0: u64,
    pub ino: u64,
    /// The superblock's `s_dev` (kernel encoding: major << 20 | minor).
    pub dev: u32,
    /// `i_mode`: the [`file_type`] and permission bits.
    pub mode: u32,
    /// Sockets: `AF_*` family, `IPPROTO_*` protocol, `SOCK_*` type, TCP state.
    pub sk_family: u16,
    pub sk_protocol: u16,
    pub sk_type: u16,
    pub sk_state: u16,
    /// Inet sockets: ports in host order.
    pub local_port: u16,
    pub peer_port: u16,
    /// Parts of `path` filled in, leaf first.
    pub path_parts: u32,
    /// Inet sockets: addresses in network order (IPv4 in the first 4 bytes).
    pub local_addr: [u8; 16],
    pub peer_addr: [u8; 16],
    /// The dentry names from the file up towards the root, each NUL-terminated.
    pub path: [[u8; PATH_PART_LEN]; MAX_PATH_PARTS],
}

/// Kernel struct member offsets the capture reads through (from BTF). Offsets of members
/// that are not found are 0; `enabled` says whether the core chain (task → fd table → file →
/// inode) is known, `sockets` and `paths` whether those parts are.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WaitTargetOffsets {
    pub enabled: u32,
    pub sockets: u32,
    pub paths: u32,
    pub task_files: u32,
    pub files_fdt: u32,
    pub fdt_max_fds: u32,
    pub fdt_fd: u32,
    pub file_inode: u32,
    pub file_path_mnt: u32,
    pub file_path_dentry: u32,
    pub file_private_data: u32,
    pub inode_mode: u32,
    pub inode_ino: u32,
    pub inode_sb: u32,
    pub sb_dev: u32,
    pub dentry_parent: u32,
    pub dentry_name: u32,
    pub mount_mnt: u32,
    pub mount_parent: u32,
    pub mount_mountpoint: u32,
    pub vfsmount_root: u32,
    pub socket_sk: u32,
    pub sk_family: u32,
    pub sk_state: u32,
    pub sk_protocol: u32,
    pub sk_type: u32,
    pub sk_daddr: u32,
    pub sk_rcv_saddr: u32,
    pub sk_dport: u32,
    pub sk_num: u32,
    pub sk_v6_daddr: u32,
    pub sk_v6_rcv_saddr: u32,
}

const _: () = {
    use core::mem::{offset_of, size_of};
    assert!(
        size_of::<WaitTargetEvent>() == 4 * 4 + 3 * 8 + 2 * 4 + 6 * 2 + 4 + 2 * 16 + MAX_PATH_PARTS * PATH_PART_LEN
    );
    assert!(offset_of!(WaitTargetEvent, kind) == 0);
    assert!(offset_of!(WaitTargetEvent, path) == 96);
    assert!(size_of::<WaitTargetOffsets>() == 32 * 4);
    assert!(MAX_PATH_PARTS.is_power_of_two());
};
