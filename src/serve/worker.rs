//! The engine thread: it owns the [`Ensemble`] and decodes the queued requests together
//! in a [`Batch`]: a request joins at the next round when the batch and the KV budget
//! have room (in arrival order: none overtakes an earlier one) and leaves when done.
//! Each request's events go back on that request's own channel. A closed channel means
//! the client left: a waiting request is skipped, a running one stops after the current
//! round.

use std::collections::{HashMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc::UnboundedSender;

use super::error::ApiError;
use super::metrics::Metrics;
use crate::engine::{
    Admit, Batch, BatchOptions, Ensemble, Event, Flow, Generation, Planned, PromptToken, Request,
    SeqId, StepEvent,
};

/// What the engine tells a waiting handler.
#[derive(Debug)]
pub enum Msg {
    /// The engine took the request.
    Started {
        /// Time spent in the queue.
        queued_ms: f64,
        /// Wall-clock start, milliseconds since the Unix epoch.
        at_unix_ms: f64,
    },
    Step(Box<StepEvent>),
    /// The prompt's tokens with their log-probabilities (`echo`), before any step.
    Prompt(Vec<PromptToken>),
    Text(String),
    /// The end: the whole generation, or why it failed.
    Done(Result<Box<Generation>, ApiError>),
}

/// One queued request.
pub struct Job {
    pub request: Request,
    /// Score the prompt first (`echo`), with this many alternatives per token.
    pub echo: Option<usize>,
    pub events: UnboundedSender<Msg>,
    pub enqueued: Instant,
}

/// Why a job was not queued.
pub enum Refused {
    Full,
    Stopped,
}

/// A place in the queue taken by [`Engine::reserve`]; given back when dropped unless
/// [`Slot::submit`] queued a job with it.
pub struct Slot<'e> {
    engine: &'e Engine,
    queued: bool,
}

