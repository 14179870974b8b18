// The canvas: one head's pattern, or dense attention, from the whole sequence down to tokens.
// A view is a square window of `span` tokens from (q0, k0). It is drawn in one of three ways:
//   tokens:   span <= TOKEN_VIEW and the head's predicate is embedded: every pair, exactly;
//   blocks:   the head's runs are embedded and each block gets at least a pixel: every block;
//   overview: otherwise, the overview cells (several blocks each, shaded by how many are stored).

const CANVAS = 640;  // pixels a side
const TOKEN_VIEW = 512;  // tokens a side, at most, drawn one cell per pair
const PALETTE = {
  empty: [255, 255, 255],
  full: [29, 63, 143],  // FULL block; in the token view, an allowed pair of a FULL block
  partial: [122, 152, 214],  // PARTIAL block; in the token view, an allowed pair of a PARTIAL block
  masked: [226, 233, 246],  // token view: a pair a kernel computes (PARTIAL block) but masks out
};

function viewMode(head, span) {
  const [bq, bk] = DATA.block;
  if (span <= TOKEN_VIEW && head.allowed) return "tokens";
  if (head.runs && Math.ceil(span / bq) <= CANVAS && Math.ceil(span / bk) <= CANVAS) return "blocks";
  return "overview";
}

function shade(rgb, darkness) {  // white -> rgb as darkness goes 0 -> 1
  return rgb.map((c) => Math.round(255 - (255 - c) * darkness));
}

// Colour of every pixel of the view, one function per way of drawing; `pixel(x)` maps a pixel
// column (or row) to the token it shows.
function paintTokens(image, head, view, isDense) {
  const { q0, k0, span } = view, [bq, bk] = DATA.block;
  const cells = new Uint8Array(span * span);  // 0 empty, 1 masked, 2 partial-allowed, 3 full
  for (let a = 0; a < span; a++) {
    const q = q0 + a;
    for (let b = 0; b < span; b++) {
      const k = k0 + b;
      const kind = isDense ? dense.blockKind(Math.floor(q / bq), Math.floor(k / bk))
        : blockKind(head.runs, Math.floor(q / bq), Math.floor(k / bk));
      const ok = kind === 2 || (kind === 1 && (isDense ? dense.allows(q, k) : head.allowed(q, k)));
      cells[a * span + b] = ok ? (kind === 2 ? 3 : 2) : kind === 1 ? 1 : 0;
    }
  }
  const colours = [PALETTE.empty, PALETTE.masked, PALETTE.partial, PALETTE.full];
  fill(image, span, span, (a, b) => colours[cells[a * span + b]]);
}

function paintBlocks(image, head, view, isDense) {
  const [bq, bk] = DATA.block;
  const i0 = Math.floor(view.q0 / bq), i1 = Math.ceil((view.q0 + view.span) / bq);
  const j0 = Math.floor(view.k0 / bk), j1 = Math.ceil((view.k0 + view.span) / bk);
  const rows = [];
  for (let i = i0; i < i1; i++) {
    if (isDense) {
      const row = new Uint8Array(j1 - j0);
      for (let j = j0; j < j1; j++) row[j - j0] = dense.blockKind(i, j);
      rows.push(row);
    } else rows.push(rowKinds(head.runs, i, j0, j1));
  }
  const colours = [PALETTE.empty, PALETTE.partial, PALETTE.full];
  fill(image, view.span, view.span, (a, b) => {
    const i = Math.floor((view.q0 + a) / bq) - i0, j = Math.floor((view.k0 + b) / bk) - j0;
    return colours[rows[i][j]];
  });
}

function paintOverview(image, head, view, isDense) {
  const o = head.overview, cellQ = o.ci * DATA.block[0], cellK = o.cj * DATA.block[1];
  const counts = isDense ? denseCells(o) : o;
  fill(image, view.span, view.span, (a, b) => {
    const r = Math.floor((view.q0 + a) / cellQ), c = Math.floor((view.k0 + b) / cellK), x = r * o.cols + c;
    const area = cellArea(o, r, c);
    return shade(PALETTE.full, 0.5 * counts.stored[x] / area + 0.5 * counts.full[x] / area);
  });
}

