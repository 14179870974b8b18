// The panels around the canvas: navigator, head figures, statistics, the comparison with MHA,
// MQA and GQA, the reachability report and the receptive field's growth.

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value; else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  return node;
}

function compact(x) {  // 1234567 -> "1.23 M"
  const units = [[1e15, "P"], [1e12, "T"], [1e9, "G"], [1e6, "M"], [1e3, "k"]];
  for (const [size, unit] of units) if (Math.abs(x) >= size) return `${(x / size).toPrecision(3)} ${unit}`;
  return String(Math.round(x));
}

function bytes(x) {
  const units = [[2 ** 40, "TiB"], [2 ** 30, "GiB"], [2 ** 20, "MiB"], [2 ** 10, "KiB"]];
  for (const [size, unit] of units) if (x >= size) return `${(x / size).toPrecision(3)} ${unit}`;
  return `${x} B`;
}

// Attention FLOPs of a number of scored pairs: q.k and p.v are each 2 * head_dim per pair.
function flops(pairs, headDim) { return 4 * headDim * pairs; }

function settings() {
  return { headDim: Number(document.getElementById("head-dim").value),
           bytes: Number(document.getElementById("elem-bytes").value),
           kvHeads: Number(document.getElementById("kv-heads").value) };
}

function buildNavigator(onSelect) {
  const layer = document.getElementById("layer"), head = document.getElementById("head");
  for (let l = 0; l < DATA.layers; l++) layer.append(el("option", { value: l }, `layer ${l}`));
  for (let h = 0; h < DATA.heads; h++) head.append(el("option", { value: h }, `head ${h}`));
  layer.addEventListener("change", () => onSelect(Number(layer.value), Number(head.value)));
  head.addEventListener("change", () => onSelect(Number(layer.value), Number(head.value)));
  const grid = document.getElementById("head-grid");
  grid.style.gridTemplateColumns = `repeat(${DATA.heads}, 1fr)`;
  for (let l = 0; l < DATA.layers; l++) {
    for (let h = 0; h < DATA.heads; h++) {
      const stats = DATA.layouts[DATA.head_layout[l][h]].stats;
      const expr = DATA.expressions[DATA.head_expression[l][h]];
      grid.append(el("button", { class: "cell", "data-layer": l, "data-head": h,
                                 title: `layer ${l}, head ${h}: ${expr} (block density ${stats.block_density.toFixed(3)})`,
                                 style: `background: rgb(${shade(PALETTE.full, Math.sqrt(stats.block_density)).join(",")})`,
                                 onclick: () => onSelect(l, h) }));
    }
  }
}

function showSelection(layer, head) {
  document.getElementById("layer").value = layer;
  document.getElementById("head").value = head;
  for (const cell of document.querySelectorAll("#head-grid .cell")) {
    cell.classList.toggle("chosen", Number(cell.dataset.layer) === layer && Number(cell.dataset.head) === head);
  }
  const entry = DATA.layouts[DATA.head_layout[layer][head]], s = entry.stats;
  document.getElementById("expression").textContent = DATA.expressions[DATA.head_expression[layer][head]];
  const terms = document.getElementById("terms");
  terms.replaceChildren(...entry.terms.map((t) => el("li", { title: t.text }, t.label,
    t.text !== t.label ? el("span", { class: "muted" }, `  (${t.text})`) : "")));
  document.getElementById("head-stats").textContent =
    `${fmt(s.nnz)} blocks stored (${fmt(s.full_blocks)} FULL, ${fmt(s.partial_blocks)} PARTIAL), `
    + `block density ${s.block_density.toFixed(4)}, token density ${s.token_density.toFixed(4)}, `
    + `at most ${fmt(s.max_blocks_per_row)} blocks per row`;
  document.getElementById("detail-note").textContent = entry.detail ? ""
    : "Exact blocks and tokens of this head are not embedded at this length (the page keeps under its size "
      + "limit); open the page on this head (patternc show --layer --head) to zoom into it.";
  showCounts();
}

// Pairs scored and FLOPs of the chosen head, for the pattern and for dense attention.
function showCounts() {
  const { headDim } = settings(), s = DATA.layouts[DATA.head_layout[state.layer][state.head]].stats;
  const densePairs = DATA.causal ? DATA.n * (DATA.n + 1) / 2 : DATA.n * DATA.n;
  document.getElementById("count-pattern").textContent = `pattern: ${fmt(s.allowed_pairs)} pairs scored `
    + `(${compact(flops(s.allowed_pairs, headDim))}FLOP); a block kernel computes ${fmt(s.stored_pairs)} `
    + `(${compact(flops(s.stored_pairs, headDim))}FLOP)`;
  document.getElementById("count-dense").textContent =
    `dense: ${fmt(densePairs)} pairs scored (${compact(flops(densePairs, headDim))}FLOP)`;
}

function buildStats() {
  const body = document.querySelector("#stats tbody");
  DATA.layouts.forEach((entry, id) => {
    const where = [];
    for (let l = 0; l < DATA.layers; l++) for (let h = 0; h < DATA.heads; h++) if (DATA.head_layout[l][h] === id) where.push([l, h]);
    const s = entry.stats;
    body.append(el("tr", {}, el("td", {}, heads(where)), el("td", { class: "code" }, DATA.expressions[DATA.head_expression[entry.first[0]][entry.first[1]]]),
      ...[s.nnz, s.full_blocks, s.partial_blocks].map((x) => el("td", { class: "num" }, fmt(x))),
      ...[s.block_density, s.token_density, s.partial_share].map((x) => el("td", { class: "num" }, x.toFixed(4))),
      el("td", { class: "num" }, fmt(s.allowed_pairs)), el("td", { class: "num" }, fmt(s.stored_pairs))));
  });
  const warnings = document.getElementById("warnings");
  for (const warning of DATA.warnings) warnings.append(el("li", {}, warning));
}

