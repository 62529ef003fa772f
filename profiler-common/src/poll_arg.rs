//! What `arg0` holds for the poll family, whose first argument is not an fd: a count (`select`)
//! or a pointer (`poll`), which says nothing about what the thread waits for. The kernel
//! replaces it at the call's first switch-out ([`encode`]) so that waits can be told apart by the descriptors
//! they wait on (a server waiting on its listening socket is idle, not doing network I/O), and
//! userspace reads it back with [`decode`]. Userspace also encodes, for threads already asleep
//! in one of these calls when tracking starts: both go through [`encode`], each with its own
//! reader of the target's memory.
//!
//! - `select`/`pselect6`: the first word of `readfds` (fds 0–63 as a bit set); 0 when no
//!   descriptor is watched (a timed sleep); [`UNKNOWN`] when the watched ones are not in the
//!   first word or could not be read.
//! - `poll`/`ppoll`: 0 when no descriptor is watched, else [`FIRST_FD`] | the first
//!   `pollfd.fd`, or [`UNKNOWN`].

/// x86-64 syscall numbers of the poll family.
pub const SYS_POLL: i64 = 7;
pub const SYS_SELECT: i64 = 23;
pub const SYS_PSELECT6: i64 = 270;
pub const SYS_PPOLL: i64 = 271;
/// The descriptors could not be read or are not in what is recorded. (A `select` watching
/// every fd from 0 to 63 reads the same, and is taken as unknown too.)
pub const UNKNOWN: u64 = u64::MAX;
/// Marks a `poll` record that holds a descriptor (in the low 32 bits).
pub const FIRST_FD: u64 = 1 << 32;

/// Is `nr` one of the four syscalls whose argument is re-encoded?
#[inline(always)]
pub const fn is_poll_family(nr: i64) -> bool {
    matches!(nr, SYS_POLL | SYS_SELECT | SYS_PSELECT6 | SYS_PPOLL)
}

/// What to record as the first argument of syscall `nr` called with `arg0` and `arg1`: for the
/// poll family, which descriptors it waits on (one 8-byte read of user memory at most, through
/// `read_u64`); for any other syscall, `arg0` itself.
///
/// `read_u64` reads 8 bytes of the calling process's memory at an address, `None` on a fault.
/// A `pollfd` is 8 bytes (`int fd; short events; short revents`), so reading a whole word at its
/// start is as safe as reading its `fd`, and the `fd` is its first 4 bytes in memory order.
#[inline(always)]
pub fn encode(nr: i64, arg0: u64, arg1: u64, read_u64: impl FnOnce(u64) -> Option<u64>) -> u64 {
    match nr {
        // arg0 = nfds, arg1 = readfds.
        SYS_SELECT | SYS_PSELECT6 => {
            if arg0 == 0 {
                return 0;
            }
            if arg1 == 0 {
                return UNKNOWN;
            }
            match read_u64(arg1) {
                Some(word) if word != 0 => word,
                _ => UNKNOWN,
            }
        }
        // arg0 = struct pollfd *, arg1 = nfds.
        SYS_POLL | SYS_PPOLL => {
            if arg1 == 0 {
                return 0;
            }
            match read_u64(arg0).map(first_i32) {
                Some(fd) if fd >= 0 => FIRST_FD | fd as u64,
                _ => UNKNOWN,
            }
        }
        _ => arg0,
    }
}

/// The `int` at the start of a word read from memory, on either byte order.
#[inline(always)]
fn first_i32(word: u64) -> i32 {
    let bytes = word.to_ne_bytes();
    i32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
}

/// What a poll-family wait watches, from what [`encode`] recorded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Watched {
    /// No descriptor: a timed sleep (`select(0, ...)` is how CPython 3.8–3.10 implement
    /// `time.sleep`).
    Nothing,
    /// `select`: the descriptors 0–63 of `readfds`, as a bit set (never 0).
    FdSet(u64),
    /// `poll`: the first descriptor of the set.
    FirstFd(i32),
}

impl Watched {
    /// The descriptors, lowest first.
    pub fn fds(self) -> impl Iterator<Item = i32> {
        let (set, first) = match self {
            Watched::Nothing => (0, None),
            Watched::FdSet(word) => (word, None),
            Watched::FirstFd(fd) => (0, Some(fd)),
        };
        (0..64).filter(move |bit| (set >> bit) & 1 == 1).chain(first)
    }
}

