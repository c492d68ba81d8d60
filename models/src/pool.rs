//! The CPU thread pool of the decode hot path (quantized matmuls, attention).
//!
//! A decode step of a small model is a few hundred short parallel sections (one per
//! matmul, a few microseconds to a millisecond each), so waking sleeping threads for each
//! would cost more than the work. Workers therefore poll for the next section for a short
//! while after finishing one: first spinning (the next section usually comes within
//! microseconds), then yielding the core on every poll so that another process's threads
//! run instead, and they sleep when nothing comes (between generations).
//! A section is cut into more chunks than there are threads and the chunks are claimed
//! one by one, so a thread the OS has descheduled (two processes sharing the cores) does
//! not hold the others up: the rest take its share.
//!
//! The thread count is [`threads`]: the machine's cores unless [`set_threads`] (the CLI's
//! `--threads`) or `TUTTI_THREADS` says otherwise.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

/// How long a waiting thread spins on the CPU before it starts yielding the core: the
/// gaps between the sections of one step are shorter, and a yield can hand the core to
/// another process for a whole time slice.
const SPIN: Duration = Duration::from_micros(50);
/// How long an idle worker keeps polling (spinning, then yielding) before it sleeps.
const POLL: Duration = Duration::from_micros(500);

/// Waits politely: spins for [`SPIN`], then yields the core on every poll.
struct Backoff {
    start: Option<Instant>,
    polls: u32,
}

impl Backoff {
    fn new() -> Self {
        Backoff {
            start: None,
            polls: 0,
        }
    }

    /// One poll; returns the time waited so far (checked every 64 polls).
    fn snooze(&mut self) -> Duration {
        self.polls += 1;
        if !self.polls.is_multiple_of(64) {
            std::hint::spin_loop();
            return Duration::ZERO;
        }
        let waited = self.start.get_or_insert_with(Instant::now).elapsed();
        if waited >= SPIN {
            thread::yield_now();
        }
        waited
    }
}

static THREADS: AtomicUsize = AtomicUsize::new(0);
static POOL: OnceLock<Pool> = OnceLock::new();

/// Sets the number of threads CPU compute uses (the calling thread included). Takes
/// effect if called before the first parallel section; returns whether it did.
pub fn set_threads(n: usize) -> bool {
    let n = n.max(1);
    if POOL.get().is_some() {
        return threads() == n;
    }
    THREADS.store(n, Ordering::Relaxed);
    true
}

/// The number of threads CPU compute uses.
pub fn threads() -> usize {
    match THREADS.load(Ordering::Relaxed) {
        0 => {
            let n = std::env::var("TUTTI_THREADS")
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .filter(|&n| n > 0)
                .unwrap_or_else(|| thread::available_parallelism().map_or(1, |n| n.get()));
            THREADS.store(n, Ordering::Relaxed);
            n
        }
        n => n,
    }
}

/// Runs `f(i)` for every `i` in `0..chunks` on the pool's threads and the calling one;
/// returns when all have run. Each chunk runs exactly once, in no particular order.
///
/// A section started from inside a chunk runs on the calling thread alone.
pub fn run(chunks: usize, f: &(dyn Fn(usize) + Sync)) {
    if chunks == 0 {
        return;
    }
    if chunks == 1 || threads() == 1 || INSIDE.with(Cell::get) {
        (0..chunks).for_each(f);
        return;
    }
    POOL.get_or_init(|| Pool::new(threads() - 1)).run(chunks, f);
}

thread_local! {
    /// Whether this thread is running a chunk (sections do not nest).
    static INSIDE: Cell<bool> = const { Cell::new(false) };
}

/// Splits `0..n` into about `4 × threads` ranges of whole `align`-sized groups and runs
/// `f` on each (see [`run`]).
pub fn for_ranges(n: usize, align: usize, f: &(dyn Fn(std::ops::Range<usize>) + Sync)) {
    let align = align.max(1);
    let groups = n.div_ceil(align);
    let per = groups.div_ceil(threads() * 4).max(1);
    let chunks = groups.div_ceil(per);
    run(chunks, &|c| {
        let start = c * per * align;
        f(start..n.min(start + per * align))
    });
}

