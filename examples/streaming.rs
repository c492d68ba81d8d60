//! Streaming: the events of a generation as an iterator. Text arrives as soon as the
//! chosen bytes form complete UTF-8 characters; each step also says which candidate
//! won, with what probability, and what the runners-up were.
//!
//! `cargo run --release --example streaming -- "Write a haiku about the sea."`

use std::io::Write;
use std::time::Instant;

use tutti::engine::{Ensemble, Event, MemberSpec, Message, Request};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let prompt = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "Write a haiku about the sea.".into());
    let mut ens = Ensemble::builder()
        .member(MemberSpec::new(
            "models-cache/SmolLM2-135M-Instruct.Q4_1.gguf",
        ))
        .build()?;
    let request = Request::chat(vec![
        Message::system("You are a poet."),
        Message::user(prompt),
    ])
    .sample(0.7, 0.9, 42)
    .max_tokens(64)
    .alternatives(3);
    let t0 = Instant::now();
    let (mut chunks, mut unsure) = (0, 0);
    for event in ens.stream(&request)? {
        match event? {
            Event::Text(text) => {
                chunks += 1;
                print!("{text}");
                let _ = std::io::stdout().flush();
            }
            Event::Step(step) if step.chosen.prob < 0.5 => unsure += 1,
            Event::Finish(f) => println!(
                "\n[{chunks} chunks, {} tokens ({unsure} chosen below p = 0.5), stop: {:?}, {:.2} s]",
                f.usage.completion_tokens,
                f.reason,
                t0.elapsed().as_secs_f64()
            ),
            _ => {}
        }
    }
    Ok(())
}
