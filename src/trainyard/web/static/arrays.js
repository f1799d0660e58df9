// The array page: shown on the job page of an array. Its tasks in a grid coloured by state (each cell
// links to the task's own job page) and, for a metric the tasks log with trainyard.job.log_metric,
// each task's best value (GET /v1/jobs/{id}/tasks?metric=&best=). The grid follows the tasks' events.

const PAGE = 500;

// `h` carries app.js's helpers: el, badge, api, debounce, hub.
export function arraySection(job, h, signal) {
  const { el, badge, api, debounce, hub } = h;
  const summary = el("div", { class: "arraymeta", "data-testid": "array-summary" });
  const grid = el("div", { class: "taskgrid", "data-testid": "task-grid" });
  const metric = el("input", { name: "metric", placeholder: "metric, e.g. loss", size: "16", "data-testid": "array-metric" });
  const best = el("select", { name: "best", "data-testid": "array-best" },
    el("option", { value: "min" }, "lowest"), el("option", { value: "max" }, "highest"));
  const more = el("button", { hidden: true, onclick: () => load(true) }, "More tasks");
  const error = el("p", { class: "error", hidden: true });
  const form = el("form", { class: "filters", onsubmit: (ev) => { ev.preventDefault(); load(false); } },
    el("span", { class: "muted" }, "best value of"), metric, best, el("button", { type: "submit" }, "Show"));
  const root = el("section", { "data-testid": "array" }, el("h2", {}, "Tasks"), summary, form, error, grid, more);
  let cursor = null;
  let shown = 0;

  function renderSummary(arr) {
    const counts = Object.entries(arr.counts || {}).sort((a, b) => b[1] - a[1]);
    const cap = arr.parallelism ? `, at most ${arr.parallelism} at once` : "";
    summary.replaceChildren(
      el("span", {}, `${arr.tasks} tasks (indices ${arr.indices}${cap}): ${arr.done} done`),
      ...counts.map(([s, n]) => el("span", {}, `${n} `, badge(s))));
  }

  function cell(t) {
    const value = t.best === undefined || t.best === null ? null : Number(t.best);
    const title = `task ${t.index}: ${t.status}` + (value === null ? "" : ` · ${metric.value} ${value}`)
      + (t.reason ? ` · ${t.reason}` : t.pending_reason ? ` · ${t.pending_reason}` : "");
    return el("a", { class: `cell s-${t.status.toLowerCase()}`, href: `#/job/${t.id}`, title, "data-task": String(t.index), "data-status": t.status },
      el("span", { class: "idx" }, String(t.index)),
      value === null ? null : el("span", { class: "best" }, value.toPrecision(4)));
  }

  async function load(append) {
    const q = new URLSearchParams({ limit: String(append ? PAGE : Math.max(PAGE, shown)) });
    if (append && cursor) q.set("cursor", cursor);
    if (metric.value.trim()) { q.set("metric", metric.value.trim()); q.set("best", best.value); }
    try {
      const [view, page] = await Promise.all([
        append ? null : api(`/v1/jobs/${job.id}`, { signal }),
        api(`/v1/jobs/${job.id}/tasks?${q}`, { signal }),
      ]);
      if (view && view.array) renderSummary(view.array);
      const cells = page.tasks.map(cell);
      if (append) grid.append(...cells); else grid.replaceChildren(...cells);
      shown = grid.children.length;
      cursor = page.next_cursor;
      more.hidden = !cursor;
      error.hidden = true;
    } catch (e) {
      if (signal.aborted) return;
      error.hidden = false;
      error.textContent = e.message;
    }
  }

  const refresh = debounce(() => load(false), 400);
  const off = hub.on((ev) => { if (ev.job_id.startsWith(`${job.id}-`)) refresh(); });
  signal.addEventListener("abort", () => { off(); refresh.cancel(); });
  renderSummary(job.array);
  load(false);
  return root;
}
