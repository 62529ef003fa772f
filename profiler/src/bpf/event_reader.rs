//! The ring buffer's reader: a thread of its own that copies records out of the kernel's ring
//! buffer every [`READ_INTERVAL`], so the kernel never finds the buffer full only because the
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
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use aya::maps::{MapData, RingBuf};

/// How often the reader empties the kernel's buffer: well inside the time the buffer takes to
/// fill at the highest rates (half a second of samples, and at least 8 MiB with off-CPU
/// tracking; see `ring_buffer_bytes`), and rare enough to cost nothing measurable.
const READ_INTERVAL: Duration = Duration::from_millis(20);

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
    /// Starts reading `ring`, queueing at most `cap` bytes of records.
    pub fn start(ring: RingBuf<MapData>, cap: usize) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State { ring, queued: Vec::new(), cap, dropped: 0 }),
            stop: AtomicBool::new(false),
        });
        let reader = Arc::clone(&shared);
        let thread = std::thread::Builder::new().name("pyebpf-events".into()).spawn(move || {
            while !reader.stop.load(Ordering::Relaxed) {
                reader.state.lock().unwrap_or_else(PoisonError::into_inner).read_ring();
                std::thread::sleep(READ_INTERVAL);
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
            let _ = thread.join();
        }
    }
}
