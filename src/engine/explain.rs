//! Per-token attribution: what each member did for each chosen token.
//!
//! A step's [`StepExplain`] says, per taking-part member, its probability of the chosen
//! candidate, its own top choice and whether that choice won, its weight at the step
//! and its share of the chosen candidate's pooled mass; with the combined distribution's
//! top alternatives and the rollbacks the choice caused. A [`Summary`] folds the records
//! of a generation into the figures a reader asks first: how often the members
//! disagreed, how often each one's own choice won, how many rollbacks there were.
//!
//! Records are made only when a request asks for them ([`crate::engine::Request::explain`])
//! from values the step has already computed: a few small vectors per step, no extra
//! pass over any vocabulary. `tutti generate --explain` and the `tutti serve` web view
//! render them; the API returns them under `tutti.explain`.

use serde::Serialize;

use super::combine::step_weights;
use super::request::Combine;
use super::union::{CandidateKey, Proposals};

/// How many of the combined distribution's most probable candidates a record keeps.
pub const EXPLAIN_ALTERNATIVES: usize = 5;

/// A candidate as a record shows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Candidate {
    /// The bytes as text (lossy where a token ends inside a UTF-8 sequence; empty for
    /// end of sequence).
    pub text: String,
    /// The exact bytes (empty for end of sequence).
    pub bytes: Vec<u8>,
    /// End of sequence.
    pub eos: bool,
    /// Its probability: the member's own, or the combined one (renormalised over the
    /// union, what the choice drew from).
    pub prob: f32,
}

impl Candidate {
    fn new(key: &CandidateKey, prob: f32) -> Candidate {
        match key {
            CandidateKey::Eos => Candidate {
                text: String::new(),
                bytes: Vec::new(),
                eos: true,
                prob,
            },
            CandidateKey::Bytes(b) => Candidate {
                text: String::from_utf8_lossy(b).into_owned(),
                bytes: b.clone(),
                eos: false,
                prob,
            },
        }
    }
}

/// How the consulted members stood on the chosen candidate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Agreement {
    /// Several members were consulted and each one's own top choice is the chosen one.
    All,
    /// Several members were consulted and at least one preferred another candidate.
    Split,
    /// One member was consulted (the gate skipped the others, or it runs alone).
    Alone,
}

/// One taking-part member's part in a step.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MemberAttribution {
    /// The member's slot in the ensemble.
    pub slot: usize,
    /// Whether its distribution entered the step (false: the gate skipped it).
    pub consulted: bool,
    /// Its share of the step's weights among the consulted members, after the
    /// combination rule's per-step reweighting (`confidence`, `entropy`); 0 when not
    /// consulted.
    pub weight: f32,
    /// Its probability of the chosen candidate (when consulted).
    pub prob: Option<f32>,
    /// Its own most probable candidate, with its own probability (when consulted).
    pub top: Option<Candidate>,
    /// Whether its own top choice is the chosen candidate (when consulted).
    pub agreed: Option<bool>,
    /// Its share of the chosen candidate's support, `w·p / Σ w·p` over the consulted
    /// members (`w` the step weight, `p` the member's probability of the candidate).
    pub contribution: f32,
    /// Tokens its cache rolled back when it committed the chosen bytes.
    pub rolled_back: usize,
}

/// Attribution of one chosen token.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StepExplain {
    /// The step (0 for the first).
    pub index: usize,
    /// The chosen candidate with its combined probability.
    pub chosen: Candidate,
    pub agreement: Agreement,
    /// The slot of the member that contributed most to the choice (the first on ties;
    /// the consulted one when only one was). Renderers colour a token by it unless
    /// [`StepExplain::agreement`] is [`Agreement::All`].
    pub leader: Option<usize>,
    /// One entry per taking-part member, in request order.
    pub members: Vec<MemberAttribution>,
    /// The combined distribution's most probable candidates, most probable first.
    pub alternatives: Vec<Candidate>,
    /// Tokens rolled back over all members at this step.
    pub rolled_back: usize,
}

