"""Helpers of the browser tests: Debian's Chromium, launched by Playwright as the CI runs it (a
fresh profile, no network), and a page opened in it with every console error and request kept."""

from __future__ import annotations

import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"  # Debian's package; never a browser that `playwright install` fetches
OUT = ROOT / "outputs" / "browser"  # screenshots and open times, kept by CI
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@contextmanager
def chromium():
    """A browser context on a fresh user-data-dir, offline."""
    from playwright.sync_api import sync_playwright

    profile = tempfile.mkdtemp(prefix="patternc-chromium-")
    try:
        with sync_playwright() as p:
            context = p.chromium.launch_persistent_context(profile, executable_path=CHROMIUM, args=ARGS,
                                                           headless=True, offline=True,
                                                           viewport={"width": 1400, "height": 1000})
            yield context
            context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


class Opened:
    """A page opened in the browser, with the console errors and failed requests it produced."""

    def __init__(self, context, path: Path) -> None:
        self.page = context.new_page()
        self.problems: list[str] = []
        self.page.on("console", lambda m: self.problems.append(f"console {m.type}: {m.text}")
                     if m.type in ("error", "warning") else None)
        self.page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))
        self.page.on("requestfailed", lambda r: self.problems.append(f"request failed: {r.url}"))
        self.page.on("request", lambda r: None if r.url.startswith("file:") or r.url.startswith("data:")
                     else self.problems.append(f"request to {r.url}"))
        start = time.perf_counter()
        self.page.goto(path.as_uri())
        self.script_ms = self.page.evaluate("window.patterncExplorer.ready")
        self.open_seconds = time.perf_counter() - start

    def eval(self, script: str, arg=None):
        return self.page.evaluate(script, arg)

    def painted(self) -> int:
        """Pixels of the main canvas that are not white."""
        return self.eval("""() => {
            const d = document.getElementById("canvas").getContext("2d").getImageData(0, 0, 640, 640).data;
            let n = 0;
            for (let i = 0; i < d.length; i += 4) n += d[i] !== 255 || d[i + 1] !== 255 || d[i + 2] !== 255;
            return n;
        }""")

    def hover_token(self, q: int, k: int) -> dict:
        """Move the mouse over (q, k) in the current view; the hover box's data."""
        view = self.eval("window.patterncExplorer.state.view")
        box = self.page.locator("#canvas").bounding_box()
        x = box["x"] + (k - view["k0"] + 0.5) * box["width"] / view["span"]
        y = box["y"] + (q - view["q0"] + 0.5) * box["height"] / view["span"]
        return self.hover_at(x, y)

    def hover_at(self, x: float, y: float) -> dict:
        seq = int(self.eval("document.getElementById('hover').dataset.seq || 0"))
        self.page.mouse.move(x, y)
        self.page.wait_for_function(f"Number(document.getElementById('hover').dataset.seq || 0) > {seq}")
        return self.eval("(b => ({...b.dataset, text: b.innerText}))(document.getElementById('hover'))")
