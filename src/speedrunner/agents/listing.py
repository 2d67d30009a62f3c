"""How a node's files are shown to a model, and how such a listing is read back (by the oracle).

    ### File: train_gpt.py
    ````python
    ...contents...
    ````

The fence is one backtick longer than the longest run of backticks in the file, so any content fits.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath

_LANG = {".py": "python", ".md": "markdown", ".yaml": "yaml", ".yml": "yaml", ".json": "json", ".sh": "bash",
         ".c": "c", ".cu": "cuda", ".cpp": "cpp", ".toml": "toml", ".txt": "text"}
_LISTED = re.compile(r"^### File: (?P<path>[^\n]+)\n(?P<fence>`{3,})[^\n]*\n(?P<body>(?:.*?\n)?)(?P=fence)[ \t]*$",
                     re.MULTILINE | re.DOTALL)


def fence_for(text: str) -> str:
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


def render_files(files: dict[str, str]) -> str:
    parts = []
    for path, text in files.items():
        fence = fence_for(text)
        lang = _LANG.get(PurePosixPath(path).suffix, "")
        body = text if text.endswith("\n") or not text else text + "\n"
        parts.append(f"### File: {path}\n{fence}{lang}\n{body}{fence}")
    return "\n\n".join(parts)


def parse_files(text: str) -> dict[str, str]:
    """Files listed with :func:`render_files` (the last listing of a path wins)."""
    out = {}
    for m in _LISTED.finditer(text):
        out[m.group("path").strip()] = m.group("body")
    return out
