//! The x86-64 system call table (number → name) and a classification of the calls a thread
//! can block in, so that an off-CPU interval can be given a category (see DESIGN.md,
//! "Correlation").
//!
//! Numbers are those of the 64-bit ABI. A 32-bit (ia32) process uses another table, and an x32
//! process sets bit 30 (`__X32_SYSCALL_BIT`); neither is decoded here, so such numbers come out
//! as `syscall_NNN` and `Other`.
use std::borrow::Cow;
use std::sync::OnceLock;

/// What a thread blocked in a system call was waiting for, as far as the call itself tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SyscallClass {
    /// I/O on a file descriptor, which is the first argument (read, recv, accept, fsync...).
    FdIo,
    /// Waiting on several descriptors: poll, select, epoll_wait and their variants.
    Poll,
    /// Futex waits and wakes: locks, condition variables, the GIL.
    Futex,
    /// Sleeping or waiting for a signal, with no descriptor involved.
    Sleep,
    /// Waiting for a child process.
    Wait,
    /// File-system calls that name a path rather than an open descriptor (open, stat, unlink...).
    PathIo,
    /// Anything else.
    Other,
}

/// `(number, name)` for every x86-64 system call, sorted by number.
///
/// Generated, not hand-written: rows 0-334 and 424-450 come from Debian 12's
/// `/usr/include/x86_64-linux-gnu/asm/unistd_64.h` (linux-libc-dev 6.1); rows 335-336 and
/// 451-470 come from the kernel's `arch/x86/entry/syscalls/syscall_64.tbl` (v6.19, x32 rows
/// skipped), which the header predates. The script, given that .tbl as its argument:
///
/// ```sh
/// { awk '$1 == "#define" && $2 ~ /^__NR_/ { print $3, substr($2, 6) }' \
///       /usr/include/x86_64-linux-gnu/asm/unistd_64.h
///   awk '$1 ~ /^[0-9]+$/ && $2 != "x32" && ($1 > 450 || ($1 > 334 && $1 < 387)) { print $1, $3 }' "$1"
/// } | sort -n -u | awk '{ printf "    (%d, \"%s\"),\n", $1, $2 }'
/// ```
///
/// The gap is deliberate: the kernel keeps 387-423 unused so that calls added from 424 on have
/// the same number on every architecture.
pub const SYSCALLS: &[(u16, &str)] = &[
    (0, "read"),
    (1, "write"),
    (2, "open"),
    (3, "close"),
    (4, "stat"),
    (5, "fstat"),
    (6, "lstat"),
    (7, "poll"),
    (8, "lseek"),
    (9, "mmap"),
    (10, "mprotect"),
    (11, "munmap"),
    (12, "brk"),
    (13, "rt_sigaction"),
    (14, "rt_sigprocmask"),
    (15, "rt_sigreturn"),
    (16, "ioctl"),
    (17, "pread64"),
    (18, "pwrite64"),
    (19, "readv"),
    (20, "writev"),
    (21, "access"),
    (22, "pipe"),
    (23, "select"),
    (24, "sched_yield"),
    (25, "mremap"),
    (26, "msync"),
    (27, "mincore"),
    (28, "madvise"),
    (29, "shmget"),
    (30, "shmat"),
    (31, "shmctl"),
    (32, "dup"),
    (33, "dup2"),
    (34, "pause"),
    (35, "nanosleep"),
    (36, "getitimer"),
    (37, "alarm"),
    (38, "setitimer"),
    (39, "getpid"),
    (40, "sendfile"),
    (41, "socket"),
    (42, "connect"),
    (43, "accept"),
    (44, "sendto"),
    (45, "recvfrom"),
    (46, "sendmsg"),
    (47, "recvmsg"),
    (48, "shutdown"),
    (49, "bind"),
    (50, "listen"),
    (51, "getsockname"),
    (52, "getpeername"),
    (53, "socketpair"),
    (54, "setsockopt"),
    (55, "getsockopt"),
    (56, "clone"),
    (57, "fork"),
    (58, "vfork"),
    (59, "execve"),
    (60, "exit"),
    (61, "wait4"),
    (62, "kill"),
    (63, "uname"),
    (64, "semget"),
    (65, "semop"),
    (66, "semctl"),
    (67, "shmdt"),
    (68, "msgget"),
    (69, "msgsnd"),
    (70, "msgrcv"),
    (71, "msgctl"),
    (72, "fcntl"),
    (73, "flock"),
    (74, "fsync"),
    (75, "fdatasync"),
    (76, "truncate"),
    (77, "ftruncate"),
    (78, "getdents"),
    (79, "getcwd"),
    (80, "chdir"),
    (81, "fchdir"),
    (82, "rename"),
    (83, "mkdir"),
    (84, "rmdir"),
    (85, "creat"),
    (86, "link"),
    (87, "unlink"),
    (88, "symlink"),
    (89, "readlink"),
    (90, "chmod"),
    (91, "fchmod"),
    (92, "chown"),
    (93, "fchown"),
    (94, "lchown"),
    (95, "umask"),
    (96, "gettimeofday"),
    (97, "getrlimit"),
    (98, "getrusage"),
    (99, "sysinfo"),
    (100, "times"),
    (101, "ptrace"),
    (102, "getuid"),
    (103, "syslog"),
    (104, "getgid"),
    (105, "setuid"),
    (106, "setgid"),
    (107, "geteuid"),
    (108, "getegid"),
    (109, "setpgid"),
    (110, "getppid"),
    (111, "getpgrp"),
    (112, "setsid"),
    (113, "setreuid"),
    (114, "setregid"),
    (115, "getgroups"),
    (116, "setgroups"),
    (117, "setresuid"),
    (118, "getresuid"),
    (119, "setresgid"),
    (120, "getresgid"),
    (121, "getpgid"),
    (122, "setfsuid"),
    (123, "setfsgid"),
    (124, "getsid"),
    (125, "capget"),
    (126, "capset"),
    (127, "rt_sigpending"),
    (128, "rt_sigtimedwait"),
    (129, "rt_sigqueueinfo"),
    (130, "rt_sigsuspend"),
    (131, "sigaltstack"),
    (132, "utime"),
    (133, "mknod"),
    (134, "uselib"),
    (135, "personality"),
    (136, "ustat"),
    (137, "statfs"),
    (138, "fstatfs"),
    (139, "sysfs"),
    (140, "getpriority"),
    (141, "setpriority"),
    (142, "sched_setparam"),
    (143, "sched_getparam"),
    (144, "sched_setscheduler"),
    (145, "sched_getscheduler"),
    (146, "sched_get_priority_max"),
    (147, "sched_get_priority_min"),
    (148, "sched_rr_get_interval"),
    (149, "mlock"),
    (150, "munlock"),
    (151, "mlockall"),
    (152, "munlockall"),
    (153, "vhangup"),
    (154, "modify_ldt"),
    (155, "pivot_root"),
    (156, "_sysctl"),
    (157, "prctl"),
    (158, "arch_prctl"),
    (159, "adjtimex"),
    (160, "setrlimit"),
    (161, "chroot"),
    (162, "sync"),
    (163, "acct"),
    (164, "settimeofday"),
    (165, "mount"),
    (166, "umount2"),
    (167, "swapon"),
    (168, "swapoff"),
    (169, "reboot"),
    (170, "sethostname"),
    (171, "setdomainname"),
    (172, "iopl"),
    (173, "ioperm"),
    (174, "create_module"),
    (175, "init_module"),
    (176, "delete_module"),
    (177, "get_kernel_syms"),
    (178, "query_module"),
    (179, "quotactl"),
    (180, "nfsservctl"),
    (181, "getpmsg"),
    (182, "putpmsg"),
    (183, "afs_syscall"),
    (184, "tuxcall"),
    (185, "security"),
    (186, "gettid"),
    (187, "readahead"),
    (188, "setxattr"),
    (189, "lsetxattr"),
    (190, "fsetxattr"),
    (191, "getxattr"),
    (192, "lgetxattr"),
    (193, "fgetxattr"),
    (194, "listxattr"),
    (195, "llistxattr"),
    (196, "flistxattr"),
    (197, "removexattr"),
    (198, "lremovexattr"),
    (199, "fremovexattr"),
    (200, "tkill"),
    (201, "time"),
    (202, "futex"),
    (203, "sched_setaffinity"),
    (204, "sched_getaffinity"),
    (205, "set_thread_area"),
    (206, "io_setup"),
    (207, "io_destroy"),
    (208, "io_getevents"),
    (209, "io_submit"),
    (210, "io_cancel"),
    (211, "get_thread_area"),
    (212, "lookup_dcookie"),
    (213, "epoll_create"),
    (214, "epoll_ctl_old"),
    (215, "epoll_wait_old"),
    (216, "remap_file_pages"),
    (217, "getdents64"),
    (218, "set_tid_address"),
    (219, "restart_syscall"),
    (220, "semtimedop"),
    (221, "fadvise64"),
    (222, "timer_create"),
    (223, "timer_settime"),
    (224, "timer_gettime"),
    (225, "timer_getoverrun"),
    (226, "timer_delete"),
    (227, "clock_settime"),
    (228, "clock_gettime"),
    (229, "clock_getres"),
    (230, "clock_nanosleep"),
    (231, "exit_group"),
    (232, "epoll_wait"),
    (233, "epoll_ctl"),
    (234, "tgkill"),
    (235, "utimes"),
    (236, "vserver"),
    (237, "mbind"),
    (238, "set_mempolicy"),
    (239, "get_mempolicy"),
    (240, "mq_open"),
    (241, "mq_unlink"),
    (242, "mq_timedsend"),
    (243, "mq_timedreceive"),
    (244, "mq_notify"),
    (245, "mq_getsetattr"),
    (246, "kexec_load"),
    (247, "waitid"),
    (248, "add_key"),
    (249, "request_key"),
    (250, "keyctl"),
    (251, "ioprio_set"),
    (252, "ioprio_get"),
    (253, "inotify_init"),
    (254, "inotify_add_watch"),
    (255, "inotify_rm_watch"),
    (256, "migrate_pages"),
    (257, "openat"),
    (258, "mkdirat"),
    (259, "mknodat"),
    (260, "fchownat"),
    (261, "futimesat"),
    (262, "newfstatat"),
    (263, "unlinkat"),
    (264, "renameat"),
    (265, "linkat"),
    (266, "symlinkat"),
    (267, "readlinkat"),
    (268, "fchmodat"),
    (269, "faccessat"),
    (270, "pselect6"),
    (271, "ppoll"),
    (272, "unshare"),
    (273, "set_robust_list"),
    (274, "get_robust_list"),
    (275, "splice"),
    (276, "tee"),
    (277, "sync_file_range"),
    (278, "vmsplice"),
    (279, "move_pages"),
    (280, "utimensat"),
    (281, "epoll_pwait"),
    (282, "signalfd"),
    (283, "timerfd_create"),
    (284, "eventfd"),
    (285, "fallocate"),
    (286, "timerfd_settime"),
    (287, "timerfd_gettime"),
    (288, "accept4"),
    (289, "signalfd4"),
    (290, "eventfd2"),
    (291, "epoll_create1"),
    (292, "dup3"),
    (293, "pipe2"),
    (294, "inotify_init1"),
    (295, "preadv"),
    (296, "pwritev"),
    (297, "rt_tgsigqueueinfo"),
    (298, "perf_event_open"),
    (299, "recvmmsg"),
    (300, "fanotify_init"),
    (301, "fanotify_mark"),
    (302, "prlimit64"),
    (303, "name_to_handle_at"),
    (304, "open_by_handle_at"),
    (305, "clock_adjtime"),
    (306, "syncfs"),
    (307, "sendmmsg"),
    (308, "setns"),
    (309, "getcpu"),
    (310, "process_vm_readv"),
    (311, "process_vm_writev"),
    (312, "kcmp"),
    (313, "finit_module"),
    (314, "sched_setattr"),
    (315, "sched_getattr"),
    (316, "renameat2"),
    (317, "seccomp"),
    (318, "getrandom"),
    (319, "memfd_create"),
    (320, "kexec_file_load"),
    (321, "bpf"),
    (322, "execveat"),
    (323, "userfaultfd"),
    (324, "membarrier"),
    (325, "mlock2"),
    (326, "copy_file_range"),
    (327, "preadv2"),
    (328, "pwritev2"),
    (329, "pkey_mprotect"),
    (330, "pkey_alloc"),
    (331, "pkey_free"),
    (332, "statx"),
    (333, "io_pgetevents"),
    (334, "rseq"),
    (335, "uretprobe"),
    (336, "uprobe"),
    (424, "pidfd_send_signal"),
    (425, "io_uring_setup"),
    (426, "io_uring_enter"),
    (427, "io_uring_register"),
    (428, "open_tree"),
    (429, "move_mount"),
    (430, "fsopen"),
    (431, "fsconfig"),
    (432, "fsmount"),
    (433, "fspick"),
    (434, "pidfd_open"),
    (435, "clone3"),
    (436, "close_range"),
    (437, "openat2"),
    (438, "pidfd_getfd"),
    (439, "faccessat2"),
    (440, "process_madvise"),
    (441, "epoll_pwait2"),
    (442, "mount_setattr"),
    (443, "quotactl_fd"),
    (444, "landlock_create_ruleset"),
    (445, "landlock_add_rule"),
    (446, "landlock_restrict_self"),
    (447, "memfd_secret"),
    (448, "process_mrelease"),
    (449, "futex_waitv"),
    (450, "set_mempolicy_home_node"),
    (451, "cachestat"),
    (452, "fchmodat2"),
    (453, "map_shadow_stack"),
    (454, "futex_wake"),
    (455, "futex_wait"),
    (456, "futex_requeue"),
    (457, "statmount"),
    (458, "listmount"),
    (459, "lsm_get_self_attr"),
    (460, "lsm_set_self_attr"),
    (461, "lsm_list_modules"),
    (462, "mseal"),
    (463, "setxattrat"),
    (464, "getxattrat"),
    (465, "listxattrat"),
    (466, "removexattrat"),
    (467, "open_tree_attr"),
    (468, "file_getattr"),
    (469, "file_setattr"),
    (470, "listns"),
];

