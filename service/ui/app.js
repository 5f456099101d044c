// The OLTR page: Try it (POST /classify), Unknowns (captures, groups, unknown rate), Enrol.
// Plain browser JavaScript, no dependencies. Every string from a user, a file or the service is
// put into the page as text (textContent, text nodes, attribute values), never parsed as HTML.
// The admin token lives in this tab's sessionStorage and is sent only as a bearer token to this
// service's /admin routes; without it the page makes no admin request at all.
"use strict";

const ROOT = new URL("../", document.baseURI); // the page is served at <service>/ui/
const TOKEN_KEY = "oltr.adminToken";
const TOP_K = 5;
const RATE_SAMPLES = 61; // the last 60 polling intervals (a poll also runs on opening Unknowns)
const CAPTURE_LIST_LIMIT = 500;
const POLL_S = pollSeconds();
const VIEWS = ["try", "unknowns", "enrol"];

const state = {
  captures: new Map(), // id -> sidecar (GET /admin/captures)
  blobs: new Map(), // id -> Promise<Blob> of a captured image
  urls: new Map(), // id -> object URL of that blob
  tryUrls: [], // object URLs of the files shown in Try it
  selection: { ids: [], from: "" },
  enrolled: null, // the last POST /admin/classes answer, for Undo and the check
  rate: [], // samples {t, known, unknown} of /metrics
};

// -- small helpers ---------------------------------------------------------------------------

const $ = (id) => document.getElementById(id);

/** A new element; props.text becomes its text, other props attributes; children append as text
 * or nodes. Never used with HTML strings. */
function el(tag, props = {}, children = []) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "text") node.textContent = value;
    else if (key === "class") node.className = value;
    else node.setAttribute(key, String(value));
  }
  for (const child of children) node.append(child);
  return node;
}

function svg(tag, attrs = {}, text = null) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
  if (text !== null) node.textContent = text;
  return node;
}

function num(x) {
  if (typeof x !== "number" || !Number.isFinite(x)) return String(x);
  return Math.abs(x) >= 100 ? x.toFixed(1) : x.toFixed(3);
}

const pct = (x) => (100 * x).toFixed(1) + "%";

function pollSeconds() {
  const asked = Number(new URLSearchParams(location.search).get("poll_s"));
  return Number.isFinite(asked) && asked >= 1 && asked <= 300 ? asked : 5;
}

function plural(n, one, many = one + "s") {
  return `${n} ${n === 1 ? one : many}`;
}

// -- the API ---------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, code, message, requestId, retryAfter) {
    super(message);
    this.status = status;
    this.code = code;
    this.requestId = requestId;
    this.retryAfter = retryAfter;
  }
}

class NeedsToken extends Error {
  constructor() {
    super("this needs the admin token: enter it above");
  }
}

const token = () => sessionStorage.getItem(TOKEN_KEY) || "";

/** fetch ``path`` (relative to the service root); admin calls need the token or throw
 * NeedsToken before any request; non-2xx answers throw ApiError with the service's message. */
async function call(path, { method = "GET", body = undefined, admin = false, as = "json" } = {}) {
  const headers = {};
  if (admin) {
    if (!token()) throw new NeedsToken();
    headers.Authorization = "Bearer " + token();
  }
  let response;
  try {
    response = await fetch(new URL(path, ROOT), { method, body, headers, cache: "no-store" });
  } catch (err) {
    throw new ApiError(0, "", `the service did not answer (${err.message})`, null, null);
  }
  if (!response.ok) throw await apiError(response);
  if (as === "blob") return response.blob();
  if (as === "text") return response.text();
  return response.json();
}

async function apiError(response) {
  const text = await response.text();
  let code = "";
  let message = text.slice(0, 500) || response.statusText;
  let requestId = response.headers.get("X-Request-ID");
  try {
    const doc = JSON.parse(text);
    if (doc && typeof doc.error === "object" && doc.error !== null) {
      code = String(doc.error.code ?? "");
      message = String(doc.error.message ?? message);
      requestId = doc.error.request_id ?? requestId;
    } else if (doc && typeof doc.error === "string") {
      message = doc.error;
    }
  } catch {
    // not JSON (a proxy's page, say): the text as it came
  }
  return new ApiError(response.status, code, message, requestId, response.headers.get("Retry-After"));
}

