//! Log lines and error lines on stderr: `tutti: message` for information,
//! `tutti: warning: message` for warnings, filtered by `-v`/`-q` or `RUST_LOG`.

use std::fmt;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

struct Plain;

impl<S, N> FormatEvent<S, N> for Plain
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let level = *event.metadata().level();
        write!(writer, "tutti: ")?;
        if level == Level::ERROR {
            write!(writer, "error: ")?;
        } else if level == Level::WARN {
            write!(writer, "warning: ")?;
        } else if level > Level::INFO {
            write!(writer, "{}: ", level.as_str().to_ascii_lowercase())?;
        }
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

/// Installs the stderr logger: tutti's own crates at info (debug with `-v`, trace with
/// `-vv`, warnings only with `-q`), other crates at warnings; `RUST_LOG` wins.
pub fn init(verbose: u8, quiet: bool) {
    let ours = match (quiet, verbose) {
        (true, _) => "warn",
        (false, 0) => "info",
        (false, 1) => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new(format!(
            "warn,tutti={ours},tutti_models={ours},tutti_kernels={ours}"
        ))
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .event_format(Plain)
        .try_init();
}

/// An error and its causes on one line, joined by ": ", each cause once: a cause whose
/// text already ends the line so far (error types that print their source inside their
/// own message) is not repeated.
pub fn error_line(err: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        let text = text.trim();
        if text.is_empty() || line.ends_with(text) || line.contains(text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(text);
    }
    if let Some(advice) = advice(err) {
        line.push_str("; ");
        line.push_str(advice);
    }
    line
}

/// What to do about an engine error, in the command line's terms (the library's
/// messages name only the problem).
fn advice(err: &anyhow::Error) -> Option<&'static str> {
    use tutti::engine::EngineError;
    let template = err.chain().any(|c| {
        matches!(
            c.downcast_ref::<tutti::models::Error>(),
            Some(tutti::models::Error::ChatTemplate(_))
        )
    });
    if template {
        return Some("--raw skips the template");
    }
    match err.chain().find_map(|c| c.downcast_ref::<EngineError>())? {
        EngineError::NoMembers => Some("pass -m MODEL or [[member]] in an ensemble file"),
        EngineError::EmptyPrompt => Some("pass a prompt argument or pipe text on stdin"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_adds_the_flag_to_change() {
        let e = anyhow::Error::from(tutti::engine::EngineError::EmptyPrompt);
        assert_eq!(
            error_line(&e),
            "the prompt is empty; pass a prompt argument or pipe text on stdin"
        );
        let e = anyhow::Error::from(tutti::engine::EngineError::Model {
            member: "m".into(),
            source: tutti::models::Error::ChatTemplate("no template".into()),
        });
        assert!(
            error_line(&e).ends_with("; --raw skips the template"),
            "{}",
            error_line(&e)
        );
        let e = anyhow::anyhow!("other");
        assert_eq!(error_line(&e), "other");
    }

    #[derive(Debug, thiserror::Error)]
    #[error("member `x`: {source}")]
    struct Outer {
        #[source]
        source: Inner,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("x: not a valid GGUF file (truncated); download it again")]
    struct Inner;

    #[test]
    fn each_cause_once() {
        let err = anyhow::Error::new(Outer { source: Inner });
        assert_eq!(
            error_line(&err),
            "member `x`: x: not a valid GGUF file (truncated); download it again"
        );
        let err = anyhow::Error::new(Inner).context("loading model `x`");
        assert_eq!(
            error_line(&err),
            "loading model `x`: x: not a valid GGUF file (truncated); download it again"
        );
    }
}
