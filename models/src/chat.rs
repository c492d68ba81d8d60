//! Chat templates: the Jinja templates shipped in `tokenizer_config.json` or GGUF
//! metadata, rendered with minijinja the way transformers renders them.

use crate::{Error, Result};
use minijinja::{context, Environment, ErrorKind};

/// Renders a template for `messages` with the generation prompt appended.
pub fn render(
    template: &str,
    messages: &[(String, String)],
    bos: &str,
    eos: &str,
) -> Result<String> {
    let mut env = Environment::new();
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
    tmpl.render(context! {
        messages => msgs,
        add_generation_prompt => true,
        bos_token => bos,
        eos_token => eos,
    })
    .map_err(|e| Error::ChatTemplate(format!("cannot render: {e}")))
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
}
