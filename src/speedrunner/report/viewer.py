"""``speedrunner view``: one self-contained HTML file showing a run's search tree.

Everything the page needs is inline (CSS, JavaScript, the run's data); it loads nothing from the
network, and a Content-Security-Policy forbids it to. Agent-written text (diffs, logs, hypotheses,
replies) is untrusted: it travels as JSON inside a non-executable ``<script type="application/json">``
block with ``<``, ``>`` and ``&`` written as ``\\u003c``..., and the page puts it on screen only
through ``textContent``, never as HTML. The CSP allows only the page's own script, by hash.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

from speedrunner.core.errors import UserError

MAX_DIFF_CHARS = 200_000
MAX_LOG_LINES = 120
MAX_LOG_BYTES = 24_000
MAX_REPLY_CHARS = 12_000
X_GAP, Y_GAP, MARGIN = 46, 76, 30


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _read_text(path: Path, limit: int) -> tuple[str, bool]:
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError:
        return "", False
    return data[:limit].decode("utf-8", errors="replace"), len(data) > limit


def log_tail(path: Path, lines: int = MAX_LOG_LINES, max_bytes: int = MAX_LOG_BYTES) -> dict[str, Any] | None:
    """The last ``lines`` lines (at most ``max_bytes``) of a log, or None when there is no such file."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            f.seek(max(0, size - max_bytes))
            data = f.read()
    except OSError:
        return None
    text = data.decode("utf-8", errors="replace")
    all_lines = text.split("\n")  # not splitlines(): it also splits on \u2028, \x0c and others
    if all_lines and all_lines[-1] == "":
        all_lines.pop()
    if size > max_bytes and all_lines:
        all_lines = all_lines[1:]  # the first line is probably cut
    tail = all_lines[-lines:]
    return {"text": "\n".join(tail), "bytes": size, "truncated": size > max_bytes or len(all_lines) > lines}


def journal_costs(run_dir: Path) -> dict[int, dict[str, Any]]:
    """Per node: the model calls journaled for it (every attempt, as the run's spend counts them) and
    its execution."""
    out: dict[int, dict[str, Any]] = defaultdict(lambda: {
        "calls": 0, "failed_calls": 0, "tokens_in": 0, "tokens_out": 0, "usd": 0.0, "latency_s": 0.0,
        "roles": {}, "attempts": 0})
    try:
        f = open(run_dir / "journal.jsonl", encoding="utf-8")
    except OSError:
        return {}
    with f:
        for line in f:
            try:
                e = json.loads(line)
            except ValueError:
                continue
            node = e.get("node")
            if not isinstance(node, int):
                continue
            ev = e.get("event")
            if ev == "llm_call":
                c = out[node]
                c["calls"] += 1
                c["failed_calls"] += 0 if e.get("ok", True) else 1
                c["tokens_in"] += int(e.get("tokens_in") or 0)
                c["tokens_out"] += int(e.get("tokens_out") or 0)
                c["usd"] += float(e.get("usd") or 0.0)
                c["latency_s"] += float(e.get("latency_s") or 0.0)
                role = str(e.get("role", "?"))
                c["roles"][role] = c["roles"].get(role, 0) + 1
            elif ev == "node_started":
                out[node]["attempts"] += 1
            elif ev == "exec_finished":
                out[node]["exec"] = {k: e.get(k) for k in ("exit_code", "wall_s", "timed_out", "killed_reason")}
    for c in out.values():
        c["usd"] = round(c["usd"], 6)
        c["latency_s"] = round(c["latency_s"], 3)
    return dict(out)


def _last_reply(path: Path) -> str | None:
    t = _read_json(path)
    if not isinstance(t, list):
        return None
    for entry in reversed(t):
        msgs = entry.get("messages") if isinstance(entry, dict) else None
        for m in reversed(msgs or []):
            if isinstance(m, dict) and m.get("role") == "assistant":
                text = str(m.get("content", ""))
                return text if len(text) <= MAX_REPLY_CHARS else text[:MAX_REPLY_CHARS] + "\n[... cut ...]"
    return None


