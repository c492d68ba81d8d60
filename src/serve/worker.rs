//! The engine thread: it owns the [`Ensemble`] and decodes the queued requests one at a
//! time, in arrival order, sending each request's events back on that request's own
//! channel. A closed channel means the client left: a waiting request is skipped, a
//! running one stops after the current step.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc::UnboundedSender;

use super::error::ApiError;
use super::metrics::Metrics;
use crate::engine::{Ensemble, Event, Flow, Generation, Request, StepEvent};

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
    Text(String),
    /// The end: the whole generation, or why it failed.
    Done(Result<Box<Generation>, ApiError>),
}

/// One queued request.
pub struct Job {
    pub request: Request,
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
    /// Starts the engine thread with room for `capacity` waiting requests.
    pub fn start(
        ensemble: Ensemble,
        capacity: usize,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Engine> {
        let (tx, rx) = sync_channel(capacity);
        let cancel = Arc::new(AtomicBool::new(false));
        let thread = {
            let cancel = cancel.clone();
            let metrics = metrics.clone();
            std::thread::Builder::new()
                .name("tutti-engine".into())
                .spawn(move || run(ensemble, rx, &cancel, &metrics))?
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

    /// Stops the running generation after its step and refuses the waiting ones.
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

/// The engine thread's loop.
fn run(mut ens: Ensemble, rx: Receiver<Job>, cancel: &AtomicBool, metrics: &Metrics) {
    // A served member's client sends its whole context as token ids at every step.
    ens.set_prefix_cache(true);
    while let Ok(job) = rx.recv() {
        metrics.queue_depth.fetch_sub(1, Ordering::SeqCst);
        if job.events.is_closed() {
            metrics.skipped.fetch_add(1, Ordering::Relaxed);
            tracing::debug!("skipped a queued request: its client left");
            continue;
        }
        if cancel.load(Ordering::SeqCst) {
            let _ = job.events.send(Msg::Done(Err(ApiError::shutting_down())));
            continue;
        }
        let _ = job.events.send(Msg::Started {
            queued_ms: job.enqueued.elapsed().as_secs_f64() * 1e3,
            at_unix_ms: unix_ms(),
        });
        metrics.busy.store(1, Ordering::SeqCst);
        let events = &job.events;
        let mut client_left = false;
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
            ens.generate(&job.request, &mut |e: &Event| {
                let msg = match e {
                    Event::Step(s) => {
                        metrics.observe_step(&s.time);
                        Msg::Step(Box::new(s.clone()))
                    }
                    Event::Text(t) => Msg::Text(t.clone()),
                    Event::Finish(_) => return Flow::Continue,
                };
                if events.send(msg).is_err() {
                    client_left = true;
                }
                if client_left || cancel.load(Ordering::SeqCst) {
                    Flow::Stop
                } else {
                    Flow::Continue
                }
            })
        }));
        metrics.busy.store(0, Ordering::SeqCst);
        let done = match result {
            Ok(Ok(generation)) => {
                metrics.observe_generation(&generation);
                if client_left {
                    tracing::debug!(
                        "client left after {} steps; generation cancelled",
                        generation.steps.len()
                    );
                }
                Ok(Box::new(generation))
            }
            Ok(Err(e)) => {
                tracing::warn!("request failed: {e}");
                Err(ApiError::from(e))
            }
            Err(_) => {
                // Nothing the failed request left in a member (its ids, its prefix-cache
                // rows) is trusted by the next one.
                ens.reset();
                tracing::error!("the engine panicked on a request; it goes on with the next");
                Err(ApiError::internal(
                    "the engine failed on this request; the server goes on with the next",
                ))
            }
        };
        let _ = job.events.send(Msg::Done(done));
    }
    // The queue is closed: the server is shutting down. What the requests mapped
    // spares the next server the projections.
    if let Err(e) = ens.save_maps() {
        tracing::warn!("the mapped candidates are not cached: {e}");
    }
}
