//! [`Ensemble`]: the handle a caller holds: members decoding one text in lockstep and
//! the vocabulary lookups between them. Every request goes through the one generation
//! loop ([`Ensemble::generate`], or [`Ensemble::stream`] as an iterator): a
//! [`Sequence`](super::sequence) starts, steps until it ends, and reports a
//! [`Generation`]. A single model is a one-member ensemble; it is built by
//! [`EnsembleBuilder`](super::builder::EnsembleBuilder).

use std::collections::VecDeque;

use super::error::{EngineError, Result};
use super::events::{Discard, Event, Flow, Generation, Sink};
use super::member::Member;
use super::request::{Prompt, Request};
use super::sequence::{encode_prompt, Sequence};
use crate::align::lookup::TargetLookup;
use crate::align::AlignMethod;

/// Members decoding one text in lockstep, with the vocabulary maps between them.
pub struct Ensemble {
    pub(super) members: Vec<Member>,
    /// By target slot: how the others' candidates find that member's tokens.
    pub(super) lookups: Vec<TargetLookup>,
    align: AlignMethod,
    load_ms: f64,
    /// Token-id prompts reuse what members hold of their common prefix.
    pub(super) prefix_cache: bool,
}

impl std::fmt::Debug for Ensemble {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ensemble")
            .field("members", &self.members)
            .field("align", &self.align)
            .finish()
    }
}

impl Ensemble {
    pub(super) fn new(
        members: Vec<Member>,
        lookups: Vec<TargetLookup>,
        align: AlignMethod,
        load_ms: f64,
    ) -> Ensemble {
        Ensemble {
            members,
            lookups,
            align,
            load_ms,
            prefix_cache: false,
        }
    }

    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// The members, taken out of the ensemble (e.g. to check each one's cache against
    /// a fresh prefill of its committed ids).
    pub fn into_members(self) -> Vec<Member> {
        self.members
    }

    /// Keeps every member's logits in device tensors (top-k and gathers run on the
    /// device) or brings them to the host; returns whether every member can.
    pub fn set_device_topk(&mut self, on: bool) -> bool {
        // Every member is set, even after one that cannot.
        let set: Vec<bool> = self
            .members
            .iter_mut()
            .map(|m| m.set_device_topk(on))
            .collect();
        set.iter().all(|&ok| ok)
    }

    /// Keeps the vocabulary candidates mapped so far in the map cache (relrep
    /// alignments whose preparation is cached), so that a later ensemble of these
    /// members finds them without projecting a vocabulary. Cheap when nothing new was
    /// mapped; returns how many candidates were added.
    pub fn save_maps(&mut self) -> Result<usize> {
        let mut added = 0;
        for (lookup, m) in self.lookups.iter_mut().zip(&self.members) {
            added += lookup.save().map_err(|source| EngineError::Align {
                member: m.name().to_string(),
                source,
            })?;
        }
        Ok(added)
    }

    /// Forgets what every member holds of earlier requests (its ids and cache rows).
    pub fn reset(&mut self) {
        for m in &mut self.members {
            m.reset();
        }
    }

    pub fn member(&self, slot: usize) -> Result<&Member> {
        self.members.get(slot).ok_or(EngineError::NoSuchMember {
            index: slot,
            len: self.members.len(),
        })
    }

    /// The alignment method the maps were prepared for.
    pub fn align(&self) -> AlignMethod {
        self.align
    }

    /// Lets a token-id prompt ([`Request::ids`]) reuse what each member already holds of
    /// its longest common prefix with the member's last context (off by default). A
    /// client that sends the whole context every step, as a served member's does, then
    /// costs one new token's forward per step, with the logits a continuing decode gives.
    pub fn set_prefix_cache(&mut self, on: bool) {
        self.prefix_cache = on;
    }

    /// Milliseconds spent loading the members and preparing the maps.
    pub fn load_ms(&self) -> f64 {
        self.load_ms
    }