def layout(nodes: list[dict[str, Any]]) -> tuple[int, int]:
    """Tidy-ish tree layout: leaves left to right in id order, a parent centred over its children.
    Sets ``x``, ``y`` on each node; returns the drawing's width and height."""
    by_id = {n["id"]: n for n in nodes}
    kids: dict[Any, list[int]] = defaultdict(list)
    roots = []
    for n in sorted(nodes, key=lambda n: n["id"]):
        if n["parent"] in by_id:
            kids[n["parent"]].append(n["id"])
        else:
            roots.append(n["id"])
    next_x = [0]
    depth_max = [0]

    def place(nid: int, depth: int) -> float:
        # iterative post-order, so a deep chain cannot hit the recursion limit
        stack = [(nid, depth, False)]
        while stack:
            cur, d, done = stack.pop()
            node = by_id[cur]
            depth_max[0] = max(depth_max[0], d)
            node["y"] = MARGIN + d * Y_GAP
            ch = kids.get(cur, [])
            if not ch:
                node["x"] = MARGIN + next_x[0] * X_GAP
                next_x[0] += 1
            elif done:
                node["x"] = (by_id[ch[0]]["x"] + by_id[ch[-1]]["x"]) / 2
            else:
                stack.append((cur, d, True))
                stack.extend((c, d + 1, False) for c in reversed(ch))
        return by_id[nid]["x"]

    for r in roots:
        place(r, 0)
    return MARGIN * 2 + max(0, next_x[0] - 1) * X_GAP, MARGIN * 2 + depth_max[0] * Y_GAP


def _repro(path: Path) -> dict[str, Any] | None:
    """The node's reproduction distance (scoring/repro.py), the fields the page shows."""
    r = _read_json(path)
    if not isinstance(r, dict):
        return None
    return {k: r.get(k) for k in ("line_recall", "line_precision", "hunk_recall", "hunks_reproduced", "ref_hunks",
                                  "common_lines", "ref_lines", "agent_lines", "renames", "embedding")}


def collect(run_dir: Path) -> dict[str, Any]:
    """Everything the page shows, as one JSON-able dict."""
    run_dir = Path(run_dir)
    nodes_dir = run_dir / "nodes"
    if not nodes_dir.is_dir():
        raise UserError(f"{run_dir}: not a run folder (no nodes/ inside)")
    summary = _read_json(run_dir / "summary.json") or {}
    costs = journal_costs(run_dir)
    nodes = []
    for d in sorted(nodes_dir.iterdir(), key=lambda p: (len(p.name), p.name)):
        meta = _read_json(d / "meta.json")
        if not d.name.startswith("v_") or not isinstance(meta, dict):
            continue
        res = _read_json(d / "result.json")
        nid = int(meta.get("id", -1))
        diff, cut = _read_text(d / "diff.patch", MAX_DIFF_CHARS)
        nodes.append({
            "id": nid, "parent": meta.get("parent"), "operator": meta.get("operator", "?"),
            "depth": meta.get("depth"), "bug_depth": meta.get("bug_depth"),
            "hypothesis": meta.get("hypothesis") or "", "summary": meta.get("summary") or "",
            "coder_error": meta.get("coder_error"), "created": meta.get("created"),
            "files": sorted((meta.get("files") or {}).keys()),
            "status": (res or {}).get("status", "pending"), "metric": (res or {}).get("metric"),
            "metrics": (res or {}).get("metrics") or {}, "reason": (res or {}).get("reason", ""),
            "exit_code": (res or {}).get("exit_code"), "wall_s": (res or {}).get("wall_s"),
            "flags": (res or {}).get("flags") or [],
            "diff": diff, "diff_truncated": cut,
            "stdout": log_tail(d / "stdout.log"), "stderr": log_tail(d / "stderr.log"),
            "reply": _last_reply(d / "transcript.json"),
            "cost": costs.get(nid),
            "repro": _repro(d / "repro.json"),
        })
    if not nodes:
        raise UserError(f"{run_dir}: the run has no nodes yet")
    width, height = layout(nodes)
    keys = ("task", "size", "model", "scaffold", "coder", "ideator", "hints", "seed", "status", "stop_reason", "metric",
            "direction", "n_nodes", "n_valid", "n_buggy", "baseline_metric", "best_metric", "best_node", "speedup",
            "fsr", "fsr_source", "fsr_note", "t_R", "t_next", "t_agent", "t_agent_source", "drift", "drift_note", "reeval", "llm_calls",
            "tokens_in", "tokens_out", "usd", "wall_s")
    return {"run_dir": str(run_dir.resolve()), "summary": {k: summary.get(k) for k in keys if k in summary},
            "nodes": nodes, "width": width, "height": height}