/** One line for an error: "HTTP 413 payload_too_large: <the service's message>". */
function describe(err) {
  if (err instanceof ApiError) {
    const head = err.status ? `HTTP ${err.status}${err.code ? " " + err.code : ""}` : "No answer";
    return `${head}: ${err.message}`;
  }
  return err instanceof NeedsToken ? `Admin token needed: ${err.message}` : String(err);
}

function showError(box, err) {
  box.replaceChildren(el("p", { class: "error-line", text: describe(err) }));
  if (err instanceof ApiError) {
    const notes = [];
    if (err.retryAfter !== null) notes.push(`Retry after ${err.retryAfter} s.`);
    if (err.requestId) notes.push(`Request id ${err.requestId}.`);
    if (notes.length) box.append(el("p", { class: "muted", text: notes.join(" ") }));
  }
  box.hidden = false;
}

function clearError(box) {
  box.hidden = true;
  box.replaceChildren();
}

/** Run ``work`` with ``button`` disabled (no double submits); errors go to ``box``. */
async function busy(button, box, work) {
  button.disabled = true;
  clearError(box);
  try {
    return await work();
  } catch (err) {
    showError(box, err);
    return undefined;
  } finally {
    button.disabled = false;
  }
}

// -- views and token -------------------------------------------------------------------------

function showView(name) {
  if (!VIEWS.includes(name)) name = "try";
  for (const view of VIEWS) {
    $("view-" + view).hidden = view !== name;
    $("tab-" + view).setAttribute("aria-pressed", String(view === name));
  }
  if (location.hash !== "#" + name) history.replaceState(null, "", "#" + name);
  if (name === "unknowns") {
    pollRate();
    loadUnknowns();
  }
  if (name === "enrol") loadClasses();
}

function currentView() {
  return VIEWS.find((view) => !$("view-" + view).hidden) || "try";
}

function updateTokenUi() {
  const has = Boolean(token());
  $("token-state").textContent = has ? "Token kept for this tab only." : "No token: admin parts are off.";
  for (const note of document.querySelectorAll(".needs-token")) note.hidden = has;
}

function forgetCaptureImages() {
  for (const url of state.urls.values()) URL.revokeObjectURL(url);
  state.urls.clear();
  state.blobs.clear();
}

function useToken(event) {
  event.preventDefault();
  const value = $("token").value.trim();
  $("token").value = "";
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  updateTokenUi();
  showView(currentView());
}

function forgetToken() {
  sessionStorage.removeItem(TOKEN_KEY);
  forgetCaptureImages();
  $("groups").replaceChildren();
  $("classes-body").replaceChildren();
  $("unknowns-summary").textContent = "";
  updateTokenUi();
}

async function loadModel() {
  try {
    const m = await call("v1/model");
    const names = m.class_names.slice(0, 12).join(", ") + (m.class_names.length > 12 ? ", …" : "");
    const s = m.unknown_score;
    $("model-line").textContent =
      `Model ${m.version}: ${plural(m.class_names.length, "known class", "known classes")} ` +
      `(${names}); unknown when ${s.name} < ${num(s.threshold)}.`;
  } catch (err) {
    $("model-line").textContent = "Model: " + describe(err);
  }
}

// -- one prediction ----------------------------------------------------------------------------

/** A result card: the image, its label, the numbers and the top-k as bars; all text. */
function predictionCard(p, answer, imageUrl, name) {
  const known = !p.unknown;
  const card = el("li", { class: known ? "result" : "result unknown" });
  card.append(el("img", { class: "thumb", src: imageUrl, alt: "", width: 96, height: 96 }));
  const body = el("div", { class: "result-body" });
  body.append(el("h3", { class: "filename", text: name }));
  const verdict = known
    ? el("p", { class: "verdict" }, ["Label ", el("strong", { class: "label", text: p.label })])
    : el("p", { class: "verdict" }, [
        el("strong", { class: "badge", text: "Unknown" }),
        " nearest known class ",
        el("strong", { class: "label", text: p.label }),
      ]);
  body.append(verdict);
  const relation = p.score < answer.threshold ? "<" : "≥";
  const facts = [
    ["Confidence", pct(p.confidence)],
    ["Reachability", num(p.reachability)],
    [
      "Score",
      `${answer.unknown_score} ${num(p.score)} ${relation} threshold ${num(answer.threshold)} ` +
        `(from ${answer.threshold_source})`,
    ],
    ["Unknown", p.unknown ? "yes" : "no"],
  ];
  const list = el("dl", { class: "facts" });
  for (const [term, value] of facts) list.append(el("dt", { text: term }), el("dd", { text: value }));
  body.append(list, topK(p.top_k));
  card.append(body);
  return card;
}

