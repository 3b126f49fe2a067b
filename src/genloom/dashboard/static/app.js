// genloom dashboard: a small single-page app over the JSON API and two SSE streams.
// No build step, no external assets. Authentication is an HttpOnly cookie set by /dashboard/login;
// state-changing requests carry the CSRF token from /dashboard/api/me in X-CSRF-Token.
"use strict";

const EVENT_TYPES = ["queued", "started", "vision_started", "vision_completed", "vision_failed", "stage_started",
  "stage_completed", "stage_failed", "retry_scheduled", "storage_write_completed", "webhook_dispatched",
  "webhook_delivered", "webhook_failed", "webhook_dead_letter", "completed", "failed", "cancelled", "expired",
  "cancel_requested"];
const TERMINAL = new Set(["completed", "failed", "cancelled", "expired"]);
const STATUSES = ["pending", "queued", "running", "completed", "failed", "cancelled", "expired"];
const $ = (id) => document.getElementById(id);
let me = null;
let streams = [];
let cursor = null;

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v; else if (k === "text") node.textContent = v; else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
}

async function api(path, options = {}) {
  const headers = Object.assign({ "Accept": "application/json" }, options.headers || {});
  if (options.method && options.method !== "GET") headers["X-CSRF-Token"] = me ? me.csrf : "";
  if (options.body && typeof options.body !== "string") {
    headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(options.body);
  }
  const response = await fetch(path, Object.assign({}, options, { headers, credentials: "same-origin" }));
  const data = response.status === 204 ? {} : await response.json().catch(() => ({}));
  if (!response.ok) {
    const err = new Error((data.error && data.error.message) || response.statusText);
    err.code = data.error && data.error.code;
    err.status = response.status;
    throw err;
  }
  return data;
}

function when(iso) { return iso ? new Date(iso).toLocaleString() : "–"; }
function statusCell(status) { return el("span", { class: `status-${status}`, text: status }); }

function closeStreams() { streams.forEach((s) => s.close()); streams = []; }

function show(section) {
  for (const id of ["login", "jobs", "job", "webhooks"]) $(id).hidden = id !== section;
  $("app").focus();
}

// ---- jobs list -------------------------------------------------------------------------------
function filters() {
  const form = new FormData($("filters"));
  const params = new URLSearchParams();
  for (const k of ["status", "type", "user"]) if (form.get(k)) params.set(k, form.get(k));
  return { params, since: Number(form.get("since") || 0) };
}

function jobRow(job) {
  const link = el("a", { href: `#/jobs/${job.id}`, text: job.id.slice(0, 12) });
  const row = el("tr", { id: `row-${job.id}`, "data-status": job.status },
    el("td", {}, link), el("td", { text: job.type + (job.mode ? `/${job.mode}` : "") }),
    el("td", {}, statusCell(job.status)), el("td", { text: `${Math.round((job.progress || 0) * 100)}%` }),
    el("td", { text: when(job.created_at) }));
  return row;
}

async function loadJobs(append = false) {
  const { params, since } = filters();
  params.set("limit", "50");
  if (append && cursor) params.set("cursor", cursor);
  const page = await api(`/v1/jobs?${params}`);
  const rows = $("job-rows");
  if (!append) rows.replaceChildren();
  const cutoff = since ? Date.now() - since * 1000 : 0;
  for (const job of page.data) if (!cutoff || Date.parse(job.created_at) >= cutoff) rows.append(jobRow(job));
  cursor = page.next_cursor;
  $("more").hidden = !cursor;
}

async function loadStats() {
  const stats = await api("/dashboard/api/stats");
  $("counts").replaceChildren(...STATUSES.map((s) =>
    el("div", { class: "card", "data-status": s }, el("b", { text: String(stats.counts[s] || 0) }), s)));
  $("depth").textContent = String(stats.queue_depth);
  const max = Math.max(1, ...stats.throughput);
  const w = 240 / stats.throughput.length;
  $("throughput").replaceChildren(...stats.throughput.map((n, i) => {
    const h = (n / max) * 44;
    const r = document.createElementNS("http://www.w3.org/2000/svg", "rect");
    r.setAttribute("x", String(i * w + 1)); r.setAttribute("y", String(46 - h));
    r.setAttribute("width", String(w - 2)); r.setAttribute("height", String(h));
    return r;
  }));
}

let statsTimer = null;
function refreshSoon() {
  clearTimeout(statsTimer);
  statsTimer = setTimeout(() => loadStats().catch(() => {}), 300);
}

