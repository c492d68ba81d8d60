//! Route systems in the bench: a route policy answers every item of a task, one row per
//! item in the same results file as the members and the token-level ensemble, with the
//! parameters it invoked and its time (DER's cost columns).

use sha2::{Digest, Sha256};

use super::runner::{run_items, ItemRow, Pass, Progress, ResultsFile};
use super::{BenchError, Task};
use crate::route::{Policy, PolicySpec, RouteContext, RouteError, RouteQuestion, RouteSettings};

impl From<RouteError> for BenchError {
    fn from(e: RouteError) -> BenchError {
        match e {
            RouteError::Engine(e) => BenchError::Engine(e),
            other => BenchError::Route(other.to_string()),
        }
    }
}

/// The display name of a route system.
pub fn system_name(spec: &PolicySpec) -> String {
    format!("route {spec}")
}

/// The route questions of `task`'s items.
pub fn questions(task: &Task) -> Vec<RouteQuestion> {
    let chat = task.decode.mode == super::PromptMode::Chat;
    task.items
        .iter()
        .map(|i| RouteQuestion::from_prompt(&i.prompt, chat))
        .collect()
}

/// Hash of what shapes a route's outputs: the task, the members, the policy (a policy
/// file by content), the encoder and the route settings.
pub fn config_hash(
    ctx: &RouteContext,
    task: &Task,
    spec: &PolicySpec,
    settings: &RouteSettings,
) -> Result<String, BenchError> {
    let mut h = Sha256::new();
    h.update(format!("route\0{}\0{}\0{:?}\0", task.name, task.config, task.decode).as_bytes());
    for m in ctx.ensemble().members() {
        match m.info() {
            Some(info) => h.update(format!("{}\0{}\0", info.name, info.weights_fingerprint)),
            None => h.update(format!("{}\0", m.name())),
        }
    }
    h.update(format!("{spec}\0{}\0{}\0", settings.max_steps, settings.stop_at).as_bytes());
    if let PolicySpec::Learned(p) | PolicySpec::Best(Some(p)) = spec {
        let bytes = std::fs::read(p)
            .map_err(|e| BenchError::Route(format!("policy file {}: {e}", p.display())))?;
        h.update(Sha256::digest(&bytes));
    }
    if let Some(enc) = ctx.encoder() {
        h.update(enc.fingerprint().as_bytes());
    }
    Ok(h.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// Runs `policy` over every item of `task`; rows already in `results` for the same
/// configuration are reused.
pub fn run_policy(
    ctx: &mut RouteContext,
    spec: &PolicySpec,
    policy: &mut Policy,
    settings: &RouteSettings,
    task: &mut Task,
    results: Option<&mut ResultsFile>,
    on_progress: &mut dyn FnMut(&Progress),
) -> Result<Vec<ItemRow>, BenchError> {
    let name = system_name(spec);
    let config = config_hash(ctx, task, spec, settings)?;
    let questions = questions(task);
    let pass = Pass {
        name: &name,
        config: &config,
        results,
        reuse: &|_: &mut ItemRow| {},
        on_progress,
    };
    run_items(task, pass, &mut |n, _, row| {
        let out = ctx.run(policy, &questions[n], settings, &mut |_| {})?;
        row.time_ms = out.ms;
        row.steps = out.steps.len();
        row.parameters = Some(out.parameters);
        row.route = Some(out.steps.iter().map(|s| s.name.clone()).collect());
        row.output = out.answer;
        Ok(())
    })
}
