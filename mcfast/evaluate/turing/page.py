"""The reader's page: one HTML document, its stylesheet and script, kept as strings so the package needs no data files.

The page never learns anything but opaque image ids, the reader's name and progress and the display window; the
reader signs in with the code from their invitation (typed, or from a link's ``#code=``).
"""

INDEX_HTML = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Visual Turing Test</title>
<link rel="stylesheet" href="/static/app.css">
<script src="/static/app.js" defer></script>
</head>
<body>
<header>
  <h1>Visual Turing Test</h1>
  <div id="status" hidden>
    <span id="reader"></span>
    <button id="switch" class="link" type="button"
            title="Sign out (your code signs you in again)">switch reader</button>
    <span id="progress"></span>
    <div class="bar"><div id="bar-fill"></div></div>
  </div>
</header>

<main>
  <section id="login" class="card" hidden>
    <h2>Welcome</h2>
    <p>You will see a mix of <b>real</b> and <b>synthetic</b> medical images, one at a time.
       For each image decide whether it is <b>Real</b> or <b>Fake</b> and how confident you are.</p>
    <p>Open the personal link you were given, or enter your reader code. Your answers are saved as you go;
       use the same link or code later to resume.</p>
    <form id="login-form" autocomplete="off">
      <label for="code">Your reader code</label>
      <input id="code" name="code" maxlength="60" required autofocus spellcheck="false"
             placeholder="XXXXX-XXXXX-XXXXX-XXXXX">
      <button id="start" type="submit" class="primary">Start</button>
    </form>
    <p id="login-error" class="error" role="alert"></p>
  </section>

  <section id="viewer" hidden>
    <div id="stage" title="Scroll to zoom, drag to pan, double-click to fit">
      <img id="image" alt="study image" draggable="false">
    </div>
    <aside id="panel">
      <div id="window-label" class="window-label"></div>
      <div class="zoom">
        <button id="zoom-out" type="button" title="Zoom out (-)">&minus;</button>
        <span id="zoom-level">100%</span>
        <button id="zoom-in" type="button" title="Zoom in (+)">+</button>
        <button id="zoom-fit" type="button" title="Fit the whole image (0)">Fit</button>
      </div>
      <h3>Confidence</h3>
      <div id="confidence" class="confidence" role="radiogroup" aria-label="Confidence">
        <button type="button" id="conf-1" data-level="1" role="radio">1</button>
        <button type="button" id="conf-2" data-level="2" role="radio">2</button>
        <button type="button" id="conf-3" data-level="3" role="radio">3</button>
        <button type="button" id="conf-4" data-level="4" role="radio">4</button>
        <button type="button" id="conf-5" data-level="5" role="radio">5</button>
      </div>
      <div class="scale"><span>guess</span><span>certain</span></div>
      <div class="answer">
        <button id="btn-real" type="button" class="real" disabled>Real</button>
        <button id="btn-fake" type="button" class="fake" disabled>Fake</button>
      </div>
      <p id="hint" class="hint">Pick a confidence first.</p>
      <p id="answer-error" class="error" role="alert"></p>
      <p class="keys">Keys: <kbd>1</kbd>&ndash;<kbd>5</kbd> confidence, <kbd>R</kbd> real, <kbd>F</kbd> fake,
         <kbd>+</kbd>/<kbd>&minus;</kbd> zoom, <kbd>0</kbd> fit</p>
    </aside>
  </section>

  <section id="done" class="card" hidden>
    <h2>Thank you!</h2>
    <p id="done-text"></p>
  </section>
</main>
</body>
</html>
"""

APP_CSS = """
* { box-sizing: border-box; }
html, body { margin: 0; height: 100%; }
body { background: #111418; color: #e6e8eb; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
       display: flex; flex-direction: column; }
