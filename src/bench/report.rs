//! The end of a bench run: one [`SystemSummary`] per system computed from its rows
//! (so a resumed run reports the same numbers), printed as a table, and optionally a
//! Markdown report with an SVG plot of quality against decode speed.

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use super::metrics::{mean_ci, wilson, Estimate};
use super::runner::ItemRow;
use super::BenchError;
use crate::durable::write_atomic;

/// Quality and speed of one system over a task.
#[derive(Clone, Debug, Serialize)]
pub struct SystemSummary {
    pub system: String,
    pub items: usize,
    /// `accuracy` for exact-match tasks, else the task's metrics, each with a 95% CI.
    pub metrics: Vec<(String, Estimate)>,
    pub tokens: usize,
    /// Generated tokens per second of generation wall time (prompt processing included).
    pub tokens_per_s: f64,
    /// Milliseconds per decoded token after the first (prompt processing excluded).
    pub ms_per_token: f64,
    /// Share of steps where several members were consulted (the ensemble only).
    pub gate_share: Option<f64>,
    pub rollbacks: Option<usize>,
    /// Mean parameters invoked per item (when the rows know them).
    pub parameters_per_item: Option<f64>,
    /// Mean generation wall time per item, s.
    pub s_per_item: f64,
}

impl SystemSummary {
    /// `metric_names` empty means exact match (rows carry `correct`).
    pub fn from_rows(system: &str, rows: &[ItemRow], metric_names: &[String]) -> SystemSummary {
        let metrics = if metric_names.is_empty() {
            let k = rows.iter().filter(|r| r.correct == Some(true)).count();
            vec![("accuracy".to_string(), wilson(k, rows.len()))]
        } else {
            metric_names
                .iter()
                .map(|m| {
                    let xs: Vec<f64> = rows
                        .iter()
                        .filter_map(|r| r.metrics.get(m))
                        .copied()
                        .collect();
                    (m.clone(), mean_ci(&xs))
                })
                .collect()
        };
        let tokens: usize = rows.iter().map(|r| r.tokens).sum();
        let time_ms: f64 = rows.iter().map(|r| r.time_ms).sum();
        let decode_ms: f64 = rows.iter().map(|r| r.decode_ms).sum();
        let decode_tokens: usize = rows.iter().map(|r| r.decode_tokens).sum();
        let steps: usize = rows.iter().map(|r| r.steps).sum();
        let ensemble = system == "ensemble";
        SystemSummary {
            system: system.to_string(),
            items: rows.len(),
            metrics,
            tokens,
            tokens_per_s: if time_ms > 0.0 {
                tokens as f64 * 1e3 / time_ms
            } else {
                0.0
            },
            ms_per_token: if decode_tokens > 0 {
                decode_ms / decode_tokens as f64
            } else {
                0.0
            },
            gate_share: ensemble.then(|| {
                let e: usize = rows.iter().map(|r| r.ensembled_steps).sum();
                if steps > 0 {
                    e as f64 / steps as f64
                } else {
                    0.0
                }
            }),
            rollbacks: ensemble.then(|| rows.iter().map(|r| r.rollbacks).sum()),
            parameters_per_item: rows
                .iter()
                .map(|r| r.parameters)
                .sum::<Option<u64>>()
                .filter(|_| !rows.is_empty())
                .map(|p| p as f64 / rows.len() as f64),
            s_per_item: if rows.is_empty() {
                0.0
            } else {
                time_ms / 1e3 / rows.len() as f64
            },
        }
    }

    /// The headline number (first metric).
    pub fn quality(&self) -> f64 {
        self.metrics.first().map_or(0.0, |m| m.1.mean)
    }
}

fn fmt_estimate(name: &str, e: &Estimate) -> String {
    if name == "accuracy" {
        format!(
            "{:.1}% [{:.1}, {:.1}]",
            100.0 * e.mean,
            100.0 * e.lo,
            100.0 * e.hi
        )
    } else {
        format!("{:.4} [{:.4}, {:.4}]", e.mean, e.lo, e.hi)
    }
}

/// `135M`, `1.2B`.
fn fmt_parameters(p: f64) -> String {
    if p >= 1e9 {
        format!("{:.2}B", p / 1e9)
    } else {
        format!("{:.0}M", p / 1e6)
    }
}