impl Slot<'_> {
    /// Queues `job` without waiting.
    pub fn submit(mut self, job: Job) -> Result<(), Refused> {
        let guard = self.engine.queue.lock().map_err(|_| Refused::Stopped)?;
        let Some(tx) = guard.as_ref() else {
            return Err(Refused::Stopped);
        };
        match tx.try_send(job) {
            Ok(()) => {
                // From now on the engine counts the place out when it takes the job.
                self.queued = true;
                Ok(())
            }
            Err(TrySendError::Full(_)) => Err(Refused::Full),
            Err(TrySendError::Disconnected(_)) => Err(Refused::Stopped),
        }
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        if !self.queued {
            self.engine
                .metrics
                .queue_depth
                .fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// The handlers' side of the engine thread.
pub struct Engine {
    queue: std::sync::Mutex<Option<SyncSender<Job>>>,
    thread: std::sync::Mutex<Option<JoinHandle<()>>>,
    capacity: usize,
    /// Set when the drain time after a shutdown signal is over: the running generation
    /// stops after its current step and waiting ones are answered 503.
    cancel: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
}

impl Engine {
    /// Starts the engine thread with room for `capacity` waiting requests, decoding
    /// as `batch` says.
    pub fn start(
        ensemble: Ensemble,
        capacity: usize,
        batch: BatchOptions,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Engine> {
        let (tx, rx) = sync_channel(capacity);
        let cancel = Arc::new(AtomicBool::new(false));
        let thread = {
            let cancel = cancel.clone();
            let metrics = metrics.clone();
            std::thread::Builder::new()
                .name("tutti-engine".into())
                .spawn(move || run(ensemble, batch, rx, &cancel, &metrics))?
        };
        Ok(Engine {
            queue: std::sync::Mutex::new(Some(tx)),
            thread: std::sync::Mutex::new(Some(thread)),
            capacity,
            cancel,
            metrics,
        })
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Takes a place in the queue for a request about to be read and tokenized, so
    /// that a full queue refuses it before any work is spent on it. The place counts
    /// in the queue depth until the engine takes the job, or until the slot is dropped
    /// unused.
    pub fn reserve(&self) -> Result<Slot<'_>, Refused> {
        let depth = &self.metrics.queue_depth;
        // A queue of 0 still hands a request to an idle engine.
        let most = self.capacity.max(1);
        let mut now = depth.load(Ordering::SeqCst);
        loop {
            if now >= most {
                return Err(Refused::Full);
            }
            match depth.compare_exchange_weak(now, now + 1, Ordering::SeqCst, Ordering::SeqCst) {
                Ok(_) => {
                    return Ok(Slot {
                        engine: self,
                        queued: false,
                    })
                }
                Err(seen) => now = seen,
            }
        }
    }

    /// Stops the running generations after their step and refuses the waiting ones.
    pub fn cancel_all(&self) {
        self.cancel.store(true, Ordering::SeqCst);
    }

    /// Closes the queue and waits for the engine thread to finish what it holds.
    pub fn shut_down(&self) {
        if let Ok(mut q) = self.queue.lock() {
            q.take();
        }
        let thread = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(t) = thread {
            if t.join().is_err() {
                tracing::error!("the engine thread ended with a panic");
            }
        }
    }
}

fn unix_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1e3)
}

/// A request the engine took from the queue: waiting for room in the batch, or running.
struct Taken {
    job: Job,
    /// Checked and sized once, on arrival.
    planned: Option<Planned>,
}

/// The engine thread's loop.
fn run(
    mut ens: Ensemble,
    options: BatchOptions,
    rx: Receiver<Job>,
    cancel: &AtomicBool,
    metrics: &Metrics,
) {
    // A served member's client sends its whole context as token ids at every step.
    ens.set_prefix_cache(true);
    metrics.set_batch_limits(options.max_batch, options.kv_budget);
    let mut batch = ens.batch(options);
    let mut waiting: VecDeque<Taken> = VecDeque::new();
    let mut running: HashMap<SeqId, Job> = HashMap::new();
    let mut open = true;
    loop {
        if batch.is_empty() && waiting.is_empty() {
            // Nothing to do: sleep until a request comes or the queue closes.
            match rx.recv() {
                Ok(job) => waiting.push_back(Taken { job, planned: None }),
                Err(_) => break,
            }
        }
        while open {
            match rx.try_recv() {
                Ok(job) => waiting.push_back(Taken { job, planned: None }),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => open = false,
            }
        }
        admit(&mut batch, &mut waiting, &mut running, cancel, metrics);
        if batch.is_empty() {
            continue;
        }
        metrics.busy.store(batch.len(), Ordering::SeqCst);
        round(&mut batch, &mut running, cancel, metrics);
        metrics.kv_used.store(batch.kv_used(), Ordering::Relaxed);
        metrics.busy.store(batch.len(), Ordering::SeqCst);
    }
    drop(batch);
    // The queue is closed: the server is shutting down. What the requests mapped
    // spares the next server the projections.
    if let Err(e) = ens.save_maps() {
        tracing::warn!("the mapped candidates are not cached: {e}");
    }
}

/// Starts waiting requests, in arrival order, while the batch and the budget have
/// room; answers those that cannot run (bad request, over the budget, shutting down)
/// and drops those whose client left.
fn admit(
    batch: &mut Batch<'_>,
    waiting: &mut VecDeque<Taken>,
    running: &mut HashMap<SeqId, Job>,
    cancel: &AtomicBool,
    metrics: &Metrics,
) {
    while let Some(mut taken) = waiting.pop_front() {
        let job = &taken.job;
        if job.events.is_closed() {
            metrics.queue_depth.fetch_sub(1, Ordering::SeqCst);
            metrics.skipped.fetch_add(1, Ordering::Relaxed);
            tracing::debug!("skipped a queued request: its client left");
            continue;
        }
        if cancel.load(Ordering::SeqCst) {
            metrics.queue_depth.fetch_sub(1, Ordering::SeqCst);
            let _ = job.events.send(Msg::Done(Err(ApiError::shutting_down())));
            continue;
        }
        if let Some(n) = job.echo {
            // The prompt is scored on an idle member set, before the generation.
            let scored =
                std::panic::catch_unwind(AssertUnwindSafe(|| batch.score_prompt(&job.request, n)));
            match scored {
                Ok(None) => {
                    waiting.push_front(taken);
                    return;
                }
                Ok(Some(Ok(tokens))) => {
                    let _ = job.events.send(Msg::Prompt(tokens));
                    taken.job.echo = None;
                }
                Ok(Some(Err(e))) => {
                    metrics.queue_depth.fetch_sub(1, Ordering::SeqCst);
                    tracing::warn!("request refused: {e}");
                    let _ = job.events.send(Msg::Done(Err(ApiError::from(e))));
                    continue;
                }
                Err(_) => {
                    metrics.queue_depth.fetch_sub(1, Ordering::SeqCst);
                    let _ = job.events.send(Msg::Done(Err(ApiError::internal(FAILED))));
                    fail_running(batch, running, "scoring a prompt");
                    continue;
                }
            }
        }
        let job = &taken.job;
        let planned = match taken.planned.take() {
            Some(p) => Ok(p),
            None => caught(|| batch.plan(&job.request)),
        };
        let started = planned.and_then(|p| caught(|| batch.start(p)));
        match started {
            Ok(Admit::Started(id)) => {
                metrics.queue_depth.fetch_sub(1, Ordering::SeqCst);
                let _ = job.events.send(Msg::Started {
                    queued_ms: job.enqueued.elapsed().as_secs_f64() * 1e3,
                    at_unix_ms: unix_ms(),
                });
                running.insert(id, taken.job);
            }
            Ok(Admit::Wait(p)) => {
                taken.planned = Some(*p);
                waiting.push_front(taken);
                return;
            }
            Err(Refusal::Engine(e)) => {
                metrics.queue_depth.fetch_sub(1, Ordering::SeqCst);
                tracing::warn!("request refused: {e}");
                let _ = job.events.send(Msg::Done(Err(ApiError::from(e))));
            }
            Err(Refusal::Panic) => {
                metrics.queue_depth.fetch_sub(1, Ordering::SeqCst);
                let _ = job.events.send(Msg::Done(Err(ApiError::internal(FAILED))));
                fail_running(batch, running, "starting a request");
            }
        }
    }
}

/// What went wrong starting a request.
enum Refusal {
    Engine(crate::engine::EngineError),
    /// A panic: the members' state is not trusted any more.
    Panic,
}

fn caught<T>(f: impl FnOnce() -> crate::engine::Result<T>) -> Result<T, Refusal> {
    match std::panic::catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r.map_err(Refusal::Engine),
        Err(_) => Err(Refusal::Panic),
    }
}

