// Trainyard web UI: a hash-routed single page over the public REST API (/v1). No framework and no
// build step; each page is a function that renders into #view and returns a cleanup function.

import { LogView } from "./logview.js";
import { drawChart } from "./chart.js";
import { arraySection } from "./arrays.js";
import { usagePanel } from "./usage.js";

const TOKEN_KEY = "trainyard.token";
const STATUSES = ["PENDING", "SCHEDULED", "RUNNING", "CANCELLING", "SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT", "PREEMPTED", "LOST"];
const TERMINAL = new Set(["SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT"]);
const PAGE_SIZE = 50;

let token = localStorage.getItem(TOKEN_KEY);

// ---- helpers -------------------------------------------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (k === "value") e.value = v;
    else if (k === "checked") e.checked = !!v;
    else e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) if (c !== null && c !== undefined && c !== false) e.append(c);
  return e;
}

function badge(status) {
  return el("span", { class: `badge s-${(status || "").toLowerCase()}`, "data-status": status }, status || "?");
}

function bytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  let v = Number(n);
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return `${v >= 10 || i === 0 ? v.toFixed(0) : v.toFixed(1)} ${units[i]}`;
}

function ago(iso) {
  if (!iso) return "–";
  const s = (Date.now() - Date.parse(iso)) / 1000;
  if (s < 0) return "in " + dur(-s);
  if (s < 5) return "just now";
  return dur(s) + " ago";
}

function dur(s) {
  if (s === null || s === undefined || Number.isNaN(s)) return "–";
  if (s < 60) return `${s.toFixed(s < 10 ? 1 : 0)}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${Math.floor(s % 60)}s`;
  return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
}

// An estimated start, read at a glance after "starts": "any moment" (due within a minute, or past),
// "in 3 min" or "in 2 h 5 min" when near (rounded up: it is a latest start), else a local clock time
// in the browser's locale: "at 14:05", "tomorrow at 09:30", "on Wed, 5 Mar at 14:05". `yard get`
// says the same (cli/output.py).
const ETA_NEAR_S = 3 * 3600;
function eta(iso, now = Date.now()) {
  const t = Date.parse(iso);
  const s = (t - now) / 1000;
  if (!iso || Number.isNaN(s)) return iso || "";
  if (s < 60) return "any moment";
  if (s < ETA_NEAR_S) {
    const m = Math.ceil(s / 60);
    const h = Math.floor(m / 60);
    return h ? `in ${h} h` + (m % 60 ? ` ${m % 60} min` : "") : `in ${m} min`;
  }
  const at = new Date(Math.ceil(t / 60000) * 60000); // to the minute, rounded up as well
  const hm = at.toLocaleTimeString([], { hour: "numeric", minute: "2-digit" });
  const midnight = (d) => new Date(d.getFullYear(), d.getMonth(), d.getDate()).getTime();
  const today = new Date(now);
  const days = Math.round((midnight(at) - midnight(today)) / 86400000);
  if (days === 0) return `at ${hm}`;
  if (days === 1) return `tomorrow at ${hm}`;
  const opts = { weekday: "short", day: "numeric", month: "short" };
  if (at.getFullYear() !== today.getFullYear()) opts.year = "numeric";
  return `on ${at.toLocaleDateString([], opts)} at ${hm}`;
}

function etaText(j) {
  return j.status === "PENDING" && j.estimated_start_at ? `starts ${eta(j.estimated_start_at)} (latest estimate)` : "";
}

function span(a, b) {
  if (!a) return null;
  return ((b ? Date.parse(b) : Date.now()) - Date.parse(a)) / 1000;
}

function time(iso) {
  return iso ? el("time", { datetime: iso, title: iso }, new Date(iso).toLocaleString()) : "–";
}

function debounce(fn, ms) {
  let t = 0;
  const d = (...a) => { clearTimeout(t); t = setTimeout(() => fn(...a), ms); };
  d.cancel = () => clearTimeout(t);
  return d;
}

// At most one call per `ms`, the last one always made. Unlike debounce, a steady stream of calls
// (thousands of running jobs send events all the time) still gets through once per `ms`.
function throttle(fn, ms) {
  let t = 0, last = 0;
  const run = () => { t = 0; last = Date.now(); fn(); };
  const d = () => { if (!t) t = setTimeout(run, Math.max(0, last + ms - Date.now())); };
  d.cancel = () => { clearTimeout(t); t = 0; };
  return d;
}

function bar(used, total, label) {
  const pct = total > 0 ? Math.min(100, (100 * used) / total) : 0;
  return el("div", { class: "bar", title: label },
    el("div", { class: pct > 90 ? "fill hot" : "fill", style: `width:${pct}%` }),
    el("span", {}, label));
}

class ApiError extends Error {
  constructor(status, body) {
    const err = (body && body.error) || {};
    super(err.message || `HTTP ${status}`);
    this.status = status;
    this.code = err.code;
    this.details = err.details || [];
  }
}