function heads(where) {  // [[l, h], ...] -> "layers 0-5, heads 0-11", or what it is not
  const rectangle = (cells) => {
    const ls = [...new Set(cells.map((w) => w[0]))], hs = [...new Set(cells.map((w) => w[1]))];
    const contiguous = (xs) => xs[xs.length - 1] - xs[0] + 1 === xs.length;
    if (ls.length * hs.length !== cells.length || !contiguous(ls) || !contiguous(hs)) return null;
    const span = (xs, word) => `${word}${xs.length > 1 ? "s" : ""} ${xs.length === 1 ? xs[0] : `${xs[0]}-${xs[xs.length - 1]}`}`;
    return `${span(ls, "layer")}, ${span(hs, "head")}`;
  };
  const inside = rectangle(where);
  if (inside) return inside;
  const taken = new Set(where.map(([l, h]) => `${l}.${h}`)), rest = [];
  for (let l = 0; l < DATA.layers; l++) for (let h = 0; h < DATA.heads; h++) if (!taken.has(`${l}.${h}`)) rest.push([l, h]);
  const outside = rectangle(rest);
  if (outside) return `every head but ${outside} (${where.length} heads)`;
  const listed = where.slice(0, 12).map(([l, h]) => `${l}.${h}`).join(" ");
  return where.length > 12 ? `${listed} ... (${where.length} heads, layer.head)` : `${listed} (layer.head)`;
}

// The comparison: KV-cache bytes are K and V, per layer, per KV head, per cached key. The pattern's
// row sums its layers' own caches (a hybrid stack's sliding layers hold a window, its full ones all).
function showCompare() {
  const { headDim, bytes: size, kvHeads } = settings(), body = document.querySelector("#compare tbody");
  const valid = kvHeads >= 1 && DATA.heads % kvHeads === 0;
  document.getElementById("kv-note").textContent = valid ? "" : `GQA needs a KV head count dividing ${DATA.heads}`;
  body.replaceChildren(...DATA.compare.map((row) => {
    const kv = row.kv_heads ?? kvHeads, keys = row.kv_keys ?? DATA.n;
    const cached = row.kv_layer_keys ? row.kv_layer_keys.reduce((a, b) => a + b, 0) : DATA.layers * kv * keys;
    const cache = 2 * cached * headDim * size;
    const kvText = `${bytes(cache)} (${kv} KV head${kv > 1 ? "s" : ""}, ${row.kv_keys === null ? "every key" : (row.kv_layer_keys ? "up to " : "") + fmt(keys) + " keys"})`;
    return el("tr", {}, el("td", {}, row.name), el("td", { class: "num" }, fmt(row.pairs)),
      el("td", { class: "num" }, `${compact(flops(row.pairs, headDim))}FLOP`),
      el("td", { class: "num" }, fmt(row.computed_pairs)),
      el("td", { class: "num" }, row.kv_heads === null && !valid ? "?" : kvText),
      el("td", {}, row.layers_to_mix), el("td", {}, row.global_token));
  }));
  const perLayer = DATA.kv_layers.map((g) => `layers ${g.layers}: ${fmt(g.keys)} keys, ${bytes(2 * g.keys * headDim * size)} a layer`);
  document.getElementById("kv-layers").textContent = perLayer.length > 1
    ? `This pattern's KV cache by layer (keys over the layer's KV heads): ${perLayer.join("; ")}; dense: ${bytes(2 * DATA.compare[0].kv_heads * DATA.n * headDim * size)} a layer (MHA).`
    : "";
}

function buildReach() {
  const r = DATA.reach, lines = [];
  const pct = ([lo, hi]) => lo === hi ? `${(100 * lo).toFixed(2)}%` : `between ${(100 * lo).toFixed(2)}% and ${(100 * hi).toFixed(2)}%`;
  lines.push(r.exact ? "Exact, token by token." : `Block-level bounds (blocks of ${r.block[0]} tokens).`);
  lines.push(`Mixing depth: ${DATA.compare[DATA.compare.length - 1].layers_to_mix} layers.`);
  lines.push(`Covered at depth ${DATA.layers}: ${pct(r.covered_bounds)}.`);
  lines.push("Growth per layer: " + r.growth.map((g, t) => `${t + 1}: ${pct(g)}`).join("  "));
  if (r.unreachable) {
    const [q, k] = r.unreachable;
    lines.push(`Query ${fmt(q)} never hears key ${fmt(k)} within ${DATA.layers} layers.`);
    if (r.closest_path) {
      lines.push(r.closest_path_exact
        ? `Closest, token by token (token@layer: it has heard key ${fmt(k)} after that layer): `
          + r.closest_path.map(([t, a]) => `${fmt(a)}@${t}`).join(" -> ")
        : "Closest, as block ranges (a range may hold tokens that never hear the key): "
          + r.closest_path.map(([t, a, b]) => `[${fmt(a)}..${fmt(b)}]@${t}`).join(" -> "));
    }
  }
  for (const error of r.errors) lines.push(`Error: ${error}`);
  document.getElementById("reach-text").replaceChildren(...lines.map((line) => el("p", {}, line)));
}
