// The usage panel of the Queues page: GPU-hours, cost and what spot saved (GET /v1/usage), grouped
// and over a window the reader picks, and each team's monthly budget as a bar of what it spent.
// Money arrives exact (micro-dollars as integers); it is shown to the cent.

const WINDOWS = [["month", "this month"], ["7d", "last 7 days"], ["30d", "last 30 days"]];
const GROUPS = [["team", "team"], ["user", "user"], ["gpu-type", "GPU type"], ["team,user", "team and user"], ["user,gpu-type", "user and GPU type"], ["spot", "spot or on-demand"]];
const LABELS = { team: "Team", user: "User", "gpu-type": "GPU type", spot: "Capacity" };

function money(micros) {
  return (micros / 1e6).toLocaleString("en-US", { style: "currency", currency: "USD" });
}

function select(el, name, options, testid) {
  return el("select", { name, "data-testid": testid }, ...options.map(([v, text]) => el("option", { value: v }, text)));
}

// `h` carries app.js's helpers: el, api, bar. Returns the panel and its load(), which the page calls
// on its own refreshes.
export function usagePanel(h, signal) {
  const { el, api, bar } = h;
  const since = select(el, "since", WINDOWS, "usage-since");
  const by = select(el, "by", GROUPS, "usage-by");
  const head = el("tr", {});
  const rows = el("tbody", { "data-testid": "usage-rows" });
  const budgets = el("div", { class: "budgets", "data-testid": "budgets" });
  const note = el("p", { class: "muted small", "data-testid": "usage-note" });
  const error = el("p", { class: "error", hidden: true });
  const node = el("section", { "data-testid": "usage-panel" },
    el("h2", {}, "Usage and budgets"),
    el("div", { class: "filters" }, el("span", { class: "muted" }, "cost of"), since, el("span", { class: "muted" }, "by"), by),
    error, budgets,
    el("table", { "data-testid": "usage-table" }, el("thead", {}, head), rows), note);

  async function load() {
    try {
      const q = new URLSearchParams({ since: since.value, by: by.value });
      const r = await api(`/v1/usage?${q}`, { signal });
      error.hidden = true;
      head.replaceChildren(...[...r.by.map((d) => LABELS[d] || d), "GPU-hours", "Cost", "Spot saved", "Attempts"].map((t) => el("th", {}, t)));
      const line = (cells, g, cls) => el("tr", { class: cls }, ...cells.map((c) => el("td", {}, c)),
        el("td", {}, g.gpu_hours), el("td", { "data-testid": "usage-cost" }, money(g.cost_micros)),
        el("td", {}, money(g.spot_saved_micros)), el("td", {}, String(g.attempts)));
      rows.replaceChildren(...r.groups.map((g) => line(r.by.map((d) => String(g[d])), g, "")));
      if (r.groups.length) rows.append(line(r.by.map((_, i) => (i === 0 ? "total" : "")), r.total, "total"));
      else rows.append(el("tr", {}, el("td", { colspan: String(r.by.length + 4), class: "muted" }, "nothing ran in this window")));
      budgets.replaceChildren(...r.budgets.map((b) => el("div", { class: `budget ${b.level}`, "data-testid": "budget", "data-team": b.team, "data-level": b.level },
        el("span", {}, `team ${b.team}: `),
        bar(b.spent_micros, b.monthly_budget_micros, `${money(b.spent_micros)} of ${money(b.monthly_budget_micros)} in ${b.month} (${b.percent}%)`),
        b.level === "over" ? el("span", { class: "error small" }, " new jobs wait") : b.level === "warning" ? el("span", { class: "small" }, " over 80%") : null)));
      note.textContent = (r.team ? `team ${r.team}` : "all teams") + ` since ${new Date(r.since).toLocaleString()}` +
        (r.prices_set ? "" : " (no prices are set: everything costs $0)");
    } catch (e) {
      if (signal.aborted) return;
      error.hidden = false;
      error.textContent = e.message;
    }
  }
  since.addEventListener("change", load);
  by.addEventListener("change", load);
  return { node, load };
}
