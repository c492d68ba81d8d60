//! The web view of `tutti serve` (`GET /`) in a real headless Chromium, against a real
//! server with the demo pair: it generates, the tokens come out coloured by member,
//! hovering and tapping show each token's details, the page works at phone width and
//! in dark mode, copies the request as curl, and asks for the API key when the server
//! has one. Screenshots land in the cargo target's temporary folder (the one in
//! `docs/` is a copy of `web-view.png`).
//!
//! Chromium must be installed (`scripts/chromium.sh`); without it these tests fail.

mod browser_support;
mod serve_support;

use browser_support::Browser;
use serde_json::{json, Value};
use serve_support::{get, post, ServerProc};

const PROMPT: &str = "The three most important inventions of the twentieth century are";
const TOKENS: usize = 24;

fn screenshot_path(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(name)
}

/// Facts about the output the assertions read, gathered in the page.
const TOKEN_FACTS: &str = r#"(() => {
  const toks = [...document.querySelectorAll('#out .tok:not(.eos)')];
  const colour = (sel) => { const e = document.querySelector(sel); return e ? getComputedStyle(e).color : null; };
  return {
    n: toks.length,
    text: toks.map((t) => t.textContent).join(''),
    marked: toks.every((t) => t.classList.contains('agree') || t.classList.contains('lead')),
    lead: toks.filter((t) => t.classList.contains('lead')).length,
    agree: toks.filter((t) => t.classList.contains('agree')).length,
    m0: colour('#out .tok.lead.m0'),
    m1: colour('#out .tok.lead.m1'),
    grey: colour('#out .tok.agree'),
    bars: document.querySelectorAll('#agreement .arow').length,
    status: document.getElementById('status').textContent,
  };
})()"#;

