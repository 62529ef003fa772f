//! The ring buffer's reader: a thread of its own that copies records out of the kernel's ring
//! buffer every [`READ_INTERVAL`] while the session has not drained it for a while (see
//! [`DrainClock::step_in_after`]), so the kernel never finds the buffer full only because the
//! session was busy elsewhere. The session works in one thread, and some of its work takes
//! seconds at times: discovering a new process, symbolizing a binary seen for the first time,
//! writing a window's outputs; on a loaded host, or under emulation (`cargo xtask test-kernels`:
//! userspace runs ~30x slower there, the kernel's programs much less), a 8 MiB buffer filled by
//! off-CPU events within such a pause and events were lost. The session takes the copies, in
//! the order the kernel wrote them, at its next drain.
//!
//! Memory is bounded: past `cap` bytes waiting, records are dropped and counted like the
//! kernel's own losses. The cap only matters while the session is stalled; between drains the
//! queue holds what 50 ms of events take.
use std::{
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};

/// How often the reader empties the kernel's buffer while the session is stalled: well inside
/// the time the buffer takes to fill at the highest rates (half a second of samples, and at
/// least 8 MiB with off-CPU tracking; see `ring_buffer_bytes`).
const READ_INTERVAL: Duration = Duration::from_millis(20);

/// The longest the reader leaves the kernel's buffer to the session after its last drain.
/// The session drains every 50 ms (`DRAIN_INTERVAL`), reading the kernel's buffer too, so a
/// reader that also woke every [`READ_INTERVAL`] found it nearly empty: 50 wake-ups a second
/// of a thread with nothing to do (a tenth of `profile --all`'s CPU beside a busy web
/// service). While the session keeps up the reader now wakes ~10 times a second at low
/// rates, and as before at high ones (see [`DrainClock::step_in_after`]).
const STALLED_AFTER: Duration = Duration::from_millis(100);

/// The share of the kernel's buffer the records of one wait may fill, at the rate of the
/// last drains, before the reader steps in: a reader that stepped in 100 ms late whatever
/// the rate lost events (DESIGN, *Tried and reverted: the ring read in place*: 6-KiB records
/// at 3,800 a second fill 8 MiB in 0.35 s, and a loaded host delays a woken thread by
/// hundreds of ms); at such rates this brings the wait back to [`READ_INTERVAL`].
const RING_SHARE_PER_WAIT: u64 = 16;

/// The largest drained buffer kept for reuse: what a busy second of events takes; a bigger
/// one (after a stall) is freed.
const KEEP_BYTES: usize = 4 << 20;

/// Each record in the queue: its length (native u32), then its bytes.
const LEN_BYTES: usize = size_of::<u32>();

pub struct EventReader {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    /// The buffer the last drain worked through, emptied and swapped in for the next one:
    /// a fresh `Vec` per drain grew by doubling every 50 ms (reallocations, copies, and the
    /// allocator consolidating the freed chunks: a tenth of a `--all` daemon's CPU).
    spare: Vec<u8>,
}

struct Shared {
    state: Mutex<State>,
    stop: AtomicBool,
    clock: DrainClock,
}

/// When the session drains and how much it takes: when the reader steps in.
struct DrainClock {
    /// When the session last drained, in ns since `epoch`.
    drained_at_ns: AtomicU64,
    /// The bytes a second the session's drains have been taking (a peak that decays: a
    /// burst keeps the reader close for a while after it).
    bytes_per_sec: AtomicU64,
    /// The kernel's buffer's size.
    ring_bytes: u64,
    epoch: Instant,
}

impl DrainClock {
    fn new(ring_bytes: usize) -> Self {
        Self {
            drained_at_ns: AtomicU64::new(0),
            bytes_per_sec: AtomicU64::new(0),
            ring_bytes: ring_bytes as u64,
            epoch: Instant::now(),
        }
    }

    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// Time since the session's last drain (since the start before the first).
    fn since_drain(&self) -> Duration {
        Duration::from_nanos(self.now_ns().saturating_sub(self.drained_at_ns.load(Ordering::Relaxed)))
    }

    /// How long after the session's last drain the reader reads itself: the time the last
    /// drains' rate takes to fill 1/[`RING_SHARE_PER_WAIT`] of the buffer, between
    /// [`READ_INTERVAL`] and [`STALLED_AFTER`].
    fn step_in_after(&self) -> Duration {
        let rate = self.bytes_per_sec.load(Ordering::Relaxed).max(1);
        let fill = Duration::from_secs_f64((self.ring_bytes / RING_SHARE_PER_WAIT) as f64 / rate as f64);
        fill.clamp(READ_INTERVAL, STALLED_AFTER)
    }

    /// Notes a drain of `bytes` now.
    fn drained(&self, bytes: usize) {
        let now = self.now_ns();
        let since = now.saturating_sub(self.drained_at_ns.swap(now, Ordering::Relaxed)).max(1_000_000);
        let rate = (bytes as u64).saturating_mul(1_000_000_000) / since;
        let old = self.bytes_per_sec.load(Ordering::Relaxed);
        // Up at once, down by an eighth a drain (halved in ~0.3 s of 50-ms drains).
        self.bytes_per_sec.store(rate.max(old - old / 8), Ordering::Relaxed);
    }
}

