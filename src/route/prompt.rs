//! The texts of route mode: the Knowledge Transfer Prompt each member answers, and the
//! state text the policy and the terminator read.

/// The Knowledge Transfer Prompt of DER (§3.4), word for word: the question, then the
/// previous member's answer as "another student's" advice. Each member gets it as the
/// user message of its own chat template. The first member of a route gets the question
/// alone.
pub fn knowledge_transfer(question: &str, previous: Option<&str>) -> String {
    match previous {
        None => question.to_string(),
        Some(answer) => format!(
            "{question}\nThere is an answer to the question from another student:\n{answer}\n\
             Using another student's answer as additional advice, you need to give a more \
             satisfactory answer directly. DO NOT mention other students."
        ),
    }
}

/// The state `[Q: x, A: ŷ]` as text, `None` before the first answer.
pub fn state_text(question: &str, answer: Option<&str>) -> String {
    format!("Q: {question}\nA: {}", answer.unwrap_or("None"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ktp_is_the_papers_text() {
        assert_eq!(knowledge_transfer("What is 2+2?", None), "What is 2+2?");
        assert_eq!(
            knowledge_transfer("What is 2+2?", Some("5")),
            "What is 2+2?\nThere is an answer to the question from another student:\n5\n\
             Using another student's answer as additional advice, you need to give a more \
             satisfactory answer directly. DO NOT mention other students."
        );
    }

    #[test]
    fn state_starts_with_none() {
        assert_eq!(
            state_text("Capital of France?", None),
            "Q: Capital of France?\nA: None"
        );
        assert_eq!(
            state_text("Capital of France?", Some("Paris")),
            "Q: Capital of France?\nA: Paris"
        );
    }
}
