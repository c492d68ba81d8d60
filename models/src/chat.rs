//! Chat templates: the Jinja templates shipped in `tokenizer_config.json` or GGUF
//! metadata, rendered with minijinja the way transformers renders them.
//!
//! A template is code from the file's author, so rendering is bounded: a step budget
//! (minijinja's fuel) stops loops that never end, output beyond
//! [`MAX_RENDERED_BYTES`] stops the render, and `range()` draws at most
//! [`MAX_RANGE_ELEMENTS`] elements per render, each with an error naming the template.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use crate::{Error, Result};
use minijinja::{context, Environment, ErrorKind, Value};

/// Template instructions one render may run. Real templates use a few hundred per
/// message.
pub const MAX_TEMPLATE_STEPS: u64 = 5_000_000;
/// Longest rendered prompt, far past any model's context.
pub const MAX_RENDERED_BYTES: usize = 16 << 20;

/// Elements one render may draw from `range()`, over all its calls and iterations.
/// Fuel counts instructions, and a membership test or filter over a range is one
/// instruction however long the range, so a range tested inside a loop over another
/// does 10^10 steps of work on little fuel. Real templates range over their messages.
pub const MAX_RANGE_ELEMENTS: u64 = 1_000_000;
/// Longest single range, as minijinja's own `range`.
const MAX_RANGE_LEN: i128 = 100_000;

/// What is left of a render's [`MAX_RANGE_ELEMENTS`].
struct RangeBudget {
    left: AtomicU64,
    exceeded: AtomicBool,
}

/// A range's elements, each taken from the render's budget; it ends early (and marks
/// the budget exceeded) when the budget runs out.
struct Metered {
    next: i128,
    step: i128,
    left: usize,
    budget: Arc<RangeBudget>,
}

