// Line charts on <canvas> for the scalar series a job logs (loss, accuracy). Drawn by hand so the UI
// loads nothing from the internet and needs no build step.

function niceStep(range, ticks) {
  const raw = range / Math.max(1, ticks);
  const mag = 10 ** Math.floor(Math.log10(raw));
  const norm = raw / mag;
  return (norm < 1.5 ? 1 : norm < 3 ? 2 : norm < 7 ? 5 : 10) * mag;
}

function fmt(v) {
  const a = Math.abs(v);
  if (a !== 0 && (a < 1e-3 || a >= 1e5)) return v.toExponential(1);
  return String(Number(v.toPrecision(4)));
}

// points: [{step, value}]; a point without a step is placed at its index.
export function drawChart(canvas, name, points) {
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth || 360;
  const h = canvas.clientHeight || 200;
  canvas.width = Math.round(w * dpr);
  canvas.height = Math.round(h * dpr);
  const ctx = canvas.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, w, h);
  const css = getComputedStyle(canvas);
  const fg = css.getPropertyValue("--fg").trim() || "#111";
  const grid = css.getPropertyValue("--grid").trim() || "#ddd";
  const line = css.getPropertyValue("--accent").trim() || "#2563eb";
  const pts = points
    .map((p, i) => ({ x: p.step ?? i, y: p.value }))
    .filter((p) => typeof p.y === "number" && Number.isFinite(p.y));
  ctx.font = "12px system-ui, sans-serif";
  ctx.fillStyle = fg;
  ctx.fillText(name, 8, 14);
  if (!pts.length) {
    ctx.fillText("no points yet", w / 2 - 36, h / 2);
    return;
  }
  const pad = { l: 52, r: 12, t: 24, b: 26 };
  let [x0, x1] = [Math.min(...pts.map((p) => p.x)), Math.max(...pts.map((p) => p.x))];
  let [y0, y1] = [Math.min(...pts.map((p) => p.y)), Math.max(...pts.map((p) => p.y))];
  if (x0 === x1) { x0 -= 1; x1 += 1; }
  if (y0 === y1) { const d = Math.abs(y0) * 0.1 || 1; y0 -= d; y1 += d; }
  const ys = niceStep(y1 - y0, 4);
  y0 = Math.floor(y0 / ys) * ys;
  y1 = Math.ceil(y1 / ys) * ys;
  const X = (x) => pad.l + ((x - x0) / (x1 - x0)) * (w - pad.l - pad.r);
  const Y = (y) => h - pad.b - ((y - y0) / (y1 - y0)) * (h - pad.t - pad.b);
  ctx.strokeStyle = grid;
  ctx.lineWidth = 1;
  ctx.textAlign = "right";
  for (let y = y0; y <= y1 + ys / 2; y += ys) {
    ctx.beginPath();
    ctx.moveTo(pad.l, Y(y));
    ctx.lineTo(w - pad.r, Y(y));
    ctx.stroke();
    ctx.fillText(fmt(y), pad.l - 6, Y(y) + 4);
  }
  ctx.textAlign = "center";
  const xs = niceStep(x1 - x0, 5);
  for (let x = Math.ceil(x0 / xs) * xs; x <= x1; x += xs) ctx.fillText(fmt(x), X(x), h - 8);
  ctx.strokeStyle = line;
  ctx.lineWidth = 2;
  ctx.beginPath();
  pts.forEach((p, i) => (i ? ctx.lineTo(X(p.x), Y(p.y)) : ctx.moveTo(X(p.x), Y(p.y))));
  ctx.stroke();
  if (pts.length < 60) {
    ctx.fillStyle = line;
    for (const p of pts) {
      ctx.beginPath();
      ctx.arc(X(p.x), Y(p.y), 2.5, 0, Math.PI * 2);
      ctx.fill();
    }
  }
  const lastPt = pts[pts.length - 1];
  ctx.fillStyle = fg;
  ctx.textAlign = "right";
  ctx.fillText(`last ${fmt(lastPt.y)} @ ${fmt(lastPt.x)}`, w - pad.r, 14);
  canvas.dataset.points = String(pts.length);
}
