//! `tutti generate --explain`: the generated text with each token marked by the member
//! that contributed most to its choice, then a legend and a summary.
//!
//! On a terminal each token takes its member's colour (grey where every consulted
//! member's own top choice was the token); with `NO_COLOR` set or when stdout is not a
//! terminal, runs of tokens carried by one member are wrapped as `[A:…]` instead and
//! agreed tokens stay bare. Tokens are written as the engine releases text, so a token
//! a stop string cut is never shown.

use std::io::{IsTerminal, Write};

use serde_json::{json, Value};
use tutti::engine::{Agreement, Generation, StepEvent, StepExplain, Summary};

/// Colours of members by request position (cycled past six): blue, orange, magenta,
/// green, cyan, red, as 256-colour codes that read on dark and light backgrounds.
const PALETTE: [u8; 6] = [33, 208, 163, 34, 37, 160];
/// Grey: every consulted member agreed.
const GREY: u8 = 245;

/// How a token is marked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mark {
    Agreed,
    /// Carried by the member at this request position.
    Member(usize),
}

/// Whether marks are colours or bracketed labels: colours only on a terminal and
/// without `NO_COLOR` (any non-empty value, as no-color.org says).
pub fn use_colour() -> bool {
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    !no_color && std::io::stdout().is_terminal()
}

/// A member's label in plain mode and in the legend: A, B, …, Z, then #26, #27, ….
fn label(pos: usize) -> String {
    match u8::try_from(pos) {
        Ok(p) if p < 26 => char::from(b'A' + p).to_string(),
        _ => format!("#{pos}"),
    }
}

fn fg(code: u8) -> String {
    format!("\x1b[38;5;{code}m")
}

const RESET: &str = "\x1b[0m";

/// Writes released text with its tokens' marks and keeps the records.
pub struct Printer {
    colour: bool,
    /// Taking-part member slots in request order (known from the first record).
    slots: Vec<usize>,
    /// Byte offset in the generated text where each token starts, and its mark.
    starts: Vec<(usize, Mark)>,
    /// Bytes of all chosen tokens so far.
    bytes: usize,
    /// Text released (and written) so far.
    released: String,
    /// The token the last written piece belonged to.
    cursor: usize,
    /// Plain mode: the member whose `[X:` is open.
    open: Option<usize>,
    pub records: Vec<StepExplain>,
}

impl Printer {
    pub fn new(colour: bool) -> Printer {
        Printer {
            colour,
            slots: Vec::new(),
            starts: Vec::new(),
            bytes: 0,
            released: String::new(),
            cursor: 0,
            open: None,
            records: Vec::new(),
        }
    }

    fn mark_of(&self, r: &StepExplain) -> Mark {
        match (r.agreement, r.leader) {
            (Agreement::All, _) | (_, None) => Mark::Agreed,
            (_, Some(slot)) => {
                Mark::Member(self.slots.iter().position(|&s| s == slot).unwrap_or(0))
            }
        }
    }

    /// Takes a step's record.
    pub fn step(&mut self, s: &StepEvent) {
        if let Some(r) = &s.explain {
            self.record(r);
        }
    }

    /// Marks the chosen bytes of the step `r` records.
    fn record(&mut self, r: &StepExplain) {
        if self.slots.is_empty() {
            self.slots = r.members.iter().map(|m| m.slot).collect();
        }
        let mark = self.mark_of(r);
        self.starts.push((self.bytes, mark));
        self.bytes += r.chosen.bytes.len();
        self.records.push(r.clone());
    }

    /// Writes released text `t`, split where tokens start.
    pub fn text(&mut self, t: &str, out: &mut impl Write) -> std::io::Result<()> {
        let mut pos = self.released.len();
        self.released.push_str(t);
        let end = self.released.len();
        while pos < end {
            while self
                .starts
                .get(self.cursor + 1)
                .is_some_and(|&(s, _)| s <= pos)
            {
                self.cursor += 1;
            }
            // The piece runs to the next token start that falls on a character
            // boundary (a token ending inside a character shares it with the next).
            let next = self.starts[(self.cursor + 1).min(self.starts.len())..]
                .iter()
                .map(|&(s, _)| s)
                .find(|&s| s > pos && s < end && self.released.is_char_boundary(s))
                .unwrap_or(end);
            let mark = self
                .starts
                .get(self.cursor)
                .map_or(Mark::Agreed, |&(_, m)| m);
            write_piece(
                self.colour,
                &mut self.open,
                &self.released[pos..next],
                mark,
                out,
            )?;
            pos = next;
        }
        Ok(())
    }

    /// Closes an open marker.
    pub fn finish(&mut self, out: &mut impl Write) -> std::io::Result<()> {
        if self.open.take().is_some() {
            out.write_all(b"]")?;
        }
        Ok(())
    }