async function api(path, { method = "GET", body, signal } = {}) {
  const headers = { Authorization: `Bearer ${token}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const resp = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), signal });
  const text = await resp.text();
  const data = text ? JSON.parse(text) : null;
  if (resp.status === 401) logout("Your token was refused; log in again.");
  if (!resp.ok) throw new ApiError(resp.status, data);
  return data;
}

// Server-sent events over fetch: EventSource cannot send an Authorization header, and a token in the
// URL would end up in proxy logs. Resolves when the stream ends; rejects on network errors.
async function sse(path, onEvent, signal, onOpen) {
  const resp = await fetch(path, { headers: { Authorization: `Bearer ${token}`, Accept: "text/event-stream" }, signal });
  if (resp.status === 401) logout("Your token was refused; log in again.");
  if (!resp.ok) throw new ApiError(resp.status, await resp.json().catch(() => null));
  if (onOpen) onOpen();
  const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += value;
    let cut;
    while ((cut = buf.indexOf("\n\n")) >= 0) {
      const block = buf.slice(0, cut);
      buf = buf.slice(cut + 2);
      let event = "message";
      let id = null;
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        const val = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (field === "event") event = val;
        else if (field === "data") data.push(val);
        else if (field === "id") id = val;
      }
      if (data.length) onEvent(event, data.join("\n"), id);
    }
  }
}

// ---- the live event stream: one per tab, shared by every page ------------------------------------

const hub = {
  listeners: new Set(),
  lastId: null,
  ctrl: null,
  on(fn) { this.listeners.add(fn); return () => this.listeners.delete(fn); },
  async run() {
    if (this.ctrl) return;
    const ctrl = (this.ctrl = new AbortController());
    const live = document.getElementById("live");
    while (!ctrl.signal.aborted && token) {
      const after = this.lastId !== null ? `?after=${this.lastId}` : "";
      try {
        await sse(`/v1/events${after}`, (event, data, id) => {
          if (event !== "job_event") return;
          if (id !== null) this.lastId = id;
          const ev = JSON.parse(data);
          for (const fn of this.listeners) {
            try { fn(ev); } catch (e) { console.error(e); }
          }
        }, ctrl.signal, () => {
          live.hidden = false;
          live.classList.remove("down");
          for (const fn of this.listeners) if (fn.reconnected) fn.reconnected();
        });
      } catch (e) {
        if (ctrl.signal.aborted) break;
      }
      live.classList.add("down");
      await new Promise((r) => setTimeout(r, 1000));
    }
  },
  stop() {
    if (this.ctrl) this.ctrl.abort();
    this.ctrl = null;
    this.lastId = null;
  },
};

// ---- login ---------------------------------------------------------------------------------------

function logout(message) {
  localStorage.removeItem(TOKEN_KEY);
  token = null;
  hub.stop();
  showLogin(message);
}

function showLogin(message) {
  if (cleanup) { cleanup(); cleanup = null; }
  document.getElementById("view").replaceChildren();
  document.getElementById("nav").hidden = true;
  document.getElementById("logout").hidden = true;
  document.getElementById("live").hidden = true;
  document.getElementById("login").hidden = false;
  const err = document.getElementById("login-error");
  err.hidden = !message;
  err.textContent = message || "";
}

async function login(candidate) {
  token = candidate;
  try {
    await api("/v1/teams");
  } catch (e) {
    token = null;
    showLogin(e.status === 401 ? "That token is not valid." : `Cannot reach the API: ${e.message}`);
    return;
  }
  localStorage.setItem(TOKEN_KEY, candidate);
  document.getElementById("login").hidden = true;
  document.getElementById("nav").hidden = false;
  document.getElementById("logout").hidden = false;
  hub.run();
  route();
}

// ---- router --------------------------------------------------------------------------------------

let cleanup = null;

function parseHash() {
  const h = location.hash.replace(/^#\/?/, "");
  const [path, query] = h.split("?");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  return { page: parts[0] || "jobs", arg: parts[1], params: new URLSearchParams(query || "") };
}

function route() {
  if (!token) return;
  if (cleanup) { cleanup(); cleanup = null; }
  const { page, arg, params } = parseHash();
  for (const a of document.querySelectorAll("#nav a")) a.classList.toggle("active", a.dataset.page === (page === "job" ? "jobs" : page));
  const view = document.getElementById("view");
  view.replaceChildren();
  view.className = ""; // a page's own look (the array page's) ends with it
  const pages = { jobs: jobsPage, job: jobPage, fleet: fleetPage, queues: queuesPage, submit: submitPage };
  const fn = pages[page] || jobsPage;
  document.title = `Trainyard · ${page}`;
  cleanup = fn(view, arg, params) || null;
}

// ---- jobs ----------------------------------------------------------------------------------------

function jobsPage(view, _arg, params) {
  const filters = {
    status: params.get("status") || "",
    team: params.get("team") || "",
    user: params.get("user") || "",
    name: params.get("name") || "",
  };
  // Cursor of each page visited: the API pages by keyset (newest first) and never counts every
  // job, so the pager says "1–50 of many" and steps a page at a time.
  const cursors = [null];
  const rows = new Map(); // job id -> {tr, job}
  const ctrl = new AbortController();

  const statusSel = el("select", { name: "status", "data-testid": "filter-status" },
    el("option", { value: "" }, "any status"),
    ...STATUSES.map((s) => el("option", { value: s }, s)));
  statusSel.value = filters.status;
  const input = (name) => el("input", { name, placeholder: name, value: filters[name], "data-testid": `filter-${name}` });
  const teamIn = input("team"), userIn = input("user"), nameIn = input("name");
  const form = el("form", { class: "filters", onsubmit: (ev) => { ev.preventDefault(); apply(); } },
    statusSel, teamIn, userIn, nameIn, el("button", { type: "submit" }, "Filter"),
    el("button", { type: "button", class: "link", onclick: () => { location.hash = "#/jobs"; } }, "clear"));
  statusSel.addEventListener("change", () => apply());

  function apply() {
    const q = new URLSearchParams();
    if (statusSel.value) q.set("status", statusSel.value);
    for (const i of [teamIn, userIn, nameIn]) if (i.value.trim()) q.set(i.name, i.value.trim());
    const next = `#/jobs${q.toString() ? "?" + q : ""}`;
    if (location.hash === next) load(); else location.hash = next;
  }

  const tbody = el("tbody", { "data-testid": "jobs-body" });
  const table = el("table", { class: "jobs" },
    el("thead", {}, el("tr", {}, ...["Job", "Name", "Status", "User", "Team", "Pool", "Priority", "Created", "Runtime", "Attempts", "Why / result"].map((h) => el("th", {}, h)))),
    tbody);
  const pageLabel = el("span", { class: "muted" });
  const newer = el("button", { onclick: () => { cursors.pop(); load(); }, "data-testid": "page-newer" }, "‹ Newer");
  const newest = el("button", { onclick: () => { cursors.length = 1; load(); } }, "« Newest");
  const older = el("button", { onclick: () => { cursors.push(nextCursor); load(); }, "data-testid": "page-older" }, "Older ›");
  const error = el("p", { class: "error", hidden: true });
  let nextCursor = null;
  view.append(el("h1", {}, "Jobs"), form, error, table, el("div", { class: "pager" }, newest, newer, pageLabel, older));

  function rowFor(j) {
    const why = j.array ? `array: ${j.array.done} of ${j.array.tasks} tasks done` + (j.reason ? ` · ${j.reason}` : "")
      : j.status === "PENDING" ? j.pending_reason || "" : j.reason || (j.exit_code !== null ? `exit ${j.exit_code}` : "");
    const tr = el("tr", { "data-job": j.id },
      el("td", {}, el("a", { href: `#/job/${j.id}` }, j.id)),
      el("td", {}, j.name || ""),
      el("td", { class: "status" }, badge(j.status)),
      el("td", {}, j.user), el("td", {}, j.team), el("td", {}, j.pool || "default"), el("td", {}, j.priority),
      el("td", {}, el("span", { title: j.created_at }, ago(j.created_at))),
      el("td", { class: "runtime" }, j.started_at ? dur(span(j.started_at, j.finished_at)) : "–"),
      el("td", {}, String(j.attempt)),
      el("td", { class: "why" }, why, j.status === "PENDING" && j.estimated_start_at
        ? el("div", { class: "muted small eta", title: new Date(j.estimated_start_at).toLocaleString() }, etaText(j)) : null));
    return tr;
  }

  async function load() {
    const q = new URLSearchParams({ limit: String(PAGE_SIZE) });
    for (const [k, v] of Object.entries(filters)) if (v) q.set(k, v);
    const cursor = cursors[cursors.length - 1];
    if (cursor) q.set("cursor", cursor);
    try {
      const data = await api(`/v1/jobs?${q}`, { signal: ctrl.signal });
      error.hidden = true;
      nextCursor = data.next_cursor;
      rows.clear();
      tbody.replaceChildren(...data.jobs.map((j) => {
        const tr = rowFor(j);
        rows.set(j.id, { tr, job: j });
        return tr;
      }));
      if (!data.jobs.length) tbody.append(el("tr", {}, el("td", { colspan: "11", class: "muted" }, "no jobs")));
      const first = (cursors.length - 1) * PAGE_SIZE;
      pageLabel.textContent = !data.jobs.length ? "no jobs"
        : `${first + 1}–${first + data.jobs.length}${nextCursor ? " of many" : ` of ${first + data.jobs.length}`}`;
      newer.disabled = newest.disabled = cursors.length === 1;
      older.disabled = !nextCursor;
    } catch (e) {
      if (ctrl.signal.aborted) return;
      error.hidden = false;
      error.textContent = e.message;
    }
  }

  const refreshRow = new Map();
  async function refresh(id) {
    refreshRow.delete(id);
    try {
      const j = await api(`/v1/jobs/${id}`, { signal: ctrl.signal });
      const r = rows.get(id);
      if (!r) return;
      const tr = rowFor(j);
      r.tr.replaceWith(tr);
      rows.set(id, { tr, job: j });
    } catch (_) { /* the row keeps what the event said */ }
  }
  const reloadFirst = throttle(load, 1000);

  // Paint the new status from the event itself (no round trip), then fetch the row for the details.
  function onEvent(ev) {
    const r = rows.get(ev.job_id);
    if (r) {
      if (ev.to_status) {
        r.tr.querySelector("td.status").replaceChildren(badge(ev.to_status));
        r.job.status = ev.to_status;
      }
      if (!refreshRow.has(ev.job_id)) refreshRow.set(ev.job_id, setTimeout(() => refresh(ev.job_id), 200));
    } else if (cursors.length === 1 && entersPage(ev)) {
      reloadFirst(); // a new job (or one entering the filter) belongs on the first page
    }
  }
  // Only a new job, or one moving into the filtered status, can join the first page: the events of
  // the thousands of other running jobs need no reload.
  function entersPage(ev) {
    if (filters.status) return ev.to_status === filters.status;
    return ev.type === "submitted" && !ev.job_id.includes("-"); // not an array's task or a gang's rank
  }
  onEvent.reconnected = () => load();
  const off = hub.on(onEvent);
  let ticks = 0;
  const tick = setInterval(() => {
    let pending = false;
    for (const { tr, job } of rows.values()) {
      if (job.started_at && !job.finished_at) tr.querySelector("td.runtime").textContent = dur(span(job.started_at, null));
      const e = tr.querySelector("td.why .eta");
      if (e) e.textContent = etaText(job);
      pending ||= job.status === "PENDING";
    }
    // Queue places, estimates and reasons move without job events: refresh a page that shows waiting jobs.
    if (pending && ++ticks % 10 === 0) load();
  }, 1000);
  load();
  return () => { off(); ctrl.abort(); clearInterval(tick); reloadFirst.cancel(); for (const t of refreshRow.values()) clearTimeout(t); };
}