/// Calls whose first argument is the descriptor they work on. Non-blocking ones are listed too:
/// the descriptor still says what the thread was doing, and the list is cheap to keep whole.
/// `sendfile`'s first argument is its output (usually the socket); `splice` and
/// `copy_file_range` start with their input.
#[rustfmt::skip]
const FD_IO: &[&str] = &[
    // read and write, any descriptor
    "read", "write", "pread64", "pwrite64", "readv", "writev", "preadv", "pwritev", "preadv2",
    "pwritev2", "sendfile", "splice", "tee", "vmsplice", "copy_file_range",
    // sockets
    "recvfrom", "sendto", "recvmsg", "sendmsg", "recvmmsg", "sendmmsg", "accept", "accept4",
    "connect", "bind", "listen", "shutdown", "getsockname", "getpeername", "getsockopt",
    "setsockopt",
    // files
    "fsync", "fdatasync", "sync_file_range", "syncfs", "fallocate", "ftruncate", "fadvise64",
    "readahead", "lseek", "getdents", "getdents64", "flock", "fstat", "fstatfs", "fchmod",
    "fchown", "fchdir", "fgetxattr", "fsetxattr", "flistxattr", "fremovexattr",
    // anything
    "ioctl", "fcntl", "close", "epoll_ctl", "io_uring_enter",
];

