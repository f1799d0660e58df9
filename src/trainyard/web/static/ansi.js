// ANSI SGR colours to DOM spans. Only what training logs use (colours, bold, dim, reset); other
// escape sequences (cursor movement, progress-bar carriage returns) are dropped, not rendered raw.

const ESC_RE = /\x1b\[([0-9;]*)([A-Za-z])/g;
const STRIP_RE = /\x1b\[[0-9;]*[A-Za-z]/g;

export function stripAnsi(s) {
  return s.indexOf("\x1b") < 0 ? s : s.replace(STRIP_RE, "");
}

const BASIC = ["black", "red", "green", "yellow", "blue", "magenta", "cyan", "white"];

function colour256(n) {
  if (n < 16) return `var(--ansi-${n < 8 ? BASIC[n] : "bright-" + BASIC[n - 8]})`;
  if (n >= 232) {
    const v = 8 + (n - 232) * 10;
    return `rgb(${v},${v},${v})`;
  }
  const i = n - 16;
  const step = (x) => (x === 0 ? 0 : 55 + x * 40);
  return `rgb(${step(Math.floor(i / 36))},${step(Math.floor(i / 6) % 6)},${step(i % 6)})`;
}

function applySgr(state, params) {
  const codes = params === "" ? [0] : params.split(";").map((x) => Number(x) || 0);
  for (let i = 0; i < codes.length; i++) {
    const c = codes[i];
    if (c === 0) { state.fg = null; state.bg = null; state.bold = false; state.dim = false; state.underline = false; }
    else if (c === 1) state.bold = true;
    else if (c === 2) state.dim = true;
    else if (c === 4) state.underline = true;
    else if (c === 22) { state.bold = false; state.dim = false; }
    else if (c === 24) state.underline = false;
    else if (c >= 30 && c <= 37) state.fg = `var(--ansi-${BASIC[c - 30]})`;
    else if (c === 39) state.fg = null;
    else if (c >= 40 && c <= 47) state.bg = `var(--ansi-${BASIC[c - 40]})`;
    else if (c === 49) state.bg = null;
    else if (c >= 90 && c <= 97) state.fg = `var(--ansi-bright-${BASIC[c - 90]})`;
    else if (c >= 100 && c <= 107) state.bg = `var(--ansi-bright-${BASIC[c - 100]})`;
    else if ((c === 38 || c === 48) && codes[i + 1] === 5) {
      state[c === 38 ? "fg" : "bg"] = colour256(codes[i + 2] || 0);
      i += 2;
    } else if ((c === 38 || c === 48) && codes[i + 1] === 2) {
      state[c === 38 ? "fg" : "bg"] = `rgb(${codes[i + 2] || 0},${codes[i + 3] || 0},${codes[i + 4] || 0})`;
      i += 4;
    }
  }
}

function styled(text, state) {
  if (!state.fg && !state.bg && !state.bold && !state.dim && !state.underline) return document.createTextNode(text);
  const span = document.createElement("span");
  span.textContent = text;
  if (state.fg) span.style.color = state.fg;
  if (state.bg) span.style.background = state.bg;
  if (state.bold) span.style.fontWeight = "bold";
  if (state.dim) span.style.opacity = "0.7";
  if (state.underline) span.style.textDecoration = "underline";
  return span;
}

// Appends the rendered line to `parent`; `mark` (lowercase, optional) is highlighted where it occurs
// in the visible text.
export function renderAnsi(parent, line, mark) {
  const state = { fg: null, bg: null, bold: false, dim: false, underline: false };
  const pieces = [];
  let last = 0;
  if (line.indexOf("\x1b") >= 0) {
    ESC_RE.lastIndex = 0;
    let m;
    while ((m = ESC_RE.exec(line)) !== null) {
      if (m.index > last) pieces.push([line.slice(last, m.index), { ...state }]);
      if (m[2] === "m") applySgr(state, m[1]);
      last = ESC_RE.lastIndex;
    }
  }
  if (last < line.length) pieces.push([line.slice(last), { ...state }]);
  for (const [text, st] of pieces) {
    if (!mark) { parent.appendChild(styled(text, st)); continue; }
    const lower = text.toLowerCase();
    let from = 0;
    for (;;) {
      const at = lower.indexOf(mark, from);
      if (at < 0) break;
      if (at > from) parent.appendChild(styled(text.slice(from, at), st));
      const hit = document.createElement("mark");
      hit.appendChild(styled(text.slice(at, at + mark.length), st));
      parent.appendChild(hit);
      from = at + mark.length;
    }
    if (from < text.length) parent.appendChild(styled(text.slice(from), st));
  }
}
