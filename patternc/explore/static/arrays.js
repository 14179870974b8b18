// Arrays and token predicates for the patternc explorer. The page builder concatenates the
// static/*.js files, in the order of patternc/explore/html.py, inside one function scope.

const TYPED = { uint8: Uint8Array, uint16: Uint16Array, int32: Int32Array, uint32: Uint32Array,
                float32: Float32Array };

// {dtype, shape, data}: data is base64 of zlib (patternc/explore/encode.py), inflated by the
// browser's own DecompressionStream: nothing is fetched.
async function unpack(item) {
  const text = atob(item.data);
  const bytes = new Uint8Array(text.length);
  for (let i = 0; i < text.length; i++) bytes[i] = text.charCodeAt(i);
  const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("deflate"));
  const buffer = await new Response(stream).arrayBuffer();
  return new TYPED[item.dtype](buffer);
}

// A lowered pattern (patternc/explore/evaluator.py) -> (q, k) => bool. One case per lowered node
// type, each the same predicate as the Python node's; tests/test_browser_explorer.py checks them
// pair by pair against CompiledPattern.allows.
async function allowedBy(tree) {
  switch (tree.op) {
    case "all": return () => true;
    case "none": return () => false;
    case "band": { const lo = tree.lo, hi = tree.hi; return (q, k) => q - k >= lo && q - k <= hi; }
    case "stride": { const s = tree.s; return (q, k) => (q - k) % s === 0; }
    case "dilated": {
      const d = tree.d, reach = tree.reach;
      return (q, k) => (q - k) % d === 0 && Math.abs(q - k) <= reach;
    }
    case "diagonals": { const set = new Set(await unpack(tree.offsets)); return (q, k) => set.has(q - k); }
    case "chunk": { const c = tree.c; return (q, k) => Math.floor(q / c) === Math.floor(k / c); }
    case "sink": { const g = tree.g; return (q, k) => k < g; }
    case "global": { const g = tree.g; return (q, k) => q < g || k < g; }
    case "prefix": { const p = tree.p; return (q, k) => q < p && k < p; }
    case "tokens": { const set = new Set(await unpack(tree.positions)); return (q, k) => set.has(q) || set.has(k); }
    case "columns": { const set = new Set(await unpack(tree.positions)); return (q, k) => set.has(k); }
    case "periodic": { const c = tree.c, s = tree.s; return (q, k) => k % c >= c - s; }
    case "documents": {  // the same document: the last start at or before each position
      const starts = await unpack(tree.starts);
      const doc = (x) => { let lo = 0, hi = starts.length - 1; while (lo < hi) { const mid = (lo + hi + 1) >> 1; if (starts[mid] <= x) lo = mid; else hi = mid - 1; } return lo; };
      return (q, k) => doc(q) === doc(k);
    }
    case "neighborhood": {  // NATTEN's window per axis of a row-major grid, shifted inward at borders
      const size = tree.size, kernel = tree.kernel, cells = size.reduce((a, b) => a * b, 1);
      const strides = size.map((_, a) => size.slice(a + 1).reduce((x, y) => x * y, 1));
      return (q, k) => {
        if (q >= cells || k >= cells) return false;
        for (let a = 0; a < size.length; a++) {
          const cq = Math.floor(q / strides[a]) % size[a], ck = Math.floor(k / strides[a]) % size[a];
          const start = Math.min(Math.max(cq - Math.floor(kernel[a] / 2), 0), size[a] - kernel[a]);
          if (ck < start || ck >= start + kernel[a]) return false;
        }
        return true;
      };
    }
    case "random": {
      const table = await unpack(tree.table), r = tree.r, bq = tree.bq, bk = tree.bk;
      return (q, k) => {
        const row = Math.floor(q / bq) * r, col = Math.floor(k / bk);
        for (let t = 0; t < r; t++) if (table[row + t] === col) return true;
        return false;
      };
    }
    case "union": { const a = await allowedBy(tree.left), b = await allowedBy(tree.right); return (q, k) => a(q, k) || b(q, k); }
    case "intersect": { const a = await allowedBy(tree.left), b = await allowedBy(tree.right); return (q, k) => a(q, k) && b(q, k); }
    case "difference": { const a = await allowedBy(tree.left), b = await allowedBy(tree.right); return (q, k) => a(q, k) && !b(q, k); }
    case "complement": { const a = await allowedBy(tree.operand); return (q, k) => !a(q, k); }
  }
  throw new Error(`the page has no predicate for "${tree.op}"`);
}

// One distinct head layout, decoded on first use: the overview cells and, when embedded, the
// exact runs of blocks and the token predicates of the head and of each of its terms.
const decoded = new Map();

function layoutOf(id) {
  if (!decoded.has(id)) decoded.set(id, decodeLayout(DATA.layouts[id]));
  return decoded.get(id);
}

async function decodeLayout(entry) {
  const out = { entry, overview: null, runs: null, allowed: null, terms: [] };
  if (entry.overview) {
    const o = entry.overview;
    out.overview = { rows: o.rows, cols: o.cols, ci: o.ci, cj: o.cj, stored: await unpack(o.stored),
                     full: await unpack(o.full), terms: await unpack(o.terms) };
  }
  if (entry.detail) {
    const r = entry.detail.runs;
    out.runs = { rowPtr: await unpack(r.row_ptr), col: await unpack(r.col), length: await unpack(r.length),
                 kind: await unpack(r.kind) };
    out.allowed = await allowedBy(entry.detail.predicate);
    for (const term of entry.detail.terms) out.terms.push(await allowedBy(term));
  }
  return out;
}

// Kind of block (i, j) from the runs: 0 empty, 1 PARTIAL, 2 FULL.
function blockKind(runs, i, j) {
  let lo = runs.rowPtr[i], hi = runs.rowPtr[i + 1] - 1;
  while (lo <= hi) {  // the last run starting at or before column j
    const mid = (lo + hi) >> 1;
    if (runs.col[mid] <= j) lo = mid + 1; else hi = mid - 1;
  }
  return hi >= runs.rowPtr[i] && j < runs.col[hi] + runs.length[hi] ? runs.kind[hi] : 0;
}

// Kinds of blocks j0..j1-1 of block row i, as one array (a row of the block view).
function rowKinds(runs, i, j0, j1) {
  const out = new Uint8Array(j1 - j0);
  for (let r = runs.rowPtr[i]; r < runs.rowPtr[i + 1]; r++) {
    const a = Math.max(runs.col[r], j0), b = Math.min(runs.col[r] + runs.length[r], j1);
    for (let j = a; j < b; j++) out[j - j0] = runs.kind[r];
  }
  return out;
}

// Dense attention, in closed form: every pair of the envelope (k <= q for a causal stack).
const dense = {
  allows: (q, k) => !DATA.causal || k <= q,
  blockKind(i, j) {
    if (!DATA.causal) return 2;
    const [bq, bk] = DATA.block, q0 = i * bq, q1 = Math.min(q0 + bq, DATA.n), k0 = j * bk;
    const k1 = Math.min(k0 + bk, DATA.n);
    return k1 - 1 <= q0 ? 2 : k0 <= q1 - 1 ? 1 : 0;
  },
  pairs(qa, qb, ka, kb) {  // pairs k <= q in queries [qa, qb] x keys [ka, kb], inclusive
    if (!DATA.causal) return (qb - qa + 1) * (kb - ka + 1);
    let total = 0;
    for (let q = qa; q <= qb; q++) total += Math.max(0, Math.min(q, kb) - ka + 1);
    return total;
  },
};
