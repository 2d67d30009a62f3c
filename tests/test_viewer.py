"""speedrunner.report.viewer: the self-contained HTML tree viewer.

The page is checked as text (escaping, no network assets, the CSP) and in a real headless Chromium
from Debian's packages (`apt-get install -y chromium`): a screenshot that is not blank, and a real
mouse click, sent over the Chrome DevTools Protocol (--remote-debugging-pipe, no extra Python package),
that opens a node's panel with that node's diff. The browser tests skip, with the reason, when no
Chromium is installed; set SPEEDRUNNER_REQUIRE_BROWSER=1 to make that a failure instead.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import html
import io
import json
import os
import re
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import variant

from speedrunner.core.errors import UserError
from speedrunner.report.synthetic import make_run
from speedrunner.report.viewer import collect, journal_costs, log_tail, safe_json, write_viewer
from speedrunner.runner import build, compose, save_config

PAYLOAD = "</script><script>window.__pwned=1;alert(1)</script>"
IMG = '<img src=x onerror="window.__pwned=2">'
COMMENT = "<!--<script>"


def evil_run(root: Path) -> Path:
    over = {2: dict(diff=f"--- a/train_gpt.py\n+++ b/train_gpt.py\n@@ -1 +1 @@\n-x = 1\n+x = '{PAYLOAD}'\n",
                    stdout=f"step 1\n{PAYLOAD}\n{IMG}\n", stderr=COMMENT + "\u2028line\n",
                    hypothesis=f"Try {IMG} & {PAYLOAD}", summary="<b>bold</b> & \"quoted\"",
                    reason=f"failed: {PAYLOAD}", status="invalid", metric=990.0),
            3: dict(parent=1, operator="improve", status="valid", metric=800.0,
                    diff="--- a/train_gpt.py\n+++ b/train_gpt.py\n@@ -1 +1 @@\n-lr = 0.001\n+lr = 0.0042  # unique-v3\n")}
    run = make_run(root / "evil", n_nodes=5, overrides=over, model="m<script>", task="nanogpt_mini/record_2")
    # as a re-evaluated run with an integrity flag on v_3
    summary = json.loads((run / "summary.json").read_text())
    summary["reeval"] = {"runs": 3, "chosen_node": 3, "nodes": {"3": {
        "valid": True, "metric_mean": 805.5, "metric_std": 4.25, "val_loss": 5.03, "test_loss": 5.05, "reasons": []}}}
    (run / "summary.json").write_text(json.dumps(summary))
    res = json.loads((run / "nodes" / "v_3" / "result.json").read_text())
    res["flags"] = ["touches the timer: <script>t0</script>"]
    (run / "nodes" / "v_3" / "result.json").write_text(json.dumps(res))
    return run


def page_data(text: str) -> dict:
    m = re.search(r'<script type="application/json" id="run-data">(.*?)</script>', text, flags=re.S)
    assert m
    return json.loads(m.group(1))


# ---------------------------------------------------------------------------------------------- as text
def test_untrusted_text_cannot_break_out(tmp_path):
    run = evil_run(tmp_path)
    out = write_viewer(run, tmp_path / "tree.html")
    text = out.read_text()
    assert len(re.findall(r"<script", text, flags=re.I)) == 2  # the data block and the page's own code
    assert len(re.findall(r"</script", text, flags=re.I)) == 2
    assert PAYLOAD not in text and IMG not in text and "<!--" not in text and "\u2028" not in text
    assert "<b>bold</b>" not in text
    data = page_data(text)  # the JSON still carries the exact text
    n2 = next(n for n in data["nodes"] if n["id"] == 2)
    assert PAYLOAD in n2["diff"] and IMG in n2["stdout"]["text"] and n2["hypothesis"] == f"Try {IMG} & {PAYLOAD}"
    assert n2["stderr"]["text"] == COMMENT + "\u2028line"
    assert data["summary"]["model"] == "m<script>"
    assert "<title>speedrunner · nanogpt_mini/record_2 · m&lt;script&gt; · aide</title>" in text


def test_page_is_self_contained_with_a_hash_csp(tmp_path):
    text = write_viewer(evil_run(tmp_path), tmp_path / "t.html").read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:|//)""", text, flags=re.I)
    assert "@import" not in text and "url(" not in text
    assert set(re.findall(r"https?://[^\s\"'<>]+", text)) <= {"http://www.w3.org/2000/svg"}
    csp = html.unescape(re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', text).group(1))
    assert "default-src 'none'" in csp
    digest = re.search(r"script-src 'sha256-([^']+)'", csp).group(1)
    code = re.search(r"<script>(.*?)</script>", text, flags=re.S).group(1)
    assert base64.b64encode(hashlib.sha256(code.encode()).digest()).decode() == digest


def test_safe_json_round_trips():
    s = {"a": "</script><!-- & \u2028 \u2029 > <", "b": [1.5, None, True]}
    j = safe_json(s)
    assert "<" not in j and ">" not in j and "&" not in j and "\u2028" not in j
    assert json.loads(j) == s


def test_layout_and_costs(tmp_path):
    run = make_run(tmp_path / "r", n_nodes=12, usd_per_call=0.25)
    data = collect(run)
    pos = {(n["x"], n["y"]) for n in data["nodes"]}
    assert len(pos) == 13  # no two nodes on one spot
    by = {n["id"]: n for n in data["nodes"]}
    for n in data["nodes"]:
        if n["parent"] is not None:
            assert by[n["parent"]]["y"] < n["y"]
        assert 0 < n["x"] <= data["width"] and 0 < n["y"] <= data["height"]
    costs = journal_costs(run)
    calls = [json.loads(line) for line in (run / "journal.jsonl").read_text().splitlines()]
    for nid in (1, 7):
        mine = [e for e in calls if e["event"] == "llm_call" and e["node"] == nid]
        assert by[nid]["cost"]["calls"] == len(mine) == 2 and by[nid]["cost"]["usd"] == pytest.approx(0.5)
        assert by[nid]["cost"]["tokens_in"] == sum(e["tokens_in"] for e in mine)
        assert by[nid]["cost"]["roles"] == {"ideator": 1, "coder": 1}
    assert by[0]["cost"] is None or by[0]["cost"]["calls"] == 0
    assert costs[3]["attempts"] == 1


def test_log_tail(tmp_path):
    p = tmp_path / "log"
    p.write_text("".join(f"line {i}\n" for i in range(1000)))
    t = log_tail(p, lines=5)
    assert t["text"].splitlines() == [f"line {i}" for i in range(995, 1000)] and t["truncated"]
    assert log_tail(tmp_path / "none") is None
    p.write_bytes(b"ok\n\xff\xfe bad bytes\n")
    assert "bad bytes" in log_tail(p)["text"]


def test_not_a_run_folder(tmp_path):
    with pytest.raises(UserError, match="not a run folder"):
        write_viewer(tmp_path)


def real_run(tmp_path: Path, fixed: list[str], script_file) -> Path:
    replies = [variant(900, tag="first"), variant(None, crash=True, tag="second"), variant(700, tag="third")]
    script = script_file(replies)
    run_dir = tmp_path / "real"
    overrides = [*fixed, "scaffold=aide", "model=scripted", f"model.path={script}", "coder=wholefile",
                 "budget.max_nodes=3", f"run_dir={run_dir}"]
    cfg = compose(overrides)
    run = build(cfg, run_dir)
    save_config(cfg, run_dir, overrides)
    run.run()
    return run_dir


def test_viewer_of_a_real_run(tmp_path, fixed_collatz, script_file):
    run_dir = real_run(tmp_path, fixed_collatz, script_file)
    out = write_viewer(run_dir)
    assert out == run_dir / "tree.html"
    data = page_data(out.read_text())
    by = {n["id"]: n for n in data["nodes"]}
    assert set(by) == {0, 1, 2, 3} and data["summary"]["best_node"] == 3
    assert "# variant third" in by[3]["diff"] and "runtime_ms: 700" in by[3]["stdout"]["text"]
    assert by[2]["status"] == "buggy" and "boom" in by[2]["reason"] and "boom" in by[2]["stderr"]["text"]
    assert by[3]["cost"]["calls"] == 1 and by[3]["cost"]["exec"]["exit_code"] == 0
    assert "### File: solve.py" in by[3]["reply"]
    assert by[0]["diff"] == "" and by[0]["parent"] is None


# ---------------------------------------------------------------------------------------------- in Chromium
def chromium() -> str:
    exe = os.environ.get("SPEEDRUNNER_CHROMIUM") or next(
        (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
    if not exe:
        msg = "headless Chromium is not installed (Debian: apt-get install -y chromium)"
        if os.environ.get("SPEEDRUNNER_REQUIRE_BROWSER") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    return exe


def browser_flags(profile: str) -> list[str]:
    return ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-dev-shm-usage", f"--user-data-dir={profile}"]


class DevTools:
    """A page in headless Chromium, driven over the DevTools Protocol on a pipe (fds 3 and 4)."""

    def __init__(self, exe: str, url: str, width: int = 1300, height: int = 850):
        self.profile = tempfile.mkdtemp(prefix="sr-chromium-")
        r_cmd, self.w_cmd = os.pipe()
        self.r_res, w_res = os.pipe()
        # move the child's ends above 9 so that the shell can put them on 3 and 4 without a clash
        a, b = fcntl.fcntl(r_cmd, fcntl.F_DUPFD, 10), fcntl.fcntl(w_res, fcntl.F_DUPFD, 10)
        os.close(r_cmd)
        os.close(w_res)
        self.stderr = tempfile.TemporaryFile()
        args = [exe, *browser_flags(self.profile), "--remote-debugging-pipe", f"--window-size={width},{height}", url]
        self.proc = subprocess.Popen(["bash", "-c", f'exec 3<&{a} 4>&{b} {a}<&- {b}>&-; exec "$@"', "bash", *args],
                                     pass_fds=(a, b), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=self.stderr)
        os.close(a)
        os.close(b)
        self.buf, self.next_id, self.events, self.session = b"", 0, [], None
        targets = self.send("Target.getTargets", browser=True)["targetInfos"]
        page = next(t for t in targets if t["type"] == "page")
        self.session = self.send("Target.attachToTarget", {"targetId": page["targetId"], "flatten": True},
                                 browser=True)["sessionId"]
        self.send("Page.enable")
        self.send("Runtime.enable")

    def send(self, method: str, params: dict | None = None, browser: bool = False, timeout: float = 30) -> dict:
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if self.session and not browser:
            msg["sessionId"] = self.session
        os.write(self.w_cmd, json.dumps(msg).encode() + b"\0")
        end = time.monotonic() + timeout
        while True:
            left = end - time.monotonic()
            if left <= 0 or not select.select([self.r_res], [], [], left)[0]:
                raise TimeoutError(f"{method}: no answer from Chromium")
            chunk = os.read(self.r_res, 1 << 16)
            if not chunk:
                self.stderr.seek(0)
                raise RuntimeError(f"Chromium closed the pipe: {self.stderr.read()[-2000:]!r}")
            self.buf += chunk
            *msgs, self.buf = self.buf.split(b"\0")
            for raw in msgs:
                m = json.loads(raw)
                if m.get("id") == self.next_id:
                    if "error" in m:
                        raise RuntimeError(f"{method}: {m['error']}")
                    return m.get("result", {})
                self.events.append(m)

    def eval(self, expr: str):
        r = self.send("Runtime.evaluate", {"expression": expr, "returnByValue": True})
        if "exceptionDetails" in r:
            raise RuntimeError(f"{expr}: {r['exceptionDetails']}")
        return r["result"].get("value")

    def wait_for(self, expr: str, timeout: float = 20) -> None:
        end = time.monotonic() + timeout
        while not self.eval(expr):
            if time.monotonic() > end:
                raise TimeoutError(f"{expr} never became true; events: {[e.get('method') for e in self.events]}")
            time.sleep(0.05)

    def click(self, selector: str) -> None:
        r = self.eval(f"(() => {{ const e = document.querySelector({json.dumps(selector)}); e.scrollIntoView("
                      "{block: 'center', inline: 'center'}); const b = e.getBoundingClientRect(); "
                      "return [b.x + b.width / 2, b.y + b.height / 2]; })()")
        x, y = r
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", {"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1})

    def close(self) -> None:
        try:
            self.send("Browser.close", browser=True, timeout=5)
        except (OSError, RuntimeError, TimeoutError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self.w_cmd, self.r_res):
            os.close(fd)
        self.stderr.close()
        shutil.rmtree(self.profile, ignore_errors=True)


@pytest.fixture
def page(tmp_path):
    exe = chromium()
    opened = []

    def open_page(url: str) -> DevTools:
        d = DevTools(exe, url)
        opened.append(d)
        return d

    yield open_page
    for d in opened:
        d.close()


def test_screenshot_is_not_blank(tmp_path, fixed_collatz, script_file):
    exe = chromium()
    from PIL import Image

    html_file = write_viewer(real_run(tmp_path, fixed_collatz, script_file), tmp_path / "view.html")
    shot = tmp_path / "shot.png"
    profile = tmp_path / "profile"
    proc = subprocess.run([exe, *browser_flags(str(profile)), "--window-size=1280,800", f"--screenshot={shot}",
                           html_file.as_uri() + "#v_3"],
                          capture_output=True, text=True, timeout=120)
    assert shot.is_file(), proc.stderr[-2000:]
    img = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert img.shape == (800, 1280, 3)
    flat = img.reshape(-1, 3)
    assert len(np.unique(flat[:, 0] * 65536 + flat[:, 1] * 256 + flat[:, 2])) > 100  # text, nodes, a colour scale: far from a blank page
    background = (flat.min(axis=1) >= 245)  # white and the page's #fafafa
    assert (~background).mean() > 0.02
    r, g, b = flat[:, 0], flat[:, 1], flat[:, 2]
    assert ((r > 200) & (g > 200) & (b < 80)).sum() > 100  # the best node's bright viridis yellow
    assert ((r > 190) & (g < 60) & (b < 60)).sum() > 100  # the buggy node's red


def test_click_on_a_node_opens_its_diff(tmp_path, page):
    run = evil_run(tmp_path)
    html_file = write_viewer(run, tmp_path / "view.html")
    d = page(html_file.as_uri())
    d.wait_for("window.__viewerReady === true")
    assert d.eval("document.querySelectorAll('#tree g.node').length") == 6
    assert "Click a node" in d.eval("document.getElementById('panel').innerText")
    d.click('[data-node="3"] .dot')
    d.wait_for("document.getElementById('panel').innerText.includes('v_3')")
    panel = d.eval("document.getElementById('panel').innerText")
    assert "v_3 · improve of v_1 · valid" in panel
    assert "+lr = 0.0042  # unique-v3" in panel and "unique-v3" in d.eval(
        "document.querySelector('#panel pre.diff').textContent")
    assert "model calls" in panel and "USD" in panel
    assert "RE-EVALUATION (CHOSEN)" in panel.upper() and "805.5 ± 4.25" in panel
    assert "touches the timer: <script>t0</script>" in panel
    assert "chose v_3 (3 runs each)" in d.eval("document.getElementById('facts').innerText")
    assert d.eval("document.querySelector('[data-node=\"3\"]').classList.contains('selected')")
    # the node with hostile text: shown as text, nothing runs
    d.click('[data-node="2"] .dot')
    d.wait_for("document.getElementById('panel').innerText.includes('v_2')")
    panel = d.eval("document.getElementById('panel').innerText")
    assert PAYLOAD in panel and IMG in panel
    assert d.eval("typeof window.__pwned") == "undefined"
    assert d.eval("document.querySelectorAll('script').length") == 2
    assert d.eval("document.querySelectorAll('#panel img, #panel script, #panel b').length") == 0
    assert not [e for e in d.events if e.get("method") == "Page.javascriptDialogOpening"]
    errors = [e for e in d.events if e.get("method") == "Runtime.exceptionThrown"]
    assert not errors, errors


def test_hash_selects_a_node(tmp_path, page):
    run = make_run(tmp_path / "r", n_nodes=4)
    html_file = write_viewer(run)
    d = page(html_file.as_uri() + "#v_4")
    d.wait_for("window.__viewerReady === true")
    assert d.eval("document.getElementById('panel').innerText").startswith("v_4")
    png = base64.b64decode(d.send("Page.captureScreenshot", {"format": "png"})["data"])
    from PIL import Image

    assert Image.open(io.BytesIO(png)).size[0] > 0
