// The web view of `tutti serve`: sends the prompt to this server's OpenAI API with
// `tutti: {explain: true}`, streams the answer and colours each token by the member
// that carried it (grey where every consulted member's own top choice was the token).
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const KEY_STORE = "tutti.key";
  const THEME_STORE = "tutti.theme";
  const PALETTE = 6;

  let config = null;
  let key = sessionStorage.getItem(KEY_STORE) || "";
  let records = [];
  let slotsInRun = [];
  let running = null;
  let selected = null;

  // ---- small helpers ------------------------------------------------------------

  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") e.className = v;
      else if (k === "text") e.textContent = v;
      else e.setAttribute(k, v);
    }
    for (const c of children) e.append(c);
    return e;
  }

  const pct = (x) => (100 * x).toFixed(1) + "%";
  const pct0 = (x) => Math.round(100 * x) + "%";
  const prob = (x) => (x === null || x === undefined ? "–" : x < 0.001 && x > 0 ? x.toExponential(1) : x.toFixed(3));

  // How a token's text reads in the details: quotes, and visible whitespace.
  function shown(c) {
    if (!c) return "–";
    if (c.eos) return "⟨end⟩";
    return JSON.stringify(c.text);
  }

  function memberName(slot) {
    const m = config && config.members.find((x) => x.slot === slot);
    return m ? m.name : "member #" + slot;
  }

  // Colour class of a member by its position among the taking-part members.
  function colourOf(slot) {
    const pos = slotsInRun.indexOf(slot);
    return "m" + ((pos < 0 ? slot : pos) % PALETTE);
  }

  function headers() {
    const h = { "Content-Type": "application/json" };
    if (key) h.Authorization = "Bearer " + key;
    return h;
  }

  function setStatus(text, isError) {
    const s = $("status");
    s.textContent = text;
    s.classList.toggle("error", !!isError);
  }

  // ---- theme --------------------------------------------------------------------

  function applyTheme(t) {
    if (t === "light" || t === "dark") document.documentElement.dataset.theme = t;
    else delete document.documentElement.dataset.theme;
    $("theme").textContent = "theme: " + (t || "auto");
  }

  $("theme").addEventListener("click", () => {
    const order = ["", "light", "dark"];
    const now = localStorage.getItem(THEME_STORE) || "";
    const next = order[(order.indexOf(now) + 1) % order.length];
    localStorage.setItem(THEME_STORE, next);
    applyTheme(next);
  });
  applyTheme(localStorage.getItem(THEME_STORE) || "");

  // ---- the server's members and defaults -------------------------------------------

  async function loadConfig() {
    let r;
    try {
      r = await fetch("/ui/config", { headers: headers() });
    } catch (e) {
      setStatus("cannot reach the server: " + e, true);
      return;
    }
    if (r.status === 401) {
      askKey(key ? "That key was refused." : "");
      return;
    }
    if (!r.ok) {
      setStatus("the server answered " + r.status, true);
      return;
    }
    config = await r.json();
    $("keybox").hidden = true;
    $("model").textContent = config.name;
    const d = config.defaults;
    $("max_tokens").value = Math.min(64, d.max_tokens || 64);
    $("max_tokens").max = config.max_tokens_cap;
    $("temperature").value = d.temperature || 0;
    $("top_k").placeholder = d.top_k;
    $("gate").placeholder = d.gate;
    $("combine").options[0].textContent = "default (" + d.combine + ")";
    const box = $("members");
    box.querySelectorAll(".member").forEach((n) => n.remove());
    slotsInRun = config.members.map((m) => m.slot);
    for (const m of config.members) {
      const row = el("div", { class: "member" },
        el("input", { type: "checkbox", id: "use" + m.slot, checked: "", "aria-label": "use " + m.name }),
        el("label", { class: "name", for: "use" + m.slot, title: m.name },
          el("span", { class: "dot " + colourOf(m.slot) }), m.name),
        el("input", { type: "number", id: "w" + m.slot, min: "0", step: "0.1", placeholder: String(m.weight), "aria-label": "weight of " + m.name }));
      box.append(row);
    }
    renderLegend();
    setStatus("ready");
  }

  function askKey(message) {
    $("keybox").hidden = false;
    $("keyerr").hidden = !message;
    $("keyerr").textContent = message || "";
    setStatus("waiting for the API key");
    $("key").focus();
  }

  $("keysave").addEventListener("click", () => {
    key = $("key").value.trim();
    sessionStorage.setItem(KEY_STORE, key);
    loadConfig();
  });
  $("key").addEventListener("keydown", (e) => {
    if (e.key === "Enter") $("keysave").click();
  });

  // ---- the request ----------------------------------------------------------------

  function request() {
    const chat = $("mode").value === "chat";
    const prompt = $("prompt").value;
    const body = { model: config.name };
    if (chat) body.messages = [{ role: "user", content: prompt }];
    else body.prompt = prompt;
    const n = parseInt($("max_tokens").value, 10);
    if (n > 0) body.max_tokens = n;
    const t = parseFloat($("temperature").value);
    body.temperature = t > 0 ? t : 0;
    body.stream = true;
    const tutti = { explain: true };
    const used = config.members.filter((m) => $("use" + m.slot).checked);
    if (used.length !== config.members.length) tutti.members = used.map((m) => m.slot);
    if (used.some((m) => $("w" + m.slot).value !== "")) {
      tutti.weights = used.map((m) => {
        const w = parseFloat($("w" + m.slot).value);
        return Number.isFinite(w) ? w : m.weight;
      });
    }
    const k = parseInt($("top_k").value, 10);
    if (k > 0) tutti.top_k = k;
    if ($("combine").value) tutti.combine = $("combine").value;
    if ($("gate").value.trim()) tutti.gate = $("gate").value.trim();
    body.tutti = tutti;
    return { path: chat ? "/v1/chat/completions" : "/v1/completions", body, used };
  }

  function shellQuote(s) {
    return "'" + s.replace(/'/g, "'\\''") + "'";
  }

  function curlCommand() {
    const { path, body } = request();
    const lines = ["curl -sN " + shellQuote(location.origin + path)];
    lines.push("  -H 'Content-Type: application/json'");
    if (key) lines.push('  -H "Authorization: Bearer $TUTTI_API_KEY"');
    lines.push("  -d " + shellQuote(JSON.stringify(body)));
    return lines.join(" \\\n");
  }

  $("curl").addEventListener("click", async () => {
    if (!config) return;
    const cmd = curlCommand();
    const box = $("curlbox");
    box.textContent = cmd;
    box.hidden = false;
    try {
      await navigator.clipboard.writeText(cmd);
      setStatus("curl command copied" + (key ? " (set TUTTI_API_KEY first)" : ""));
    } catch (e) {
      const range = document.createRange();
      range.selectNodeContents(box);
      const sel = window.getSelection();
      sel.removeAllRanges();
      sel.addRange(range);
      setStatus("select and copy the command below");
    }
  });

  // ---- streaming ------------------------------------------------------------------

  let decoder = null;
  let text = "";

  function resetOutput(used) {
    records = [];
    text = "";
    slotsInRun = used.map((m) => m.slot);
    decoder = new TextDecoder("utf-8");
    $("out").textContent = "";
    hideDetails();
    renderLegend();
    renderAgreement();
  }

  function addRecord(r) {
    const i = records.length;
    records.push(r);
    const cls = ["tok"];
    if (r.agreement === "all") cls.push("agree");
    else if (r.leader !== null && r.leader !== undefined) cls.push("lead", colourOf(r.leader));
    if (r.agreement === "alone" && slotsInRun.length > 1) cls.push("alone");
    if (r.rolled_back > 0) cls.push("rb");
    let shownText;
    if (r.chosen.eos) {
      cls.push("eos");
      shownText = "end";
    } else {
      shownText = decoder.decode(new Uint8Array(r.chosen.bytes), { stream: true });
    }
    const span = el("span", { class: cls.join(" "), "data-i": String(i), tabindex: "0" });
    span.textContent = shownText;
    $("out").append(span);
  }

  // Tokens past the returned text were cut by a stop string: shown struck through.
  function markCut() {
    let seen = 0;
    for (const span of $("out").querySelectorAll(".tok:not(.eos)")) {
      if (seen >= text.length) span.classList.add("cut");
      seen += span.textContent.length;
    }
  }

  async function generate() {
    if (!config || running) return;
    const { path, body, used } = request();
    if (!used.length) {
      setStatus("choose at least one member", true);
      return;
    }
    resetOutput(used);
    const controller = new AbortController();
    running = controller;
    $("go").disabled = true;
    $("stop").disabled = false;
    setStatus("generating…");
    let finished = null;
    try {
      const r = await fetch(path, { method: "POST", headers: headers(), body: JSON.stringify(body), signal: controller.signal });
      if (r.status === 401) {
        askKey("The key was refused.");
        throw new Error("unauthorized");
      }
      if (!r.ok) {
        let msg = "HTTP " + r.status;
        try {
          msg = (await r.json()).error.message;
        } catch (e) { /* the status says enough */ }
        throw new Error(msg);
      }
      const reader = r.body.getReader();
      const utf8 = new TextDecoder("utf-8");
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += utf8.decode(value, { stream: true });
        let cut;
        while ((cut = buf.indexOf("\n\n")) >= 0) {
          const frame = buf.slice(0, cut);
          buf = buf.slice(cut + 2);
          for (const line of frame.split("\n")) {
            if (!line.startsWith("data: ")) continue;
            const data = line.slice(6);
            if (data === "[DONE]") continue;
            const chunk = JSON.parse(data);
            if (chunk.error) throw new Error(chunk.error.message);
            const t = chunk.tutti || {};
            for (const rec of t.explain || []) addRecord(rec);
            renderAgreement();
            const c = (chunk.choices || [])[0];
            if (c) {
              text += c.text !== undefined ? c.text : (c.delta && c.delta.content) || "";
              if (c.finish_reason) finished = { reason: c.finish_reason, tutti: t };
            }
          }
        }
      }
      const tail = decoder.decode();
      if (tail) $("out").append(tail);
      markCut();
      if (finished) {
        const ms = finished.tutti.timing ? finished.tutti.timing.ms_per_token : 0;
        setStatus(records.length + " tokens · " + finished.reason + (ms ? " · " + ms.toFixed(1) + " ms/token" : ""));
        document.body.dataset.done = "1";
      } else {
        setStatus("the stream ended early", true);
      }
    } catch (e) {
      if (e.name === "AbortError") setStatus("stopped");
      else setStatus(String(e.message || e), true);
    } finally {
      running = null;
      $("go").disabled = false;
      $("stop").disabled = true;
    }
  }

  $("go").addEventListener("click", () => {
    delete document.body.dataset.done;
    generate();
  });
  $("stop").addEventListener("click", () => running && running.abort());
  $("prompt").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) $("go").click();
  });

  // ---- legend and agreement bars ----------------------------------------------------

  function renderLegend() {
    const box = $("legend");
    box.textContent = "";
    if (!config) return;
    for (const slot of slotsInRun) {
      box.append(el("span", {}, el("span", { class: "dot " + colourOf(slot) }), memberName(slot)));
    }
    if (slotsInRun.length > 1) {
      box.append(el("span", {}, el("span", { class: "dot agree" }), "all agreed"));
      box.append(el("span", {}, el("span", { class: "sample tok alone" }, "abc"), " gate: one member alone"));
      box.append(el("span", {}, el("span", { class: "sample tok rb" }, "abc"), " rollback"));
    }
  }

  // The summary as the page computes it from the records (the server's arrives at the
  // end; both count the same way).
  function summarize() {
    const s = { steps: records.length, split: 0, rolled: 0, members: new Map() };
    for (const slot of slotsInRun) s.members.set(slot, { consulted: 0, won: 0, led: 0 });
    for (const r of records) {
      if (r.agreement === "split") s.split += 1;
      for (const m of r.members) {
        const x = s.members.get(m.slot);
        if (!x) continue;
        if (m.consulted) {
          x.consulted += 1;
          if (m.agreed) x.won += 1;
        }
        if (r.agreement !== "all" && r.leader === m.slot) x.led += 1;
        if (m.rolled_back > 0) s.rolled += 1;
      }
    }
    return s;
  }

  function renderAgreement() {
    const box = $("agreement");
    box.textContent = "";
    if (!records.length) return;
    const s = summarize();
    box.append(el("div", { class: "sum" },
      "members disagreed on " + s.split + " of " + s.steps + " tokens (" + pct(s.split / s.steps) + ") · rollbacks " + s.rolled));
    for (const [slot, x] of s.members) {
      const share = x.consulted ? x.won / x.consulted : 0;
      const fill = el("div", { class: "bar-fill " + colourOf(slot) });
      fill.style.width = (100 * share).toFixed(1) + "%";
      box.append(el("div", { class: "arow", "data-slot": String(slot) },
        el("span", { class: "name", title: memberName(slot) }, el("span", { class: "dot " + colourOf(slot) }), memberName(slot)),
        el("div", { class: "track", title: "how often its own top choice won" }, fill),
        el("span", { class: "muted" }, "own choice won " + pct(share) + " · carried " + x.led)));
    }
  }

  // ---- token details ----------------------------------------------------------------

  function hideDetails() {
    $("details").hidden = true;
    if (selected) selected.classList.remove("sel");
    selected = null;
  }

  function showDetails(span) {
    const r = records[Number(span.dataset.i)];
    if (!r) return;
    if (selected) selected.classList.remove("sel");
    selected = span;
    span.classList.add("sel");
    const box = $("details");
    box.textContent = "";
    const close = el("button", { type: "button", class: "ghost close", "aria-label": "close" }, "×");
    close.addEventListener("click", hideDetails);
    const verdict = r.agreement === "all" ? "all members agreed"
      : r.agreement === "alone"
        ? (slotsInRun.length > 1 ? "decided by " + memberName(r.leader) + " alone (the gate skipped the others)" : "one member")
      : "carried by " + memberName(r.leader);
    box.append(close,
      el("h3", {}, "token ", el("span", { class: "tokentext" }, shown(r.chosen)), " · step " + r.index),
      el("div", { class: "muted" }, "combined p " + prob(r.chosen.prob) + " · " + verdict +
        (r.rolled_back ? " · rolled back " + r.rolled_back + " token(s)" : "")));
    const table = el("table", { class: "members-table" },
      el("colgroup", {}, ...["name", "p", "top", "w", "share"].map((c) => el("col", { class: "c-" + c }))),
      el("thead", {}, el("tr", {},
        el("th", {}, "member"),
        el("th", { class: "num", title: "the member's probability of this token" }, "p"),
        el("th", {}, "own top"),
        el("th", { class: "num", title: "the member's weight at this step" }, "weight"),
        el("th", { class: "num", title: "its share of the support for this token" }, "share"))));
    const body = el("tbody");
    for (const m of r.members) {
      const row = el("tr", { "data-slot": String(m.slot) },
        el("td", {}, el("span", { class: "dot " + colourOf(m.slot) }), memberName(m.slot)),
        el("td", { class: "num" }, m.consulted ? prob(m.prob) : "skipped"),
        el("td", {}, m.top ? shown(m.top) + " " + prob(m.top.prob) + (m.agreed ? " ✓" : " ✗") : "–"),
        el("td", { class: "num" }, m.consulted ? pct0(m.weight) : "–"),
        el("td", { class: "num" }, m.consulted ? pct0(m.contribution) : "–"));
      body.append(row);
    }
    table.append(body);
    box.append(table, el("div", { class: "label" }, "combined alternatives"));
    const alts = el("ul", { class: "alts" });
    for (const a of r.alternatives) {
      const fill = el("div", { class: "bar-fill" });
      fill.style.width = (100 * a.prob).toFixed(1) + "%";
      fill.style.background = "var(--accent)";
      const won = a.eos === r.chosen.eos && a.text === r.chosen.text;
      alts.append(el("li", { class: won ? "won" : "" },
        el("span", { class: "tokentext" }, shown(a)),
        el("div", { class: "track" }, fill),
        el("span", { class: "num" }, prob(a.prob))));
    }
    box.append(alts);
    box.hidden = false;
    if (window.matchMedia("(min-width: 761px)").matches) {
      const rect = span.getBoundingClientRect();
      const w = box.offsetWidth;
      const h = box.offsetHeight;
      let left = Math.min(rect.left, window.innerWidth - w - 8);
      let top = rect.bottom + 6;
      if (top + h > window.innerHeight - 8) top = Math.max(8, rect.top - h - 6);
      box.style.left = Math.max(8, left) + "px";
      box.style.top = top + "px";
    } else {
      box.style.left = "";
      box.style.top = "";
    }
  }

  const out = $("out");
  out.addEventListener("mouseover", (e) => {
    const span = e.target.closest(".tok");
    if (span) showDetails(span);
  });
  out.addEventListener("click", (e) => {
    const span = e.target.closest(".tok");
    if (span) showDetails(span);
  });
  out.addEventListener("focusin", (e) => {
    const span = e.target.closest(".tok");
    if (span) showDetails(span);
  });
  document.addEventListener("keydown", (e) => {
    if (e.key === "Escape") hideDetails();
  });
  document.addEventListener("click", (e) => {
    if (!e.target.closest(".tok") && !e.target.closest("#details")) hideDetails();
  });

  loadConfig();
})();