/// Runs `f(offset, piece)` over disjoint pieces of `data`, each a whole number of
/// `align`-sized groups starting at `offset` (see [`for_ranges`]); inline when `data` is
/// shorter than `min_len`, where a section would cost more than the work.
pub fn for_pieces_mut<T: Send>(
    data: &mut [T],
    align: usize,
    min_len: usize,
    f: &(dyn Fn(usize, &mut [T]) + Sync),
) {
    let align = align.max(1);
    if data.len() < min_len || threads() == 1 {
        f(0, data);
        return;
    }
    let groups = data.len().div_ceil(align);
    let per = groups.div_ceil(threads() * 4).max(1) * align;
    let pieces: Vec<Mutex<&mut [T]>> = data.chunks_mut(per).map(Mutex::new).collect();
    run(pieces.len(), &|c| {
        // Each piece is locked by exactly one chunk, so the lock never waits.
        let mut piece = pieces[c].lock().unwrap_or_else(|e| e.into_inner());
        f(c * per, &mut piece);
    });
}

/// The section being run: the closure (lifetime erased; valid while `state` says the
/// section is open or has members) and its chunk count.
struct Job {
    f: *const (dyn Fn(usize) + Sync),
    chunks: usize,
}

// SAFETY: the closure is `Sync` and outlives every access (see `Pool::run`).
unsafe impl Send for Job {}

struct Shared {
    /// `epoch << 32 | closed << 31 | members`: which section is current, whether it
    /// still admits threads, and how many threads are inside it.
    state: AtomicU64,
    job: Mutex<Option<Job>>,
    next: AtomicUsize,
    sleeping: Vec<AtomicBool>,
}

const CLOSED: u64 = 1 << 31;
const MEMBERS: u64 = CLOSED - 1;

struct Pool {
    shared: Arc<Shared>,
    workers: Vec<Thread>,
    /// One section at a time: concurrent callers (two models decoding on two threads)
    /// take turns.
    gate: Mutex<()>,
}

impl Pool {
    fn new(n: usize) -> Pool {
        let shared = Arc::new(Shared {
            state: AtomicU64::new(CLOSED),
            job: Mutex::new(None),
            next: AtomicUsize::new(0),
            sleeping: (0..n).map(|_| AtomicBool::new(false)).collect(),
        });
        let workers = (0..n)
            .filter_map(|i| {
                let s = shared.clone();
                thread::Builder::new()
                    .name(format!("tutti-cpu-{i}"))
                    .spawn(move || worker(&s, i))
                    .ok()
                    .map(|h| h.thread().clone())
            })
            .collect();
        Pool {
            shared,
            workers,
            gate: Mutex::new(()),
        }
    }

