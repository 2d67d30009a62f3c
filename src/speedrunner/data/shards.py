"""The speedrun's token-shard format.

A shard is a header of 256 little-endian int32 followed by the tokens as little-endian uint16:

- ``header[0]`` = 20240520 (magic), ``header[1]`` = 1 (version), ``header[2]`` = number of tokens;
  the other 253 ints are zero.

The same format is read by the upstream NanoGPT speedrun, so a shard written here can be read by any of
its training scripts, and ours read each other's shards with a dozen lines of inlined code.
"""

from __future__ import annotations

import os
import sys
from array import array
from collections.abc import Iterable
from pathlib import Path

MAGIC = 20240520
VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
FIX_HINT = "run: speedrunner data prepare nanogpt_mini --force"

__all__ = ["MAGIC", "VERSION", "HEADER_BYTES", "ShardError", "write_shard", "read_header", "read_shard"]


class ShardError(ValueError):
    """A shard file is missing, corrupt or truncated. The message names the file, the problem and the fix."""

    def __init__(self, path: str | os.PathLike, problem: str, fix: str = FIX_HINT):
        self.path = str(path)
        self.problem = problem
        self.fix = fix
        super().__init__(f"{self.path}: {problem}; {fix}")


def _as_uint16_array(tokens: Iterable[int]) -> array:
    if isinstance(tokens, array) and tokens.typecode == "H":
        return tokens
    try:  # a torch tensor: go through a flat python list only if needed
        import torch

        if isinstance(tokens, torch.Tensor):
            t = tokens.detach().reshape(-1).to("cpu")
            if t.numel() and (int(t.min()) < 0 or int(t.max()) > 0xFFFF):
                raise ValueError("token ids must lie in [0, 65535] to fit a uint16 shard")
            return array("H", t.to(torch.int32).tolist())
    except ImportError:  # pragma: no cover - torch is a dependency of the project
        pass
    values = list(tokens)
    if values and (min(values) < 0 or max(values) > 0xFFFF):
        raise ValueError("token ids must lie in [0, 65535] to fit a uint16 shard")
    return array("H", values)


def write_shard(path: str | os.PathLike, tokens: Iterable[int]) -> Path:
    """Write ``tokens`` (ints, an ``array('H')`` or a torch tensor) as a shard; returns the path.

    The file is written to a temporary name and renamed, so a crash never leaves a half-written shard
    under the final name.
    """
    path = Path(path)
    body = _as_uint16_array(tokens)
    header = array("i", [0] * HEADER_INTS)
    header[0], header[1], header[2] = MAGIC, VERSION, len(body)
    if sys.byteorder != "little":  # pragma: no cover - the format is little-endian
        header.byteswap()
        body = array("H", body)
        body.byteswap()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(header.tobytes())
        f.write(body.tobytes())
    os.replace(tmp, path)
    return path


def read_header(path: str | os.PathLike) -> int:
    """Validate a shard's header and size without reading its tokens; returns the token count."""
    path = Path(path)
    if not path.is_file():
        raise ShardError(path, "file not found")
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(HEADER_BYTES)
    if len(raw) < HEADER_BYTES:
        raise ShardError(path, f"truncated: expected a {HEADER_BYTES}-byte header, found {len(raw)} bytes")
    header = array("i")
    header.frombytes(raw)
    if sys.byteorder != "little":  # pragma: no cover
        header.byteswap()
    if header[0] != MAGIC:
        raise ShardError(path, f"bad magic: expected {MAGIC}, found {header[0]} (not a token shard)")
    if header[1] != VERSION:
        raise ShardError(path, f"unsupported version: expected {VERSION}, found {header[1]}")
    count = header[2]
    if count < 0:
        raise ShardError(path, f"bad header: negative token count {count}")
    expected = HEADER_BYTES + 2 * count
    if size != expected:
        kind = "truncated" if size < expected else "trailing data"
        raise ShardError(path, f"{kind}: expected {expected} bytes ({count} tokens), found {size}")
    return count


def read_shard(path: str | os.PathLike):
    """Read a shard as a 1-D ``torch.uint16`` tensor after validating magic, version and file size.

    Raises :class:`ShardError` (a ``ValueError``) naming the file, the problem and the fix.
    """
    import torch

    count = read_header(path)
    with open(path, "rb") as f:
        f.seek(HEADER_BYTES)
        data = bytearray(f.read())
    if len(data) != 2 * count:  # the file changed under us
        raise ShardError(path, f"truncated: expected {2 * count} token bytes, found {len(data)}")
    if count == 0:
        return torch.empty(0, dtype=torch.uint16)
    tokens = torch.frombuffer(data, dtype=torch.uint16, count=count)
    if sys.byteorder != "little":  # pragma: no cover
        tokens = tokens.byteswap()
    return tokens