async function refreshRow(jobId) {
  const job = await api(`/v1/jobs/${jobId}`);
  const existing = $(`row-${jobId}`);
  const { params } = filters();
  const matches = (!params.get("status") || params.get("status") === job.status) &&
    (!params.get("type") || params.get("type") === job.type) && (!params.get("user") || params.get("user") === job.user);
  if (existing) existing.replaceWith(jobRow(job));
  else if (matches) $("job-rows").prepend(jobRow(job));
}

async function jobsPage() {
  show("jobs");
  await Promise.all([loadJobs(), loadStats()]);
  const feed = new EventSource("/dashboard/feed");
  const onEvent = (e) => { const d = JSON.parse(e.data); refreshRow(d.job_id).catch(() => {}); refreshSoon(); };
  for (const t of EVENT_TYPES) feed.addEventListener(t, onEvent);
  streams.push(feed);
}

// ---- one job ---------------------------------------------------------------------------------
function renderJob(job) {
  $("job-title").textContent = `Job ${job.id}`;
  const facts = [["type", job.type + (job.mode ? `/${job.mode}` : "")], ["status", job.status], ["stage", job.stage],
    ["attempt", `${job.attempt} of ${job.max_attempts}`], ["cost", job.cost], ["user", job.user || "–"],
    ["created", when(job.created_at)], ["started", when(job.started_at)], ["finished", when(job.completed_at)],
    ["error", job.error_code ? `${job.error_code}: ${job.error_message || ""}` : null]];
  $("job-facts").replaceChildren(...facts.filter(([, v]) => v !== null && v !== undefined)
    .flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: String(v), "data-fact": k })]));
  $("job-progress").value = job.progress || 0;
  $("cancel").disabled = TERMINAL.has(job.status) || job.cancel_requested;
  $("retry").disabled = !(me && me.admin) || !["failed", "expired"].includes(job.status);
  const type = (job.result && job.result.content_type) || "";
  $("player").hidden = $("image-result").hidden = $("audio-result").hidden = $("json-result").hidden = true;
  if (job.status === "completed" && job.result_url) {
    const target = type.startsWith("image/") ? $("image-result") : type.startsWith("audio/") ? $("audio-result") : $("player");
    if (target.getAttribute("src") !== job.result_url) target.src = job.result_url;
    target.hidden = false;
  } else if (job.status === "completed" && job.result) {
    $("json-result").textContent = JSON.stringify(job.result, null, 2);
    $("json-result").hidden = false;
  }
}

function timelineItem(type, d) {
  const bits = [d.stage, d.latency_ms !== undefined && d.latency_ms !== null ? `${d.latency_ms} ms` : null,
    d.attempt ? `attempt ${d.attempt}` : null, d.error_code ? `${d.error_code}: ${d.error_msg || ""}` : null];
  return el("li", { "data-type": type, class: type.endsWith("failed") ? "error" : "" },
    el("span", { class: "t", text: d.ts ? new Date(d.ts).toLocaleTimeString() : "" }),
    el("strong", { text: type }), " ", bits.filter(Boolean).join(" · "));
}

async function loadSide(jobId) {
  const ledger = await api(`/dashboard/api/jobs/${jobId}/ledger`);
  $("ledger").replaceChildren(...ledger.data.map((r) => el("tr", {}, el("td", { text: when(r.created_at) }),
    el("td", { text: r.reason }), el("td", { text: String(r.round) }), el("td", { text: String(r.amount) }))));
  const deliveries = await api(`/dashboard/api/jobs/${jobId}/deliveries`);
  $("job-deliveries").replaceChildren(...deliveries.data.map(deliveryRow));
}

async function jobPage(jobId) {
  show("job");
  $("timeline").replaceChildren();
  $("action-result").textContent = "";
  // Wired before the first await: the buttons are enabled by the first render, and a click that
  // lands before the side panels load must not fall on the previous job's handler or on none.
  $("cancel").onclick = () => act(`/v1/jobs/${jobId}/cancel`, jobId);
  $("retry").onclick = () => act(`/v1/admin/jobs/${jobId}/retry`, jobId);
  $("cancel").disabled = $("retry").disabled = true;  // until this job's first render says otherwise
  const job = await api(`/v1/jobs/${jobId}`);
  renderJob(job);
  await loadSide(jobId);
  const stream = new EventSource(`/v1/jobs/${jobId}/events`);
  const onEvent = (e) => {
    const d = JSON.parse(e.data);
    $("timeline").append(timelineItem(e.type, d));
    api(`/v1/jobs/${jobId}`).then(renderJob).catch(() => {});
    if (TERMINAL.has(e.type) || e.type.startsWith("webhook_")) loadSide(jobId).catch(() => {});
  };
  for (const t of EVENT_TYPES) stream.addEventListener(t, onEvent);
  streams.push(stream);
  // Progress is written to the job about once a second; the stream carries stage boundaries only.
  const poll = setInterval(async () => {
    if (location.hash !== `#/jobs/${jobId}`) return clearInterval(poll);
    const fresh = await api(`/v1/jobs/${jobId}`).catch(() => null);
    if (fresh) { renderJob(fresh); if (fresh.terminal) clearInterval(poll); }
  }, 1000);
}