    /// The legend and the summary, one item a line.
    pub fn report(&self, g: &Generation) -> String {
        let summary = Summary::of(&self.records);
        let name = |slot: usize| {
            g.members
                .iter()
                .find(|m| m.slot == slot)
                .map_or_else(|| format!("member #{slot}"), |m| m.name.clone())
        };
        let mut s = String::from("legend:");
        for (i, m) in g.members.iter().enumerate() {
            let swatch = if self.colour {
                format!("{}{}{RESET}", fg(PALETTE[i % PALETTE.len()]), label(i))
            } else {
                label(i)
            };
            s += &format!("  {swatch} = {} (weight {})", m.name, m.weight);
        }
        if g.members.len() > 1 {
            s += &if self.colour {
                format!("  {}grey{RESET} = all agreed", fg(GREY))
            } else {
                "  unmarked = all agreed".to_string()
            };
        }
        s.push('\n');
        s += &format!(
            "{} steps; the members disagreed on {} ({:.1}%), agreed on {}",
            summary.steps,
            summary.split_steps,
            100.0 * summary.disagreement_share,
            summary.agreed_steps
        );
        if summary.alone_steps > 0 {
            s += &format!(", one member decided alone on {}", summary.alone_steps);
        }
        s.push('\n');
        for (i, m) in summary.members.iter().enumerate() {
            s += &format!(
                "{} {}: own top choice won {} of {} consulted steps ({:.1}%); carried {} tokens\n",
                label(i),
                name(m.slot),
                m.top_won,
                m.consulted,
                100.0 * m.top_won_share,
                m.led
            );
        }
        s += &format!(
            "rollbacks: {} ({} tokens rolled back)",
            summary.rollbacks, summary.rolled_back_tokens
        );
        for (i, m) in summary.members.iter().enumerate() {
            if m.rollbacks > 0 {
                s += &format!(
                    ", {} {} ({} tokens)",
                    label(i),
                    m.rollbacks,
                    m.rolled_back_tokens
                );
            }
        }
        s
    }
}

/// Writes one piece of text in its mark: a colour, or in plain mode the `[X:` that
/// `open` tracks.
fn write_piece(
    colour: bool,
    open: &mut Option<usize>,
    piece: &str,
    mark: Mark,
    out: &mut impl Write,
) -> std::io::Result<()> {
    if colour {
        let code = match mark {
            Mark::Agreed => GREY,
            Mark::Member(i) => PALETTE[i % PALETTE.len()],
        };
        return write!(out, "{}{piece}{RESET}", fg(code));
    }
    let want = match mark {
        Mark::Agreed => None,
        Mark::Member(i) => Some(i),
    };
    if want != *open {
        if open.is_some() {
            out.write_all(b"]")?;
        }
        if let Some(i) = want {
            write!(out, "[{}:", label(i))?;
        }
        *open = want;
    }
    out.write_all(piece.as_bytes())
}

/// The `explain` object of `--explain --json`: the per-token records, the summary and
/// the labels.
pub fn json(records: &[StepExplain], g: &Generation) -> Value {
    json!({
        "members": g.members.iter().enumerate().map(|(i, m)| json!({
            "slot": m.slot, "label": label(i), "name": m.name,
        })).collect::<Vec<_>>(),
        "summary": Summary::of(records),
        "tokens": records,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tutti::engine::explain::Candidate;
    use tutti::engine::MemberAttribution;

    fn step(text: &str, agreement: Agreement, leader: usize) -> StepExplain {
        let member = |slot| MemberAttribution {
            slot,
            consulted: true,
            weight: 0.5,
            prob: Some(0.5),
            top: None,
            agreed: Some(true),
            contribution: 0.5,
            rolled_back: 0,
        };
        let chosen = Candidate {
            text: text.into(),
            bytes: text.as_bytes().to_vec(),
            eos: false,
            prob: 0.5,
        };
        StepExplain {
            index: 0,
            chosen,
            agreement,
            leader: Some(leader),
            members: vec![member(0), member(1)],
            alternatives: Vec::new(),
            rolled_back: 0,
        }
    }

    fn render(colour: bool, steps: &[StepExplain], texts: &[&str]) -> String {
        let mut p = Printer::new(colour);
        let mut out = Vec::new();
        for s in steps {
            p.record(s);
        }
        for t in texts {
            p.text(t, &mut out).unwrap_or_default();
        }
        p.finish(&mut out).unwrap_or_default();
        String::from_utf8(out).unwrap_or_default()
    }

    #[test]
    fn plain_markers_group_runs_and_leave_agreement_bare() {
        let steps = [
            step("The", Agreement::All, 0),
            step(" cat", Agreement::Split, 1),
            step(" sat", Agreement::Split, 1),
            step(" on", Agreement::Alone, 0),
            step(" it", Agreement::All, 1),
        ];
        // Text released in pieces that do not follow token boundaries.
        let out = render(false, &steps, &["The c", "at sat on", " it"]);
        assert_eq!(out, "The[B: cat sat][A: on] it");
    }

    #[test]
    fn colours_wrap_each_piece_and_split_characters_stay_whole() {
        // "é" is split over two tokens carried by different members: the character
        // goes whole to the token that starts it.
        let e = "é".as_bytes();
        let mut a = step("x", Agreement::Split, 0);
        let mut b = step("x", Agreement::Split, 1);
        a.chosen.bytes = e[..1].to_vec();
        b.chosen.bytes = e[1..].to_vec();
        let c = step("!", Agreement::All, 0);
        let out = render(true, &[a, b, c], &["é", "!"]);
        assert_eq!(
            out,
            format!("{}é{RESET}{}!{RESET}", fg(PALETTE[0]), fg(GREY))
        );
    }

    #[test]
    fn labels() {
        assert_eq!(label(0), "A");
        assert_eq!(label(25), "Z");
        assert_eq!(label(26), "#26");
    }
}
