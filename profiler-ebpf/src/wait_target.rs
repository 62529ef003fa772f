//! The target of a long wait, read from the waiting thread's fd table at `sys_exit` (see
//! `profiler_common::wait_target` for what is recorded and why).
//!
//! Taken at `sys_exit`, only for waits that are reported with a stack (at least the threshold
//! long, within the thread's stack budget), not at `sys_enter` or at the first switch-out:
//! those would pay a dozen kernel reads on every blocking syscall, while the descriptor is
//! still the one the call waited on when it returns (the call holds its file; only another
//! thread closing or `dup2`-ing over the same number during the call would change it).
use aya_ebpf::helpers::{bpf_probe_read_kernel, bpf_probe_read_kernel_str_bytes, generated::bpf_get_current_task};
use profiler_common::{
    EventKind,
    wait_target::{
        MAX_MOUNT_HOPS, MAX_PATH_PARTS, PATH_PART_LEN, WaitTargetEvent, WaitTargetOffsets, file_type, target_flags,
    },
};

use crate::maps::EVENTS;

/// Kernel offsets, set by userspace before load (0 = unknown, `enabled` 0 = capture off).
#[unsafe(no_mangle)]
static WAIT_TARGET_OFFSETS: WaitTargetOffsets = WaitTargetOffsets {
    enabled: 0,
    sockets: 0,
    paths: 0,
    task_files: 0,
    files_fdt: 0,
    fdt_max_fds: 0,
    fdt_fd: 0,
    file_inode: 0,
    file_path_mnt: 0,
    file_path_dentry: 0,
    file_private_data: 0,
    inode_mode: 0,
    inode_ino: 0,
    inode_sb: 0,
    sb_dev: 0,
    dentry_parent: 0,
    dentry_name: 0,
    mount_mnt: 0,
    mount_parent: 0,
    mount_mountpoint: 0,
    vfsmount_root: 0,
    socket_sk: 0,
    sk_family: 0,
    sk_state: 0,
    sk_protocol: 0,
    sk_type: 0,
    sk_daddr: 0,
    sk_rcv_saddr: 0,
    sk_dport: 0,
    sk_num: 0,
    sk_v6_daddr: 0,
    sk_v6_rcv_saddr: 0,
};

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

#[inline(always)]
fn offsets() -> WaitTargetOffsets {
    unsafe { core::ptr::read_volatile(&WAIT_TARGET_OFFSETS) }
}

#[inline(always)]
fn read<T>(base: u64, off: u32) -> Option<T> {
    unsafe { bpf_probe_read_kernel((base + off as u64) as *const T) }.ok()
}

#[inline(always)]
fn read_ptr(base: u64, off: u32) -> Option<u64> {
    read::<u64>(base, off).filter(|&p| p != 0)
}

/// The `struct file` at descriptor `fd` of the current task, if any.
#[inline(always)]
fn current_file(o: &WaitTargetOffsets, fd: u64) -> Option<u64> {
    let task = unsafe { bpf_get_current_task() };
    let files = read_ptr(task, o.task_files)?;
    let fdt = read_ptr(files, o.files_fdt)?;
    let max_fds: u32 = read(fdt, o.fdt_max_fds)?;
    if fd >= max_fds as u64 {
        return None;
    }
    let table = read_ptr(fdt, o.fdt_fd)?;
    read_ptr(table, (fd * 8) as u32)
}

/// Sends a [`WaitTargetEvent`] for the descriptor `arg0` of the current thread's wait, when the
/// capture is on and the descriptor refers to a file. Called before the wait's `OffCpu` event.
#[inline(always)]
pub fn send(tgid: u32, tid: u32, syscall_nr: i64, arg0: u64) {
    let o = offsets();
    if o.enabled == 0 || arg0 > i32::MAX as u64 {
        return;
    }
    let Some(file) = current_file(&o, arg0) else { return };
    let Some(mut entry) = EVENTS.reserve::<WaitTargetEvent>(0) else { return };
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    ev.kind = EventKind::WaitTarget as u32;
    ev.pid = tgid;
    ev.tid = tid;
    ev.flags = target_flags::FILE;
    ev.syscall_nr = syscall_nr;
    ev.arg0 = arg0;
    ev.ino = 0;
    ev.dev = 0;
    ev.mode = 0;
    ev.sk_family = 0;
    ev.sk_protocol = 0;
    ev.sk_type = 0;
    ev.sk_state = 0;
    ev.local_port = 0;
    ev.peer_port = 0;
    ev.path_parts = 0;
    ev.local_addr = [0; 16];
    ev.peer_addr = [0; 16];
    if let Some(inode) = read_ptr(file, o.file_inode) {
        ev.mode = read::<u16>(inode, o.inode_mode).unwrap_or(0) as u32;
        ev.ino = read::<u64>(inode, o.inode_ino).unwrap_or(0);
        if let Some(sb) = read_ptr(inode, o.inode_sb) {
            ev.dev = read::<u32>(sb, o.sb_dev).unwrap_or(0);
        }
    }
    match ev.mode & file_type::MASK {
        file_type::SOCKET if o.sockets != 0 => socket(&o, file, ev),
        // Pipes are named by their inode, anonymous inodes by userspace: no path to walk.
        file_type::REGULAR | file_type::DIRECTORY | file_type::BLOCK | file_type::CHAR if o.paths != 0 => {
            path(&o, file, ev)
        }
        _ => {}
    }
    entry.submit(0);
}

