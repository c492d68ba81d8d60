//! Progress of long bench runs on stderr (`tutti bench`, route training and its
//! evaluation): a bar on a terminal, a log line per tenth of the items otherwise.

use std::io::IsTerminal;
use std::time::Instant;

use tutti::bench::runner::Progress;

/// Progress on stderr: a bar with ETA and the running score on a terminal, a line per
/// tenth of the items otherwise (logs).
pub(crate) struct Reporter {
    bar: Option<indicatif::ProgressBar>,
    started: Instant,
}

impl Reporter {
    pub(crate) fn new(system: &str, total: usize) -> Reporter {
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = indicatif::ProgressBar::new(total as u64);
            let style = indicatif::ProgressStyle::with_template(
                "{prefix:>24} [{bar:30}] {pos}/{len} {elapsed_precise} ETA {eta} {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> ");
            b.set_style(style);
            b.set_prefix(system.to_string());
            b
        });
        Reporter {
            bar,
            started: Instant::now(),
        }
    }

    pub(crate) fn update(&self, p: &Progress, score_name: &str) {
        let msg = format!("{score_name} {:.3}", p.running);
        match &self.bar {
            Some(b) => {
                b.set_position(p.done as u64);
                b.set_message(msg);
            }
            None => {
                let step = (p.total / 10).max(1);
                if p.done.is_multiple_of(step) || p.done == p.total {
                    let el = self.started.elapsed().as_secs_f64();
                    let fresh = p.done - p.reused;
                    let eta = if fresh > 0 {
                        el / fresh as f64 * (p.total - p.done) as f64
                    } else {
                        0.0
                    };
                    tracing::info!(
                        "{}: {}/{} ({} resumed), {msg}, {el:.0} s, ETA {eta:.0} s",
                        p.system,
                        p.done,
                        p.total,
                        p.reused
                    );
                }
            }
        }
    }

    pub(crate) fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish();
        }
    }
}