function topK(entries) {
  const list = el("ol", { class: "topk", "aria-label": "Most probable known classes" });
  for (const entry of entries) {
    const id = `k${Math.random().toString(36).slice(2)}`;
    list.append(
      el("li", {}, [
        el("span", { class: "topk-label", id, text: entry.label }),
        el("meter", { min: 0, max: 1, value: entry.probability, "aria-labelledby": id }),
        el("span", { class: "topk-value", text: pct(entry.probability) }),
      ]),
    );
  }
  return list;
}

async function classifyBlobs(named, top = TOP_K) {
  const form = new FormData();
  for (const [name, blob] of named) form.append("file", blob, name);
  return call(`classify?top_k=${top}`, { method: "POST", body: form });
}

// -- Try it ------------------------------------------------------------------------------------

async function tryFiles(fileList) {
  const files = Array.from(fileList);
  if (!files.length) return;
  for (const url of state.tryUrls) URL.revokeObjectURL(url);
  state.tryUrls = files.map((f) => URL.createObjectURL(f));
  clearError($("try-error"));
  $("try-results").replaceChildren();
  $("try-summary").textContent = `Classifying ${plural(files.length, "image")}…`;
  try {
    const answer = await classifyBlobs(files.map((f) => [f.name, f]));
    const unknown = answer.predictions.filter((p) => p.unknown).length;
    $("try-summary").textContent =
      `${plural(answer.predictions.length, "image")} classified by model ` +
      `${answer.model_version}: ${unknown} unknown.`;
    answer.predictions.forEach((p, i) => {
      const name = p.filename ?? files[i].name;
      $("try-results").append(predictionCard(p, answer, state.tryUrls[i], name));
    });
  } catch (err) {
    $("try-summary").textContent = "";
    showError($("try-error"), err);
  }
}

function setUpDrop() {
  const zone = $("drop");
  // A file dropped anywhere else must not make the browser leave the page to show it.
  for (const kind of ["dragover", "drop"]) window.addEventListener(kind, (e) => e.preventDefault());
  zone.addEventListener("dragover", () => zone.classList.add("over"));
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    zone.classList.remove("over");
    tryFiles(e.dataTransfer.files);
  });
  $("try-files").addEventListener("change", (e) => {
    tryFiles(e.target.files);
    e.target.value = "";
  });
}

// -- the unknown rate (this service's /metrics counters) --------------------------------------

/** {known, unknown} from oltr_images_classified_total{outcome=...}; null when absent. */
function parseCounters(text) {
  const counts = { known: 0, unknown: 0 };
  let found = false;
  for (const line of text.split("\n")) {
    const m = /^oltr_images_classified_total\{([^}]*)\}\s+(\S+)/.exec(line);
    const outcome = m && /outcome="([a-z]+)"/.exec(m[1]);
    if (outcome && outcome[1] in counts) {
      counts[outcome[1]] += Number(m[2]);
      found = true;
    }
  }
  return found ? counts : null;
}

let polling = false;

async function pollRate() {
  if (polling) return; // one /metrics read at a time: samples stay in order
  polling = true;
  try {
    const counts = parseCounters(await call("metrics", { as: "text" }));
    if (!counts) throw new Error("/metrics has no oltr_images_classified_total");
    state.rate.push({ t: Date.now(), ...counts });
    if (state.rate.length > RATE_SAMPLES) state.rate.shift();
    clearError($("rate-error"));
    drawRate();
  } catch (err) {
    showError($("rate-error"), err);
  } finally {
    polling = false;
  }
}