/// What a consulted member brought to a step.
pub struct Consulted<'a> {
    /// Its probability of every union candidate.
    pub probs: &'a [f32],
    /// Its weight at this step (as the combination rule used it).
    pub weight: f32,
    /// Its own top candidate and its own probability of it.
    pub top: Option<(&'a CandidateKey, f32)>,
}

/// One taking-part member at a step.
pub struct MemberInput<'a> {
    pub slot: usize,
    /// `None` when the gate skipped it.
    pub consulted: Option<Consulted<'a>>,
    /// Tokens its cache rolled back when committing the chosen bytes.
    pub rolled_back: usize,
}

impl MemberAttribution {
    /// A member the gate did not consult.
    fn skipped(slot: usize, rolled_back: usize) -> MemberAttribution {
        MemberAttribution {
            slot,
            consulted: false,
            weight: 0.0,
            prob: None,
            top: None,
            agreed: None,
            contribution: 0.0,
            rolled_back,
        }
    }
}

/// The record of step `index`: `keys` are the union's candidates, `combined` the
/// combined distribution over them (renormalised), `chosen` the index of the chosen
/// one.
pub fn attribute(
    index: usize,
    keys: &[&CandidateKey],
    combined: &[f32],
    chosen: usize,
    members: &[MemberInput<'_>],
) -> StepExplain {
    let chosen_key = keys.get(chosen).copied();
    let wsum: f32 = members
        .iter()
        .filter_map(|m| m.consulted.as_ref())
        .map(|c| c.weight.max(0.0))
        .sum();
    let support = |c: &Consulted<'_>| {
        c.weight.max(0.0) * c.probs.get(chosen).copied().unwrap_or(0.0).max(0.0)
    };
    let total: f32 = members
        .iter()
        .filter_map(|m| m.consulted.as_ref())
        .map(support)
        .sum();
    let n_consulted = members.iter().filter(|m| m.consulted.is_some()).count();
    let mut out = Vec::with_capacity(members.len());
    let mut all_agree = true;
    let mut leader: Option<(usize, f32)> = None;
    for m in members {
        let Some(c) = &m.consulted else {
            out.push(MemberAttribution::skipped(m.slot, m.rolled_back));
            continue;
        };
        let agreed = matches!((c.top, chosen_key), (Some((k, _)), Some(ch)) if k == ch);
        all_agree &= agreed;
        let contribution = if total > 0.0 {
            support(c) / total
        } else {
            // Nobody gave the chosen candidate any mass (it can win only by sampling
            // from a flat union): the weights alone say who stood behind the step.
            c.weight.max(0.0) / wsum.max(f32::MIN_POSITIVE)
        };
        if leader.is_none_or(|(_, best)| contribution > best) {
            leader = Some((m.slot, contribution));
        }
        out.push(MemberAttribution {
            slot: m.slot,
            consulted: true,
            weight: if wsum > 0.0 {
                c.weight.max(0.0) / wsum
            } else {
                1.0 / n_consulted as f32
            },
            prob: Some(c.probs.get(chosen).copied().unwrap_or(0.0)),
            top: c.top.map(|(k, p)| Candidate::new(k, p)),
            agreed: Some(agreed),
            contribution,
            rolled_back: m.rolled_back,
        });
    }
    let agreement = match n_consulted {
        0 | 1 => Agreement::Alone,
        _ if all_agree => Agreement::All,
        _ => Agreement::Split,
    };
    StepExplain {
        index,
        chosen: match chosen_key {
            Some(k) => Candidate::new(k, combined.get(chosen).copied().unwrap_or(0.0)),
            None => Candidate::new(&CandidateKey::Bytes(Vec::new()), 0.0),
        },
        agreement,
        leader: leader.map(|(slot, _)| slot),
        rolled_back: out.iter().map(|m| m.rolled_back).sum(),
        members: out,
        alternatives: top_alternatives(keys, combined, EXPLAIN_ALTERNATIVES),
    }
}