    /// Notes about how `prompt` applies to each member (a member without a chat
    /// template gets the messages as raw text), for the caller to show.
    pub fn prompt_notes(&self, prompt: &Prompt) -> Vec<String> {
        if !matches!(prompt, Prompt::Chat(_)) {
            return Vec::new();
        }
        self.members
            .iter()
            .filter(|m| m.tokenizer().chat_template().is_none())
            .map(|m| format!("{} has no chat template; it gets the raw text", m.name()))
            .collect()
    }

    /// Prompt ids of member `slot` for a text or chat prompt.
    pub fn prompt_ids(&self, slot: usize, prompt: &Prompt) -> Result<Vec<u32>> {
        let m = self.member(slot)?;
        encode_prompt(m.tokenizer(), m.name(), prompt)
    }

    /// Generates for `request`, delivering [`Event`]s to `sink` as they happen (the sink
    /// can end generation early). Returns the whole [`Generation`].
    pub fn generate(&mut self, request: &Request, sink: &mut dyn Sink) -> Result<Generation> {
        let mut run = Sequence::start(&mut self.members, request, self.prefix_cache)?;
        let mut events = Vec::new();
        loop {
            let done = run.step(&mut self.members, &mut self.lookups, &mut events)?;
            // Every event is delivered, even after the sink asked to stop.
            let mut stop = false;
            for e in events.drain(..) {
                stop |= sink.event(&e) == Flow::Stop;
            }
            if done {
                break;
            }
            if stop {
                run.cancel(&mut events);
                for e in events.drain(..) {
                    sink.event(&e);
                }
                break;
            }
        }
        let (generation, finish) = run.finish(&self.members);
        sink.event(&Event::Finish(finish));
        Ok(generation)
    }

    /// [`Ensemble::generate`] without events.
    pub fn generate_quiet(&mut self, request: &Request) -> Result<Generation> {
        self.generate(request, &mut Discard)
    }

    /// The events of a generation as an iterator: each `next` runs at most one step.
    /// Dropping the iterator abandons the generation.
    pub fn stream(&mut self, request: &Request) -> Result<Stream<'_>> {
        let run = Sequence::start(&mut self.members, request, self.prefix_cache)?;
        Ok(Stream {
            ens: self,
            run: Some(run),
            queue: VecDeque::new(),
            generation: None,
        })
    }
}

/// Iterator form of a generation ([`Ensemble::stream`]).
pub struct Stream<'e> {
    ens: &'e mut Ensemble,
    run: Option<Sequence>,
    queue: VecDeque<Event>,
    generation: Option<Generation>,
}

impl Stream<'_> {
    /// The whole generation, once the iterator has yielded [`Event::Finish`].
    pub fn generation(&self) -> Option<&Generation> {
        self.generation.as_ref()
    }

    /// Ends the generation now ([`StopReason::Cancelled`](super::StopReason::Cancelled)); the remaining events (held
    /// text, the finish) are still yielded.
    pub fn cancel(&mut self) {
        if let Some(mut run) = self.run.take() {
            let mut events = Vec::new();
            run.cancel(&mut events);
            self.queue.extend(events);
            let (generation, finish) = run.finish(&self.ens.members);
            self.queue.push_back(Event::Finish(finish));
            self.generation = Some(generation);
        }
    }
}

impl Iterator for Stream<'_> {
    type Item = Result<Event>;

    fn next(&mut self) -> Option<Result<Event>> {
        loop {
            if let Some(e) = self.queue.pop_front() {
                return Some(Ok(e));
            }
            let run = self.run.as_mut()?;
            let mut events = Vec::new();
            match run.step(&mut self.ens.members, &mut self.ens.lookups, &mut events) {
                Ok(done) => {
                    self.queue.extend(events);
                    if done {
                        if let Some(run) = self.run.take() {
                            let (generation, finish) = run.finish(&self.ens.members);
                            self.queue.push_back(Event::Finish(finish));
                            self.generation = Some(generation);
                        }
                    }
                }
                Err(e) => {
                    self.run = None;
                    return Some(Err(e));
                }
            }
        }
    }
}
