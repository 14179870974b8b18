// The page: state, events, and a small API (window.patterncExplorer) that the browser tests and
// a curious reader can drive from the console.

const state = { layer: DATA.start[0], head: DATA.start[1], dense: false, view: { q0: 0, k0: 0, span: DATA.n },
                keyIndex: 0, upto: DATA.layers, timer: null, mode: null };
const MIN_SPAN = Math.min(DATA.n, 16);

function currentHead() { return layoutOf(DATA.head_layout[state.layer][state.head]); }

function clampView(view) {
  const span = Math.max(MIN_SPAN, Math.min(DATA.n, Math.round(view.span)));
  const clamp = (x) => Math.max(0, Math.min(DATA.n - span, Math.round(x)));
  return { q0: clamp(view.q0), k0: clamp(view.k0), span };
}

async function redraw() {
  const head = await currentHead(), canvas = document.getElementById("canvas");
  state.mode = drawHead(canvas, head, state.view, state.dense);
  const v = state.view, last = (x) => fmt(Math.min(x + v.span, DATA.n) - 1);
  const per = state.mode === "tokens" ? "one cell per pair" : state.mode === "blocks"
    ? `one cell per block of ${DATA.block[0]} x ${DATA.block[1]}`
    : `one cell per ${head.overview ? `${head.overview.ci} x ${head.overview.cj}` : "?"} blocks`;
  document.getElementById("view-text").textContent =
    `queries ${fmt(v.q0)}..${last(v.q0)} (down), keys ${fmt(v.k0)}..${last(v.k0)} (across); ${per}`;
  canvas.dataset.mode = state.mode;
  canvas.dataset.dense = String(state.dense);
  for (const button of document.querySelectorAll("#toggle button")) {
    button.setAttribute("aria-pressed", String((button.dataset.dense === "true") === state.dense));
  }
}

async function select(layer, head) {
  state.layer = layer; state.head = head;
  showSelection(layer, head);
  await redraw();
}

async function setView(view) { state.view = clampView(view); await redraw(); }

async function zoom(factor, atQ, atK) {  // factor < 1 zooms in, around token (atQ, atK)
  const v = state.view, span = v.span * factor;
  await setView({ q0: atQ - (atQ - v.q0) * factor, k0: atK - (atK - v.k0) * factor, span });
}

function pointer(event) {
  const rect = event.target.getBoundingClientRect();
  const x = Math.min(CANVAS - 1, Math.max(0, Math.floor((event.clientX - rect.left) * CANVAS / rect.width)));
  const y = Math.min(CANVAS - 1, Math.max(0, Math.floor((event.clientY - rect.top) * CANVAS / rect.height)));
  return { x, y, q: state.view.q0 + y * state.view.span / CANVAS, k: state.view.k0 + x * state.view.span / CANVAS };
}

async function hover(x, y) {
  const head = await currentHead();
  if (viewMode(head, state.view.span) === "overview" && !head.overview) return null;
  const found = describe(head, cellAt(head, state.view, x, y), state.dense);
  const box = document.getElementById("hover");
  box.replaceChildren(...found.lines.map((line) => el("div", {}, line)));
  box.dataset.range = found.range; box.dataset.kind = found.kind; box.dataset.terms = found.terms.join("|");
  box.dataset.seq = String(Number(box.dataset.seq || 0) + 1);  // lets a test wait for this hover
  return found;
}

async function showGrowth() {
  document.getElementById("growth-key").value = state.keyIndex;
  document.getElementById("growth-layer").value = state.upto;
  await drawGrowth(document.getElementById("growth"), state.keyIndex, state.upto);
}

function play() {
  if (state.timer) { clearInterval(state.timer); state.timer = null; return; }
  state.upto = 0;
  showGrowth();
  state.timer = setInterval(() => {
    if (state.upto >= DATA.layers) { clearInterval(state.timer); state.timer = null; return; }
    state.upto += 1;
    showGrowth();
  }, 500);
}