/// What a step computed that its record is made from.
pub(crate) struct StepRecord<'a> {
    pub index: usize,
    pub proposals: &'a Proposals,
    /// Taking-part member slots, in request order.
    pub slots: &'a [usize],
    /// Per consulted member (in request order): its probability of every candidate,
    /// its request weight and its top-k, as the combination took them.
    pub probs: &'a [Vec<f32>],
    pub weights: &'a [f32],
    pub tops: &'a [&'a [(u32, f32)]],
    pub rule: Combine,
    /// The combined distribution over the union, and the chosen candidate.
    pub combined: &'a [f32],
    pub chosen: usize,
    /// Per taking-part member, the tokens this step's commit rolled back.
    pub rolled_back: &'a [usize],
}

/// The record of a step the engine ran.
pub(crate) fn from_step(r: &StepRecord) -> StepExplain {
    let StepRecord {
        index,
        proposals: step,
        slots,
        probs,
        weights,
        tops,
        rule,
        combined,
        chosen,
        rolled_back,
    } = *r;
    let w = step_weights(rule, weights, tops);
    let keys: Vec<&CandidateKey> = step.union.candidates.iter().map(|c| &c.key).collect();
    let mut consulted = 0;
    let members: Vec<MemberInput<'_>> = slots
        .iter()
        .enumerate()
        .map(|(i, &slot)| {
            let input = step.dist(slot).and_then(|d| {
                let m = consulted;
                consulted += 1;
                let top = d.top().first().and_then(|&(id, p)| {
                    step.union
                        .candidates
                        .iter()
                        .find(|c| c.proposed_by(slot) == Some(id))
                        .map(|c| (&c.key, p))
                });
                Some(Consulted {
                    probs: probs.get(m)?,
                    weight: w.get(m).copied().unwrap_or(0.0),
                    top,
                })
            });
            MemberInput {
                slot,
                consulted: input,
                rolled_back: rolled_back.get(i).copied().unwrap_or(0),
            }
        })
        .collect();
    attribute(index, &keys, combined, chosen, &members)
}

/// The `n` most probable candidates of `probs`, most probable first; ties keep union
/// order (the order the choice breaks them in).
fn top_alternatives(keys: &[&CandidateKey], probs: &[f32], n: usize) -> Vec<Candidate> {
    let mut best: Vec<usize> = Vec::with_capacity(n + 1);
    for (i, &p) in probs.iter().enumerate().take(keys.len()) {
        let at = best.partition_point(|&j| probs[j] >= p);
        if at < n {
            best.insert(at, i);
            best.truncate(n);
        }
    }
    best.into_iter()
        .map(|i| Candidate::new(keys[i], probs[i]))
        .collect()
}

/// One member over a whole generation.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct MemberSummary {
    pub slot: usize,
    /// Steps where it was consulted.
    pub consulted: usize,
    /// Consulted steps where its own top choice was the chosen token.
    pub top_won: usize,
    /// `top_won / consulted` (0 when never consulted).
    pub top_won_share: f64,
    /// Steps where it contributed most to a choice the members did not all agree on
    /// (split steps and steps it decided alone).
    pub led: usize,
    /// Steps where its cache rolled back, and the tokens it rolled back.
    pub rollbacks: usize,
    pub rolled_back_tokens: usize,
}

/// The figures of a generation's records.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Summary {
    pub steps: usize,
    /// Steps where every consulted member's top choice won (several consulted).
    pub agreed_steps: usize,
    /// Steps where at least one consulted member preferred another token.
    pub split_steps: usize,
    /// Steps where only one member was consulted.
    pub alone_steps: usize,
    /// `split_steps / steps`.
    pub disagreement_share: f64,
    /// Member-steps with a rollback, and the tokens rolled back, over all members.
    pub rollbacks: usize,
    pub rolled_back_tokens: usize,
    /// Per taking-part member, in request order.
    pub members: Vec<MemberSummary>,
}