def safe_json(obj: Any) -> str:
    """JSON that can sit inside a <script> block: no '<', '>' or '&' (so no '</script>' and no '<!--'),
    and no U+2028/U+2029."""
    s = json.dumps(obj, ensure_ascii=False, allow_nan=False, default=str)
    return (s.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


def _clean(obj: Any) -> Any:
    """NaN/inf are not JSON: null them."""
    if isinstance(obj, float) and (obj != obj or obj in (float("inf"), float("-inf"))):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_clean(v) for v in obj]
    return obj


def render_html(data: dict[str, Any]) -> str:
    s = data.get("summary", {})
    title = f"speedrunner · {s.get('task', '?')} · {s.get('model', '?')} · {s.get('scaffold', '?')}"
    script = "\n" + _JS.strip() + "\n"  # the CSP hash covers exactly the text between the tags
    digest = base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode()
    csp = (f"default-src 'none'; script-src 'sha256-{digest}'; style-src 'unsafe-inline'; img-src data:; "
           "base-uri 'none'; form-action 'none'")
    return (_HTML.replace("__TITLE__", html.escape(title))
            .replace("__CSP__", html.escape(csp, quote=True))
            .replace("__CSS__", _CSS.strip())
            .replace("__DATA__", safe_json(_clean(data)))
            .replace("__SCRIPT__", script))


def write_viewer(run_dir: Path, out: Path | None = None) -> Path:
    """Write the viewer for ``run_dir`` to ``out`` (default: RUN_DIR/tree.html); returns its path."""
    run_dir = Path(run_dir)
    out = Path(out) if out is not None else run_dir / "tree.html"
    if out.is_dir():
        out = out / "tree.html"
    text = render_html(collect(run_dir))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, out)
    return out


_HTML = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="__CSP__">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>__TITLE__</title>
<style>
__CSS__
</style>
</head>
<body>
<header id="head"><h1 id="title"></h1><div id="facts"></div></header>
<main>
<section id="treebox"><div id="legend"></div><div id="tree"></div></section>
<aside id="panel"><p class="hint">Click a node to see its idea, diff, log, metrics and cost.</p></aside>
</main>
<script type="application/json" id="run-data">__DATA__</script>
<script>__SCRIPT__</script>
</body>
</html>
"""

_CSS = """
* { box-sizing: border-box; }
html, body { height: 100%; }
body { margin: 0; font: 14px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1d1d1f; background: #fafafa;
  display: flex; flex-direction: column; }