// ---- one job -------------------------------------------------------------------------------------

function jobPage(view, id) {
  const ctrl = new AbortController();
  let job = null;
  const head = el("div", { class: "jobhead" });
  const pending = el("div", { class: "notice", hidden: true, "data-testid": "pending-reason" });
  const attemptsBody = el("tbody", { "data-testid": "attempts" });
  const eventsList = el("ol", { class: "timeline", "data-testid": "timeline" });
  const specPre = el("pre", { class: "spec", "data-testid": "spec" });
  const charts = el("div", { class: "charts", "data-testid": "charts" });
  const artifacts = el("tbody", { "data-testid": "artifacts" });
  const error = el("p", { class: "error", hidden: true });
  const logs = new LogView({ onDownload: () => downloadLog() });
  view.append(
    head, error, pending,
    el("div", { class: "grid2" },
      el("section", {}, el("h2", { class: "job-only" }, "Attempts"),
        el("table", { class: "attempts job-only" }, el("thead", {}, el("tr", {}, ...["#", "Worker", "Status", "Scheduled", "Started", "Finished", "Duration", "Exit", "Reason"].map((h) => el("th", {}, h)))), attemptsBody),
        el("h2", {}, "Timeline"), eventsList),
      el("section", {}, el("h2", {}, "Spec"), specPre)),
    el("h2", { class: "job-only" }, "Metrics"), charts,
    el("h2", { class: "job-only" }, "Logs"), logs.root,
    el("h2", { class: "job-only" }, "Artifacts"),
    el("table", { class: "artifacts job-only" }, el("thead", {}, el("tr", {}, ...["Path", "Size", "SHA-256", "Attempt", ""].map((h) => el("th", {}, h)))), artifacts));

  function renderHead() {
    const j = job;
    const buttons = [];
    if (!TERMINAL.has(j.status)) buttons.push(el("button", { class: "danger", "data-testid": "cancel", onclick: cancel }, j.status === "CANCELLING" ? "Cancelling…" : "Cancel"));
    if (TERMINAL.has(j.status) && !j.array && !j.archived) buttons.push(el("button", { "data-testid": "restart", onclick: restart }, "Restart"));
    head.replaceChildren(
      el("h1", {}, j.name || j.id, " ", el("span", { "data-testid": "job-status" }, badge(j.status)),
        j.archived ? el("span", { class: "badge s-archived", "data-testid": "archived", title: "retention moved it to object storage: read-only" }, "archived") : null),
      el("div", { class: "meta" },
        el("span", {}, "id ", el("code", {}, j.id)), el("span", {}, `user ${j.user}`), el("span", {}, `team ${j.team}`),
        el("span", {}, `pool ${j.pool || "default"}`), el("span", {}, `priority ${j.priority}`),
        el("span", {}, "created ", time(j.created_at)),
        j.finished_at ? el("span", {}, `ran ${dur(span(j.started_at, j.finished_at))}`) : null,
        j.exit_code !== null ? el("span", {}, `exit ${j.exit_code}`) : null,
        j.reason ? el("span", {}, `reason: ${j.reason}`) : null,
        j.retry_after ? el("span", {}, "retry after ", time(j.retry_after)) : null,
        // A gang: rank 0 is this job; the other ranks are jobs of their own (logs, attempts).
        (j.replicas || []).length ? el("span", {}, `gang of ${j.replicas.length + 1}: `,
          ...j.replicas.flatMap((r) => [el("a", { href: `#/job/${r.job_id}` }, `rank ${r.rank}`), " ", badge(r.status), " "])) : null,
        j.gang_id && j.gang_id !== j.id ? el("span", {}, `rank ${j.rank} of gang `, el("a", { href: `#/job/${j.gang_id}` }, j.gang_id)) : null,
        j.array_id ? el("span", {}, `task ${j.array_index} of array `, el("a", { href: `#/job/${j.array_id}`, "data-testid": "array-link" }, j.array_id)) : null),
      el("div", { class: "actions" }, ...buttons));
    pending.hidden = j.status !== "PENDING";
    pending.textContent = j.status === "PENDING" ? [
      `Waiting: ${j.pending_reason || "queued for the next scheduling cycle"}`,
      j.queue_position ? `#${j.queue_position} in team ${j.team}'s queue` : "",
      etaText(j),
    ].filter(Boolean).join(" · ") : "";
    attemptsBody.replaceChildren(...j.attempts.map((a) => {
      const rows = [el("tr", {},
        el("td", {}, String(a.number)), el("td", {}, a.worker_id || "–"), el("td", {}, badge(a.status), a.outcome ? ` ${a.outcome}` : ""),
        el("td", {}, time(a.scheduled_at)), el("td", {}, time(a.started_at)), el("td", {}, time(a.finished_at)),
        el("td", {}, a.started_at ? dur(span(a.started_at, a.finished_at)) : "–"),
        el("td", {}, a.exit_code === null ? "–" : String(a.exit_code)), el("td", {}, a.reason || ""))];
      if (a.stderr_tail) rows.push(el("tr", { class: "stderr" }, el("td", { colspan: "9" }, el("details", {}, el("summary", {}, "stderr tail"), el("pre", {}, a.stderr_tail)))));
      return rows;
    }).flat());
    if (!j.attempts.length) attemptsBody.append(el("tr", {}, el("td", { colspan: "9", class: "muted" }, "not started yet")));
    specPre.textContent = JSON.stringify(j.spec, null, 2);
  }

  let lastEvent = 0;
  function addEvent(e) {
    if (e.id <= lastEvent) return; // the stream is at-least-once
    lastEvent = e.id;
    const data = e.data && Object.keys(e.data).length ? JSON.stringify(e.data) : "";
    eventsList.append(el("li", {}, time(e.at), " ", e.from_status ? badge(e.from_status) : "", " → ", badge(e.to_status),
      e.attempt ? ` attempt ${e.attempt}` : "", data ? el("code", { class: "muted" }, ` ${data}`) : ""));
  }

  let tasksShown = false;
  async function load() {
    try {
      job = await api(`/v1/jobs/${id}`, { signal: ctrl.signal });
      error.hidden = true;
      renderHead();
      // An array: its tasks in a grid (arrays.js), under the head; it has no log of its own.
      if (job.array && !tasksShown) {
        tasksShown = true;
        view.classList.add("array-page");
        pending.after(arraySection(job, { el, badge, api, debounce, hub }, ctrl.signal));
      }
      loadArtifacts();
    } catch (e) {
      if (ctrl.signal.aborted) return;
      error.hidden = false;
      error.textContent = e.status === 404 ? `No job ${id}.` : e.message;
    }
  }
  const reload = debounce(load, 100);

  async function loadEvents() {
    try {
      const data = await api(`/v1/jobs/${id}/events?after=${lastEvent}`, { signal: ctrl.signal });
      data.events.forEach(addEvent);
    } catch (_) { /* shown by load() */ }
  }

  async function loadArtifacts() {
    try {
      const data = await api(`/v1/jobs/${id}/artifacts`, { signal: ctrl.signal });
      artifacts.replaceChildren(...data.artifacts.map((a) => el("tr", {},
        el("td", {}, a.path), el("td", {}, bytes(a.size)), el("td", {}, el("code", { title: a.sha256 }, a.sha256.slice(0, 12))),
        el("td", {}, String(a.attempt)),
        el("td", {}, el("a", { href: "#", "data-artifact": a.path, onclick: (ev) => { ev.preventDefault(); downloadArtifact(a.path); } }, "download")))));
      if (!data.artifacts.length) artifacts.append(el("tr", {}, el("td", { colspan: "5", class: "muted" }, TERMINAL.has(job.status) ? "no artifacts" : "uploaded when the job ends")));
    } catch (_) { /* keep the last listing */ }
  }

  // The listing's URLs are presigned and short-lived: ask for a fresh one at the moment of the click.
  async function downloadArtifact(path) {
    const data = await api(`/v1/jobs/${id}/artifacts`);
    const a = data.artifacts.find((x) => x.path === path);
    if (!a) return;
    const link = el("a", { href: a.url, download: path.split("/").pop() });
    document.body.append(link);
    link.click();
    link.remove();
  }

  async function downloadLog() {
    const resp = await fetch(`/v1/jobs/${id}/logs`, { headers: { Authorization: `Bearer ${token}` } });
    const blob = await resp.blob();
    const url = URL.createObjectURL(blob);
    const link = el("a", { href: url, download: `${id}.log` });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  }

  async function cancel() {
    if (!confirm(`Cancel job ${id}?`)) return;
    try { job = await api(`/v1/jobs/${id}`, { method: "DELETE" }); renderHead(); } catch (e) { alert(e.message); }
  }

  async function restart() {
    try { job = await api(`/v1/jobs/${id}/restart`, { method: "POST" }); renderHead(); if (!logsRunning) followLogs(); } catch (e) { alert(e.message); }
  }

  // ---- metrics: fetched from the API, refetched when the log shows the job logged a new point ----
  const canvases = new Map();
  async function loadMetrics() {
    try {
      const data = await api(`/v1/jobs/${id}/metrics`, { signal: ctrl.signal });
      const names = Object.keys(data.series).sort();
      if (!names.length) {
        charts.replaceChildren(el("p", { class: "muted" }, "No metrics: a job logs them with trainyard.job.log_metric(name, value, step)."));
        canvases.clear();
        return;
      }
      if (canvases.size === 0) charts.replaceChildren();
      for (const name of names) {
        let c = canvases.get(name);
        if (!c) {
          c = el("canvas", { class: "chart", "data-metric": name });
          canvases.set(name, c);
          charts.append(c);
        }
        drawChart(c, name, data.series[name]);
      }
    } catch (_) { /* keep the last charts */ }
  }
  let metricTimer = 0;
  const metricsSoon = () => { if (!metricTimer) metricTimer = setTimeout(() => { metricTimer = 0; loadMetrics(); }, 500); };

  let logCtrl = null;
  let logsRunning = false;
  async function followLogs() {
    if (logCtrl) logCtrl.abort();
    const mine = (logCtrl = new AbortController());
    ctrl.signal.addEventListener("abort", () => mine.abort());
    logsRunning = true;
    logs.clear();
    let backoff = 500;
    let offset = 0;
    let attempt = null;
    try {
      while (!mine.signal.aborted) {
        const q = attempt === null ? "" : `&attempt=${attempt}&since=${offset}`;
        let end = null;
        try {
          await sse(`/v1/jobs/${id}/logs?follow=true${q}`, (event, data) => {
            // A newer follow replaced this one (a status event raced the first load): the rest of
            // this stream's buffered events must not land in the view the newer one cleared.
            if (mine.signal.aborted) return;
            const d = JSON.parse(data);
            if (event === "log") {
              attempt = d.attempt;
              offset = d.offset + new TextEncoder().encode(d.text).length;
              logs.append(d.text);
              if (d.text.includes("TRAINYARD_METRIC ")) metricsSoon();
            } else if (event === "attempt") {
              logs.append(`\n\x1b[2m[trainyard: attempt ${d.attempt} on worker ${d.worker_id || "?"}]\x1b[0m\n`);
              attempt = d.attempt;
              offset = 0;
              metricsSoon();
            } else if (event === "end") {
              end = d;
            }
          }, mine.signal);
        } catch (e) {
          if (mine.signal.aborted || e.status === 404) return;
        }
        if (end && TERMINAL.has(end.status)) return;
        if (end) {
          // A resumed stream was pinned to an attempt that ended while the job goes on: start over
          // on the job's current attempt.
          attempt = null;
          logs.clear();
          continue;
        }
        // The stream broke (replica restart, network): resume from the last byte we have.
        await new Promise((r) => setTimeout(r, backoff));
        backoff = Math.min(5000, backoff * 2);
        if (attempt === null) logs.clear();
      }
    } finally {
      if (logCtrl === mine) logsRunning = false;
    }
  }

  const off = hub.on((ev) => {
    if (ev.job_id !== id) return;
    addEvent(ev);
    if (job && ev.to_status) {
      // Show the new state at once; the full view (attempts, reasons) follows a moment later.
      job.status = ev.to_status;
      head.querySelector("[data-testid=job-status]").replaceChildren(badge(ev.to_status));
    }
    reload();
    if (ev.to_status && TERMINAL.has(ev.to_status)) { loadArtifacts(); metricsSoon(); }
    // A restarted job gets a new attempt; the stream of the old one ended with the old job.
    if (!logsRunning && ev.to_status && !TERMINAL.has(ev.to_status)) followLogs();
  });

  // A waiting job's place, estimate and reason move without job events: read them again while it waits.
  const waiting = setInterval(() => { if (job && job.status === "PENDING") reload(); }, 5000);
  // An array runs nothing itself: its page is its tasks (no attempts, metrics, log or artifacts).
  load().then(() => { loadEvents(); if (!tasksShown) { loadMetrics(); followLogs(); } });
  return () => { off(); ctrl.abort(); reload.cancel(); clearTimeout(metricTimer); clearInterval(waiting); };
}