impl Summary {
    /// Folds in one more step.
    pub fn add(&mut self, s: &StepExplain) {
        self.steps += 1;
        match s.agreement {
            Agreement::All => self.agreed_steps += 1,
            Agreement::Split => self.split_steps += 1,
            Agreement::Alone => self.alone_steps += 1,
        }
        self.disagreement_share = self.split_steps as f64 / self.steps as f64;
        for m in &s.members {
            let i = match self.members.iter().position(|x| x.slot == m.slot) {
                Some(i) => i,
                None => {
                    self.members.push(MemberSummary {
                        slot: m.slot,
                        ..MemberSummary::default()
                    });
                    self.members.len() - 1
                }
            };
            let ms = &mut self.members[i];
            if m.consulted {
                ms.consulted += 1;
                if m.agreed == Some(true) {
                    ms.top_won += 1;
                }
                ms.top_won_share = ms.top_won as f64 / ms.consulted as f64;
            }
            if s.agreement != Agreement::All && s.leader == Some(m.slot) {
                ms.led += 1;
            }
            if m.rolled_back > 0 {
                ms.rollbacks += 1;
                ms.rolled_back_tokens += m.rolled_back;
                self.rollbacks += 1;
                self.rolled_back_tokens += m.rolled_back;
            }
        }
    }

