// What the cell under the pointer holds: its query and key ranges, its kind, and which terms of
// the head's expression allow pairs there (each term evaluated on its own).

const KIND_NAMES = ["empty", "PARTIAL", "FULL"];

function fmt(x) { return Number(x).toLocaleString("en-US"); }

// The cell of the current view under pixel (x, y): a token pair, a block, or an overview cell.
function cellAt(head, view, x, y) {
  const a = Math.floor(y * view.span / CANVAS), b = Math.floor(x * view.span / CANVAS);
  const q = view.q0 + a, k = view.k0 + b, mode = viewMode(head, view.span), [bq, bk] = DATA.block;
  if (mode === "tokens") return { mode, q0: q, q1: q, k0: k, k1: k, i: Math.floor(q / bq), j: Math.floor(k / bk) };
  if (mode === "blocks") {
    const i = Math.floor(q / bq), j = Math.floor(k / bk);
    return { mode, i, j, q0: i * bq, q1: Math.min((i + 1) * bq, DATA.n) - 1, k0: j * bk,
             k1: Math.min((j + 1) * bk, DATA.n) - 1 };
  }
  const o = head.overview, r = Math.floor(q / (o.ci * bq)), c = Math.floor(k / (o.cj * bk));
  return { mode, r, c, q0: r * o.ci * bq, q1: Math.min((r + 1) * o.ci * bq, DATA.n) - 1,
           k0: c * o.cj * bk, k1: Math.min((c + 1) * o.cj * bk, DATA.n) - 1 };
}

// Allowed pairs of `predicate` in block (i, j), counted pair by pair (a block is small).
function blockCount(predicate, cell) {
  let count = 0;
  for (let q = cell.q0; q <= cell.q1; q++) for (let k = cell.k0; k <= cell.k1; k++) if (predicate(q, k)) count++;
  return count;
}

function termKind(count, area) { return count === 0 ? "empty" : count === area ? "FULL" : "PARTIAL"; }

// {lines, kind, terms}: the description shown under the canvas for this cell.
function describe(head, cell, isDense) {
  const entry = head.entry, labels = entry.terms.map((t) => t.label);
  const range = cell.q0 === cell.q1 ? `query ${fmt(cell.q0)}, key ${fmt(cell.k0)}`
    : `queries ${fmt(cell.q0)}..${fmt(cell.q1)}, keys ${fmt(cell.k0)}..${fmt(cell.k1)}`;
  const area = (cell.q1 - cell.q0 + 1) * (cell.k1 - cell.k0 + 1);
  if (isDense) {
    const pairs = dense.pairs(cell.q0, cell.q1, cell.k0, cell.k1);
    const what = DATA.causal ? "every pair with k <= q" : "every pair";
    return { range, kind: pairs === 0 ? "empty" : pairs === area ? "FULL" : "PARTIAL", terms: [],
             lines: [range, `dense attention scores ${fmt(pairs)} of these ${fmt(area)} pairs (${what})`] };
  }
  if (cell.mode === "tokens") {
    const kind = KIND_NAMES[blockKind(head.runs, cell.i, cell.j)], ok = head.allowed(cell.q0, cell.k0);
    const terms = labels.filter((_, t) => head.terms[t](cell.q0, cell.k0));
    return { range, kind, terms, lines: [
      range, `block (${cell.i}, ${cell.j}) is ${kind}; this pair is ${ok ? "allowed" : "not allowed"}`,
      ok ? `allowed by: ${terms.join(", ")}` : "no term allows it"] };
  }
  if (cell.mode === "blocks") {
    const kind = KIND_NAMES[blockKind(head.runs, cell.i, cell.j)];
    const allowed = kind === "FULL" ? area : kind === "empty" ? 0 : blockCount(head.allowed, cell);
    const perTerm = kind === "empty" ? labels.map(() => 0) : head.terms.map((p) => blockCount(p, cell));
    const terms = labels.filter((_, t) => perTerm[t] > 0);
    return { range, kind, terms, lines: [
      range, `block (${cell.i}, ${cell.j}) is ${kind}: ${fmt(allowed)} of ${fmt(area)} pairs allowed`,
      terms.length ? "allowed by: " + labels.map((l, t) => perTerm[t] ? `${l} (${termKind(perTerm[t], area)})` : null)
        .filter(Boolean).join(", ") : "no term allows a pair here"] };
  }
  const o = head.overview, x = cell.r * o.cols + cell.c, blocks = cellArea(o, cell.r, cell.c);
  const stored = o.stored[x], full = o.full[x], terms = labels.filter((_, t) => o.terms[x] & (1 << t));
  const kind = stored === 0 ? "empty" : full === blocks ? "FULL" : "PARTIAL";
  return { range, kind, terms, lines: [
    range, `${fmt(blocks)} blocks (${o.ci} x ${o.cj}): ${fmt(stored)} stored, ${fmt(full)} FULL, `
      + `${fmt(stored - full)} PARTIAL, ${fmt(blocks - stored)} empty`,
    terms.length ? `terms with blocks here: ${terms.join(", ")}` : "no term has a block here"] };
}