// ---- fleet ---------------------------------------------------------------------------------------

// GPU utilization is exported to Prometheus only (the workers report it with their heartbeats).
async function gpuUtilization() {
  const out = new Map();
  try {
    const resp = await fetch("/metrics");
    const text = await resp.text();
    const re = /^trainyard_gpu_utilization_ratio\{([^}]*)\}\s+(\S+)/gm;
    let m;
    while ((m = re.exec(text)) !== null) {
      const labels = Object.fromEntries([...m[1].matchAll(/(\w+)="([^"]*)"/g)].map((x) => [x[1], x[2]]));
      if (!out.has(labels.worker)) out.set(labels.worker, []);
      out.get(labels.worker).push({ gpu: labels.gpu, value: Number(m[2]) });
    }
  } catch (_) { /* no utilization shown */ }
  return out;
}

function fleetPage(view) {
  const ctrl = new AbortController();
  const summary = el("div", { class: "cards" });
  const body = el("div", {});
  const error = el("p", { class: "error", hidden: true });
  view.append(el("h1", {}, "Fleet"), error, summary, body);

  async function load() {
    try {
      const [data, util] = await Promise.all([api("/v1/workers", { signal: ctrl.signal }), gpuUtilization()]);
      error.hidden = true;
      const pools = new Map();
      for (const w of data.workers) {
        if (!pools.has(w.pool)) pools.set(w.pool, []);
        pools.get(w.pool).push(w);
      }
      const live = data.workers.filter((w) => w.status === "ALIVE");
      const sum = (ws, f) => ws.reduce((a, w) => a + f(w), 0);
      summary.replaceChildren(
        card("Workers", `${live.length} alive`, `${data.workers.length - live.length} draining, dead or unresponsive`),
        card("CPU", `${sum(live, (w) => w.allocated.cpu).toFixed(1)} / ${sum(live, (w) => w.capacity.cpu)}`, "cores allocated"),
        card("Memory", `${bytes(sum(live, (w) => w.allocated.memory))} / ${bytes(sum(live, (w) => w.capacity.memory))}`, "allocated"),
        card("GPU", `${sum(live, (w) => w.allocated.gpu)} / ${sum(live, (w) => w.capacity.gpu)}`, "allocated"));
      body.replaceChildren(...[...pools.entries()].sort().map(([pool, ws]) => el("section", {},
        el("h2", {}, `Pool ${pool}`, el("span", { class: "muted" }, ` · ${ws.filter((w) => w.status === "ALIVE").length}/${ws.length} alive`)),
        el("table", { class: "workers", "data-testid": `pool-${pool}` },
          el("thead", {}, el("tr", {}, ...["Worker", "Status", "Host", "Region", "CPU", "Memory", "GPU", "GPU utilization", "Jobs", "Heartbeat", "Labels"].map((h) => el("th", {}, h)))),
          el("tbody", {}, ...ws.map((w) => el("tr", { class: `w-${w.status.toLowerCase()}` },
            el("td", {}, w.name, el("div", { class: "muted small" }, w.id)),
            el("td", {}, badge(w.status)),
            el("td", {}, w.hostname), el("td", {}, w.region || "–"),
            el("td", {}, bar(w.allocated.cpu, w.capacity.cpu, `${w.allocated.cpu} / ${w.capacity.cpu}`)),
            el("td", {}, bar(w.allocated.memory, w.capacity.memory, `${bytes(w.allocated.memory)} / ${bytes(w.capacity.memory)}`)),
            el("td", {}, w.capacity.gpu ? bar(w.allocated.gpu, w.capacity.gpu, `${w.allocated.gpu} / ${w.capacity.gpu} ${w.capacity.gpu_type || ""}`) : "–"),
            el("td", {}, ...(util.get(w.id) || []).sort((a, b) => a.gpu - b.gpu).map((g) => bar(g.value, 1, `GPU ${g.gpu}: ${(100 * g.value).toFixed(0)}%`)),
              w.capacity.gpu && !util.get(w.id) ? el("span", { class: "muted" }, "not reported") : ""),
            el("td", {}, String(w.running)),
            el("td", {}, el("span", { title: w.last_heartbeat || "" }, ago(w.last_heartbeat))),
            el("td", {}, Object.entries(w.labels || {}).map(([k, v]) => `${k}=${v}`).join(" ")))))))));
      if (!data.workers.length) body.append(el("p", { class: "muted" }, "No workers registered. Start one with `yard worker`."));
    } catch (e) {
      if (ctrl.signal.aborted) return;
      error.hidden = false;
      error.textContent = e.message;
    }
  }
  const soon = debounce(load, 200);
  const off = hub.on(() => soon());
  const timer = setInterval(load, 1000); // heartbeats and deaths are not job events: poll for them
  load();
  return () => { off(); ctrl.abort(); clearInterval(timer); soon.cancel(); };
}