const POLL: &[&str] = &["poll", "ppoll", "select", "pselect6", "epoll_wait", "epoll_pwait", "epoll_pwait2"];

const FUTEX: &[&str] = &["futex", "futex_waitv", "futex_wait", "futex_wake", "futex_requeue"];

const SLEEP: &[&str] = &["nanosleep", "clock_nanosleep", "pause", "rt_sigsuspend", "rt_sigtimedwait"];

const WAIT: &[&str] = &["wait4", "waitid"];

/// Calls that name a path. For the `*at` forms the first argument is a directory descriptor or
/// `AT_FDCWD`, not the file worked on, so these are not `fd_arg` calls. (glibc's `fstat` is
/// `newfstatat(fd, "", AT_EMPTY_PATH)`, so some of these are really on a descriptor.)
#[rustfmt::skip]
const PATH_IO: &[&str] = &[
    // open, stat, read links
    "open", "openat", "openat2", "creat", "stat", "lstat", "newfstatat", "statx", "statfs",
    "access", "faccessat", "faccessat2", "readlink", "readlinkat",
    // change the tree
    "unlink", "unlinkat", "rename", "renameat", "renameat2", "mkdir", "mkdirat", "rmdir", "link",
    "linkat", "symlink", "symlinkat", "mknod", "mknodat",
    // attributes
    "chmod", "fchmodat", "fchmodat2", "chown", "lchown", "fchownat", "truncate", "utime",
    "utimes", "utimensat", "futimesat", "getxattr", "lgetxattr", "setxattr", "lsetxattr",
    "listxattr", "llistxattr", "removexattr", "lremovexattr", "getxattrat", "setxattrat",
    "listxattrat", "removexattrat", "file_getattr", "file_setattr",
    // everything else that takes a path
    "chdir", "chroot", "execve", "execveat", "name_to_handle_at", "inotify_add_watch", "mount",
    "umount2", "mount_setattr", "move_mount", "open_tree", "open_tree_attr", "pivot_root",
    "swapon", "swapoff", "acct", "uselib", "quotactl",
];

