"""report.html in a real headless Chromium, driven over the DevTools protocol (websocket-client):
no console errors, no network request, the theme labels on the page, hover, the theme filter, a
screenshot for people to look at (tests/artifacts/report.png), and a 100k-point page's size and
load time."""

from __future__ import annotations

import base64
import importlib.util
import json
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

websocket = pytest.importorskip("websocket")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

from theme_engine.engine.docstore import DocStore  # noqa: E402
from theme_engine.engine.report import MAX_BYTES, REPORT_FILE, render_report  # noqa: E402

log = logging.getLogger(__name__)

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
ALLOWED_SCHEMES = ("file:", "data:", "blob:", "about:")
VIEWPORT = (1400, 1000)


def _fixtures() -> Any:
    """test_report.py's folder builder (loaded by path: test modules are no package)."""
    spec = importlib.util.spec_from_file_location("_report_fixtures", Path(__file__).with_name("test_report.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class DevToolsError(RuntimeError):
    pass


class DevTools:
    """A minimal DevTools-protocol client on the browser's websocket: ``call`` sends a command
    (to a page when ``session`` is given) and waits for its answer; every event that arrives
    meanwhile is kept in ``events`` for the test to look at."""

    def __init__(self, ws_url: str) -> None:
        self.ws = websocket.create_connection(ws_url, timeout=30, suppress_origin=True)
        self.events: list[dict[str, Any]] = []
        self._id = 0

    def _recv(self, deadline: float) -> dict[str, Any] | None:
        self.ws.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            msg = json.loads(self.ws.recv())
        except websocket.WebSocketTimeoutException:
            return None
        if "method" in msg:
            self.events.append(msg)
        return msg

    def call(self, method: str, params: dict[str, Any] | None = None, session: str | None = None, timeout: float = 30) -> dict[str, Any]:
        self._id += 1
        msg: dict[str, Any] = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        self.ws.send(json.dumps(msg))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            reply = self._recv(deadline)
            if reply is not None and reply.get("id") == self._id:
                if "error" in reply:
                    raise DevToolsError(f"{method}: {reply['error']}")
                return reply.get("result", {})
        raise TimeoutError(f"{method}: no answer in {timeout} s")

    def wait_event(self, method: str, session: str, since: int = 0, timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        seen = since
        while True:
            for ev in self.events[seen:]:
                if ev["method"] == method and ev.get("sessionId") == session:
                    return ev
            seen = len(self.events)
            if time.monotonic() >= deadline:
                raise TimeoutError(f"no {method} in {timeout} s")
            self._recv(deadline)

    def pump(self, seconds: float) -> None:
        """Take in the events that arrive in the next ``seconds``."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self._recv(deadline)

    def close(self) -> None:
        try:
            self.ws.close()
        except Exception:  # noqa: BLE001 - closing a dead socket is fine
            pass


class Page:
    """One browser tab attached with a flat session, its Network, Runtime, Log and Page domains on."""

    def __init__(self, cdp: DevTools) -> None:
        self.cdp = cdp
        self.target = cdp.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = cdp.call("Target.attachToTarget", {"targetId": self.target, "flatten": True})["sessionId"]
        for domain in ("Network", "Runtime", "Log", "Page"):
            self.call(f"{domain}.enable")
        w, h = VIEWPORT
        self.call("Emulation.setDeviceMetricsOverride", {"width": w, "height": h, "deviceScaleFactor": 1, "mobile": False})

    def call(self, method: str, params: dict[str, Any] | None = None, timeout: float = 30) -> dict[str, Any]:
        return self.cdp.call(method, params, session=self.session, timeout=timeout)

    def evaluate(self, expression: str, timeout: float = 30) -> Any:
        res = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True}, timeout=timeout)
        if "exceptionDetails" in res:
            raise DevToolsError(f"{expression[:80]}: {res['exceptionDetails']}")
        return res["result"].get("value")

    def open(self, path: Path, timeout: float = 90) -> float:
        """Navigate to ``path``; seconds until the load event and the plots are drawn."""
        since = len(self.cdp.events)
        t0 = time.monotonic()
        self.call("Page.navigate", {"url": path.resolve().as_uri()})
        self.cdp.wait_event("Page.loadEventFired", self.session, since=since, timeout=timeout)
        while self.evaluate("document.documentElement.getAttribute('data-ready')") != "1":
            if time.monotonic() - t0 > timeout:
                raise TimeoutError(f"{path}: not drawn in {timeout} s")
            self.cdp.pump(0.05)
        return time.monotonic() - t0

    def my_events(self) -> list[dict[str, Any]]:
        return [e for e in self.cdp.events if e.get("sessionId") == self.session]

    def problems(self) -> list[str]:
        """Console errors, uncaught exceptions, error log entries and non-local requests."""
        out = []
        for ev in self.my_events():
            m, p = ev["method"], ev["params"]
            if m == "Runtime.exceptionThrown":
                out.append(f"exception: {p['exceptionDetails']}")
            elif m == "Runtime.consoleAPICalled" and p["type"] in ("error", "assert"):
                out.append(f"console.{p['type']}: {[a.get('value', a.get('description')) for a in p['args']]}")
            elif m == "Log.entryAdded" and p["entry"]["level"] == "error":
                out.append(f"log: {p['entry'].get('text')} {p['entry'].get('url', '')}")
            elif m == "Network.requestWillBeSent" and not p["request"]["url"].startswith(ALLOWED_SCHEMES):
                out.append(f"network request: {p['request']['url']}")
        return out

    def screenshot(self, path: Path, full: bool = False) -> None:
        params: dict[str, Any] = {"format": "png"}
        if full:
            size = self.call("Page.getLayoutMetrics")["cssContentSize"]
            params |= {"captureBeyondViewport": True, "clip": {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}}
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", params, timeout=60)["data"]))

    def close(self) -> None:
        try:
            self.cdp.call("Target.closeTarget", {"targetId": self.target})
        except Exception:  # noqa: BLE001 - the browser may be gone already
            pass


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium on 127.0.0.1 (a free port it picks), killed at the end whatever happens."""
    if not (os.path.exists(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        pytest.skip(f"no Chromium at {CHROMIUM}: install Debian's chromium (apt-get install chromium; the README test command installs it)")
    profile = tempfile.mkdtemp(prefix="te-chromium-")
    args = [
        CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--remote-debugging-port=0", "--remote-debugging-address=127.0.0.1",
        f"--user-data-dir={profile}", "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--disable-breakpad", "--disable-crash-reporter", "--mute-audio", "--hide-scrollbars",
        f"--window-size={VIEWPORT[0]},{VIEWPORT[1]}", "about:blank",
    ]  # fmt: skip
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    cdp = None
    try:
        port_file = Path(profile) / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (port_file.exists() and len(port_file.read_text().split()) >= 2):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"Chromium did not start (exit {proc.poll()})")
            time.sleep(0.05)
        port, ws_path = port_file.read_text().split()[:2]
        cdp = DevTools(f"ws://127.0.0.1:{port}{ws_path}")
        yield cdp
    finally:
        if cdp is not None:
            cdp.close()
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=10)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def page(browser):
    p = Page(browser)
    try:
        yield p
    finally:
        p.close()


POINT_JS = """(() => {
  const gd = document.getElementById('map'), P = window.themeReport.points, j = P.id.indexOf(%s);
  for (let c = 0; c < gd.data.length; c++) {
    const p = gd.data[c].customdata.indexOf(j);
    if (p < 0) continue;
    const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis, r = gd.getBoundingClientRect();
    return {c: c, p: p, excerpt: P.excerpt[j],
            x: r.left + xa._offset + xa.l2p(gd.data[c].x[p]), y: r.top + ya._offset + ya.l2p(gd.data[c].y[p])};
  }
  return null;
})()"""


def _hover_text(page: Page) -> str:
    return page.evaluate("document.getElementById('hover-text').textContent")


def test_report_in_chromium(page, tmp_path):
    fx = _fixtures()
    out = tmp_path / "out"
    info = fx.make_output(out)
    render_report(out)
    seconds = page.open(out / REPORT_FILE)
    log.info("small report: drawn %.2f s after navigating", seconds)
    assert page.problems() == []

    # every theme label in the themes table and on the map
    table_labels = page.evaluate("Array.from(document.querySelectorAll('#themes-table .theme-label')).map(e => e.textContent)")
    map_labels = page.evaluate("Array.from(document.querySelectorAll('#map .annotation-text')).map(e => e.textContent)")
    page_text = page.evaluate("document.body.innerText")
    for label in info["labels"]:
        assert label in table_labels and label in map_labels
        assert label in page_text
    assert "showing all 299 documents" in page.evaluate("document.getElementById('sample-note').textContent").lower()
    # the hostile text is shown as text and made no element
    assert page.evaluate("document.querySelectorAll('main b').length") == 0
    assert "</script><b>bold</b>" in page.evaluate("document.getElementById('themes-table').textContent")
    # the other sections
    assert page.evaluate("document.querySelectorAll('#hierarchy details.node').length") == 3
    assert page.evaluate("document.querySelectorAll('#hierarchy .leaf').length") == 4
    assert "root: god, king" in page.evaluate("document.getElementById('hierarchy').textContent")
    assert page.evaluate("document.querySelectorAll('#duplicates .dup-group').length") == 2
    assert page.evaluate("document.querySelectorAll('#duplicates .dup-member').length") == 3
    assert "word Jaccard 0.900" in page.evaluate("document.getElementById('duplicates').textContent")
    run_text = page.evaluate("document.getElementById('run').textContent")
    assert "verses.jsonl:301" in run_text and "invalid JSON <oops> & co" in run_text and "select_k" in run_text
    assert page.evaluate("document.querySelectorAll('#stages tbody tr[data-stage]').length") == 7
    assert page.evaluate("document.querySelectorAll('#k-chart .scatterlayer .trace').length") == 2  # the curve and the chosen k

    # hover: a real mouse move over the point (the outlier, away from other points and labels)
    # shows its text. Plotly finds the hovered point on the CPU (not by WebGL picking), so a real
    # Input.dispatchMouseEvent works in headless Chromium; Plotly.Fx.hover is the fallback kept
    # for a browser where it would not.
    pt = page.evaluate(POINT_JS % json.dumps(info["outlier"]))
    assert pt is not None and pt["excerpt"]
    page.call("Input.dispatchMouseEvent", {"type": "mouseMoved", "x": 5, "y": 5})
    page.call("Input.dispatchMouseEvent", {"type": "mouseMoved", "x": pt["x"], "y": pt["y"]})
    how = "mouse"
    deadline = time.monotonic() + 3
    while pt["excerpt"] not in _hover_text(page) and time.monotonic() < deadline:
        page.cdp.pump(0.05)
    if pt["excerpt"] not in _hover_text(page):
        how = "Plotly.Fx.hover"
        page.evaluate(f"Plotly.Fx.hover(document.getElementById('map'), [{{curveNumber: {pt['c']}, pointNumber: {pt['p']}}}])")
    log.info("hover by %s", how)
    text = _hover_text(page)
    assert pt["excerpt"] in text and info["outlier"] in text
    if how == "mouse":
        assert page.evaluate("!document.getElementById('hover-tip').hidden")
    png = tmp_path / "report.png"
    page.screenshot(png)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(png, ARTIFACTS / "report.png")
    page.screenshot(ARTIFACTS / "report-full.png", full=True)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # the filter box: typed text keeps the rows holding it
    rows = "Array.from(document.querySelectorAll('#themes-table tbody tr'))"
    page.evaluate("document.getElementById('theme-filter').focus()")
    page.call("Input.insertText", {"text": "loaves"})
    visible = page.evaluate(f"{rows}.filter(r => !r.hidden).map(r => r.getAttribute('data-theme'))")
    assert visible == ["1"]
    assert page.evaluate("document.getElementById('theme-count').textContent") == "1 of 4 themes"
    page.evaluate("(() => { const f = document.getElementById('theme-filter'); f.value = ''; f.dispatchEvent(new Event('input')); })()")
    assert len(page.evaluate(f"{rows}.filter(r => !r.hidden)")) == 4
    # sorting: a click on Size sorts ascending, a second descending
    sizes = f"{rows}.map(r => Number(r.children[1].firstChild.textContent.replace(/,/g, '')))"
    page.evaluate("document.querySelector('#themes-table th[data-key=size]').click()")
    asc = page.evaluate(sizes)
    page.evaluate("document.querySelector('#themes-table th[data-key=size]').click()")
    assert asc == sorted(asc) and page.evaluate(sizes) == sorted(asc, reverse=True)
    assert page.problems() == []


def make_large_output(out: Path, n: int = 100_000, k: int = 50, chars: int = 300, seed: int = 0) -> None:
    """``n`` synthetic documents in ``k`` themes, texts of ``chars``+ characters, a hierarchy,
    2000 duplicate groups: built with numpy/pyarrow, a few seconds."""
    fx = _fixtures()
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True)
    vocab = [f"w{i}{'abcdefgh'[i % 8] * (1 + i % 5)}" for i in range(4000)]
    pool = " ".join(np.asarray(vocab)[rng.integers(0, len(vocab), 400_000)].tolist())
    offsets = rng.integers(0, len(pool) - 2 * chars, n)
    texts = [pool[o : o + chars + 40] for o in offsets.tolist()]
    ids = [f"doc-{i:06d}" for i in range(n)]
    theme = rng.integers(0, k, n)
    centers = rng.normal(0, 10, (k, 2))
    xy = (centers[theme] + rng.normal(0, 1.2, (n, 2))).astype(np.float32)
    dup = np.arange(n - 4000, n)  # 2000 groups of two duplicates
    kept_of = rng.choice(n - 4000, 2000, replace=False).repeat(2)
    dup_of: list[str | None] = [None] * n
    status = np.array(["ok"] * n, dtype=object)
    for d, o in zip(dup.tolist(), kept_of.tolist()):
        dup_of[d] = ids[o]
    status[dup] = "near_duplicate"
    theme[dup] = theme[kept_of]
    pq.write_table(
        pa.table(
            {
                "id": ids, "theme": pa.array(theme, pa.int64()), "distance": pa.array(rng.random(n).astype(np.float32)),
                "duplicate_of": pa.array(dup_of, pa.string()), "kept": pa.array(status == "ok"), "status": pa.array(status.tolist(), pa.string()),
                "source": [f"big.jsonl:{i + 1}" for i in range(n)], "x": pa.array(xy[:, 0]), "y": pa.array(xy[:, 1]),
            }
        ),
        out / "documents.parquet",
    )  # fmt: skip
    pq.write_table(
        pa.table(
            {
                "id": [ids[d] for d in dup.tolist()], "duplicate_of": [ids[o] for o in kept_of.tolist()],
                "similarity": pa.array(rng.uniform(0.9, 1.0, len(dup)).astype(np.float32)), "kind": ["near"] * len(dup),
                "lexical_similarity": pa.array(rng.uniform(0.5, 1.0, len(dup)).astype(np.float32)), "edits": pa.array(rng.integers(0, 9, len(dup))),
            }
        ),
        out / "duplicates.parquet",
    )  # fmt: skip
    sizes = np.bincount(theme, minlength=k)
    themes = [
        {
            "theme": t, "label": ", ".join(vocab[t * 3 : t * 3 + 3]), "keywords": vocab[t * 3 : t * 3 + 10],
            "keyword_scores": [round(0.3 / (j + 1), 4) for j in range(10)], "keyword_lifts": [round(9.0 - j * 0.7, 2) for j in range(10)],
            "size": int(sizes[t]), "unique_size": int(sizes[t]), "merged_from": [t],
            "representatives": [ids[i] for i in np.flatnonzero(theme == t)[:5].tolist()], "parent": None,
        }
        for t in range(k)
    ]  # fmt: skip
    hierarchy, groups, members, size = [], list(range(k)), {t: [t] for t in range(k)}, {t: int(sizes[t]) for t in range(k)}
    for step in range(k - 1):
        a, b = groups.pop(0), groups.pop(0)  # a balanced-ish tree
        node = k + step
        members[node], size[node] = sorted(members[a] + members[b]), size[a] + size[b]
        hierarchy.append({"id": node, "children": [a, b], "similarity": round(0.9 - 0.01 * step, 3), "size": size[node], "themes": members[node],
                          "label": f"{themes[members[node][0]]['label']} +{len(members[node]) - 1}", "keywords": [], "keyword_scores": []})  # fmt: skip
        groups.append(node)
    (out / "themes.json").write_text(json.dumps({"themes": themes, "hierarchy": hierarchy}))
    store = DocStore(out / ".theme-engine" / "read" / "docs.parquet")
    store.path.parent.mkdir(parents=True)
    with store.writer() as write:
        write({"id": ids, "source": [f"big.jsonl:{i + 1}" for i in range(n)], "text": texts, "status": status.tolist(),
               "exact_of": np.full(n, -1, dtype=np.int64), "length": np.array([len(t) for t in texts], dtype=np.int64)})  # fmt: skip
    (out / "manifest.json").write_text(json.dumps(fx.example_manifest(k=k, n=n)))


def test_large_report_in_chromium(page, tmp_path):
    out = tmp_path / "big"
    t0 = time.monotonic()
    make_large_output(out)
    built = time.monotonic() - t0
    rec = render_report(out, max_points=100_000, excerpt_chars=300)
    log.info("large report: fixture %.1f s, %s", built, rec)
    assert rec["points_shown"] == rec["points_total"] == 100_000 and not rec["sampled"]
    assert rec["bytes"] <= MAX_BYTES == 30_000_000
    seconds = page.open(out / REPORT_FILE)
    js = page.evaluate("({parsed: window.themeReport.parsedMs, ready: window.themeReport.readyMs})")
    log.info(
        "large report: %.1f MB, excerpts %d chars, rendered in %.1f s; in Chromium drawn %.1f s after navigating "
        "(script started %.0f ms, plots drawn %.0f ms after navigation start)",
        rec["bytes"] / 1e6, rec["excerpt_chars"], rec["seconds"], seconds, js["parsed"], js["ready"],
    )  # fmt: skip
    assert page.problems() == []
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(ARTIFACTS / "report-large.png")
    assert page.evaluate("document.getElementById('map').data.reduce((a, t) => a + t.x.length, 0)") == 100_000
    assert page.evaluate("document.querySelectorAll('#themes-table tbody tr').length") == 50
    assert page.evaluate("document.querySelectorAll('#duplicates .dup-group').length") == 500
    assert "showing the 500 largest groups" in page.evaluate("document.getElementById('duplicates-note').textContent")
