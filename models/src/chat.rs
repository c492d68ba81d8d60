//! Chat templates: the Jinja templates shipped in `tokenizer_config.json` or GGUF
//! metadata, rendered with minijinja the way transformers renders them.
//!
//! A template is code from the file's author, so rendering is bounded: a step budget
//! (minijinja's fuel) stops loops that never end, and output beyond
//! [`MAX_RENDERED_BYTES`] stops the render, both with an error naming the template.

use crate::{Error, Result};
use minijinja::{context, Environment, ErrorKind};

/// Template instructions one render may run. Real templates use a few hundred per
/// message.
pub const MAX_TEMPLATE_STEPS: u64 = 5_000_000;
/// Longest rendered prompt, far past any model's context.
pub const MAX_RENDERED_BYTES: usize = 16 << 20;

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
            "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}";
        let err = render(endless, &msgs, "", "").unwrap_err().to_string();
        assert!(err.contains("steps"), "{err}");
        let huge = "{% for a in range(100000) %}{{ 'x' * 10000 }}{% endfor %}";
        let err = render(huge, &msgs, "", "").unwrap_err().to_string();
        assert!(err.contains("MiB"), "{err}");
    }
}