/// What the poll-family syscall `nr` waits on, from its recorded `arg0`: `None` when that is
/// unknown, or when `nr` is not of the family.
pub fn decode(nr: i64, arg0: u64) -> Option<Watched> {
    if arg0 == UNKNOWN {
        return None;
    }
    match nr {
        SYS_SELECT | SYS_PSELECT6 if arg0 == 0 => Some(Watched::Nothing),
        SYS_SELECT | SYS_PSELECT6 => Some(Watched::FdSet(arg0)),
        SYS_POLL | SYS_PPOLL if arg0 == 0 => Some(Watched::Nothing),
        SYS_POLL | SYS_PPOLL if arg0 & FIRST_FD != 0 => Some(Watched::FirstFd(arg0 as u32 as i32)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader over one word of memory at `at`.
    fn memory(at: u64, word: u64) -> impl FnOnce(u64) -> Option<u64> {
        move |addr| (addr == at).then_some(word)
    }

    fn no_read(addr: u64) -> Option<u64> {
        panic!("read at {addr:#x} where nothing should be read")
    }

    fn round_trip(nr: i64, arg0: u64, arg1: u64, read: impl FnOnce(u64) -> Option<u64>) -> Option<Vec<i32>> {
        decode(nr, encode(nr, arg0, arg1, read)).map(|w| w.fds().collect())
    }

    #[test]
    fn select_records_the_first_word_of_readfds() {
        for nr in [SYS_SELECT, SYS_PSELECT6] {
            // select(0, NULL, NULL, NULL, &timeout): a sleep, nothing read.
            assert_eq!(encode(nr, 0, 0, no_read), 0);
            assert_eq!(round_trip(nr, 0, 0, no_read), Some(vec![]));
            // fds 1, 3 and 63.
            let word = (1 << 1) | (1 << 3) | (1 << 63);
            assert_eq!(round_trip(nr, 64, 0x7000, memory(0x7000, word)), Some(vec![1, 3, 63]));
            assert_eq!(decode(nr, word), Some(Watched::FdSet(word)));
            // Only descriptors above 63, no readfds, or a fault: unknown.
            assert_eq!(encode(nr, 100, 0x7000, memory(0x7000, 0)), UNKNOWN);
            assert_eq!(encode(nr, 5, 0, no_read), UNKNOWN);
            assert_eq!(encode(nr, 5, 0x7000, |_| None), UNKNOWN);
            assert_eq!(decode(nr, UNKNOWN), None);
        }
    }

    #[test]
    fn poll_records_the_first_descriptor() {
        for nr in [SYS_POLL, SYS_PPOLL] {
            // poll(NULL, 0, timeout): a sleep, nothing read.
            assert_eq!(encode(nr, 0, 0, no_read), 0);
            assert_eq!(round_trip(nr, 0, 0, no_read), Some(vec![]));
            // { fd = 5, events = POLLIN, revents = 0 } as it lies in memory.
            let mut pollfd = [0u8; 8];
            pollfd[..4].copy_from_slice(&5i32.to_ne_bytes());
            pollfd[4..6].copy_from_slice(&1i16.to_ne_bytes());
            let word = u64::from_ne_bytes(pollfd);
            assert_eq!(encode(nr, 0x7000, 2, memory(0x7000, word)), FIRST_FD | 5);
            assert_eq!(round_trip(nr, 0x7000, 2, memory(0x7000, word)), Some(vec![5]));
            assert_eq!(round_trip(nr, 0x7000, 1, memory(0x7000, 0)), Some(vec![0]), "fd 0 is a descriptor");
            // A negative fd (an entry poll ignores) or a fault: unknown.
            let ignored = u64::from_ne_bytes([0xff, 0xff, 0xff, 0xff, 1, 0, 0, 0]);
            assert_eq!(encode(nr, 0x7000, 1, memory(0x7000, ignored)), UNKNOWN);
            assert_eq!(encode(nr, 0x7000, 1, |_| None), UNKNOWN);
            // A value without the marker is not a poll record.
            assert_eq!(decode(nr, 5), None);
        }
    }

    #[test]
    fn other_syscalls_keep_their_argument() {
        assert!(!is_poll_family(0));
        assert!([SYS_POLL, SYS_SELECT, SYS_PSELECT6, SYS_PPOLL].into_iter().all(is_poll_family));
        // read(7, ...) and epoll_wait(9, ...): the fd as it was, no memory read.
        assert_eq!(encode(0, 7, 0x7000, no_read), 7);
        assert_eq!(encode(232, 9, 0x7000, no_read), 9);
        assert_eq!(decode(0, 7), None);
    }
}