    fn run(&self, chunks: usize, f: &(dyn Fn(usize) + Sync)) {
        let _turn = self.gate.lock().unwrap_or_else(|e| e.into_inner());
        let s = &*self.shared;
        // SAFETY: the pointer is only dereferenced by threads inside this section, and
        // this function returns only after the section is closed and empty.
        let f_static: *const (dyn Fn(usize) + Sync) = unsafe { std::mem::transmute(f) };
        *s.job.lock().unwrap_or_else(|e| e.into_inner()) = Some(Job {
            f: f_static,
            chunks,
        });
        s.next.store(0, Ordering::SeqCst);
        let epoch = (s.state.load(Ordering::SeqCst) >> 32) + 1;
        // Open the section with the caller as its first member.
        s.state.store(epoch << 32 | 1, Ordering::SeqCst);
        for (i, sleeping) in s.sleeping.iter().enumerate() {
            if sleeping.swap(false, Ordering::SeqCst) {
                if let Some(t) = self.workers.get(i) {
                    t.unpark();
                }
            }
        }
        claim(s, f, chunks);
        // Close the section to late arrivals, leave it, and wait for the members still
        // running a chunk.
        let mut cur = s.state.load(Ordering::SeqCst);
        loop {
            let new = (cur | CLOSED) - 1;
            match s
                .state
                .compare_exchange(cur, new, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => break,
                Err(c) => cur = c,
            }
        }
        let mut backoff = Backoff::new();
        while s.state.load(Ordering::SeqCst) & MEMBERS != 0 {
            backoff.snooze();
        }
        *s.job.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

fn claim(s: &Shared, f: &(dyn Fn(usize) + Sync), chunks: usize) {
    INSIDE.with(|i| i.set(true));
    loop {
        let c = s.next.fetch_add(1, Ordering::SeqCst);
        if c >= chunks {
            break;
        }
        f(c);
    }
    INSIDE.with(|i| i.set(false));
}

fn worker(s: &Shared, index: usize) {
    let mut seen = 0u64;
    loop {
        // Wait for a section newer than the last one seen: poll, then sleep.
        let mut backoff = Backoff::new();
        let state = loop {
            let st = s.state.load(Ordering::SeqCst);
            if st >> 32 != seen && st & CLOSED == 0 {
                break st;
            }
            if backoff.snooze() >= POLL {
                s.sleeping[index].store(true, Ordering::SeqCst);
                let st = s.state.load(Ordering::SeqCst);
                if st >> 32 == seen || st & CLOSED != 0 {
                    thread::park();
                }
                s.sleeping[index].store(false, Ordering::SeqCst);
                backoff = Backoff::new();
            }
        };
        seen = state >> 32;
        // Join the section unless it closed (or a newer one opened) meanwhile.
        let mut cur = state;
        let joined = loop {
            if cur >> 32 != seen || cur & CLOSED != 0 {
                break false;
            }
            match s
                .state
                .compare_exchange(cur, cur + 1, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => break true,
                Err(c) => cur = c,
            }
        };
        if !joined {
            continue;
        }
        let job = s
            .job
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|j| (j.f, j.chunks));
        if let Some((f, chunks)) = job {
            // SAFETY: this thread is a member of the open section, so the caller of
            // `Pool::run` is still waiting and the closure is alive.
            claim(s, unsafe { &*f }, chunks);
        }
        s.state.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    #[test]
    fn pieces_cover_the_data_once_at_their_offsets() {
        for (n, align, min) in [
            (0, 4, 0),
            (10, 1, 0),
            (1000, 8, 0),
            (1003, 8, 16),
            (5, 2, 100),
        ] {
            let mut data = vec![0usize; n];
            for_pieces_mut(&mut data, align, min, &|off, piece| {
                assert!(off.is_multiple_of(align));
                for (i, x) in piece.iter_mut().enumerate() {
                    *x += off + i + 1;
                }
            });
            assert!(data.iter().enumerate().all(|(i, &x)| x == i + 1), "n {n}");
        }
    }

    #[test]
    fn every_chunk_runs_once() {
        for chunks in [0, 1, 2, 3, 7, 64, 1000] {
            let hits: Vec<AtomicU32> = (0..chunks).map(|_| AtomicU32::new(0)).collect();
            run(chunks, &|c| {
                hits[c].fetch_add(1, Ordering::Relaxed);
            });
            assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
        }
    }

    #[test]
    fn ranges_cover_everything_once_in_aligned_pieces() {
        for (n, align) in [(0, 8), (5, 8), (8, 8), (100, 8), (49152, 8), (37, 1)] {
            let hits: Vec<AtomicU32> = (0..n).map(|_| AtomicU32::new(0)).collect();
            for_ranges(n, align, &|r| {
                assert!(r.start % align == 0);
                for i in r {
                    hits[i].fetch_add(1, Ordering::Relaxed);
                }
            });
            assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1), "{n}");
        }
    }

    #[test]
    fn a_section_inside_a_chunk_runs_inline() {
        let total = AtomicUsize::new(0);
        run(8, &|_| {
            run(4, &|_| {
                total.fetch_add(1, Ordering::Relaxed);
            })
        });
        assert_eq!(total.load(Ordering::Relaxed), 32);
    }

    #[test]
    fn sections_from_several_threads_and_after_sleeping() {
        let total = Arc::new(AtomicUsize::new(0));
        let handles: Vec<_> = (0..3)
            .map(|_| {
                let total = total.clone();
                thread::spawn(move || {
                    for round in 0..200 {
                        if round % 50 == 0 {
                            // Long enough for the workers to go to sleep.
                            thread::sleep(Duration::from_millis(2));
                        }
                        run(16, &|_| {
                            total.fetch_add(1, Ordering::Relaxed);
                        });
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().expect("no panic");
        }
        assert_eq!(total.load(Ordering::Relaxed), 3 * 200 * 16);
    }
}