impl Iterator for Metered {
    type Item = i64;
    fn next(&mut self) -> Option<i64> {
        if self.left == 0 {
            return None;
        }
        let took = self
            .budget
            .left
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        if took.is_err() {
            self.budget.exceeded.store(true, Ordering::Relaxed);
            self.left = 0;
            return None;
        }
        let v = self.next;
        self.next += self.step;
        self.left -= 1;
        i64::try_from(v).ok()
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

/// Python's `range(stop)`, `range(start, stop)`, `range(start, stop, step)`, metered.
fn metered_range(
    budget: &Arc<RangeBudget>,
    a: i64,
    b: Option<i64>,
    step: Option<i64>,
) -> std::result::Result<Value, minijinja::Error> {
    let (start, stop) = match b {
        Some(stop) => (i128::from(a), i128::from(stop)),
        None => (0, i128::from(a)),
    };
    let step = i128::from(step.unwrap_or(1));
    let len = match step {
        0 => {
            return Err(minijinja::Error::new(
                ErrorKind::InvalidOperation,
                "cannot create range with step of 0",
            ))
        }
        s if s > 0 && start < stop => (stop - start + s - 1) / s,
        s if s < 0 && start > stop => (start - stop - s - 1) / -s,
        _ => 0,
    };
    if len > MAX_RANGE_LEN {
        return Err(minijinja::Error::new(
            ErrorKind::InvalidOperation,
            "range has too many elements",
        ));
    }
    let budget = budget.clone();
    let len = len as usize;
    Ok(Value::make_iterable(move || Metered {
        next: start,
        step,
        left: len,
        budget: budget.clone(),
    }))
}

/// An `io::Write` that refuses to grow past a limit.
struct Bounded {
    out: Vec<u8>,
    limit: usize,
    overflowed: bool,
}

impl std::io::Write for Bounded {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.out.len() + buf.len() > self.limit {
            self.overflowed = true;
            return Err(std::io::Error::other("output limit"));
        }
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Renders a template for `messages` with the generation prompt appended.
pub fn render(
    template: &str,
    messages: &[(String, String)],
    bos: &str,
    eos: &str,
) -> Result<String> {
    let mut env = Environment::new();
    env.set_fuel(Some(MAX_TEMPLATE_STEPS));
    // transformers renders with trim_blocks and lstrip_blocks on.
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function(
        "raise_exception",
        |msg: String| -> std::result::Result<String, minijinja::Error> {
            Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
        },
    );
    env.add_function("strftime_now", |_fmt: String| -> String {
        // Templates use it for a "today" line; a fixed date keeps outputs reproducible.
        "01 Jan 2025".to_string()
    });
    let budget = Arc::new(RangeBudget {
        left: AtomicU64::new(MAX_RANGE_ELEMENTS),
        exceeded: AtomicBool::new(false),
    });
    let range_budget = budget.clone();
    env.add_function("range", move |a: i64, b: Option<i64>, step: Option<i64>| {
        metered_range(&range_budget, a, b, step)
    });
    env.add_template("chat", template)
        .map_err(|e| Error::ChatTemplate(format!("cannot parse: {e}")))?;
    let tmpl = env
        .get_template("chat")
        .map_err(|e| Error::ChatTemplate(e.to_string()))?;
    let msgs: Vec<_> = messages
        .iter()
        .map(|(role, content)| context! { role => role, content => content })
        .collect();
    let mut out = Bounded {
        out: Vec::new(),
        limit: MAX_RENDERED_BYTES,
        overflowed: false,
    };
    let rendered = tmpl.render_captured_to(
        context! {
            messages => msgs,
            add_generation_prompt => true,
            bos_token => bos,
            eos_token => eos,
        },
        &mut out,
    );
    if budget.exceeded.load(Ordering::Relaxed) {
        return Err(Error::ChatTemplate(format!(
            "cannot render: the template drew more than {MAX_RANGE_ELEMENTS} elements from range() (a range tested or looped inside another loop?)"
        )));
    }
    match rendered {
        Ok(_) => String::from_utf8(out.out)
            .map_err(|_| Error::ChatTemplate("rendered text is not UTF-8".into())),
        Err(_) if out.overflowed => Err(Error::ChatTemplate(format!(
            "cannot render: the output passed {} MiB, the template is broken",
            MAX_RENDERED_BYTES >> 20
        ))),
        Err(e) if e.kind() == ErrorKind::OutOfFuel => Err(Error::ChatTemplate(format!(
            "cannot render: the template ran more than {MAX_TEMPLATE_STEPS} steps (an endless loop?)"
        ))),
        Err(e) => Err(Error::ChatTemplate(format!("cannot render: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_chatml() {
        let t = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] | trim }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";
        let out = render(t, &[("user".into(), " hi ".into())], "", "").unwrap();
        assert_eq!(
            out,
            "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn python_methods_and_exceptions() {
        let t = "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('no system') }}{% endif %}{{ messages[0]['content'].strip() }}";
        assert_eq!(
            render(t, &[("user".into(), " x ".into())], "<s>", "").unwrap(),
            "<s>x"
        );
        let err = render(t, &[("system".into(), "x".into())], "", "")
            .unwrap_err()
            .to_string();
        assert!(err.contains("no system"), "{err}");
    }

    #[test]
    fn endless_and_huge_templates_are_stopped() {
        let msgs = [("user".to_string(), "hi".to_string())];
        let endless =
            "{% for a in 'x' * 100000 %}{% for b in 'x' * 100000 %}{% endfor %}{% endfor %}";
        let err = render(endless, &msgs, "", "").unwrap_err().to_string();
        assert!(err.contains("steps"), "{err}");
        let nested =
            "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}";
        let err = render(nested, &msgs, "", "").unwrap_err().to_string();
        assert!(err.contains("range()"), "{err}");
        let huge = "{% for a in range(100000) %}{{ 'x' * 10000 }}{% endfor %}";
        let err = render(huge, &msgs, "", "").unwrap_err().to_string();
        assert!(err.contains("MiB"), "{err}");
    }

    #[test]
    fn a_range_tested_inside_a_loop_is_stopped() {
        let msgs = [("user".to_string(), "hi".to_string())];
        // A membership test is one step of fuel whatever the range's length.
        let quadratic =
            "{% for a in range(100000) %}{% if a in range(100000) %}x{% endif %}{% endfor %}";
        let t = std::time::Instant::now();
        let err = render(quadratic, &msgs, "", "").unwrap_err().to_string();
        assert!(err.contains("range()"), "{err}");
        assert!(t.elapsed().as_secs() < 10, "{:?}", t.elapsed());
        let materialised = "{% set r = range(100000) | list %}{% for a in range(20) %}{{ r | length }}{% endfor %}";
        assert!(render(materialised, &msgs, "", "").is_ok());
    }

    #[test]
    fn range_behaves_like_pythons() {
        let msgs = [("user".to_string(), "hi".to_string())];
        let r = |t: &str| render(t, &msgs, "", "").unwrap();
        assert_eq!(r("{{ range(4) | join(',') }}"), "0,1,2,3");
        assert_eq!(r("{{ range(2, 5) | join(',') }}"), "2,3,4");
        assert_eq!(r("{{ range(1, 10, 4) | join(',') }}"), "1,5,9");
        assert_eq!(r("{{ range(5, 0, -2) | join(',') }}"), "5,3,1");
        assert_eq!(
            r("{{ range(3, 3) | join(',') }}|{{ range(-2) | length }}"),
            "|0"
        );
        assert_eq!(
            r("{% for i in range(3) %}{{ loop.index }}/{{ loop.length }} {% endfor %}"),
            "1/3 2/3 3/3 "
        );
        assert_eq!(r("{{ 2 in range(4) }} {{ 7 in range(4) }}"), "True False");
        let err = render("{{ range(1, 2, 0) }}", &msgs, "", "")
            .unwrap_err()
            .to_string();
        assert!(err.contains("step of 0"), "{err}");
        let err = render("{{ range(1000000) | length }}", &msgs, "", "")
            .unwrap_err()
            .to_string();
        assert!(err.contains("too many elements"), "{err}");
    }
}