header { display: flex; align-items: center; justify-content: space-between; gap: 1rem; padding: .6rem 1.2rem;
         background: #1a1f26; border-bottom: 1px solid #2a313b; }
h1 { font-size: 1.1rem; margin: 0; font-weight: 600; letter-spacing: .02em; }
#status { display: flex; align-items: center; gap: .8rem; font-size: .9rem; color: #aab2bd; }
#status[hidden] { display: none; }
#reader { color: #e6e8eb; font-weight: 600; }
.bar { width: 160px; height: 6px; background: #2a313b; border-radius: 3px; overflow: hidden; }
#bar-fill { height: 100%; width: 0; background: #4c9aff; transition: width .2s; }
main { flex: 1; display: flex; min-height: 0; }
section[hidden] { display: none !important; }
.card { margin: 3rem auto; max-width: 30rem; background: #1a1f26; border: 1px solid #2a313b; border-radius: 10px;
        padding: 1.5rem 2rem; align-self: flex-start; }
.card h2 { margin-top: 0; }
form { display: flex; gap: .5rem; align-items: center; flex-wrap: wrap; }
label { width: 100%; color: #aab2bd; font-size: .9rem; }
input { flex: 1; padding: .5rem .7rem; border-radius: 6px; border: 1px solid #3a4350; background: #0d1014;
        color: inherit; font: inherit; }
button { font: inherit; color: inherit; background: #252c36; border: 1px solid #3a4350; border-radius: 6px;
         padding: .45rem .8rem; cursor: pointer; }
button:hover:not(:disabled) { background: #2f3845; }
button:disabled { opacity: .4; cursor: not-allowed; }
button.primary { background: #2f6fdb; border-color: #2f6fdb; }
button.link { background: none; border: none; padding: 0; color: #7fb0ff; text-decoration: underline;
              font-size: .85rem; }
#viewer { flex: 1; display: flex; min-height: 0; }
#stage { flex: 1; position: relative; overflow: hidden; background: #000; cursor: grab; min-height: 0; }
#stage.dragging { cursor: grabbing; }
#image { position: absolute; left: 0; top: 0; transform-origin: 0 0; image-rendering: auto; user-select: none;
         visibility: hidden; }
#panel { width: 260px; padding: 1rem 1.2rem; background: #1a1f26; border-left: 1px solid #2a313b;
         display: flex; flex-direction: column; gap: .5rem; }
#panel h3 { margin: .6rem 0 0; font-size: .85rem; text-transform: uppercase; letter-spacing: .08em; color: #aab2bd; }
.window-label { font-size: .9rem; color: #cfd5dc; min-height: 1.3em; }
.zoom { display: flex; align-items: center; gap: .35rem; }
#zoom-level { min-width: 3.5rem; text-align: center; font-variant-numeric: tabular-nums; color: #aab2bd; }
.confidence { display: grid; grid-template-columns: repeat(5, 1fr); gap: .3rem; }
.confidence button { padding: .5rem 0; }
.confidence button.selected { background: #2f6fdb; border-color: #7fb0ff; }
.scale { display: flex; justify-content: space-between; font-size: .75rem; color: #7d8793; }
.answer { display: grid; grid-template-columns: 1fr 1fr; gap: .5rem; margin-top: .8rem; }
.answer button { padding: .9rem 0; font-size: 1.1rem; font-weight: 600; }
.answer .real { background: #1f5f3a; border-color: #2e8b57; }
.answer .fake { background: #6b2430; border-color: #a33a4b; }
.hint { font-size: .85rem; color: #aab2bd; min-height: 1.2em; margin: .2rem 0 0; }
.error { color: #ff8a8a; font-size: .9rem; min-height: 1.2em; margin: 0; }
.keys { margin-top: auto; font-size: .78rem; color: #7d8793; }
kbd { border: 1px solid #3a4350; border-radius: 3px; padding: 0 .25rem; font-size: .75rem; }
"""

APP_JS = r"""
"use strict";
const $ = (id) => document.getElementById(id);
const WINDOW_LABELS = {
  lung: "Lung window (L \u2212600, W 1500)",
  soft_tissue: "Soft-tissue window (L 40, W 400)",
  bone: "Bone window (L 400, W 1800)",
};
let state = null;            // last state from the server
let confidence = null;       // chosen level for the current image
let shownAt = null;          // when the current image finished loading (for elapsed_ms)
let busy = false;
const view = { scale: 1, x: 0, y: 0, fit: 1 };

async function api(path, body) {
  const opts = { credentials: "same-origin", headers: {} };
  if (body !== undefined) {
    opts.method = "POST";
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  const res = await fetch(path, opts);
  let data = null;
  try { data = await res.json(); } catch (e) { data = null; }
  if (!res.ok) {
    const detail = data && data.detail;
    const err = new Error(typeof detail === "string" ? detail : detail ? "invalid input" : res.statusText);
    err.status = res.status;
    throw err;
  }
  return data;
}

function show(section) {
  for (const id of ["login", "viewer", "done"]) $(id).hidden = id !== section;
}

function render(next) {
  state = next;
  if (!state.reader) {
    $("status").hidden = true;
    show("login");
    $("code").focus();
    return;
  }
  $("status").hidden = false;
  $("reader").textContent = state.reader;
  const shown = Math.min(state.answered + 1, state.total);
  $("progress").textContent = state.image_id ? `Image ${shown} of ${state.total}` : `${state.total} of ${state.total} done`;
  $("bar-fill").style.width = `${(100 * state.answered) / Math.max(1, state.total)}%`;
  if (!state.image_id) {
    $("done-text").textContent = `All ${state.total} images are answered, ${state.reader}. You can close this page.`;
    show("done");
    return;
  }
  show("viewer");
  $("window-label").textContent = (state.window && WINDOW_LABELS[state.window]) || "";
  $("window-label").hidden = !state.window;
  setConfidence(null);
  $("answer-error").textContent = "";
  const img = $("image");
  if (img.dataset.imageId !== state.image_id) {
    img.style.visibility = "hidden";
    img.dataset.imageId = state.image_id;
    img.dataset.loaded = "false";
    img.src = `/api/image/${encodeURIComponent(state.image_id)}`;
  }
}

function setConfidence(level) {
  confidence = level;
  for (const b of document.querySelectorAll("#confidence button")) {
    const on = Number(b.dataset.level) === level;
    b.classList.toggle("selected", on);
    b.setAttribute("aria-checked", on ? "true" : "false");
  }
  const ready = level !== null && !busy && $("image").dataset.loaded === "true";
  $("btn-real").disabled = !ready;
  $("btn-fake").disabled = !ready;
  $("hint").textContent = level === null ? "Pick a confidence first." : "Now choose Real or Fake.";
}

async function answer(label) {
  if (busy || confidence === null || !state || !state.image_id) return;
  busy = true;
  setConfidence(confidence);
  try {
    const elapsed = shownAt === null ? null : Math.round(performance.now() - shownAt);
    render(await api("/api/answer", { image_id: state.image_id, answer: label, confidence, elapsed_ms: elapsed }));
  } catch (e) {
    if (e.status === 409 || e.status === 401) {
      render(await api("/api/state"));
    } else {
      $("answer-error").textContent = "Could not save the answer (is the server running?). Please try again.";
    }
  } finally {
    busy = false;
    if (state && state.image_id) setConfidence(confidence);
  }
}

// ---- zoom and pan -------------------------------------------------------------------------------------------
function applyView() {
  $("image").style.transform = `translate(${view.x}px, ${view.y}px) scale(${view.scale})`;
  $("zoom-level").textContent = `${Math.round(100 * view.scale / view.fit)}%`;
}
function fitView() {
  const img = $("image"), stage = $("stage");
  if (!img.naturalWidth) return;
  const s = Math.min(stage.clientWidth / img.naturalWidth, stage.clientHeight / img.naturalHeight);
  view.fit = s; view.scale = s;
  view.x = (stage.clientWidth - img.naturalWidth * s) / 2;
  view.y = (stage.clientHeight - img.naturalHeight * s) / 2;
  applyView();
}
function zoomAt(factor, cx, cy) {
  const stage = $("stage");
  if (cx === undefined) { cx = stage.clientWidth / 2; cy = stage.clientHeight / 2; }
  const next = Math.min(Math.max(view.scale * factor, view.fit * 0.5), view.fit * 16);
  const k = next / view.scale;
  view.x = cx - (cx - view.x) * k;
  view.y = cy - (cy - view.y) * k;
  view.scale = next;
  applyView();
}

function setup() {
  $("login-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    $("login-error").textContent = "";
    try { render(await api("/api/session", { code: $("code").value })); }
    catch (e) { $("login-error").textContent = e.message; }
  });
  $("switch").addEventListener("click", async () => { render(await api("/api/logout", {})); });
  for (const b of document.querySelectorAll("#confidence button")) {
    b.addEventListener("click", () => setConfidence(Number(b.dataset.level)));
  }
  $("btn-real").addEventListener("click", () => answer("real"));
  $("btn-fake").addEventListener("click", () => answer("synthetic"));
  const img = $("image");
  img.addEventListener("load", () => {
    fitView();
    img.style.visibility = "visible";
    img.dataset.loaded = "true";
    shownAt = performance.now();
    setConfidence(confidence);
  });
  img.addEventListener("error", () => {
    $("answer-error").textContent = "The image could not be loaded; reload the page.";
  });
  const stage = $("stage");
  stage.addEventListener("wheel", (ev) => {
    ev.preventDefault();
    const r = stage.getBoundingClientRect();
    zoomAt(ev.deltaY < 0 ? 1.2 : 1 / 1.2, ev.clientX - r.left, ev.clientY - r.top);
  }, { passive: false });
  let drag = null;
  stage.addEventListener("pointerdown", (ev) => {
    drag = { x: ev.clientX - view.x, y: ev.clientY - view.y };
    stage.setPointerCapture(ev.pointerId);
    stage.classList.add("dragging");
  });
  stage.addEventListener("pointermove", (ev) => {
    if (!drag) return;
    view.x = ev.clientX - drag.x; view.y = ev.clientY - drag.y; applyView();
  });
  const endDrag = () => { drag = null; stage.classList.remove("dragging"); };
  stage.addEventListener("pointerup", endDrag);
  stage.addEventListener("pointercancel", endDrag);
  stage.addEventListener("dblclick", fitView);
  $("zoom-in").addEventListener("click", () => zoomAt(1.25));
  $("zoom-out").addEventListener("click", () => zoomAt(1 / 1.25));
  $("zoom-fit").addEventListener("click", fitView);
  window.addEventListener("resize", fitView);
  document.addEventListener("keydown", (ev) => {
    if (ev.target instanceof HTMLInputElement || $("viewer").hidden || ev.ctrlKey || ev.metaKey || ev.altKey) return;
    if (ev.key >= "1" && ev.key <= "5") setConfidence(Number(ev.key));
    else if (ev.key === "r" || ev.key === "R") answer("real");
    else if (ev.key === "f" || ev.key === "F") answer("synthetic");
    else if (ev.key === "+" || ev.key === "=") zoomAt(1.25);
    else if (ev.key === "-") zoomAt(1 / 1.25);
    else if (ev.key === "0") fitView();
  });
  // A link opened in a tab already showing the page changes only the fragment: no reload, so listen for it.
  window.addEventListener("hashchange", () => { if (codeFromLink()) start(); });
  start();
}

function codeFromLink() {
  return new URLSearchParams(location.hash.slice(1)).get("code");
}

async function start() {
  // A personal link carries the code after "#": the fragment never reaches the server or its logs. It is
  // removed from the address bar at once, so it stays out of the history and off the screen.
  const code = codeFromLink();
  if (code) history.replaceState(null, "", location.pathname + location.search);
  $("login-error").textContent = "";
  try {
    render(await (code ? api("/api/session", { code }) : api("/api/state")));
  } catch (e) {
    $("login-error").textContent = e.status ? e.message : "Cannot reach the server.";
    $("status").hidden = true;
    show("login");
  }
}
document.addEventListener("DOMContentLoaded", setup);
"""