/** Per interval: {t, n, unknown, rate (null without images)}; a counter reset starts anew. */
function rateIntervals(samples) {
  const out = [];
  for (let i = 1; i < samples.length; i++) {
    const du = samples[i].unknown - samples[i - 1].unknown;
    const dn = du + samples[i].known - samples[i - 1].known;
    if (du < 0 || dn < du) continue; // the service restarted: its counters began again
    const s = (samples[i].t - samples[i - 1].t) / 1000;
    out.push({ t: samples[i].t, s, n: dn, unknown: du, rate: dn > 0 ? du / dn : null });
  }
  return out;
}

function drawRate() {
  const chart = $("rate-chart");
  const intervals = rateIntervals(state.rate);
  const last = state.rate[state.rate.length - 1];
  const total = last.known + last.unknown;
  const lines = [
    `Since the service started: ${last.unknown} of ${plural(total, "image")} unknown` +
      (total ? ` (${pct(last.unknown / total)}).` : "."),
  ];
  const now = intervals[intervals.length - 1];
  if (now) {
    const head = `Last ${now.s < 10 ? now.s.toFixed(1) : Math.round(now.s)} s`;
    lines.unshift(
      now.n
        ? `${head}: ${now.unknown} of ${plural(now.n, "image")} unknown (${pct(now.rate)}).`
        : `${head}: no images classified.`,
    );
  }
  $("rate-summary").textContent = lines.join(" ");

  const [w, h, left, right, top, bottom] = [640, 180, 48, 12, 10, 26];
  const x0 = state.rate[0].t;
  const span = Math.max(last.t - x0, 1);
  const x = (t) => left + ((t - x0) / span) * (w - left - right);
  const y = (r) => top + (1 - r) * (h - top - bottom);
  const parts = [chart.querySelector("title")];
  for (const r of [0, 0.5, 1]) {
    parts.push(svg("line", { class: "grid", x1: left, x2: w - right, y1: y(r), y2: y(r) }));
    const label = `${100 * r}%`;
    parts.push(svg("text", { class: "axis", x: left - 6, y: y(r) + 4, "text-anchor": "end" }, label));
  }
  const ago = Math.round(span / 1000);
  parts.push(svg("text", { class: "axis", x: left, y: h - 6 }, `${ago} s ago`));
  parts.push(svg("text", { class: "axis", x: w - right, y: h - 6, "text-anchor": "end" }, "now"));
  let run = [];
  const flush = () => {
    if (run.length > 1) parts.push(svg("polyline", { class: "rate-line", points: run.join(" ") }));
    run = [];
  };
  for (const iv of intervals) {
    if (iv.rate === null) {
      flush();
      continue;
    }
    run.push(`${x(iv.t).toFixed(1)},${y(iv.rate).toFixed(1)}`);
    parts.push(svg("circle", { class: "rate-point", cx: x(iv.t), cy: y(iv.rate), r: 3 }));
  }
  flush();
  chart.replaceChildren(...parts);
}

// -- Unknowns ----------------------------------------------------------------------------------

function captureBlob(id) {
  if (!state.blobs.has(id)) {
    const pending = call("admin/captures/" + encodeURIComponent(id), { admin: true, as: "blob" });
    pending.catch(() => state.blobs.delete(id)); // a failed fetch may be retried later
    state.blobs.set(id, pending);
  }
  return state.blobs.get(id);
}

function captureName(id) {
  const sidecar = state.captures.get(id);
  const when = sidecar ? ` received ${sidecar.received}` : "";
  const file = sidecar && sidecar.filename ? ` (${sidecar.filename})` : "";
  return `capture ${id.slice(0, 8)}${file}${when}`;
}

/** An <img> of a captured image, filled in when its bytes arrive (with the token). */
function captureImage(id) {
  const img = el("img", { class: "thumb", alt: captureName(id), width: 96, height: 96 });
  captureBlob(id).then(
    (blob) => {
      if (!state.urls.has(id)) state.urls.set(id, URL.createObjectURL(blob));
      img.src = state.urls.get(id);
    },
    (err) => {
      img.alt = `${captureName(id)}: not loaded (${describe(err)})`;
    },
  );
  return img;
}