#[test]
fn the_web_view_colours_tokens_and_shows_their_details() {
    let server = ServerProc::pair(&[]);
    let page = get(&server.url("/"), None);
    assert_eq!(page.status, 200);
    assert!(page.body.contains("/ui/app.js"), "{}", page.body);

    let mut b = Browser::launch();
    let tab = b.open(&server.url("/"), 1280, 900);
    b.colour_scheme(&tab, "light");
    b.wait_for(
        &tab,
        "document.querySelectorAll('#members .member').length === 2",
        30,
    );
    let names = b.eval(
        &tab,
        "[...document.querySelectorAll('#members .name')].map((e) => e.textContent)",
    );
    assert!(names.to_string().contains("SmolLM2"), "{names}");
    assert!(names.to_string().contains("gemma"), "{names}");

    // Raw mode, a fixed budget, greedy: typed and clicked as a user would.
    b.eval(&tab, "document.getElementById('mode').value = 'raw'");
    b.eval(
        &tab,
        &format!("document.getElementById('max_tokens').value = '{TOKENS}'"),
    );
    b.type_into(&tab, "#prompt", PROMPT);
    b.click_on(&tab, "#go");
    b.wait_for(&tab, "document.body.dataset.done === '1'", 600);

    let facts = b.eval(&tab, TOKEN_FACTS);
    let n = facts["n"].as_u64().unwrap_or(0) as usize;
    assert!(n >= TOKENS / 2, "{facts}");
    assert_eq!(facts["marked"], true, "every token is coloured: {facts}");
    assert!(
        facts["lead"].as_u64() > Some(0),
        "some token was carried by one member: {facts}"
    );
    assert_eq!(facts["bars"], 2, "one agreement bar per member: {facts}");
    // Member colours differ from each other and from the grey of agreement.
    let colours: Vec<&str> = ["m0", "m1", "grey"]
        .iter()
        .filter_map(|k| facts[*k].as_str())
        .collect();
    for (i, a) in colours.iter().enumerate() {
        for c in &colours[i + 1..] {
            assert_ne!(a, c, "{facts}");
        }
    }

    // Every token the page shows is in the text the stream returned (none was cut).
    assert_eq!(
        b.eval(&tab, "document.querySelectorAll('#out .tok.cut').length"),
        0
    );

    // The API gives the same records to any client: one per step, covering the text.
    let api = post(
        &server.url("/v1/completions"),
        &json!({"prompt": PROMPT, "max_tokens": TOKENS, "temperature": 0, "tutti": {"explain": true}}),
    );
    assert_eq!(api.status, 200, "{}", api.body);
    let api = api.json();
    let text = api["choices"][0]["text"].as_str().unwrap_or_default();
    let records = api["tutti"]["explain"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let bytes: Vec<u8> = records
        .iter()
        .flat_map(|r| r["chosen"]["bytes"].as_array().cloned().unwrap_or_default())
        .filter_map(|b| b.as_u64().map(|b| b as u8))
        .collect();
    assert!(bytes.starts_with(text.as_bytes()), "{api}");
    assert!(
        records
            .iter()
            .all(|r| r["members"].as_array().map(Vec::len) == Some(2)),
        "{api}"
    );

    // A real hover over a token a member carried (the last, so that the details do
    // not hide the text in the screenshot): each member's probability of it, each
    // member's own choice, the combined alternatives.
    let (x, y) = b.centre_last(&tab, "#out .tok.lead");
    b.hover(&tab, x, y);
    b.wait_for(&tab, "!document.getElementById('details').hidden", 10);
    let details = b.eval(
        &tab,
        r#"(() => {
          const d = document.getElementById('details');
          const rows = [...d.querySelectorAll('.members-table tbody tr')].map((r) => [...r.cells].map((c) => c.textContent));
          const r = d.getBoundingClientRect();
          return {rows, alts: d.querySelectorAll('.alts li').length, head: d.querySelector('h3').textContent,
                  inside: r.left >= 0 && r.right <= innerWidth && r.top >= 0 && r.bottom <= innerHeight,
                  selected: document.querySelector('#out .tok.sel') !== null};
        })()"#,
    );
    let rows = details["rows"].as_array().cloned().unwrap_or_default();
    assert_eq!(rows.len(), 2, "{details}");
    for (row, name) in rows.iter().zip(["SmolLM2", "gemma"]) {
        let cells: Vec<&str> = row
            .as_array()
            .map(|c| c.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        assert!(cells[0].contains(name), "{details}");
        assert!(
            cells[1].parse::<f64>().is_ok() || cells[1].contains('e'),
            "p(token): {details}"
        );
        assert!(
            cells[2].contains('✓') || cells[2].contains('✗'),
            "own top: {details}"
        );
    }
    assert!(details["alts"].as_u64() >= Some(1), "{details}");
    assert!(
        details["head"]
            .as_str()
            .is_some_and(|h| h.contains("token")),
        "{details}"
    );
    assert_eq!(
        details["inside"], true,
        "the details stay on screen: {details}"
    );
    assert_eq!(details["selected"], true, "{details}");
    let shot = screenshot_path("web-view.png");
    b.screenshot(&tab, &shot);
    eprintln!("screenshot: {}", shot.display());

    // Copy as curl: the same request, ready for a shell.
    b.click_on(&tab, "#curl");
    let curl = b.wait_for(&tab, "document.getElementById('curlbox').textContent", 10);
    let curl = curl.as_str().unwrap_or_default();
    assert!(curl.starts_with("curl -sN"), "{curl}");
    assert!(
        curl.contains("/v1/completions") && curl.contains(r#""explain":true"#),
        "{curl}"
    );
    assert!(!curl.contains("Authorization"), "no key, no header: {curl}");

    // Dark mode follows the system's preference.
    let light = b.eval(&tab, "getComputedStyle(document.body).backgroundColor");
    b.colour_scheme(&tab, "dark");
    let dark = b.eval(&tab, "getComputedStyle(document.body).backgroundColor");
    assert_ne!(light, dark);
    b.screenshot(&tab, &screenshot_path("web-view-dark.png"));

    // Phone width: one column, nothing wider than the screen, a tap opens the details
    // as a sheet inside the screen.
    b.colour_scheme(&tab, "light");
    b.viewport(&tab, 390, 844, true);
    b.eval(
        &tab,
        "document.dispatchEvent(new KeyboardEvent('keydown', {key: 'Escape'}))",
    );
    let wide = b.eval(
        &tab,
        "document.documentElement.scrollWidth <= innerWidth + 1",
    );
    assert_eq!(wide, true, "no horizontal scrolling at 390 px");
    let (x, y) = b.centre(&tab, "#out .tok.lead");
    b.tap(&tab, x, y);
    b.wait_for(&tab, "!document.getElementById('details').hidden", 10);
    let fits = b.eval(
        &tab,
        "(() => { const r = document.getElementById('details').getBoundingClientRect(); \
         return r.left >= 0 && r.right <= innerWidth && r.bottom <= innerHeight; })()",
    );
    assert_eq!(fits, true);
    b.screenshot(&tab, &screenshot_path("web-view-phone.png"));

    assert!(b.page_errors.is_empty(), "page errors: {:?}", b.page_errors);
}

#[test]
fn the_web_view_asks_for_the_api_key() {
    let model = serve_support::demo(serve_support::SMOL);
    let server = ServerProc::start(&["-m", &model], &[("TUTTI_API_KEY", "sesame")]);
    // The page itself needs no key; its configuration does.
    assert_eq!(get(&server.url("/"), None).status, 200);
    assert_eq!(get(&server.url("/ui/app.js"), None).status, 200);
    assert_eq!(get(&server.url("/ui/config"), None).status, 401);
    assert_eq!(get(&server.url("/ui/config"), Some("sesame")).status, 200);

    let mut b = Browser::launch();
    let tab = b.open(&server.url("/"), 1280, 900);
    b.wait_for(&tab, "!document.getElementById('keybox').hidden", 30);
    b.type_into(&tab, "#key", "wrong");
    b.click_on(&tab, "#keysave");
    b.wait_for(&tab, "!document.getElementById('keyerr').hidden", 30);
    b.eval(&tab, "document.getElementById('key').value = ''");
    b.type_into(&tab, "#key", "sesame");
    b.click_on(&tab, "#keysave");
    b.wait_for(
        &tab,
        "document.querySelectorAll('#members .member').length === 1",
        30,
    );
    assert_eq!(
        b.eval(&tab, "document.getElementById('keybox').hidden"),
        true
    );

    b.eval(&tab, "document.getElementById('mode').value = 'raw'");
    b.eval(&tab, "document.getElementById('max_tokens').value = '4'");
    b.type_into(&tab, "#prompt", "The capital of France is");
    b.click_on(&tab, "#go");
    b.wait_for(&tab, "document.body.dataset.done === '1'", 300);
    let n = b.eval(&tab, "document.querySelectorAll('#out .tok').length");
    assert!(n.as_u64() >= Some(1), "{n}");
    // One member: every token is its own, coloured by it.
    assert_eq!(
        b.eval(&tab, "[...document.querySelectorAll('#out .tok:not(.eos)')].every((t) => t.classList.contains('m0'))"),
        true
    );

    b.click_on(&tab, "#curl");
    let curl = b.wait_for(&tab, "document.getElementById('curlbox').textContent", 10);
    let curl = curl.as_str().unwrap_or_default();
    assert!(curl.contains("Bearer $TUTTI_API_KEY"), "{curl}");
    assert!(
        !curl.contains("sesame"),
        "the key itself is never copied: {curl}"
    );
    assert!(b.page_errors.is_empty(), "page errors: {:?}", b.page_errors);
}