const CLASSES: [(SyscallClass, &[&str]); 6] = [
    (SyscallClass::FdIo, FD_IO),
    (SyscallClass::Poll, POLL),
    (SyscallClass::Futex, FUTEX),
    (SyscallClass::Sleep, SLEEP),
    (SyscallClass::Wait, WAIT),
    (SyscallClass::PathIo, PATH_IO),
];

/// The call's name, or `syscall_NNN` for a number not in the table.
pub fn name(nr: u64) -> Cow<'static, str> {
    match lookup(nr) {
        Some(name) => Cow::Borrowed(name),
        None => Cow::Owned(format!("syscall_{nr}")),
    }
}

/// The class of a call. O(1): it runs for every off-CPU interval.
pub fn class(nr: u64) -> SyscallClass {
    let classes = class_table();
    usize::try_from(nr).ok().and_then(|i| classes.get(i)).copied().unwrap_or(SyscallClass::Other)
}

/// True when the call's first argument is a file descriptor worth resolving: the `FdIo` calls,
/// and the epoll waits (whose descriptor is the epoll instance).
pub fn fd_arg(nr: u64) -> bool {
    class(nr) == SyscallClass::FdIo || matches!(lookup(nr), Some("epoll_wait" | "epoll_pwait" | "epoll_pwait2"))
}