    /// The summary of `records`.
    pub fn of<'a>(records: impl IntoIterator<Item = &'a StepExplain>) -> Summary {
        let mut s = Summary::default();
        for r in records {
            s.add(r);
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> CandidateKey {
        CandidateKey::Bytes(s.as_bytes().to_vec())
    }

    fn close(a: f32, b: f32) -> bool {
        (a - b).abs() < 1e-6
    }

    /// Union " Paris", " Lyon", EOS; A (weight 1) prefers " Paris" (0.6), B (weight 1)
    /// prefers " Lyon" (0.5). Mean: Paris 0.4, Lyon 0.35, EOS 0.1.
    #[test]
    fn a_split_step_by_hand() {
        let (paris, lyon, eos) = (key(" Paris"), key(" Lyon"), CandidateKey::Eos);
        let keys = [&paris, &lyon, &eos];
        let a = [0.6f32, 0.2, 0.0];
        let b = [0.2f32, 0.5, 0.2];
        let combined = [0.4 / 0.85, 0.35 / 0.85, 0.1 / 0.85];
        let members = [
            MemberInput {
                slot: 0,
                consulted: Some(Consulted {
                    probs: &a,
                    weight: 1.0,
                    top: Some((&paris, 0.6)),
                }),
                rolled_back: 0,
            },
            MemberInput {
                slot: 1,
                consulted: Some(Consulted {
                    probs: &b,
                    weight: 1.0,
                    top: Some((&lyon, 0.5)),
                }),
                rolled_back: 2,
            },
        ];
        let r = attribute(3, &keys, &combined, 0, &members);
        assert_eq!(r.index, 3);
        assert_eq!(r.chosen.text, " Paris");
        assert_eq!(r.chosen.bytes, b" Paris");
        assert!(close(r.chosen.prob, 0.4 / 0.85));
        assert_eq!(r.agreement, Agreement::Split);
        // A's support 0.6 against B's 0.2: A carried the token, 3 to 1.
        assert_eq!(r.leader, Some(0));
        assert!(close(r.members[0].contribution, 0.75));
        assert!(close(r.members[1].contribution, 0.25));
        assert_eq!(r.members[0].agreed, Some(true));
        assert_eq!(r.members[1].agreed, Some(false));
        assert_eq!(
            r.members[1].top.as_ref().map(|t| t.text.as_str()),
            Some(" Lyon")
        );
        assert!(close(
            r.members[1].top.as_ref().map_or(0.0, |t| t.prob),
            0.5
        ));
        assert_eq!(r.members[1].prob, Some(0.2));
        assert!(close(r.members[0].weight, 0.5));
        assert_eq!(r.rolled_back, 2);
        let alts: Vec<&str> = r.alternatives.iter().map(|c| c.text.as_str()).collect();
        assert_eq!(alts, [" Paris", " Lyon", ""]);
        assert!(r.alternatives[2].eos);
    }

    fn member<'a>(
        slot: usize,
        probs: &'a [f32],
        weight: f32,
        top: &'a CandidateKey,
    ) -> MemberInput<'a> {
        MemberInput {
            slot,
            consulted: Some(Consulted {
                probs,
                weight,
                top: Some((top, 0.5)),
            }),
            rolled_back: 0,
        }
    }

    #[test]
    fn weights_shift_the_leader() {
        let (x, y) = (key("x"), key("y"));
        let keys = [&x, &y];
        let (a, b) = ([0.5f32, 0.5], [0.4f32, 0.6]);
        let combined = [0.45, 0.55];
        // Equal weights: A gives "x" 0.5, B 0.4: A leads.
        let r = attribute(
            0,
            &keys,
            &combined,
            0,
            &[member(0, &a, 1.0, &x), member(1, &b, 1.0, &y)],
        );
        assert_eq!(r.leader, Some(0));
        // B at three times A's weight: 1.2 against 0.5.
        let r = attribute(
            0,
            &keys,
            &combined,
            0,
            &[member(0, &a, 1.0, &x), member(1, &b, 3.0, &y)],
        );
        assert_eq!(r.leader, Some(1));
        assert!(close(r.members[1].contribution, 1.2 / 1.7));
        assert!(close(r.members[1].weight, 0.75));
    }

    #[test]
    fn agreement_and_gate_skips() {
        let (x, y) = (key("x"), key("y"));
        let keys = [&x, &y];
        let p = [0.9f32, 0.1];
        let q = [0.7f32, 0.3];
        let both = [
            MemberInput {
                slot: 1,
                consulted: Some(Consulted {
                    probs: &p,
                    weight: 1.0,
                    top: Some((&x, 0.9)),
                }),
                rolled_back: 0,
            },
            MemberInput {
                slot: 0,
                consulted: Some(Consulted {
                    probs: &q,
                    weight: 1.0,
                    top: Some((&x, 0.7)),
                }),
                rolled_back: 0,
            },
        ];
        let r = attribute(0, &keys, &[0.8, 0.2], 0, &both);
        assert_eq!(r.agreement, Agreement::All);
        // Members are named by slot, in request order (slot 1 first here).
        assert_eq!(r.leader, Some(1));
        assert_eq!(r.members[0].slot, 1);

        // The gate skipped slot 0: the primary decided alone.
        let skipped = [
            MemberInput {
                slot: 1,
                consulted: Some(Consulted {
                    probs: &p,
                    weight: 1.0,
                    top: Some((&x, 0.9)),
                }),
                rolled_back: 0,
            },
            MemberInput {
                slot: 0,
                consulted: None,
                rolled_back: 1,
            },
        ];
        let r = attribute(1, &keys, &[0.9, 0.1], 0, &skipped);
        assert_eq!(r.agreement, Agreement::Alone);
        assert_eq!(r.leader, Some(1));
        assert!(!r.members[1].consulted);
        assert_eq!(r.members[1].prob, None);
        assert_eq!(r.members[1].agreed, None);
        assert_eq!(r.members[1].contribution, 0.0);
        assert_eq!(r.members[0].contribution, 1.0);
        assert_eq!(r.members[0].weight, 1.0);
        // A member the gate skipped still commits the bytes, and may roll back.
        assert_eq!(r.rolled_back, 1);

        // A sampled token nobody ranked first is a split even when the members agree
        // with each other.
        let r = attribute(2, &keys, &[0.8, 0.2], 1, &both);
        assert_eq!(r.agreement, Agreement::Split);
        assert_eq!(r.members[0].agreed, Some(false));
        assert_eq!(r.members[1].agreed, Some(false));
    }

    #[test]
    fn a_candidate_nobody_supports_falls_back_to_the_weights() {
        let (x, y) = (key("x"), key("y"));
        let keys = [&x, &y];
        let a = [1.0f32, 0.0];
        let b = [1.0f32, 0.0];
        let members = [
            MemberInput {
                slot: 0,
                consulted: Some(Consulted {
                    probs: &a,
                    weight: 1.0,
                    top: Some((&x, 1.0)),
                }),
                rolled_back: 0,
            },
            MemberInput {
                slot: 1,
                consulted: Some(Consulted {
                    probs: &b,
                    weight: 3.0,
                    top: Some((&x, 1.0)),
                }),
                rolled_back: 0,
            },
        ];
        let r = attribute(0, &keys, &[1.0, 0.0], 1, &members);
        assert!(close(r.members[0].contribution, 0.25));
        assert_eq!(r.leader, Some(1));
        assert!(r.members.iter().all(|m| m.contribution.is_finite()));
    }

    #[test]
    fn alternatives_are_sorted_and_ties_keep_union_order() {
        let ks: Vec<CandidateKey> = ["a", "b", "c", "d", "e", "f", "g"].map(key).to_vec();
        let keys: Vec<&CandidateKey> = ks.iter().collect();
        let probs = [0.1f32, 0.3, 0.1, 0.3, 0.05, 0.1, 0.05];
        let alts: Vec<String> = top_alternatives(&keys, &probs, 5)
            .into_iter()
            .map(|c| c.text)
            .collect();
        assert_eq!(alts, ["b", "d", "a", "c", "f"]);
        assert_eq!(top_alternatives(&keys[..2], &probs[..2], 5).len(), 2);
    }

    #[test]
    fn a_summary_counts_by_hand() {
        let (x, y) = (key("x"), key("y"));
        let keys = [&x, &y];
        let p = [0.9f32, 0.1];
        let q = [0.2f32, 0.8];
        let m = |slot, probs, top, rolled_back| MemberInput {
            slot,
            consulted: Some(Consulted {
                probs,
                weight: 1.0,
                top: Some((top, 0.9)),
            }),
            rolled_back,
        };
        let records = [
            // Both prefer x: agreed.
            attribute(
                0,
                &keys,
                &[0.8, 0.2],
                0,
                &[m(0, &p, &x, 0), m(1, &p, &x, 0)],
            ),
            // A prefers x, B y; x wins, A leads; B rolls back 2 tokens.
            attribute(
                1,
                &keys,
                &[0.55, 0.45],
                0,
                &[m(0, &p, &x, 0), m(1, &q, &y, 2)],
            ),
            // Only A consulted.
            attribute(
                2,
                &keys,
                &[0.9, 0.1],
                0,
                &[
                    m(0, &p, &x, 0),
                    MemberInput {
                        slot: 1,
                        consulted: None,
                        rolled_back: 0,
                    },
                ],
            ),
            // B prefers y and wins; B leads.
            attribute(
                3,
                &keys,
                &[0.45, 0.55],
                1,
                &[m(0, &p, &x, 1), m(1, &q, &y, 0)],
            ),
        ];
        let s = Summary::of(&records);
        assert_eq!(s.steps, 4);
        assert_eq!((s.agreed_steps, s.split_steps, s.alone_steps), (1, 2, 1));
        assert!((s.disagreement_share - 0.5).abs() < 1e-12);
        assert_eq!((s.rollbacks, s.rolled_back_tokens), (2, 3));
        let (a, b) = (&s.members[0], &s.members[1]);
        assert_eq!((a.consulted, a.top_won, a.led), (4, 3, 2));
        assert_eq!((b.consulted, b.top_won, b.led), (3, 2, 1));
        assert!((b.top_won_share - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!((a.rollbacks, a.rolled_back_tokens), (1, 1));
        assert_eq!((b.rollbacks, b.rolled_back_tokens), (1, 2));
    }

    #[test]
    fn records_serialize_with_bytes_and_text() {
        let x = key("é");
        let r = attribute(
            0,
            &[&x],
            &[1.0],
            0,
            &[MemberInput {
                slot: 0,
                consulted: Some(Consulted {
                    probs: &[1.0],
                    weight: 1.0,
                    top: Some((&x, 1.0)),
                }),
                rolled_back: 0,
            }],
        );
        let v = serde_json::to_value(&r).unwrap_or_default();
        assert_eq!(v["chosen"]["text"], "é");
        assert_eq!(v["chosen"]["bytes"], serde_json::json!([0xc3, 0xa9]));
        assert_eq!(v["agreement"], "alone");
        assert_eq!(v["members"][0]["agreed"], true);
    }
}