struct State {
    ring: RingBuf<MapData>,
    /// Records copied out and not yet taken, length-prefixed.
    queued: Vec<u8>,
    cap: usize,
    /// Records dropped because `queued` was at its cap.
    dropped: u64,
}

impl State {
    /// Moves every record the kernel has written into the queue.
    fn read_ring(&mut self) {
        while let Some(item) = self.ring.next() {
            if self.queued.len() + LEN_BYTES + item.len() > self.cap {
                self.dropped += 1;
                continue;
            }
            self.queued.extend_from_slice(&(item.len() as u32).to_ne_bytes());
            self.queued.extend_from_slice(&item);
        }
    }
}

impl EventReader {
    /// Starts reading `ring` (`ring_bytes` long), queueing at most `cap` bytes of records.
    pub fn start(ring: RingBuf<MapData>, ring_bytes: usize, cap: usize) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State { ring, queued: Vec::new(), cap, dropped: 0 }),
            stop: AtomicBool::new(false),
            clock: DrainClock::new(ring_bytes),
        });
        let reader = Arc::clone(&shared);
        let thread = std::thread::Builder::new().name("pyebpf-events".into()).spawn(move || {
            while !reader.stop.load(Ordering::Relaxed) {
                let (since, step_in) = (reader.clock.since_drain(), reader.clock.step_in_after());
                if since < step_in {
                    // Woken early by `Drop` to stop, or by nothing: looked at again either way.
                    std::thread::park_timeout(step_in - since);
                    continue;
                }
                reader.state.lock().unwrap_or_else(PoisonError::into_inner).read_ring();
                std::thread::park_timeout(READ_INTERVAL);
            }
        })?;
        Ok(Self { shared, thread: Some(thread), spare: Vec::new() })
    }

    /// Hands every record written so far to `f`, oldest first: the queued ones, then what is
    /// in the kernel's buffer now (so a drain sees everything the kernel wrote before it, as
    /// reading the buffer directly did). `f` runs without the lock: the reader keeps reading
    /// while the session works through them. Returns how many records there were.
    pub fn drain(&mut self, mut f: impl FnMut(&[u8])) -> usize {
        let mut batch = std::mem::take(&mut self.spare);
        batch.clear();
        {
            let mut state = self.shared.state.lock().unwrap_or_else(PoisonError::into_inner);
            state.read_ring();
            std::mem::swap(&mut state.queued, &mut batch);
        }
        self.shared.clock.drained(batch.len());
        let mut n = 0;
        let mut rest = batch.as_slice();
        while rest.len() >= LEN_BYTES {
            let len = u32::from_ne_bytes(rest[..LEN_BYTES].try_into().unwrap()) as usize;
            let Some(record) = rest.get(LEN_BYTES..LEN_BYTES + len) else { break };
            f(record);
            n += 1;
            rest = &rest[LEN_BYTES + len..];
        }
        // Kept for the next drain, unless a stall made it huge (it may hold up to the cap).
        if batch.capacity() <= KEEP_BYTES {
            self.spare = batch;
        }
        n
    }

    /// Records dropped so far because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.shared.state.lock().unwrap_or_else(PoisonError::into_inner).dropped
    }
}

impl Drop for EventReader {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reader_steps_in_sooner_the_faster_the_buffer_fills() {
        let clock = DrainClock::new(8 << 20);
        // Nothing drained yet: the longest wait.
        assert_eq!(clock.step_in_after(), STALLED_AFTER);
        // A web service's few hundred KiB a second: 8 MiB / 16 take over a second to fill.
        clock.bytes_per_sec.store(300 << 10, Ordering::Relaxed);
        assert_eq!(clock.step_in_after(), STALLED_AFTER);
        // 6-KiB records at 3,800 a second (the reverted in-place read's failure): a 16th of the
        // buffer in ~22 ms.
        clock.bytes_per_sec.store((3_800 * 6) << 10, Ordering::Relaxed);
        let wait = clock.step_in_after();
        assert!(wait < Duration::from_millis(30), "{wait:?}");
        // Faster still: never under one read interval.
        clock.bytes_per_sec.store(1 << 30, Ordering::Relaxed);
        assert_eq!(clock.step_in_after(), READ_INTERVAL);
    }

    #[test]
    fn a_burst_raises_the_rate_at_once_and_it_decays_slowly() {
        let clock = DrainClock::new(8 << 20);
        std::thread::sleep(Duration::from_millis(10));
        clock.drained(10 << 20);
        let burst = clock.bytes_per_sec.load(Ordering::Relaxed);
        // 10 MiB over at most the ~10 ms slept (and at least the 1-ms floor).
        assert!(burst >= 10 << 20, "{burst}");
        assert!(clock.since_drain() < Duration::from_secs(1));
        clock.drained(0);
        let after = clock.bytes_per_sec.load(Ordering::Relaxed);
        assert_eq!(after, burst - burst / 8);
    }
}