function card(title, value, note) {
  return el("div", { class: "card" }, el("div", { class: "muted" }, title), el("div", { class: "big" }, value), el("div", { class: "muted small" }, note));
}

// ---- queues --------------------------------------------------------------------------------------

function queuesPage(view) {
  const ctrl = new AbortController();
  const pools = el("tbody", { "data-testid": "pools" });
  const teams = el("tbody", { "data-testid": "teams" });
  const reasons = el("tbody", { "data-testid": "reasons" });
  const error = el("p", { class: "error", hidden: true });
  view.append(el("h1", {}, "Queues"), error,
    el("h2", {}, "Pools"),
    el("table", {}, el("thead", {}, el("tr", {}, el("th", {}, "Pool"), el("th", {}, "Pending"), el("th", {}, "Running"))), pools),
    el("h2", {}, "Teams: share of the fleet against fair share and quota"),
    el("p", { class: "muted small" }, "Fair share: a team's weight over the weights of all teams with work, applied to the fleet's capacity (the scheduler also counts recent usage, so it may differ for a while)."),
    el("table", {}, el("thead", {}, el("tr", {}, ...["Team", "Weight", "Pending", "Running", "CPU in use", "Memory in use", "GPU in use", "Share", "Fair share", "Quota"].map((h) => el("th", {}, h)))), teams),
    el("h2", {}, "Why jobs wait"),
    el("table", {}, el("thead", {}, el("tr", {}, el("th", {}, "Reason"), el("th", {}, "Jobs"), el("th", {}, "Examples"))), reasons));
  const usage = usagePanel({ el, api, bar }, ctrl.signal);
  view.append(usage.node);

  async function load() {
    try {
      const [q, t, w, p] = await Promise.all([
        api("/v1/queues", { signal: ctrl.signal }),
        api("/v1/teams", { signal: ctrl.signal }),
        api("/v1/workers", { signal: ctrl.signal }),
        api("/v1/jobs?status=PENDING&limit=500", { signal: ctrl.signal }),
      ]);
      error.hidden = true;
      pools.replaceChildren(...q.pools.map((x) => el("tr", {}, el("td", {}, x.pool), el("td", {}, String(x.pending)), el("td", {}, String(x.running)))));
      const live = w.workers.filter((x) => x.status === "ALIVE");
      const cap = { cpu: live.reduce((a, x) => a + x.capacity.cpu, 0), memory: live.reduce((a, x) => a + x.capacity.memory, 0), gpu: live.reduce((a, x) => a + x.capacity.gpu, 0) };
      // Shares are measured on GPUs when the fleet has any (they are what teams contend for), else CPUs.
      const dim = cap.gpu > 0 ? "gpu" : "cpu";
      const info = new Map(t.teams.map((x) => [x.name, x]));
      const active = q.teams.filter((x) => x.pending > 0 || x.running > 0);
      const weights = active.reduce((a, x) => a + ((info.get(x.team) || {}).weight ?? 1), 0);
      teams.replaceChildren(...q.teams.map((x) => {
        const ti = info.get(x.team) || { weight: 1, quotas: {} };
        const isActive = x.pending > 0 || x.running > 0;
        const share = cap[dim] > 0 ? x[dim] / cap[dim] : 0;
        const fair = isActive && weights > 0 ? ti.weight / weights : 0;
        const quota = ti.quotas[dim];
        const quotaText = ["cpu", "memory", "gpu"].map((k) => ti.quotas[k] != null ? `${k} ${k === "memory" ? bytes(ti.quotas[k]) : ti.quotas[k]}` : null).filter(Boolean).join(", ") || "none";
        return el("tr", {},
          el("td", {}, x.team), el("td", {}, String(ti.weight)), el("td", {}, String(x.pending)), el("td", {}, String(x.running)),
          el("td", {}, `${Number(x.cpu).toFixed(1)}`), el("td", {}, bytes(x.memory)), el("td", {}, String(x.gpu)),
          el("td", {}, bar(share, 1, `${(100 * share).toFixed(0)}% of ${dim}`)),
          el("td", {}, bar(fair, 1, `${(100 * fair).toFixed(0)}%`)),
          el("td", {}, quota != null ? bar(x[dim], quota, `${x[dim]} / ${quota} ${dim}`) : "", el("div", { class: "muted small" }, quotaText)));
      }));
      if (!q.teams.length) teams.append(el("tr", {}, el("td", { colspan: "10", class: "muted" }, "no team has pending or running jobs")));
      const by = new Map();
      for (const j of p.jobs) {
        const r = j.pending_reason || "waiting for the next scheduling cycle";
        if (!by.has(r)) by.set(r, []);
        by.get(r).push(j);
      }
      reasons.replaceChildren(...[...by.entries()].sort((a, b) => b[1].length - a[1].length).map(([r, js]) => el("tr", {},
        el("td", {}, r), el("td", {}, String(js.length) + (p.next_cursor ? "+" : "")),
        el("td", {}, ...js.slice(0, 5).flatMap((j) => [el("a", { href: `#/job/${j.id}` }, j.name || j.id), " "])))));
      if (!p.jobs.length) reasons.append(el("tr", {}, el("td", { colspan: "3", class: "muted" }, "nothing is waiting")));
    } catch (e) {
      if (ctrl.signal.aborted) return;
      error.hidden = false;
      error.textContent = e.message;
    }
  }
  const soon = debounce(load, 300);
  const off = hub.on(() => soon());
  const timer = setInterval(load, 5000);
  // Costs move by the second but matter by the dollar: the usage panel refreshes less often.
  const usageTimer = setInterval(usage.load, 30000);
  load();
  usage.load();
  return () => { off(); ctrl.abort(); clearInterval(timer); clearInterval(usageTimer); soon.cancel(); };
}