fn columns(summaries: &[SystemSummary]) -> (Vec<String>, Vec<Vec<String>>) {
    let mut head = vec!["system".to_string()];
    if let Some(s) = summaries.first() {
        head.extend(s.metrics.iter().map(|(n, _)| format!("{n} (95% CI)")));
    }
    head.extend(
        [
            "items",
            "tokens",
            "tokens/s",
            "ms/token",
            "gate",
            "rollbacks",
            "params/item",
            "s/item",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    let body = summaries
        .iter()
        .map(|s| {
            let mut row = vec![s.system.clone()];
            row.extend(s.metrics.iter().map(|(n, e)| fmt_estimate(n, e)));
            row.push(s.items.to_string());
            row.push(s.tokens.to_string());
            row.push(format!("{:.1}", s.tokens_per_s));
            row.push(if s.ms_per_token > 0.0 {
                format!("{:.2}", s.ms_per_token)
            } else {
                "-".into()
            });
            row.push(
                s.gate_share
                    .map_or("-".into(), |g| format!("{:.1}%", 100.0 * g)),
            );
            row.push(s.rollbacks.map_or("-".into(), |r| r.to_string()));
            row.push(s.parameters_per_item.map_or("-".into(), fmt_parameters));
            row.push(format!("{:.2}", s.s_per_item));
            row
        })
        .collect();
    (head, body)
}

/// A plain-text table, columns aligned.
pub fn text_table(summaries: &[SystemSummary]) -> String {
    let (head, body) = columns(summaries);
    let mut widths: Vec<usize> = head.iter().map(|h| h.chars().count()).collect();
    for row in &body {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &[String]| {
        cells
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (c, w))| {
                if i == 0 {
                    format!("{c:<w$}")
                } else {
                    format!("{c:>w$}")
                }
            })
            .collect::<Vec<_>>()
            .join("  ")
    };
    let mut out = line(&head) + "\n";
    for row in &body {
        out += &(line(row) + "\n");
    }
    out
}

/// The Markdown report: header facts, the table, the plot.
pub fn markdown(
    title: &str,
    facts: &[(String, String)],
    summaries: &[SystemSummary],
    svg_name: &str,
) -> String {
    let (head, body) = columns(summaries);
    let mut md = format!("# {title}\n\n");
    for (k, v) in facts {
        let _ = writeln!(md, "- {k}: {v}");
    }
    md += "\n| ";
    md += &head.join(" | ");
    md += " |\n|";
    md += &head
        .iter()
        .enumerate()
        .map(|(i, _)| if i == 0 { "---" } else { "---:" })
        .collect::<Vec<_>>()
        .join("|");
    md += "|\n";
    for row in &body {
        md += "| ";
        md += &row.join(" | ");
        md += " |\n";
    }
    let _ = write!(
        md,
        "\nms/token: decoding after the first token; tokens/s: generated tokens over \
         generation wall time (prompt processing included); gate: share of steps where \
         more than one member was consulted; params/item: parameters invoked per item (a \
         member's, the sum of the ensemble's members, the sum over a route's steps); \
         s/item: generation wall time per item.\n\n![quality against ms/token]({svg_name})\n"
    );
    md
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A scatter plot: x = ms/token, y = the headline metric with its 95% interval (systems
/// that decode no tokens of their own, routes, are left out).
pub fn svg_plot(summaries: &[SystemSummary]) -> String {
    let summaries: Vec<SystemSummary> = summaries
        .iter()
        .filter(|s| s.ms_per_token > 0.0)
        .cloned()
        .collect();
    let summaries = summaries.as_slice();
    let (w, h) = (640.0f64, 400.0f64);
    let (left, right, top, bottom) = (70.0, 30.0, 30.0, 55.0);
    let metric = summaries
        .first()
        .and_then(|s| s.metrics.first())
        .map_or("quality".to_string(), |m| m.0.clone());
    let x_max = summaries
        .iter()
        .map(|s| s.ms_per_token)
        .fold(0.0f64, f64::max)
        .max(1e-9)
        * 1.15;
    let y_hi = summaries
        .iter()
        .filter_map(|s| s.metrics.first().map(|m| m.1.hi))
        .fold(0.0f64, f64::max);
    let y_max = if metric == "accuracy" {
        1.0
    } else {
        (y_hi * 1.15).max(1e-9)
    };
    let px = |x: f64| left + (x / x_max) * (w - left - right);
    let py = |y: f64| h - bottom - (y / y_max) * (h - top - bottom);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" \
         font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    );
    // Axes and ticks.
    let _ = writeln!(
        s,
        "<line x1=\"{left}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\n\
         <line x1=\"{left}\" y1=\"{top}\" x2=\"{left}\" y2=\"{}\" stroke=\"black\"/>",
        h - bottom,
        w - right,
        h - bottom,
        h - bottom
    );
    for i in 0..=5 {
        let xv = x_max * i as f64 / 5.0;
        let yv = y_max * i as f64 / 5.0;
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{:.1}</text>\n\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{:.2}</text>\n\
             <line x1=\"{left}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"#ddd\"/>",
            px(xv),
            h - bottom + 18.0,
            xv,
            left - 6.0,
            py(yv) + 4.0,
            yv,
            py(yv),
            w - right,
            py(yv)
        );
    }
    let _ = writeln!(
        s,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">ms/token (decode)</text>\n\
         <text x=\"16\" y=\"{:.1}\" text-anchor=\"middle\" transform=\"rotate(-90 16 {:.1})\">{}</text>",
        (left + w - right) / 2.0,
        h - 12.0,
        (top + h - bottom) / 2.0,
        (top + h - bottom) / 2.0,
        esc(&metric)
    );
    let colors = [
        "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
    ];
    for (i, sm) in summaries.iter().enumerate() {
        let Some((_, e)) = sm.metrics.first() else {
            continue;
        };
        let c = if sm.system == "ensemble" {
            "#000000"
        } else {
            colors[i % colors.len()]
        };
        let (x, y) = (px(sm.ms_per_token), py(e.mean));
        let _ = writeln!(
            s,
            "<line x1=\"{x:.1}\" y1=\"{:.1}\" x2=\"{x:.1}\" y2=\"{:.1}\" stroke=\"{c}\"/>\n\
             <circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"5\" fill=\"{c}\"/>\n\
             <text x=\"{:.1}\" y=\"{:.1}\" fill=\"{c}\">{}</text>",
            py(e.lo),
            py(e.hi),
            x + 8.0,
            y - 6.0,
            esc(&sm.system)
        );
    }
    s += "</svg>\n";
    s
}

/// Writes `path` (Markdown) and the plot beside it (same stem, `.svg`).
pub fn write_report(
    path: &Path,
    title: &str,
    facts: &[(String, String)],
    summaries: &[SystemSummary],
) -> Result<(), BenchError> {
    let err = |e: std::io::Error| BenchError::Out {
        path: path.display().to_string(),
        reason: e.to_string(),
    };
    let svg_path = path.with_extension("svg");
    let svg_name = svg_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "plot.svg".into());
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    write_atomic(&svg_path, svg_plot(summaries).as_bytes()).map_err(err)?;
    write_atomic(
        path,
        markdown(title, facts, summaries, &svg_name).as_bytes(),
    )
    .map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// Two runs writing one report at the same time each leave a whole file.
    #[test]
    fn concurrent_report_writes_all_succeed() {
        let dir = std::env::temp_dir().join(format!("tutti-report-race-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("report.md");
        let texts: Vec<Vec<u8>> = (0..6u8).map(|i| vec![b'a' + i; 300_000]).collect();
        std::thread::scope(|s| {
            let handles: Vec<_> = texts
                .iter()
                .map(|t| {
                    let path = &path;
                    s.spawn(move || {
                        (0..10)
                            .map(|_| write_atomic(path, t).map_err(|e| e.to_string()))
                            .collect::<Result<Vec<()>, String>>()
                    })
                })
                .collect();
            for h in handles {
                h.join().unwrap().unwrap();
            }
        });
        assert!(texts.contains(&std::fs::read(&path).unwrap()));
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn row(system: &str, ok: bool, tokens: usize, time_ms: f64) -> ItemRow {
        ItemRow {
            task: "gsm8k".into(),
            id: "x".into(),
            system: system.into(),
            config: "c".into(),
            prompt_hash: "h".into(),
            output: String::new(),
            extracted: String::new(),
            correct: Some(ok),
            metrics: BTreeMap::new(),
            tokens,
            time_ms,
            decode_ms: time_ms / 2.0,
            decode_tokens: tokens - 1,
            steps: tokens,
            ensembled_steps: tokens / 2,
            rollbacks: 1,
            parameters: Some(135_000_000),
            route: None,
        }
    }

    #[test]
    fn summaries_tables_and_plot() {
        let rows = vec![
            row("ensemble", true, 5, 100.0),
            row("ensemble", false, 3, 60.0),
        ];
        let s = SystemSummary::from_rows("ensemble", &rows, &[]);
        assert_eq!(s.items, 2);
        assert_eq!(s.metrics[0].1.mean, 0.5);
        assert_eq!(s.tokens, 8);
        assert!((s.tokens_per_s - 50.0).abs() < 1e-9);
        assert!((s.ms_per_token - 80.0 / 6.0).abs() < 1e-9);
        assert_eq!(s.gate_share, Some(3.0 / 8.0));
        assert_eq!(s.parameters_per_item, Some(135e6));
        assert!((s.s_per_item - 0.08).abs() < 1e-9);
        assert_eq!(s.rollbacks, Some(2));
        let m = SystemSummary::from_rows("a.gguf", &rows[..1], &[]);
        assert_eq!((m.gate_share, m.rollbacks), (None, None));
        let t = text_table(&[m.clone(), s.clone()]);
        assert!(t.contains("accuracy (95% CI)") && t.contains("50.0% ["));
        assert_eq!(t.lines().count(), 3);
        let svg = svg_plot(&[m.clone(), s.clone()]);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<circle").count(), 2);
        let md = markdown("t", &[("k".into(), "v".into())], &[m, s], "p.svg");
        assert!(md.contains("| ensemble |") && md.contains("![quality against ms/token](p.svg)"));
    }
}