/// Family, protocol, type, state and (inet) addresses of the socket behind `file`.
#[inline(always)]
fn socket(o: &WaitTargetOffsets, file: u64, ev: &mut WaitTargetEvent) {
    let Some(sock) = read_ptr(file, o.file_private_data) else { return };
    let Some(sk) = read_ptr(sock, o.socket_sk) else { return };
    let family: u16 = read(sk, o.sk_family).unwrap_or(0);
    ev.sk_family = family;
    ev.sk_state = read::<u8>(sk, o.sk_state).unwrap_or(0) as u16;
    ev.sk_protocol = read(sk, o.sk_protocol).unwrap_or(0);
    ev.sk_type = read(sk, o.sk_type).unwrap_or(0);
    ev.flags |= target_flags::SOCKET;
    if family != AF_INET && family != AF_INET6 {
        return;
    }
    ev.local_port = read(sk, o.sk_num).unwrap_or(0);
    ev.peer_port = u16::from_be(read(sk, o.sk_dport).unwrap_or(0));
    if family == AF_INET {
        let local: [u8; 4] = read(sk, o.sk_rcv_saddr).unwrap_or([0; 4]);
        let peer: [u8; 4] = read(sk, o.sk_daddr).unwrap_or([0; 4]);
        ev.local_addr[..4].copy_from_slice(&local);
        ev.peer_addr[..4].copy_from_slice(&peer);
    } else {
        ev.local_addr = read(sk, o.sk_v6_rcv_saddr).unwrap_or([0; 16]);
        ev.peer_addr = read(sk, o.sk_v6_daddr).unwrap_or([0; 16]);
    }
}

/// The dentry names from `file` up to the root of the mount tree, crossing mount points as
/// the kernel's `d_path` does (a mount's root dentry continues at its mount point in the
/// parent mount), bounded by [`MAX_PATH_PARTS`] names and [`MAX_MOUNT_HOPS`] mounts.
#[inline(always)]
fn path(o: &WaitTargetOffsets, file: u64, ev: &mut WaitTargetEvent) {
    let Some(mut dentry) = read_ptr(file, o.file_path_dentry) else { return };
    let Some(mut vfsmnt) = read_ptr(file, o.file_path_mnt) else { return };
    let mut mnt = vfsmnt - o.mount_mnt as u64;
    let mut parts = 0usize;
    for _ in 0..MAX_PATH_PARTS + MAX_MOUNT_HOPS {
        let Some(root) = read_ptr(vfsmnt, o.vfsmount_root) else { return };
        if dentry == root {
            let Some(parent) = read_ptr(mnt, o.mount_parent) else { return };
            if parent == mnt {
                ev.flags |= target_flags::PATH_COMPLETE;
                return;
            }
            let Some(mountpoint) = read_ptr(mnt, o.mount_mountpoint) else { return };
            dentry = mountpoint;
            mnt = parent;
            vfsmnt = mnt + o.mount_mnt as u64;
            continue;
        }
        let Some(parent) = read_ptr(dentry, o.dentry_parent) else { return };
        if parent == dentry {
            // A filesystem's root that is not its mount's root (a detached mount).
            ev.flags |= target_flags::PATH_COMPLETE;
            return;
        }
        if parts >= MAX_PATH_PARTS {
            return;
        }
        let Some(name) = read_ptr(dentry, o.dentry_name) else { return };
        let slot = &mut ev.path[parts & (MAX_PATH_PARTS - 1)];
        match unsafe { bpf_probe_read_kernel_str_bytes(name as *const u8, slot) } {
            // A name that filled its part was probably cut: the path is a tail from here.
            Ok(s) if s.len() + 1 < PATH_PART_LEN => {}
            _ => {
                ev.path_parts = parts as u32;
                return;
            }
        }
        parts += 1;
        ev.path_parts = parts as u32;
        dentry = parent;
    }
}
