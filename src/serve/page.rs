//! The web view at `GET /`: one page (HTML, CSS and JavaScript written for this
//! project, embedded in the binary) that sends prompts to the server's own API with
//! `tutti: {"explain": true}` and shows the streamed tokens coloured by the member that
//! carried each one, with each token's details on hover or tap.
//!
//! The page and its two assets need no key (they hold nothing of the server's); the
//! page then asks `GET /ui/config` (the ensemble's members, their weights and the
//! server's defaults), which needs the key like every API endpoint, and asks the user
//! for the key when it gets a 401.

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::AppState;
use crate::engine::{Ensemble, Request, Sampling};

const INDEX_HTML: &str = include_str!("web/index.html");
const APP_JS: &str = include_str!("web/app.js");
const APP_CSS: &str = include_str!("web/app.css");

/// The page's paths that need no key.
pub fn is_public(path: &str) -> bool {
    matches!(path, "/" | "/ui/app.js" | "/ui/app.css")
}

/// What `GET /ui/config` answers: the ensemble's name, its members and the settings a
/// request starts from.
pub fn config(name: &str, ensemble: &Ensemble, template: &Request, max_tokens_cap: usize) -> Value {
    json!({
        "name": name,
        "members": ensemble.members().iter().enumerate().map(|(slot, m)| json!({
            "slot": slot,
            "name": m.name(),
            "weight": m.weight(),
        })).collect::<Vec<_>>(),
        "defaults": {
            "top_k": template.top_k,
            "gate": template.gate.to_string(),
            "combine": template.combine.to_string(),
            "max_tokens": template.max_tokens.min(max_tokens_cap),
            "temperature": match template.sampling {
                Sampling::Greedy => 0.0,
                Sampling::Sample { temperature, .. } => temperature,
            },
        },
        "max_tokens_cap": max_tokens_cap,
    })
}

/// Headers of every page response: scripts, styles and requests from this server only.
fn page_response(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                 img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

pub async fn index() -> Response {
    page_response("text/html; charset=utf-8", INDEX_HTML)
}

pub async fn app_js() -> Response {
    page_response("text/javascript; charset=utf-8", APP_JS)
}

pub async fn app_css() -> Response {
    page_response("text/css; charset=utf-8", APP_CSS)
}

pub async fn config_json(State(s): State<Arc<AppState>>) -> Response {
    super::json_response(axum::http::StatusCode::OK, &s.page)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_only_its_own_assets() {
        assert!(INDEX_HTML.contains("/ui/app.js") && INDEX_HTML.contains("/ui/app.css"));
        for text in [INDEX_HTML, APP_JS, APP_CSS] {
            assert!(!text.contains("http://") && !text.contains("https://"));
            assert!(
                !text.contains("<script>"),
                "no inline script (the CSP forbids it)"
            );
        }
        assert!(is_public("/") && is_public("/ui/app.js"));
        assert!(!is_public("/ui/config") && !is_public("/v1/models"));
    }
}
