//! What a route is asked: the bare question (for the state and the Knowledge Transfer
//! Prompt) and how each step's prompt is framed around it.
//!
//! Bench prompts are few-shot (`Q: …\nA:` for QA, `Question: …\nAnswer:` for GSM8K):
//! there the worked examples stay in front and the KTP text takes the place of the last
//! question, so a base-style prompt keeps its format. Any other prompt is the question
//! itself, sent as the user message of each member's chat template (or raw).

use crate::engine::{Message, Prompt};

use super::prompt::knowledge_transfer;

/// Question/answer cues of the few-shot formats tutti's tasks write.
const CUES: [(&str, &str); 2] = [("Q: ", "\nA:"), ("Question: ", "\nAnswer:")];

/// A question and its framing.
#[derive(Clone, Debug, PartialEq)]
pub struct RouteQuestion {
    /// The question alone (what the state text and the KTP carry).
    pub question: String,
    frame: Frame,
}

#[derive(Clone, Debug, PartialEq)]
enum Frame {
    /// Worked examples up to and including the question cue, then the answer cue.
    FewShot { before: String, after: String },
    /// The KTP text as the user message of each member's chat template.
    Chat,
    /// The KTP text as a raw prompt.
    Raw,
}

impl RouteQuestion {
    /// A question sent through each member's chat template.
    pub fn chat(question: impl Into<String>) -> RouteQuestion {
        RouteQuestion {
            question: question.into(),
            frame: Frame::Chat,
        }
    }

    /// A bench prompt: a few-shot prompt whose last line is an answer cue keeps its
    /// examples; anything else is the question, sent through each member's chat
    /// template when `chat`, else raw.
    pub fn from_prompt(prompt: &str, chat: bool) -> RouteQuestion {
        for (q, a) in CUES {
            let Some(body) = prompt.strip_suffix(a) else {
                continue;
            };
            let start = match body.rfind(&format!("\n{q}")) {
                Some(i) => i + 1,
                None if body.starts_with(q) => 0,
                None => continue,
            };
            let question = &body[start + q.len()..];
            if question.trim().is_empty() {
                continue;
            }
            return RouteQuestion {
                question: question.trim().to_string(),
                frame: Frame::FewShot {
                    before: body[..start + q.len()].to_string(),
                    after: a.to_string(),
                },
            };
        }
        RouteQuestion {
            question: prompt.trim().to_string(),
            frame: if chat { Frame::Chat } else { Frame::Raw },
        }
    }

    /// The prompt of a step that sees `previous` (the last member's answer).
    pub fn prompt(&self, previous: Option<&str>) -> Prompt {
        let ktp = knowledge_transfer(&self.question, previous);
        match &self.frame {
            Frame::FewShot { before, after } => Prompt::Raw(format!("{before}{ktp}{after}")),
            Frame::Chat => Prompt::Chat(vec![Message::user(ktp)]),
            Frame::Raw => Prompt::Raw(ktp),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn few_shot_prompts_keep_their_examples() {
        let p = "Q: Capital of Italy?\nA: Rome\n\nQ: Capital of France?\nA:";
        let q = RouteQuestion::from_prompt(p, false);
        assert_eq!(q.question, "Capital of France?");
        assert_eq!(q.prompt(None), Prompt::Raw(p.to_string()));
        let Prompt::Raw(second) = q.prompt(Some("Lyon")) else {
            panic!("raw expected")
        };
        assert!(second.starts_with("Q: Capital of Italy?\nA: Rome\n\nQ: Capital of France?\nThere is an answer to the question from another student:\nLyon\n"));
        assert!(second.ends_with("DO NOT mention other students.\nA:"));

        let g = "Question: 2+2?\nAnswer: 4. The answer is 4.\n\nQuestion: 3+3?\nAnswer:";
        let q = RouteQuestion::from_prompt(g, true);
        assert_eq!(q.question, "3+3?");
        assert_eq!(q.prompt(None), Prompt::Raw(g.to_string()));
    }

    #[test]
    fn other_prompts_are_the_question() {
        let q = RouteQuestion::from_prompt("Write a haiku.", true);
        assert_eq!(q.question, "Write a haiku.");
        assert_eq!(
            q.prompt(None),
            Prompt::Chat(vec![Message::user("Write a haiku.")])
        );
        let q = RouteQuestion::from_prompt("Write a haiku.", false);
        assert_eq!(q.prompt(None), Prompt::Raw("Write a haiku.".into()));
        // A cue with nothing before it is no question.
        let q = RouteQuestion::from_prompt("Q: \nA:", false);
        assert_eq!(q.question, "Q: \nA:");
    }
}