header { padding: 10px 16px; background: #fff; border-bottom: 1px solid #ddd; }
h1 { font-size: 17px; margin: 0 0 4px; }
#facts { color: #444; font-size: 13px; }
#facts span { display: inline-block; margin-right: 14px; white-space: nowrap; }
main { display: flex; flex: 1 1 auto; min-height: 0; }
#treebox { flex: 1 1 55%; overflow: auto; border-right: 1px solid #ddd; background: #fff; position: relative; }
#legend { position: sticky; top: 0; left: 0; background: rgba(255,255,255,.92); padding: 6px 10px; font-size: 12px;
  display: flex; gap: 12px; align-items: center; flex-wrap: wrap; border-bottom: 1px solid #eee; z-index: 1; }
.sw { display: inline-block; width: 12px; height: 12px; border-radius: 50%; vertical-align: -2px; margin-right: 4px;
  border: 1px solid #555; }
.ramp { display: inline-block; width: 90px; height: 10px; vertical-align: -1px; margin: 0 4px; border: 1px solid #999; }
#panel { flex: 1 1 45%; overflow: auto; padding: 12px 16px; }
#panel h2 { font-size: 16px; margin: 0 0 8px; }
#panel h3 { font-size: 13px; margin: 14px 0 4px; text-transform: uppercase; letter-spacing: .04em; color: #555; }
pre { background: #f4f4f4; border: 1px solid #e2e2e2; padding: 8px; overflow: auto; font: 12px/1.35 ui-monospace,
  SFMono-Regular, Menlo, Consolas, monospace; white-space: pre; max-height: 480px; margin: 0; }
pre.wrap { white-space: pre-wrap; word-break: break-word; }
.add { background: #e6ffec; display: block; } .del { background: #ffebe9; display: block; }
.hunk { color: #0550ae; display: block; } .file { font-weight: bold; display: block; }
table.kv { border-collapse: collapse; font-size: 13px; }
table.kv td { padding: 2px 10px 2px 0; vertical-align: top; }
table.kv td:first-child { color: #555; }
.status-valid { color: #1a7f37; font-weight: 600; } .status-invalid { color: #9a6700; font-weight: 600; }
.status-buggy { color: #cf222e; font-weight: 600; } .status-pending { color: #777; font-weight: 600; }
.hint { color: #666; }
svg text { font: 11px system-ui, sans-serif; pointer-events: none; stroke: #fff; stroke-width: 3px;
  paint-order: stroke; stroke-linejoin: round; }
.node { cursor: pointer; }
.node:hover circle { stroke-width: 3; }
.node.selected circle.dot { stroke: #0969da; stroke-width: 4; }
.edge { stroke: #bbb; stroke-width: 1.5; fill: none; }
.muted { color: #777; }
"""

_JS = r"""
"use strict";
(function () {
  const DATA = JSON.parse(document.getElementById("run-data").textContent);
  const S = DATA.summary || {};
  const NODES = DATA.nodes || [];
  const byId = new Map(NODES.map(n => [n.id, n]));
  const minimize = (S.direction || "minimize") !== "maximize";
  const SVGNS = "http://www.w3.org/2000/svg";
  const COLORS = { invalid: "#c8c8c8", buggy: "#d62728", pending: "#ffffff" };
  // viridis stops: dark = worse, bright = better
  const RAMP = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];

  function el(tag, attrs, text) {
    const e = document.createElement(tag);
    if (attrs) for (const k in attrs) e.setAttribute(k, attrs[k]);
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function sv(tag, attrs) {
    const e = document.createElementNS(SVGNS, tag);
    for (const k in attrs) e.setAttribute(k, attrs[k]);
    return e;
  }
  function num(v) {
    if (v === null || v === undefined) return "-";
    if (typeof v !== "number") return String(v);
    if (Number.isInteger(v)) return String(v);
    return Math.abs(v) >= 1000 ? v.toFixed(1) : Number(v.toPrecision(5)).toString();
  }
  function isNum(v) { return typeof v === "number" && isFinite(v); }

  const validMetrics = NODES.filter(n => n.status === "valid" && isNum(n.metric)).map(n => n.metric);
  const lo = validMetrics.length ? Math.min.apply(null, validMetrics) : 0;
  const hi = validMetrics.length ? Math.max.apply(null, validMetrics) : 1;
  function ramp(t) {
    t = Math.max(0, Math.min(1, t));
    const p = t * (RAMP.length - 1), i = Math.min(RAMP.length - 2, Math.floor(p)), f = p - i;
    const c = RAMP[i].map((a, k) => Math.round(a + (RAMP[i + 1][k] - a) * f));
    return "rgb(" + c.join(",") + ")";
  }
  function goodness(m) {  // 0 = worst valid, 1 = best valid
    if (hi === lo) return 0.75;
    const t = (m - lo) / (hi - lo);
    return minimize ? 1 - t : t;
  }
  function fill(n) {
    if (n.status === "valid" && isNum(n.metric)) return ramp(goodness(n.metric));
    return COLORS[n.status] || COLORS.pending;
  }

  // ---- header
  document.getElementById("title").textContent =
    [S.task, S.model, S.scaffold].filter(x => x !== undefined && x !== null).join(" · ") || DATA.run_dir;
  const facts = document.getElementById("facts");
  const hints = Array.isArray(S.hints) ? (S.hints.length ? "L" + S.hints.join("+") : "none") : S.hints;
  const RE = S.reeval && typeof S.reeval === "object" ? S.reeval : null;
  const items = [["hints", hints], ["seed", S.seed], ["status", S.status + (S.stop_reason && S.stop_reason !== "max_nodes" ? " (" + S.stop_reason + ")" : "")], ["nodes", S.n_nodes],
    ["valid", S.n_valid], ["buggy", S.n_buggy], [(S.metric || "metric") + " baseline", num(S.baseline_metric)],
    ["best", S.best_node === null || S.best_node === undefined ? "-" : num(S.best_metric) + " (v_" + S.best_node + ")"],
    ["speedup", isNum(S.speedup) ? S.speedup.toFixed(3) + "x" : null],
    ["re-evaluation", RE ? (RE.chosen_node === null || RE.chosen_node === undefined ? "no node chosen" : "chose v_" + RE.chosen_node) + (RE.runs ? " (" + RE.runs + " runs each)" : "") : null],
    ["FSR", "fsr" in S ? (isNum(S.fsr) ? S.fsr.toFixed(3) + (S.fsr_source ? " (" + S.fsr_source + ")" : "") : "- " + (S.fsr_note || "")) : null],
    ["machine drift", isNum(S.drift) ? (S.drift >= 0 ? "+" : "") + (100 * S.drift).toFixed(1) + "% vs calibration" + (S.drift_note ? ", not corrected" : ", corrected") : null],
    ["model calls", S.llm_calls], ["tokens", isNum(S.tokens_in) ? S.tokens_in + " in / " + S.tokens_out + " out" : null],
    ["USD", isNum(S.usd) ? S.usd.toFixed(4) : null]];
  for (const [k, v] of items) {
    if (v === null || v === undefined) continue;
    const sp = el("span");
    sp.appendChild(el("b", null, k + ": "));
    sp.appendChild(document.createTextNode(String(v)));
    facts.appendChild(sp);
  }

  // ---- legend
  const legend = document.getElementById("legend");
  function sw(color, label, dashed) {
    const s = el("span");
    const d = el("span", { class: "sw" });
    d.style.background = color;
    if (dashed) d.style.borderStyle = "dashed";
    s.appendChild(d);
    s.appendChild(document.createTextNode(label));
    legend.appendChild(s);
  }
  const rs = el("span");
  rs.appendChild(document.createTextNode("valid: " + (S.metric || "metric") + " " + num(minimize ? hi : lo)));
  const rb = el("span", { class: "ramp" });
  rb.style.background = "linear-gradient(to right," + RAMP.map(c => "rgb(" + c.join(",") + ")").join(",") + ")";
  rs.appendChild(rb);
  rs.appendChild(document.createTextNode(num(minimize ? lo : hi) + " (better →)"));
  legend.appendChild(rs);
  sw(COLORS.invalid, "invalid", true);
  sw(COLORS.buggy, "buggy");
  sw(COLORS.pending, "not finished");
  legend.appendChild(el("span", { class: "muted" }, "ring = best · ◆ = baseline v_0"));

  // ---- tree
  const svg = sv("svg", { width: DATA.width, height: DATA.height + 20, id: "treesvg" });
  for (const n of NODES) {
    const p = byId.get(n.parent);
    if (!p) continue;
    const my = (p.y + n.y) / 2;
    svg.appendChild(sv("path", { class: "edge", d: "M" + p.x + "," + (p.y + 13) + " C" + p.x + "," + my + " " + n.x + "," + my + " " + n.x + "," + (n.y - 13) }));
  }
  const groups = new Map();
  for (const n of NODES) {
    const g = sv("g", { class: "node", "data-node": String(n.id), transform: "translate(" + n.x + "," + n.y + ")", tabindex: "0" });
    const title = sv("title", {});
    title.textContent = "v_" + n.id + " · " + n.operator + " · " + n.status + (isNum(n.metric) ? " · " + num(n.metric) : "");
    g.appendChild(title);
    if (n.id === S.best_node) g.appendChild(sv("circle", { r: 18, fill: "none", stroke: "#111", "stroke-width": 3 }));
    const shape = n.parent === null || n.parent === undefined
      ? sv("rect", { x: -12, y: -12, width: 24, height: 24, transform: "rotate(45)", class: "dot" })
      : sv("circle", { r: 13, class: "dot" });
    shape.setAttribute("fill", fill(n));
    shape.setAttribute("stroke", n.status === "buggy" ? "#7a0c0c" : "#444");
    shape.setAttribute("stroke-width", "1.5");
    if (n.status === "invalid") shape.setAttribute("stroke-dasharray", "3,2");
    g.appendChild(shape);
    if (n.status === "buggy") g.appendChild(sv("path", { d: "M-5,-5 L5,5 M5,-5 L-5,5", stroke: "#fff", "stroke-width": 2 }));
    const label = sv("text", { y: 28, "text-anchor": "middle" });
    label.textContent = "v_" + n.id;
    g.appendChild(label);
    if (isNum(n.metric)) {
      const mt = sv("text", { y: 40, "text-anchor": "middle", fill: "#555" });
      mt.textContent = num(n.metric);
      g.appendChild(mt);
    }
    g.addEventListener("click", () => select(n.id));
    g.addEventListener("keydown", ev => { if (ev.key === "Enter" || ev.key === " ") select(n.id); });
    groups.set(n.id, g);
    svg.appendChild(g);
  }
  document.getElementById("tree").appendChild(svg);

  // ---- panel
  function section(panel, title) { panel.appendChild(el("h3", null, title)); }
  function pre(text, cls) { return el("pre", cls ? { class: cls } : null, text); }
  function kv(rows) {
    const t = el("table", { class: "kv" });
    for (const [k, v] of rows) {
      if (v === undefined) continue;
      const tr = el("tr");
      tr.appendChild(el("td", null, k));
      const td = el("td");
      if (v instanceof Node) td.appendChild(v); else td.textContent = v === null ? "-" : String(v);
      tr.appendChild(td);
      t.appendChild(tr);
    }
    return t;
  }
  function diffView(text) {
    const p = el("pre", { class: "diff" });
    for (const line of text.split("\n")) {
      let cls = null;
      if (line.startsWith("+++") || line.startsWith("---")) cls = "file";
      else if (line.startsWith("+")) cls = "add";
      else if (line.startsWith("-")) cls = "del";
      else if (line.startsWith("@@")) cls = "hunk";
      if (cls) p.appendChild(el("span", { class: cls }, line));
      else p.appendChild(document.createTextNode(line + "\n"));
    }
    return p;
  }
  function delta(n, ref) {
    if (!ref || !isNum(n.metric) || !isNum(ref.metric) || ref.status !== "valid") return undefined;
    const d = n.metric - ref.metric;
    return (d >= 0 ? "+" : "") + num(d) + " (" + (100 * d / ref.metric).toFixed(1) + "%)";
  }

  function select(id) {
    const n = byId.get(id);
    if (!n) return;
    for (const [k, g] of groups) g.classList.toggle("selected", k === id);
    const panel = document.getElementById("panel");
    panel.textContent = "";
    const origin = n.parent === null || n.parent === undefined ? "baseline" : n.operator + " of v_" + n.parent;
    const h = el("h2");
    h.appendChild(document.createTextNode("v_" + n.id + " · " + origin + " · "));
    h.appendChild(el("span", { class: "status-" + n.status }, n.status));
    if (n.id === S.best_node) h.appendChild(document.createTextNode(" · best"));
    panel.appendChild(h);

    section(panel, "Metrics");
    const rows = [[(S.metric || "metric"), num(n.metric)], ["vs parent", delta(n, byId.get(n.parent))],
      ["vs baseline", n.id === 0 ? undefined : delta(n, byId.get(0))]];
    const mk = Object.keys(n.metrics || {}).sort();
    for (const k of mk) if (k !== S.metric && k !== "exit_code" && k !== "wall_s") rows.push([k, num(n.metrics[k])]);
    rows.push(["exit code", n.exit_code], ["wall s", num(n.wall_s)]);
    panel.appendChild(kv(rows));

    section(panel, "Validity");
    panel.appendChild(n.reason ? pre(n.reason, "wrap") : el("p", { class: "muted" }, n.status === "valid" ? "valid: every condition met" : "(no reason recorded)"));
    if (n.flags && n.flags.length) {
      section(panel, "Flags (suspicious changes; status unaffected)");
      const ul = el("ul");
      for (const f of n.flags) ul.appendChild(el("li", null, f));
      panel.appendChild(ul);
    }
    const rv = RE && RE.nodes ? RE.nodes[String(n.id)] : null;
    if (rv) {
      section(panel, "Re-evaluation" + (RE.chosen_node === n.id ? " (chosen)" : ""));
      panel.appendChild(kv([["valid", rv.valid === undefined ? undefined : (rv.valid ? "yes" : "no")],
        ["mean " + (S.metric || "metric"), isNum(rv.metric_mean) ? num(rv.metric_mean) + (isNum(rv.metric_std) ? " ± " + num(rv.metric_std) : "") : undefined],
        ["val loss", isNum(rv.val_loss) ? num(rv.val_loss) : undefined], ["test loss", isNum(rv.test_loss) ? num(rv.test_loss) : undefined],
        ["mismatch", rv.mismatch === undefined || rv.mismatch === null ? undefined : (typeof rv.mismatch === "object" ? JSON.stringify(rv.mismatch) : String(rv.mismatch))],
        ["reasons", Array.isArray(rv.reasons) && rv.reasons.length ? rv.reasons.join("\n") : undefined]]));
    }

    const rp = n.repro;
    if (rp) {
      section(panel, "Reproduction of the next record's change");
      const pct = v => isNum(v) ? (100 * v).toFixed(0) + " %" : "-";
      const ren = rp.renames && typeof rp.renames === "object" ? Object.keys(rp.renames).map(k => k + " -> " + rp.renames[k]).join(", ") : "";
      const emb = rp.embedding && typeof rp.embedding === "object" ? (isNum(rp.embedding.similarity_next) ? "similarity to next " + num(rp.embedding.similarity_next) + ", to current " + num(rp.embedding.similarity_current) : rp.embedding.skipped) : undefined;
      panel.appendChild(kv([["line recall", pct(rp.line_recall) + " (" + rp.common_lines + " of " + rp.ref_lines + " changed lines)"],
        ["line precision", pct(rp.line_precision) + " (of " + rp.agent_lines + " changed lines)"],
        ["hunk recall", pct(rp.hunk_recall) + " (" + rp.hunks_reproduced + " of " + rp.ref_hunks + " hunks)"],
        ["renames undone", ren || undefined], ["embedding", emb || undefined]].filter(r => r[1] !== undefined)));
    }

    if (n.hypothesis || n.summary || n.coder_error) {
      section(panel, "Idea");
      panel.appendChild(kv([["summary", n.summary || undefined], ["hypothesis", n.hypothesis || undefined],
        ["coder error", n.coder_error || undefined]].filter(r => r[1] !== undefined)));
    }

    section(panel, "Cost");
    const c = n.cost;
    if (c) {
      const roles = Object.keys(c.roles || {}).map(r => r + " " + c.roles[r]).join(", ");
      panel.appendChild(kv([["model calls", c.calls + (c.failed_calls ? " (" + c.failed_calls + " failed)" : "") + (roles ? " · " + roles : "")],
        ["tokens", c.tokens_in + " in / " + c.tokens_out + " out"], ["USD", c.usd.toFixed(6)],
        ["model latency s", num(c.latency_s)], ["attempts", c.attempts > 1 ? c.attempts + " (earlier ones were cut off; their calls are counted)" : undefined],
        ["run s", c.exec ? num(c.exec.wall_s) : undefined], ["timed out", c.exec && c.exec.timed_out ? "yes" : undefined],
        ["killed", c.exec && c.exec.killed_reason ? c.exec.killed_reason : undefined]]));
    } else {
      panel.appendChild(el("p", { class: "muted" }, "no model calls journaled for this node"));
    }

    section(panel, "Diff" + (n.diff_truncated ? " (cut)" : ""));
    panel.appendChild(n.diff ? diffView(n.diff) : el("p", { class: "muted" }, n.id === 0 ? "the baseline has no diff" : "(empty: no change)"));

    for (const key of ["stdout", "stderr"]) {
      const log = n[key];
      section(panel, key + (log && log.truncated ? " (tail of " + log.bytes + " bytes)" : ""));
      panel.appendChild(log ? (log.text ? pre(log.text, "log") : el("p", { class: "muted" }, "(empty)")) : el("p", { class: "muted" }, "(not run)"));
    }
    if (n.reply) {
      section(panel, "Coder's last reply");
      panel.appendChild(pre(n.reply, "wrap"));
    }
    if (n.files && n.files.length) {
      section(panel, "Files");
      panel.appendChild(el("p", { class: "muted" }, n.files.join(", ")));
    }
    try { history.replaceState(null, "", "#v_" + n.id); } catch (e) { /* file: URLs may refuse */ }
  }

  function reveal(id) {  // scroll the tree so that node ``id`` is in view
    const n = byId.get(id), box = document.getElementById("treebox");
    if (!n || !box) return;
    box.scrollLeft = Math.max(0, n.x - box.clientWidth / 2);
    box.scrollTop = Math.max(0, n.y - box.clientHeight / 2);
  }
  const m = /^#v_(\d+)$/.exec(location.hash);
  if (m && byId.has(Number(m[1]))) { select(Number(m[1])); reveal(Number(m[1])); }
  else if (NODES.length) reveal(NODES[0].id);
  window.__viewerReady = true;
})();
"""