// ---- submit --------------------------------------------------------------------------------------

// Splits a command line the way a POSIX shell would for quotes and backslashes (no expansions).
function shellSplit(s) {
  const out = [];
  let cur = null;
  let quote = null;
  for (let i = 0; i < s.length; i++) {
    const c = s[i];
    if (quote) {
      if (c === quote) quote = null;
      else if (c === "\\" && quote === '"' && i + 1 < s.length) cur += s[++i];
      else cur += c;
    } else if (c === "'" || c === '"') { quote = c; cur = cur ?? ""; }
    else if (c === "\\" && i + 1 < s.length) { cur = (cur ?? "") + s[++i]; }
    else if (/\s/.test(c)) { if (cur !== null) { out.push(cur); cur = null; } }
    else cur = (cur ?? "") + c;
  }
  if (quote) throw new Error("unclosed quote");
  if (cur !== null) out.push(cur);
  return out;
}

function submitPage(view) {
  const field = (label, name, input, hint) => el("label", { class: "field", "data-field": name },
    el("span", {}, label), input, hint ? el("small", { class: "muted" }, hint) : "", el("span", { class: "ferr", "data-error-for": name }));
  const inp = (name, attrs = {}) => el("input", { name, "data-testid": `spec-${name}`, ...attrs });
  const f = {
    name: inp("name", { placeholder: "resnet50-cifar" }),
    kind: el("select", { name: "kind", "data-testid": "spec-kind" }, el("option", {}, "train"), el("option", {}, "eval")),
    command: inp("command", { placeholder: "python train.py --epochs 3", required: true, class: "wide" }),
    image: inp("image", { placeholder: "optional container image" }),
    env: el("textarea", { name: "env", rows: "3", placeholder: "LR=0.1\nSEED=1", "data-testid": "spec-env" }),
    cpu: inp("cpu", { placeholder: "1" }),
    memory: inp("memory", { placeholder: "512Mi" }),
    gpu: inp("gpu", { placeholder: "0" }),
    gpu_type: inp("gpu_type", { placeholder: "any" }),
    pool: inp("pool", { placeholder: "default" }),
    team: inp("team", { placeholder: "your team" }),
    priority: el("select", { name: "priority", "data-testid": "spec-priority" }, ...["low", "normal", "high", "urgent"].map((p) => el("option", { selected: p === "normal" }, p))),
    max_runtime: inp("max_runtime", { placeholder: "24h" }),
    max_attempts: inp("max_attempts", { placeholder: "3" }),
    preemptible: el("input", { type: "checkbox", name: "preemptible", "data-testid": "spec-preemptible" }),
    artifacts: inp("artifacts", { placeholder: "outputs/, model.npz" }),
  };
  const general = el("ul", { class: "error", "data-testid": "submit-errors", hidden: true });
  const preview = el("pre", { class: "spec" });
  const form = el("form", { class: "submit", "data-testid": "submit-form", onsubmit: (ev) => { ev.preventDefault(); submit(); } },
    el("fieldset", {}, el("legend", {}, "Job"),
      field("Name", "name", f.name), field("Kind", "kind", f.kind),
      field("Command", "command", f.command, "split like a shell would; nothing runs through a shell unless you write one"),
      field("Image", "image", f.image), field("Environment", "env", f.env, "KEY=VALUE, one per line")),
    el("fieldset", {}, el("legend", {}, "Resources"),
      field("CPU", "resources.cpu", f.cpu), field("Memory", "resources.memory", f.memory),
      field("GPU", "resources.gpu", f.gpu), field("GPU type", "resources.gpu_type", f.gpu_type)),
    el("fieldset", {}, el("legend", {}, "Placement and policy"),
      field("Pool", "pool", f.pool), field("Team", "team", f.team), field("Priority", "priority", f.priority),
      field("Max runtime", "max_runtime", f.max_runtime), field("Max attempts", "retry.max_attempts", f.max_attempts),
      field("Preemptible", "preemptible", f.preemptible), field("Artifacts", "artifacts", f.artifacts, "comma-separated paths")),
    general,
    el("div", { class: "actions" }, el("button", { type: "submit", "data-testid": "submit" }, "Submit")));
  view.append(el("h1", {}, "Submit a job"), el("div", { class: "grid2" }, form, el("section", {}, el("h2", {}, "Request body"), preview)));

  const num = (s) => (s.trim() === "" ? undefined : Number.isFinite(Number(s)) ? Number(s) : s.trim());
  function spec() {
    const body = {};
    if (f.name.value.trim()) body.name = f.name.value.trim();
    body.kind = f.kind.value;
    body.command = shellSplit(f.command.value);
    if (f.image.value.trim()) body.image = f.image.value.trim();
    const env = {};
    for (const line of f.env.value.split("\n")) {
      if (!line.trim()) continue;
      const eq = line.indexOf("=");
      if (eq < 1) throw Object.assign(new Error(`"${line}" is not KEY=VALUE`), { field: "env" });
      env[line.slice(0, eq).trim()] = line.slice(eq + 1);
    }
    if (Object.keys(env).length) body.env = env;
    const res = {};
    if (num(f.cpu.value) !== undefined) res.cpu = num(f.cpu.value);
    if (f.memory.value.trim()) res.memory = f.memory.value.trim();
    if (num(f.gpu.value) !== undefined) res.gpu = num(f.gpu.value);
    if (f.gpu_type.value.trim()) res.gpu_type = f.gpu_type.value.trim();
    if (Object.keys(res).length) body.resources = res;
    if (f.pool.value.trim()) body.pool = f.pool.value.trim();
    if (f.team.value.trim()) body.team = f.team.value.trim();
    body.priority = f.priority.value;
    if (f.max_runtime.value.trim()) body.max_runtime = num(f.max_runtime.value);
    if (num(f.max_attempts.value) !== undefined) body.retry = { max_attempts: num(f.max_attempts.value) };
    if (f.preemptible.checked) body.preemptible = true;
    const arts = f.artifacts.value.split(",").map((s) => s.trim()).filter(Boolean);
    if (arts.length) body.artifacts = arts;
    return body;
  }

  function showErrors(details, message) {
    for (const e of form.querySelectorAll("[data-error-for]")) e.textContent = "";
    for (const e of form.querySelectorAll(".field.invalid")) e.classList.remove("invalid");
    const unplaced = [];
    for (const d of details) {
      // The API names fields by their path in the spec (resources.memory, command.0): show each
      // message at the closest input.
      let path = d.field || "";
      let slot = null;
      while (path && !(slot = form.querySelector(`[data-error-for="${CSS.escape(path)}"]`))) path = path.includes(".") ? path.slice(0, path.lastIndexOf(".")) : "";
      if (slot) {
        slot.textContent = (slot.textContent ? slot.textContent + "; " : "") + d.message;
        slot.closest(".field").classList.add("invalid");
      } else unplaced.push(`${d.field}: ${d.message}`);
    }
    general.replaceChildren(...[message, ...unplaced].filter(Boolean).map((m) => el("li", {}, m)));
    general.hidden = !general.children.length;
  }

  function updatePreview() {
    try { preview.textContent = JSON.stringify(spec(), null, 2); } catch (e) { preview.textContent = e.message; }
  }
  form.addEventListener("input", updatePreview);
  updatePreview();

  async function submit() {
    let body;
    try { body = spec(); } catch (e) { showErrors([{ field: e.field || "command", message: e.message }], null); return; }
    const button = form.querySelector("button[type=submit]");
    button.disabled = true;
    try {
      const job = await api("/v1/jobs", { method: "POST", body });
      location.hash = `#/job/${job.id}`;
    } catch (e) {
      showErrors(e.details || [], e.message);
    } finally {
      button.disabled = false;
    }
  }
}

// ---- start ---------------------------------------------------------------------------------------

document.getElementById("login-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  login(document.getElementById("login-token").value.trim());
});
document.getElementById("logout").addEventListener("click", () => logout(null));
window.addEventListener("hashchange", route);

// Jupyter-style: /?token=... logs in and the token leaves the address bar (and the history).
const url = new URL(location.href);
const fromUrl = url.searchParams.get("token");
if (fromUrl) {
  url.searchParams.delete("token");
  history.replaceState(null, "", url.pathname + url.search + url.hash);
  login(fromUrl);
} else if (token) {
  login(token);
} else {
  showLogin(null);
}