async function act(path, jobId) {
  const out = $("action-result");
  try {
    const job = await api(path, { method: "POST" });
    out.className = "";
    out.textContent = job.status === "running" && job.cancel_requested ? "cancel requested" : `now ${job.status}`;
    renderJob(job);
  } catch (err) {
    out.className = "refused";
    out.textContent = `refused: ${err.message} (${err.code || err.status})`;
  }
}

// ---- webhooks --------------------------------------------------------------------------------
function deliveryRow(d, replay = false) {
  const row = el("tr", {}, el("td", { text: when(d.created_at) }), el("td", { text: d.event_type }),
    el("td", {}, statusCell(d.status)), el("td", { text: String(d.attempts) }),
    el("td", { text: d.last_status_code ? String(d.last_status_code) : (d.last_error || "–") }));
  if (replay) {
    const b = el("button", { type: "button", text: "Replay", "aria-label": `Replay delivery ${d.id}` });
    b.onclick = async () => { await api(`/v1/webhooks/deliveries/${d.id}/replay`, { method: "POST" }); b.textContent = "queued"; };
    row.append(el("td", {}, b));
  }
  return row;
}

async function webhooksPage() {
  show("webhooks");
  const endpoints = await api("/v1/webhooks");
  $("endpoints").replaceChildren(...endpoints.data.map((ep) => {
    const b = el("button", { type: "button", text: "Deliveries", "aria-label": `Deliveries of ${ep.url}` });
    b.onclick = () => showEndpoint(ep);
    return el("tr", {}, el("td", { text: ep.url }), el("td", { text: ep.enabled ? "yes" : "no" }),
      el("td", { text: when(ep.failing_since) }), el("td", { text: ep.disabled_reason || "" }), el("td", {}, b));
  }));
}

async function showEndpoint(ep) {
  $("endpoint-detail").hidden = false;
  $("endpoint-title").textContent = `Deliveries to ${ep.url}`;
  const page = await api(`/v1/webhooks/${ep.id}/deliveries`);
  $("deliveries").replaceChildren(...page.data.map((d) => deliveryRow(d, true)));
  $("replay-range").onsubmit = async (e) => {
    e.preventDefault();
    const f = new FormData(e.target);
    const body = { from: new Date(f.get("from")).toISOString(), to: new Date(f.get("to")).toISOString() };
    const res = await api(`/v1/webhooks/${ep.id}/replay`, { method: "POST", body });
    e.target.querySelector("button").textContent = `queued ${res.replayed}`;
  };
}

// ---- routing ---------------------------------------------------------------------------------
async function route() {
  closeStreams();
  try {
    me = await api("/dashboard/api/me");
  } catch (err) {
    show("login");
    $("logout").hidden = true;
    $("login-error").hidden = !location.search.includes("failed");
    return;
  }
  $("who").textContent = me.admin ? `admin · ${me.project_id}` : me.project_id;
  $("logout").hidden = false;
  $("logout-csrf").value = me.csrf;
  const hash = location.hash || "#/";
  const m = hash.match(/^#\/jobs\/([0-9a-zA-Z_-]+)$/);
  if (m) return jobPage(m[1]);
  if (hash === "#/webhooks") return webhooksPage();
  return jobsPage();
}

window.addEventListener("hashchange", () => route().catch(console.error));
window.addEventListener("DOMContentLoaded", () => {
  const select = document.querySelector("#filters select[name=status]");
  for (const s of STATUSES) select.append(el("option", { value: s, text: s }));
  $("filters").addEventListener("submit", (e) => { e.preventDefault(); loadJobs().catch(console.error); });
  $("more").addEventListener("click", () => loadJobs(true).catch(console.error));
  route().catch(console.error);
});
