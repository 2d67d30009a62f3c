"""Read one upstream run log: the code it embeds, the environment header and the final result.

Three layouts occur in the speedrun's history:

``no-code``
    llm.c-style logs (``s:0 tel:11.0092`` validation lines, ``s:1 trl:10.95`` training lines) or any log
    without separator lines: nothing but the numbers.
``code-between``
    a line of 100 ``=``, the script, another such line, the environment (``Running pytorch ...``,
    nvidia-smi), another, then the training log.
``code-first``
    the script first, then the separator lines, the environment and the training log.

A logged script may hold several files: the training script, then for each extra file a banner of 40
``-``, a line ``# <name>.py`` and 40 ``-`` again, then that file's text.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

SEPARATOR = "=" * 100
BANNER = "-" * 40
MAIN_SCRIPT = "train_gpt.py"

_BANNER_NAME = re.compile(r"^#\s*([A-Za-z0-9_.-]+\.py)\s*$")
_VAL_LINE = re.compile(
    r"^step:(?P<step>\d+)/(?P<steps>\d+)\s+val_loss:(?P<val_loss>[0-9.]+|nan)(?:\s+\S+)*?"
    r"\s+train_time:(?P<time>[0-9.]+)(?P<unit>ms|s)\b",
    re.MULTILINE,
)
_LLMC_VAL = re.compile(r"^s:(?P<step>\d+)\s+tel:(?P<val_loss>[0-9.]+)", re.MULTILINE)
_LLMC_STEP = re.compile(r"^s:(?P<step>\d+)\s+t[er]l:", re.MULTILINE)
_ENV = [
    ("python_version", re.compile(r"^Running python (\d+\.\d+[^\s|]*)", re.I | re.M)),
    ("torch_version", re.compile(r"^Running pytorch (\S+)", re.I | re.M)),
    ("cuda_version", re.compile(r"^Running pytorch \S+ compiled for CUDA (\d[\w.]*)", re.I | re.M)),
    ("triton_version", re.compile(r"^Running triton(?: version)? (\d[\w.+-]*)", re.I | re.M)),
    ("gpu_name", re.compile(r"^Running on device_name=(.+?) with world_size=\d+", re.I | re.M)),
    ("gpu_name", re.compile(r"^Running pytorch \S+ compiled for CUDA \S+ on (.+?) with world_size", re.I | re.M)),
    ("world_size", re.compile(r"with world_size[= ](\d+)", re.I)),
]
_SMI_GPU = re.compile(r"^\|\s+(\d+)\s+(NVIDIA .+?|Tesla .+?)\s{2,}(?:On|Off)\s+\|", re.M)


@dataclass
class ParsedLog:
    """What one log says. ``files`` maps file names to their text, the training script first."""

    layout: str
    files: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    val_loss: float | None = None
    train_time_ms: float | None = None
    step: int | None = None
    steps: int | None = None

    @property
    def has_code(self) -> bool:
        return bool(self.files)

    @property
    def code_hash(self) -> str:
        h = hashlib.sha256()
        for name, text in self.files.items():
            h.update(name.encode() + b"\0" + text.encode() + b"\0")
        return h.hexdigest()[:16]


def _tidy(lines: list[str]) -> str:
    """Lines of one logged file -> its text: no blank lines at either end, one final newline."""
    while lines and not lines[0].strip():
        lines = lines[1:]
    while lines and not lines[-1].strip():
        lines = lines[:-1]
    return "\n".join(lines) + "\n" if lines else ""


def split_files(code_lines: list[str], main: str = MAIN_SCRIPT) -> dict[str, str]:
    """Split a logged script at the ``----`` / ``# name.py`` / ``----`` banners into its files."""
    files: dict[str, str] = {}
    name, start, i = main, 0, 0
    while i < len(code_lines):
        if (code_lines[i] == BANNER and i + 2 < len(code_lines) and code_lines[i + 2] == BANNER
                and _BANNER_NAME.match(code_lines[i + 1])):
            files[name] = _tidy(code_lines[start:i])
            m = _BANNER_NAME.match(code_lines[i + 1])
            assert m is not None
            name, start = m.group(1), i + 3
            i += 3
            continue
        i += 1
    files[name] = _tidy(code_lines[start:])
    return {k: v for k, v in files.items() if v}


def _looks_like_code(lines: list[str]) -> bool:
    head = [ln for ln in lines[:400] if ln.strip()]
    if not head or any(_VAL_LINE.match(ln) or _LLMC_STEP.match(ln) for ln in head[:50]):
        return False
    return any(ln.startswith(("import ", "from ", "def ", "class ")) for ln in head)


def _last_match(pattern: re.Pattern, text: str) -> re.Match | None:
    found = None
    for found in pattern.finditer(text):  # noqa: B007 - only the last one is kept
        pass
    return found


def parse_log(text: str, main: str = MAIN_SCRIPT) -> ParsedLog:
    text = text.replace("\r\n", "\n")
    lines = text.split("\n")
    seps = [i for i, ln in enumerate(lines) if ln.rstrip() == SEPARATOR]
    code: list[str] | None = None
    rest = text
    layout = "no-code"
    if seps and seps[0] == 0 and len(seps) >= 2:
        if _looks_like_code(lines[1:seps[1]]):
            code, layout = lines[1:seps[1]], "code-between"
            rest = "\n".join(lines[seps[1] + 1:])
    elif seps and seps[0] > 0 and _looks_like_code(lines[:seps[0]]):
        code, layout = lines[:seps[0]], "code-first"
        rest = "\n".join(lines[seps[0] + 1:])
    out = ParsedLog(layout=layout)
    if code is not None:
        out.files = split_files([ln.rstrip("\r") for ln in code], main)
        if not out.files:
            out.layout = "no-code"
    # the environment: the part between the code and the training log
    env_text = rest[:200_000]
    for key, pat in _ENV:
        if key in out.env:
            continue
        m = pat.search(env_text)
        if m:
            out.env[key] = m.group(1).strip()
    gpus = _SMI_GPU.findall(env_text)
    if gpus:
        out.env.setdefault("gpu_name", gpus[0][1].strip())
        out.env.setdefault("gpu_count", str(len({g[0] for g in gpus})))
    if "world_size" in out.env:
        out.env.setdefault("gpu_count", out.env["world_size"])
    out.env.pop("world_size", None)
    last = _last_match(_VAL_LINE, rest)
    if last is not None:
        out.step, out.steps = int(last["step"]), int(last["steps"])
        out.val_loss = float(last["val_loss"])
        t = float(last["time"])
        out.train_time_ms = t if last["unit"] == "ms" else t * 1000.0
    else:
        llmc = _last_match(_LLMC_VAL, rest)
        if llmc is not None:
            out.val_loss = float(llmc["val_loss"])
            steps = [int(m["step"]) for m in _LLMC_STEP.finditer(rest)]
            out.step = out.steps = max(steps) if steps else int(llmc["step"])
    return out
