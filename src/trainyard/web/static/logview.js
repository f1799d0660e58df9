// A log viewer that stays fast at hundreds of thousands of lines: lines live in a plain array and only
// the rows inside the viewport (plus a margin) exist in the DOM. Every row has the same height, so the
// scroll position maps to a line number without measuring anything.

import { renderAnsi, stripAnsi } from "./ansi.js";

const LINE_HEIGHT = 18; // px; must match .logrow in style.css
const OVERSCAN = 30;

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c);
  return e;
}

export class LogView {
  constructor({ onDownload }) {
    this.lines = [];
    this.partial = "";
    this.follow = true;
    this.paused = false;
    this.shownCount = 0; // lines the user sees: frozen while paused
    this.matches = [];
    this.matchAt = -1;
    this.query = "";
    this.scheduled = false;
    this.status = el("span", { class: "muted", "data-testid": "log-status" });
    this.followBox = el("input", { type: "checkbox", "data-testid": "log-follow" });
    this.followBox.checked = true;
    this.followBox.addEventListener("change", () => {
      this.follow = this.followBox.checked;
      if (this.follow) this.scrollToEnd();
    });
    this.pauseBtn = el("button", { "data-testid": "log-pause", onclick: () => this.setPaused(!this.paused) }, "Pause");
    this.search = el("input", { type: "search", placeholder: "search log", "data-testid": "log-search" });
    let searchTimer = 0;
    this.search.addEventListener("input", () => {
      clearTimeout(searchTimer);
      searchTimer = setTimeout(() => this.setQuery(this.search.value), 150);
    });
    this.search.addEventListener("keydown", (ev) => {
      if (ev.key === "Enter") {
        ev.preventDefault();
        if (this.search.value !== this.query) this.setQuery(this.search.value);
        else this.step(ev.shiftKey ? -1 : 1);
      }
    });
    this.matchInfo = el("span", { class: "muted", "data-testid": "log-matches" });
    const toolbar = el(
      "div",
      { class: "logbar" },
      el("label", {}, this.followBox, " follow"),
      this.pauseBtn,
      this.search,
      el("button", { title: "previous match", onclick: () => this.step(-1) }, "↑"),
      el("button", { title: "next match", onclick: () => this.step(1) }, "↓"),
      this.matchInfo,
      el("button", { "data-testid": "log-end", onclick: () => { this.setFollow(true); this.scrollToEnd(); } }, "Jump to end"),
      el("button", { "data-testid": "log-download", onclick: onDownload }, "Download"),
      this.status,
    );
    this.spacer = el("div", { class: "logspacer" });
    this.rows = el("div", { class: "logrows", "data-testid": "log-rows" });
    this.viewport = el("div", { class: "logview", "data-testid": "log-view", tabindex: "0" }, this.spacer, this.rows);
    this.viewport.addEventListener("scroll", () => this.onScroll(), { passive: true });
    this.root = el("div", { class: "logbox" }, toolbar, this.viewport);
  }

  setFollow(on) {
    this.follow = on;
    this.followBox.checked = on;
  }

  setPaused(on) {
    this.paused = on;
    this.pauseBtn.textContent = on ? "Resume" : "Pause";
    this.schedule();
  }

  count() {
    return this.lines.length + (this.partial ? 1 : 0);
  }

  line(i) {
    const raw = i < this.lines.length ? this.lines[i] : this.partial;
    // A progress bar rewrites its line with \r: show what a terminal would, the last rewrite.
    const cr = raw.lastIndexOf("\r");
    return cr >= 0 ? raw.slice(cr + 1) : raw;
  }

  clear() {
    this.lines = [];
    this.partial = "";
    this.matches = [];
    this.matchAt = -1;
    this.shownCount = 0;
    this.schedule();
  }

  append(text) {
    if (!text) return;
    const before = this.lines.length;
    const parts = (this.partial + text).split("\n");
    this.partial = parts.pop();
    for (const p of parts) this.lines.push(p);
    if (this.query) {
      // The old partial line may have become a full one: re-check from the first changed line.
      const q = this.query;
      while (this.matches.length && this.matches[this.matches.length - 1] >= before) this.matches.pop();
      for (let i = before; i < this.count(); i++) {
        if (stripAnsi(this.line(i)).toLowerCase().includes(q)) this.matches.push(i);
      }
    }
    this.schedule();
  }

  setQuery(q) {
    this.query = q.trim().toLowerCase();
    this.matches = [];
    this.matchAt = -1;
    if (this.query) {
      const n = this.count();
      for (let i = 0; i < n; i++) {
        if (stripAnsi(this.line(i)).toLowerCase().includes(this.query)) this.matches.push(i);
      }
      const first = Math.floor(this.viewport.scrollTop / LINE_HEIGHT);
      const at = this.matches.findIndex((m) => m >= first);
      if (this.matches.length) this.goto(at >= 0 ? at : 0);
    }
    this.schedule();
  }

  step(delta) {
    if (!this.matches.length) return;
    const n = this.matches.length;
    this.goto((((this.matchAt + delta) % n) + n) % n);
  }

  goto(k) {
    this.matchAt = k;
    this.setFollow(false);
    const line = this.matches[k];
    const h = this.viewport.clientHeight;
    this.viewport.scrollTop = Math.max(0, line * LINE_HEIGHT - h / 2);
    this.schedule();
  }

  scrollToEnd() {
    this.viewport.scrollTop = this.viewport.scrollHeight;
    this.schedule();
  }

  onScroll() {
    const v = this.viewport;
    const atEnd = v.scrollTop + v.clientHeight >= v.scrollHeight - LINE_HEIGHT;
    // Scrolling up is the user reading: stop following. Scrolling back to the end resumes it.
    if (this.follow !== atEnd && !this.programmatic) this.setFollow(atEnd);
    this.schedule();
  }

  schedule() {
    if (this.scheduled) return;
    this.scheduled = true;
    requestAnimationFrame(() => {
      this.scheduled = false;
      this.render();
    });
  }

  render() {
    if (!this.paused) this.shownCount = this.count();
    const n = this.shownCount;
    this.spacer.style.height = `${n * LINE_HEIGHT}px`;
    const v = this.viewport;
    if (this.follow && !this.paused) {
      this.programmatic = true;
      v.scrollTop = v.scrollHeight;
      this.programmatic = false;
    }
    const first = Math.max(0, Math.floor(v.scrollTop / LINE_HEIGHT) - OVERSCAN);
    const last = Math.min(n, Math.ceil((v.scrollTop + v.clientHeight) / LINE_HEIGHT) + OVERSCAN);
    this.rows.style.transform = `translateY(${first * LINE_HEIGHT}px)`;
    const current = this.matchAt >= 0 ? this.matches[this.matchAt] : -1;
    const frag = document.createDocumentFragment();
    for (let i = first; i < last; i++) {
      const row = document.createElement("div");
      row.className = i === current ? "logrow current" : "logrow";
      const num = document.createElement("span");
      num.className = "lineno";
      num.textContent = String(i + 1);
      row.appendChild(num);
      renderAnsi(row, this.line(i), this.query);
      frag.appendChild(row);
    }
    this.rows.replaceChildren(frag);
    const waiting = this.count() - n;
    this.status.textContent = `${this.count().toLocaleString()} lines` + (this.paused ? ` · paused (+${waiting} new)` : "");
    this.matchInfo.textContent = this.query ? `${this.matches.length ? this.matchAt + 1 : 0} of ${this.matches.length}` : "";
  }
}
