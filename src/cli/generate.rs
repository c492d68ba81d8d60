//! `tutti generate`: text from one model or an ensemble, streamed to stdout or as one
//! JSON object.

use std::io::Write;

use anyhow::{bail, Result};
use serde_json::json;
use tutti::engine::{Ensemble, Event, Flow, Generation, Message, Prompt, Request};

use super::common::read_prompt;
use super::ensemble_args::{self, EnsembleArgs};
use super::explain::Printer;

#[derive(clap::Args, Debug, Clone)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub ens: EnsembleArgs,
    /// The prompt; read from stdin when absent.
    pub prompt: Option<String>,
    /// Use the prompt as is, without a chat template.
    #[arg(long)]
    pub raw: bool,
    /// Use each member's chat template (the default; members without one get the raw prompt).
    #[arg(long, conflicts_with = "raw")]
    pub chat: bool,
    /// Print one JSON object (text, ids per member, timings) instead of streaming.
    #[arg(long)]
    pub json: bool,
    /// Mark each token by the member that contributed most to its choice (colour on a
    /// terminal, `[A:…]` otherwise or with NO_COLOR), then print a legend and a
    /// summary; with --json, add the per-token records.
    #[arg(long)]
    pub explain: bool,
    /// ensemble (token-level, every step) or route (members answer one after another;
    /// see `tutti route`).
    #[arg(long, default_value = "ensemble", value_parser = ["ensemble", "route"])]
    pub mode: String,
    #[command(flatten)]
    pub route: super::route::RouteOptions,
}

pub fn run(args: GenerateArgs) -> Result<()> {
    if args.mode == "route" {
        if args.explain {
            bail!("--explain shows a token-level ensemble; route mode has no per-token choices");
        }
        return super::route::ask(super::route::AskArgs {
            ens: args.ens,
            route: args.route,
            prompt: args.prompt,
            raw: args.raw,
            json: args.json,
        });
    }
    if !args.route.policy.is_empty() || args.route.encoder.is_some() {
        bail!("--policy and --encoder belong to route mode; add --mode route");
    }
    let plan = ensemble_args::plan(&args.ens)?;
    let text = read_prompt(args.prompt.as_deref())?;
    let prompt = if args.raw {
        Prompt::Raw(text)
    } else {
        Prompt::Chat(vec![Message::user(text)])
    };
    let request = plan.request(prompt).explain(args.explain);
    let mut ens = ensemble_args::build(&plan)?;
    for note in ens.prompt_notes(&request.prompt) {
        tracing::info!("{note} (--raw silences this)");
    }
    if args.explain {
        run_explained(&mut ens, &request, args.json)?;
        ensemble_args::save_maps(&mut ens);
        return Ok(());
    }
    let out = if args.json {
        ens.generate_quiet(&request)?
    } else {
        let mut stdout = std::io::stdout().lock();
        let out = ens.generate(&request, &mut |e: &Event| {
            if let Event::Text(t) = e {
                // A closed pipe (e.g. `| head`) is not an error of generation.
                let _ = stdout.write_all(t.as_bytes());
                let _ = stdout.flush();
            }
            Flow::Continue
        })?;
        let _ = writeln!(stdout);
        out
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&json_report(&ens, &request, &out))?
        );
    } else {
        tracing::info!("{}", summary(&out, ens.load_ms()));
    }
    ensemble_args::save_maps(&mut ens);
    Ok(())
}

/// `--explain`: marked text, legend and summary; or, with `--json`, the JSON object
/// with the records.
fn run_explained(ens: &mut Ensemble, request: &Request, as_json: bool) -> Result<()> {
    let mut printer = Printer::new(!as_json && super::explain::use_colour());
    let mut stdout = std::io::stdout().lock();
    let out = ens.generate(request, &mut |e: &Event| {
        match e {
            Event::Step(s) => printer.step(s),
            Event::Text(t) if !as_json => {
                // A closed pipe (e.g. `| head`) is not an error of generation.
                let _ = printer.text(t, &mut stdout);
                let _ = stdout.flush();
            }
            _ => {}
        }
        Flow::Continue
    })?;
    if as_json {
        let mut report = json_report(ens, request, &out);
        report["explain"] = super::explain::json(&printer.records, &out);
        let _ = writeln!(stdout, "{}", serde_json::to_string(&report)?);
    } else {
        let _ = printer.finish(&mut stdout);
        let _ = writeln!(stdout, "\n\n{}", printer.report(&out));
        tracing::info!("{}", summary(&out, ens.load_ms()));
    }
    Ok(())
}

/// One line of numbers for stderr.
pub fn summary(out: &Generation, load_ms: f64) -> String {
    let mut s = format!(
        "{} tokens, stop: {:?}, {:.1} tokens/s, {:.1} ms/token, prefill {:.0} ms, load {:.0} ms",
        out.tokens,
        out.stop_reason,
        out.timing.tokens_per_s,
        out.timing.ms_per_token,
        out.timing.prefill_ms,
        load_ms
    );
    if out.members.len() > 1 {
        s += &format!(
            ", ensembled {:.0}% of steps, rollbacks {}",
            100.0 * out.ensembled_share,
            out.rollbacks()
        );
    }
    for m in &out.members {
        if let Some(n) = m.round_trips {
            s += &format!(", {}: {n} round trips", m.name);
        }
        if let Some(why) = &m.dropped {
            s += &format!(", DROPPED {} ({why})", m.name);
        }
    }
    s
}

/// The `--json` object.
pub fn json_report(ens: &Ensemble, request: &Request, out: &Generation) -> serde_json::Value {
    let n = out.steps.len().max(1) as f64;
    let per_member_forward: Vec<f64> = out.members.iter().map(|m| m.forward_ms / n).collect();
    json!({
        "text": out.text,
        "prompt_tokens": out.members.first().map_or(0, |m| m.prompt_tokens),
        "ids": out.members.iter().map(|m| m.ids.clone()).collect::<Vec<_>>(),
        "tokens": out.tokens,
        "stop_reason": out.stop_reason,
        "rollbacks": out.rollbacks(),
        "ensembled_share": out.ensembled_share,
        "settings": {
            "align": ens.align().name(),
            "top_k": request.top_k,
            "gate": request.gate.to_string(),
            "combine": request.combine.to_string(),
            "sampling": request.sampling.to_string(),
        },
        "members": out.members,
        "timing": {
            "load_ms": ens.load_ms(),
            "prefill_ms": out.timing.prefill_ms,
            "total_ms": out.timing.total_ms,
            "tokens_per_s": out.timing.tokens_per_s,
            "ms_per_token": out.timing.ms_per_token,
            "mean_step_ms": {
                "forward_per_member": per_member_forward,
                "align_combine": out.timing.align_combine_ms / n,
                "feedback": out.timing.feedback_ms / n,
            },
        },
        "steps": out.steps,
    })
}