function cellArea(o, r, c) {
  const [bq, bk] = DATA.block, nbq = Math.ceil(DATA.n / bq), nbk = Math.ceil(DATA.n / bk);
  return Math.min(o.ci, nbq - r * o.ci) * Math.min(o.cj, nbk - c * o.cj);
}

// Dense attention counted into the same cells as an overview (once per cell size).
const denseCellCache = new Map();
function denseCells(o) {
  const key = `${o.rows}x${o.cols}`;
  if (denseCellCache.has(key)) return denseCellCache.get(key);
  const stored = new Float64Array(o.rows * o.cols), full = new Float64Array(o.rows * o.cols);
  const [bq, bk] = DATA.block, nbq = Math.ceil(DATA.n / bq), nbk = Math.ceil(DATA.n / bk);
  for (let i = 0; i < nbq; i++) {
    const q0 = i * bq, q1 = Math.min(q0 + bq, DATA.n);
    // FULL: key blocks wholly at or below the diagonal; stored: those reaching it
    const lastFull = DATA.causal ? Math.min(nbk, Math.floor((q0 + 1) / bk)) : nbk;
    const lastStored = DATA.causal ? Math.min(nbk, Math.floor((q1 - 1) / bk) + 1) : nbk;
    const r = Math.floor(i / o.ci);
    for (let c = 0; c < o.cols; c++) {
      const a = c * o.cj, b = Math.min(a + o.cj, nbk);
      stored[r * o.cols + c] += Math.max(0, Math.min(b, lastStored) - a);
      full[r * o.cols + c] += Math.max(0, Math.min(b, lastFull) - a);
    }
  }
  const counts = { stored, full };
  denseCellCache.set(key, counts);
  return counts;
}

// Fill the canvas image from a colour per (row, column) of a span x span window.
function fill(image, rows, cols, colour) {
  const data = image.data;
  let lastA = -1, rowColours = null;
  for (let y = 0; y < CANVAS; y++) {
    const a = Math.floor(y * rows / CANVAS);
    if (a !== lastA) {
      rowColours = new Array(CANVAS);
      for (let x = 0; x < CANVAS; x++) rowColours[x] = colour(a, Math.floor(x * cols / CANVAS));
      lastA = a;
    }
    for (let x = 0; x < CANVAS; x++) {
      const p = 4 * (y * CANVAS + x), rgb = rowColours[x];
      data[p] = rgb[0]; data[p + 1] = rgb[1]; data[p + 2] = rgb[2]; data[p + 3] = 255;
    }
  }
}

const PAINTERS = { tokens: paintTokens, blocks: paintBlocks, overview: paintOverview };

function drawHead(canvas, head, view, isDense) {
  const ctx = canvas.getContext("2d");
  const image = ctx.createImageData(CANVAS, CANVAS);
  const mode = viewMode(head, view.span);
  if (mode === "overview" && !head.overview) {
    ctx.fillStyle = "#f4f4f4"; ctx.fillRect(0, 0, CANVAS, CANVAS);
    return mode;
  }
  PAINTERS[mode](image, head, view, isDense);
  ctx.putImageData(image, 0, 0);
  drawGrid(ctx, view, mode);
  return mode;
}

// Block boundaries, where a block is at least 8 pixels wide.
function drawGrid(ctx, view, mode) {
  if (mode === "overview") return;
  const [bq, bk] = DATA.block, scale = CANVAS / view.span;
  if (bq * scale < 8 || bk * scale < 8) return;
  ctx.strokeStyle = "rgba(90, 90, 90, 0.35)";
  ctx.lineWidth = 1;
  ctx.beginPath();
  for (let q = Math.ceil(view.q0 / bq) * bq; q <= view.q0 + view.span; q += bq) {
    const y = Math.round((q - view.q0) * scale) + 0.5; ctx.moveTo(0, y); ctx.lineTo(CANVAS, y);
  }
  for (let k = Math.ceil(view.k0 / bk) * bk; k <= view.k0 + view.span; k += bk) {
    const x = Math.round((k - view.k0) * scale) + 0.5; ctx.moveTo(x, 0); ctx.lineTo(x, CANVAS);
  }
  ctx.stroke();
}