function wire() {
  const canvas = document.getElementById("canvas");
  let drag = null;
  canvas.addEventListener("mousemove", (event) => {
    const p = pointer(event);
    if (drag) {
      const scale = state.view.span / CANVAS;
      setView({ q0: drag.q0 - (p.y - drag.y) * scale, k0: drag.k0 - (p.x - drag.x) * scale, span: state.view.span });
      drag.moved = true;
    } else hover(p.x, p.y);
  });
  canvas.addEventListener("mousedown", (event) => { const p = pointer(event); drag = { ...p, q0: state.view.q0, k0: state.view.k0 }; });
  window.addEventListener("mouseup", (event) => {
    if (drag && !drag.moved && event.target === canvas) {  // a click: follow the nearest key in the growth panel
      state.keyIndex = nearestKey(Math.floor(pointer(event).k)); showGrowth();
    }
    drag = null;
  });
  canvas.addEventListener("wheel", (event) => {
    event.preventDefault();
    const p = pointer(event);
    zoom(event.deltaY < 0 ? 0.5 : 2, p.q, p.k);
  }, { passive: false });
  canvas.addEventListener("dblclick", (event) => { const p = pointer(event); zoom(0.25, p.q, p.k); });
  document.getElementById("zoom-in").addEventListener("click", () => zoom(0.5, state.view.q0 + state.view.span / 2, state.view.k0 + state.view.span / 2));
  document.getElementById("zoom-out").addEventListener("click", () => zoom(2, state.view.q0 + state.view.span / 2, state.view.k0 + state.view.span / 2));
  document.getElementById("zoom-reset").addEventListener("click", () => setView({ q0: 0, k0: 0, span: DATA.n }));
  for (const button of document.querySelectorAll("#toggle button")) {
    button.addEventListener("click", () => { state.dense = button.dataset.dense === "true"; redraw(); });
  }
  const step = (dl, dh) => select((state.layer + dl + DATA.layers) % DATA.layers, (state.head + dh + DATA.heads) % DATA.heads);
  document.getElementById("layer-prev").addEventListener("click", () => step(-1, 0));
  document.getElementById("layer-next").addEventListener("click", () => step(1, 0));
  document.getElementById("head-prev").addEventListener("click", () => step(0, -1));
  document.getElementById("head-next").addEventListener("click", () => step(0, 1));
  const key = document.getElementById("growth-key"), layer = document.getElementById("growth-layer");
  key.max = DATA.spread.keys.length - 1; layer.max = DATA.layers;
  key.addEventListener("input", () => { state.keyIndex = Number(key.value); showGrowth(); });
  layer.addEventListener("input", () => { state.upto = Number(layer.value); showGrowth(); });
  document.getElementById("growth-play").addEventListener("click", play);
  for (const id of ["head-dim", "elem-bytes", "kv-heads"]) {
    document.getElementById(id).addEventListener("input", () => { showCompare(); showCounts(); });
  }
}

async function start() {
  const t0 = performance.now();
  document.getElementById("head-dim").value = DATA.defaults.head_dim;
  document.getElementById("elem-bytes").value = DATA.defaults.bytes;
  document.getElementById("kv-heads").value = DATA.defaults.kv_heads;
  buildNavigator(select);
  buildStats();
  buildReach();
  showCompare();
  wire();
  // Follow the key that does not get everywhere, else one a quarter in: its spread shows best.
  const unreachable = DATA.reach.unreachable;
  state.keyIndex = unreachable ? DATA.spread.keys.indexOf(unreachable[1]) : nearestKey(Math.floor(DATA.n / 4));
  await select(state.layer, state.head);
  await showGrowth();
  return performance.now() - t0;
}

window.patterncExplorer = {
  data: DATA, state, select, setView, hover, redraw,
  setDense: async (dense) => { state.dense = dense; await redraw(); },
  setGrowth: async (keyIndex, upto) => { state.keyIndex = keyIndex; state.upto = upto; await showGrowth(); },
  allowed: async (layer, head, pairs) => {  // [[q, k], ...] -> [bool, ...] from the page's predicate
    const h = await layoutOf(DATA.head_layout[layer][head]);
    return h.allowed ? pairs.map(([q, k]) => h.allowed(q, k)) : null;
  },
  ready: start(),
};