function newestTime(ids) {
  let best = -Infinity;
  for (const id of ids) {
    const t = Date.parse(state.captures.get(id)?.received ?? "");
    if (Number.isFinite(t) && t > best) best = t;
  }
  return best;
}

function nearestSummary(ids) {
  const counts = new Map();
  for (const id of ids) {
    const nearest = state.captures.get(id)?.nearest_class;
    if (nearest !== undefined && nearest !== null) counts.set(nearest, (counts.get(nearest) || 0) + 1);
  }
  const top = [...counts.entries()].sort((a, b) => b[1] - a[1]).slice(0, 3);
  return top.map(([name, n]) => `${name} ×${n}`).join(", ");
}

/** One group (or the ungrouped images): heading, facts, thumbnails with checkboxes, button. */
function groupSection(title, ids, checked, from) {
  const headingId = `g${Math.random().toString(36).slice(2)}`;
  const section = el("section", { class: "group", "aria-labelledby": headingId });
  section.append(el("h4", { id: headingId, text: `${title}: ${plural(ids.length, "image")}` }));
  const facts = [];
  const newest = newestTime(ids);
  if (Number.isFinite(newest)) facts.push(`newest ${new Date(newest).toISOString()}`);
  const nearest = nearestSummary(ids);
  if (nearest) facts.push(`nearest known class ${nearest}`);
  if (facts.length) section.append(el("p", { class: "muted", text: facts.join("; ") }));
  const list = el("ul", { class: "thumbs" });
  for (const id of ids) {
    const box = el("input", { type: "checkbox", value: id });
    box.checked = checked;
    list.append(el("li", {}, [el("label", { class: "pick" }, [box, captureImage(id)])]));
  }
  const button = el("button", { type: "button", text: `Enrol the checked images of ${from}…` });
  button.addEventListener("click", () => {
    const chosen = [...list.querySelectorAll("input:checked")].map((b) => b.value);
    selectForEnrol(chosen, from);
  });
  section.append(list, el("p", {}, [button]));
  return section;
}

async function loadUnknowns() {
  clearError($("unknowns-error"));
  if (!token()) {
    $("groups").replaceChildren();
    $("unknowns-summary").textContent = "";
    return;
  }
  $("unknowns-summary").textContent = "Loading the captured images…";
  try {
    const listing = await call(`admin/captures?limit=${CAPTURE_LIST_LIMIT}`, { admin: true });
    const grouping = await call("admin/captures/groups", { admin: true });
    state.captures = new Map(listing.items.map((item) => [item.id, item]));
    const groups = [...grouping.groups].sort(
      (a, b) => newestTime(b.ids) - newestTime(a.ids) || a.group - b.group,
    );
    const sections = groups.map((g) => groupSection(`Group ${g.group}`, g.ids, true, `group ${g.group}`));
    if (grouping.ungrouped.length) {
      sections.push(groupSection("Not grouped", grouping.ungrouped, false, "the ungrouped images"));
    }
    $("groups").replaceChildren(...sections);
    const shown = listing.items.length < listing.total ? ` (details of the newest ${listing.items.length})` : "";
    $("unknowns-summary").textContent =
      `${plural(listing.total, "captured image")}${shown}: ${plural(groups.length, "group")}, ` +
      `${grouping.ungrouped.length} not grouped (grouped with model ${grouping.model_version}); ` +
      "newest group first.";
  } catch (err) {
    $("unknowns-summary").textContent = "";
    showError($("unknowns-error"), err);
  }
}

// -- Enrol -------------------------------------------------------------------------------------

function selectForEnrol(ids, from) {
  state.selection = { ids, from };
  renderSelection();
  showView("enrol");
  $("enrol-name").focus();
}

function renderSelection() {
  const { ids, from } = state.selection;
  $("enrol-selection").textContent = ids.length
    ? `${plural(ids.length, "captured image")} from ${from} chosen.`
    : "No captured images chosen: choose a group in Unknowns, or pick image files below.";
  $("enrol-thumbs").replaceChildren(...ids.map((id) => el("li", {}, [captureImage(id)])));
}