const FAILED: &str = "the engine failed on this request; the server goes on with the next";

/// After a panic inside the engine: every running request ends with a 500 and the
/// members forget what they hold.
fn fail_running(batch: &mut Batch<'_>, running: &mut HashMap<SeqId, Job>, during: &str) {
    let lost = batch.abandon_all();
    tracing::error!(
        "the engine panicked {during}; {} running requests fail with it, the server goes on with the next",
        lost.len()
    );
    for id in lost {
        if let Some(job) = running.remove(&id) {
            let _ = job.events.send(Msg::Done(Err(ApiError::internal(FAILED))));
        }
    }
}

/// One round of the batch: every running request's step, its events sent to its
/// client; the finished ones answered and forgotten.
fn round(
    batch: &mut Batch<'_>,
    running: &mut HashMap<SeqId, Job>,
    cancel: &AtomicBool,
    metrics: &Metrics,
) {
    let mut left: Vec<SeqId> = Vec::new();
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
        batch.step(&mut |id: SeqId, e: &Event| {
            let Some(job) = running.get(&id) else {
                return Flow::Stop;
            };
            let msg = match e {
                Event::Step(s) => {
                    metrics.observe_step(&s.time);
                    Msg::Step(Box::new(s.clone()))
                }
                Event::Text(t) => Msg::Text(t.clone()),
                Event::Finish(_) => return Flow::Continue,
            };
            let gone = job.events.send(msg).is_err();
            if gone && !left.contains(&id) {
                left.push(id);
            }
            if gone || cancel.load(Ordering::SeqCst) {
                Flow::Stop
            } else {
                Flow::Continue
            }
        })
    }));
    let round = match result {
        Ok(round) => round,
        Err(_) => {
            fail_running(batch, running, "in a round");
            return;
        }
    };
    metrics.observe_round(&round);
    for f in round.finished {
        let Some(job) = running.remove(&f.id) else {
            continue;
        };
        let done = match f.result {
            Ok(generation) => {
                metrics.observe_generation(&generation);
                if left.contains(&f.id) {
                    tracing::debug!(
                        "client left after {} steps; generation cancelled",
                        generation.steps.len()
                    );
                }
                Ok(Box::new(generation))
            }
            Err(e) => {
                tracing::warn!("request failed: {e}");
                Err(ApiError::from(e))
            }
        };
        let _ = job.events.send(Msg::Done(done));
    }
}