fn lookup(nr: u64) -> Option<&'static str> {
    let nr = u16::try_from(nr).ok()?;
    let index = SYSCALLS.binary_search_by_key(&nr, |&(n, _)| n).ok()?;
    Some(SYSCALLS[index].1)
}

/// Class per number, built once from the name lists, so that the lists read like the man pages
/// and `class` is an index.
fn class_table() -> &'static [SyscallClass] {
    static TABLE: OnceLock<Vec<SyscallClass>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let size = SYSCALLS.last().map_or(0, |&(nr, _)| usize::from(nr) + 1);
        let mut table = vec![SyscallClass::Other; size];
        for &(nr, name) in SYSCALLS {
            table[usize::from(nr)] = class_of_name(name);
        }
        table
    })
}

fn class_of_name(name: &str) -> SyscallClass {
    CLASSES.iter().find(|(_, names)| names.contains(&name)).map_or(SyscallClass::Other, |&(class, _)| class)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_sorted_unique_and_complete_to_462() {
        assert!(SYSCALLS.windows(2).all(|w| w[0].0 < w[1].0));
        let mut names: Vec<_> = SYSCALLS.iter().map(|&(_, n)| n).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), SYSCALLS.len());
        // Dense from 0 to 334 and from 424 on (387-423 are reserved by the kernel).
        for nr in (0..=334).chain(424..=462) {
            assert!(lookup(nr).is_some(), "no name for {nr}");
        }
    }

    #[test]
    fn numbers_match_libc() {
        let known: &[(libc::c_long, &str)] = &[
            (libc::SYS_read, "read"),
            (libc::SYS_write, "write"),
            (libc::SYS_open, "open"),
            (libc::SYS_poll, "poll"),
            (libc::SYS_pread64, "pread64"),
            (libc::SYS_select, "select"),
            (libc::SYS_nanosleep, "nanosleep"),
            (libc::SYS_sendfile, "sendfile"),
            (libc::SYS_connect, "connect"),
            (libc::SYS_accept, "accept"),
            (libc::SYS_recvfrom, "recvfrom"),
            (libc::SYS_execve, "execve"),
            (libc::SYS_wait4, "wait4"),
            (libc::SYS_fsync, "fsync"),
            (libc::SYS_getdents64, "getdents64"),
            (libc::SYS_futex, "futex"),
            (libc::SYS_epoll_wait, "epoll_wait"),
            (libc::SYS_clock_nanosleep, "clock_nanosleep"),
            (libc::SYS_openat, "openat"),
            (libc::SYS_newfstatat, "newfstatat"),
            (libc::SYS_epoll_pwait, "epoll_pwait"),
            (libc::SYS_accept4, "accept4"),
            (libc::SYS_recvmmsg, "recvmmsg"),
            (libc::SYS_sendmmsg, "sendmmsg"),
            (libc::SYS_statx, "statx"),
            (libc::SYS_rseq, "rseq"),
            (libc::SYS_pidfd_send_signal, "pidfd_send_signal"),
            (libc::SYS_io_uring_enter, "io_uring_enter"),
            (libc::SYS_openat2, "openat2"),
            (libc::SYS_epoll_pwait2, "epoll_pwait2"),
            (libc::SYS_futex_waitv, "futex_waitv"),
            (libc::SYS_set_mempolicy_home_node, "set_mempolicy_home_node"),
            (libc::SYS_fchmodat2, "fchmodat2"),
            (libc::SYS_mseal, "mseal"),
        ];
        for &(nr, expected) in known {
            assert_eq!(name(nr as u64), expected, "number {nr}");
        }
    }

    #[test]
    fn unknown_numbers_are_named_by_number() {
        assert_eq!(name(400), "syscall_400");
        assert_eq!(name(u64::MAX), format!("syscall_{}", u64::MAX));
        assert_eq!(class(400), SyscallClass::Other);
        assert_eq!(class(u64::MAX), SyscallClass::Other);
        assert!(!fd_arg(u64::MAX));
    }

    #[test]
    fn every_classified_name_exists() {
        for (_, names) in CLASSES {
            for name in names {
                assert!(SYSCALLS.iter().any(|&(_, n)| n == *name), "{name} not in the table");
            }
        }
    }

    #[test]
    fn no_name_is_in_two_classes() {
        let all: Vec<&str> = CLASSES.iter().flat_map(|(_, names)| names.iter().copied()).collect();
        for name in &all {
            assert_eq!(all.iter().filter(|n| *n == name).count(), 1, "{name}");
        }
    }

    #[test]
    fn classes() {
        use SyscallClass::*;
        let cases: &[(libc::c_long, SyscallClass)] = &[
            (libc::SYS_read, FdIo),
            (libc::SYS_recvfrom, FdIo),
            (libc::SYS_accept4, FdIo),
            (libc::SYS_connect, FdIo),
            (libc::SYS_fsync, FdIo),
            (libc::SYS_sendfile, FdIo),
            (libc::SYS_epoll_wait, Poll),
            (libc::SYS_epoll_pwait2, Poll),
            (libc::SYS_ppoll, Poll),
            (libc::SYS_pselect6, Poll),
            (libc::SYS_futex, Futex),
            (libc::SYS_futex_waitv, Futex),
            (libc::SYS_clock_nanosleep, Sleep),
            (libc::SYS_pause, Sleep),
            (libc::SYS_rt_sigtimedwait, Sleep),
            (libc::SYS_wait4, Wait),
            (libc::SYS_waitid, Wait),
            (libc::SYS_openat, PathIo),
            (libc::SYS_newfstatat, PathIo),
            (libc::SYS_execve, PathIo),
            (libc::SYS_renameat2, PathIo),
            (libc::SYS_mmap, Other),
            (libc::SYS_getpid, Other),
            (libc::SYS_sched_yield, Other),
        ];
        for &(nr, expected) in cases {
            assert_eq!(class(nr as u64), expected, "{}", name(nr as u64));
        }
    }

    #[test]
    fn the_kernel_keys_exactly_the_child_waits_without_their_argument() {
        // The kernel records 0 instead of the pid for these (`profiler_common::child_wait`),
        // which is safe only because their class takes nothing from the argument.
        assert_eq!(profiler_common::child_wait::SYS_WAIT4, libc::SYS_wait4);
        assert_eq!(profiler_common::child_wait::SYS_WAITID, libc::SYS_waitid);
        for &(nr, name) in SYSCALLS {
            let child_wait = profiler_common::child_wait::is_child_wait(nr as i64);
            assert_eq!(child_wait, class(nr as u64) == SyscallClass::Wait, "{name}");
            assert!(!(child_wait && fd_arg(nr as u64)), "{name}");
        }
    }

    #[test]
    fn fd_argument() {
        assert!(fd_arg(libc::SYS_read as u64));
        assert!(fd_arg(libc::SYS_epoll_wait as u64));
        assert!(fd_arg(libc::SYS_epoll_pwait2 as u64));
        assert!(!fd_arg(libc::SYS_poll as u64), "poll's first argument is an array");
        assert!(!fd_arg(libc::SYS_openat as u64), "openat's first argument is a directory");
        assert!(!fd_arg(libc::SYS_futex as u64));
    }
}