/** The first enrolled image, as [name, blob], to classify again with the new model. */
async function firstExample() {
  const files = Array.from($("enrol-files").files);
  if (state.selection.ids.length) {
    const id = state.selection.ids[0];
    return [`capture-${id.slice(0, 12)}`, await captureBlob(id)];
  }
  return files.length ? [files[0].name, files[0]] : null;
}

async function checkAgain(heading) {
  const example = await firstExample();
  if (!example) return;
  const answer = await classifyBlobs([example]);
  const url = URL.createObjectURL(example[1]);
  $("enrol-check").replaceChildren(predictionCard(answer.predictions[0], answer, url, `${heading}: ${example[0]}`));
}

async function enrol(event) {
  event.preventDefault();
  await busy($("enrol-submit"), $("enrol-error"), async () => {
    if (!token()) throw new NeedsToken();
    const form = new FormData();
    form.append("name", $("enrol-name").value);
    for (const id of state.selection.ids) form.append("capture", id);
    for (const file of $("enrol-files").files) form.append("file", file, file.name);
    $("enrol-result").textContent = "Enrolling…";
    try {
      state.enrolled = await call("admin/classes", { method: "POST", body: form, admin: true });
    } catch (err) {
      $("enrol-result").textContent = "";
      throw err;
    }
    const r = state.enrolled;
    const undo = el("button", { type: "button", id: "enrol-undo", text: `Undo: remove “${r.name}”` });
    undo.addEventListener("click", () => removeClass(r.name, undo));
    $("enrol-result").replaceChildren(
      el("p", {
        text:
          `Enrolled “${r.name}” from ${plural(r.examples, "example")}: model version ${r.version} ` +
          `(was ${r.previous_version}).`,
      }),
      el("p", {}, [undo]),
    );
    await Promise.all([loadClasses(), loadModel()]);
    await checkAgain("Classified again with the new model");
  });
}

async function removeClass(name, button) {
  await busy(button, $("enrol-error"), async () => {
    const r = await call("admin/classes/" + encodeURIComponent(name), { method: "DELETE", admin: true });
    $("enrol-result").replaceChildren(
      el("p", { text: `Removed “${r.name}”: model version ${r.version} (was ${r.previous_version}).` }),
    );
    await Promise.all([loadClasses(), loadModel()]);
    if (state.enrolled && state.enrolled.name === name) {
      state.enrolled = null;
      await checkAgain("Classified again after the removal");
    }
  });
}

async function loadClasses() {
  clearError($("classes-error"));
  if (!token()) {
    $("classes-body").replaceChildren();
    return;
  }
  try {
    const answer = await call("admin/classes", { admin: true });
    $("classes-caption").textContent = `Classes of model ${answer.model_version}`;
    const rows = answer.classes.map((c) => {
      const action = el("td");
      if (c.enrolled) {
        const button = el("button", { type: "button", text: `Remove “${c.name}”` });
        button.addEventListener("click", () => removeClass(c.name, button));
        action.append(button);
      }
      return el("tr", {}, [
        el("td", { text: String(c.index) }),
        el("td", { class: "class-name", text: c.name }),
        el("td", { text: c.enrolled ? "yes" : "no (trained)" }),
        el("td", { text: c.examples === null || c.examples === undefined ? "—" : String(c.examples) }),
        action,
      ]);
    });
    $("classes-body").replaceChildren(...rows);
  } catch (err) {
    showError($("classes-error"), err);
  }
}

// -- start -------------------------------------------------------------------------------------

function start() {
  for (const view of VIEWS) $("tab-" + view).addEventListener("click", () => showView(view));
  $("token-form").addEventListener("submit", useToken);
  $("token-forget").addEventListener("click", forgetToken);
  $("unknowns-refresh").addEventListener("click", loadUnknowns);
  $("classes-refresh").addEventListener("click", loadClasses);
  $("enrol-form").addEventListener("submit", enrol);
  $("enrol-clear").addEventListener("click", () => {
    state.selection = { ids: [], from: "" };
    renderSelection();
  });
  setUpDrop();
  updateTokenUi();
  loadModel();
  pollRate();
  showView(location.hash.slice(1));
  setInterval(pollRate, POLL_S * 1000);
}

document.addEventListener("DOMContentLoaded", start);
