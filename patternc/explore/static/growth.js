// The receptive field of a key: after each layer, which positions have heard it (certainly, and
// where the analysis is block-level, possibly). One row per depth, stepped or animated.

const GROWTH_ROW = 18;  // pixels per depth at most

function growthGeometry() {
  const depths = DATA.layers + 1, row = Math.max(4, Math.min(GROWTH_ROW, Math.floor(360 / depths)));
  return { depths, row, height: depths * row };
}

async function growthPlanes() {
  if (!growthPlanes.done) {
    const s = DATA.spread;
    growthPlanes.done = { certain: await unpack(s.certain), possible: s.possible ? await unpack(s.possible) : null };
  }
  return growthPlanes.done;
}

async function drawGrowth(canvas, keyIndex, upto) {
  const s = DATA.spread, planes = await growthPlanes(), g = growthGeometry();
  canvas.width = CANVAS; canvas.height = g.height;
  const ctx = canvas.getContext("2d"), image = ctx.createImageData(CANVAS, g.height);
  const sure = [22, 120, 60], maybe = [150, 205, 165];
  for (let y = 0; y < g.height; y++) {
    const t = Math.floor(y / g.row);
    for (let x = 0; x < CANVAS; x++) {
      const c = Math.floor(x * s.cells / CANVAS), at = (t * s.keys.length + keyIndex) * s.cells + c;
      let rgb = [255, 255, 255];
      if (t <= upto) {
        const certain = planes.certain[at] / 255, possible = planes.possible ? planes.possible[at] / 255 : 0;
        rgb = certain > 0 ? shade(sure, 0.25 + 0.75 * certain) : possible > 0 ? shade(maybe, 0.4 + 0.6 * possible) : [250, 250, 250];
      }
      const p = 4 * (y * CANVAS + x);
      image.data[p] = rgb[0]; image.data[p + 1] = rgb[1]; image.data[p + 2] = rgb[2]; image.data[p + 3] = 255;
    }
  }
  ctx.putImageData(image, 0, 0);
  const key = s.keys[keyIndex], x = Math.floor((key / DATA.n) * CANVAS);
  ctx.strokeStyle = "#c0392b"; ctx.beginPath(); ctx.moveTo(x + 0.5, 0); ctx.lineTo(x + 0.5, g.height); ctx.stroke();
  const [low, high] = s.tokens[upto][keyIndex], envelope = s.envelope[keyIndex];
  const share = (x) => `${(100 * x / envelope).toFixed(2)}%`;
  document.getElementById("growth-text").textContent = `key ${fmt(key)} after ${upto} layer${upto === 1 ? "" : "s"}: `
    + (low === high ? `heard by ${fmt(low)} of the ${fmt(envelope)} tokens that may hear it (${share(low)})`
      : `heard by at least ${fmt(low)} (${share(low)}) and at most ${fmt(high)} (${share(high)}) of the `
        + `${fmt(envelope)} tokens that may hear it (block-level bounds)`);
}

function nearestKey(token) {
  let best = 0;
  DATA.spread.keys.forEach((k, i) => { if (Math.abs(k - token) < Math.abs(DATA.spread.keys[best] - token)) best = i; });
  return best;
}
