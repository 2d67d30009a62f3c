"""The FineWeb GPT-2 token shards the upstream speedrun trains on (``fineweb10B``).

``prepare(shards=K)`` fetches the validation shard and the first K training shards (100M tokens each)
into the cache, in the speedrun shard format (256 int32 header: magic 20240520, version 1, token
count; then uint16 tokens). A partial download resumes where it stopped (HTTP Range), and every shard
is checked by its header and size before it is accepted. Offline, or where the host is unreachable, it
stops with a message saying how to place the files by hand.
"""

from __future__ import annotations

import os
import shutil
import urllib.error
import urllib.request
from pathlib import Path

from speedrunner.core.errors import UserError
from speedrunner.data.shards import ShardError, read_header

NAME = "fineweb10B"
# The public dataset of pre-tokenized FineWeb shards used by the upstream speedrun.
BASE_URL = "https://huggingface.co/datasets/kjj0/fineweb10B-gpt2/resolve/main/"
VAL_SHARD = "fineweb_val_000000.bin"
MAX_TRAIN_SHARDS = 103
CHUNK = 1 << 20


def default_dir() -> Path:
    root = Path(os.environ.get("SPEEDRUNNER_CACHE", Path.home() / ".cache" / "speedrunner")).expanduser()
    return root / "data" / NAME


def shard_names(shards: int) -> list[str]:
    if not 0 <= shards <= MAX_TRAIN_SHARDS:
        raise UserError(f"--shards: choose 0..{MAX_TRAIN_SHARDS} training shards (100M tokens each), got {shards}")
    return [VAL_SHARD] + [f"fineweb_train_{i:06d}.bin" for i in range(1, shards + 1)]


def _manual_help(out: Path, names: list[str], base_url: str) -> str:
    return (f"Place the files by hand: download {', '.join(names[:3])}{' ...' if len(names) > 3 else ''} from "
            f"{base_url} on a machine with network access, copy them into {out}, then run "
            f"'speedrunner data check {NAME} --out {out}'.")


def _download(url: str, dest: Path, timeout: float) -> None:
    """Fetch ``url`` into ``dest``, resuming from ``dest.part`` when it exists."""
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        if have and resp.status != 206:  # the server ignored the range: start again
            have = 0
        with open(part, "ab" if have else "wb") as f:
            shutil.copyfileobj(resp, f, CHUNK)
    try:
        read_header(part)
    except ShardError as e:
        part.unlink(missing_ok=True)
        raise ShardError(dest, f"the download is not a valid shard ({e}); it was removed, run the command again") \
            from None
    os.replace(part, dest)


def prepare(out_dir: Path | None = None, shards: int = 1, force: bool = False, base_url: str = BASE_URL,
            timeout: float = 60.0) -> Path:
    out = Path(out_dir) if out_dir else default_dir()
    out.mkdir(parents=True, exist_ok=True)
    names = shard_names(shards)
    for name in names:
        dest = out / name
        if dest.exists() and not force:
            try:
                read_header(dest)
                continue
            except ShardError:
                dest.unlink()  # corrupt or truncated: fetch it again
        if force:
            dest.unlink(missing_ok=True)
            dest.with_name(dest.name + ".part").unlink(missing_ok=True)
        try:
            _download(base_url + name, dest, timeout)
        except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
            if isinstance(e, ShardError):
                raise
            raise UserError(f"cannot download {name} from {base_url} ({e}); this machine seems offline or the host "
                            f"is unreachable. {_manual_help(out, names, base_url)}") from None
    return out


def check(data_dir: Path | None = None) -> dict[str, int]:
    """Validate every shard present; returns name -> token count."""
    out = Path(data_dir) if data_dir else default_dir()
    found = sorted(out.glob("fineweb_*.bin"))
    if not found:
        raise UserError(f"{out}: no FineWeb shards; run 'speedrunner data prepare {NAME} --shards K'. "
                        f"{_manual_help(out, shard_names(1), BASE_URL)}")
    counts = {p.name: read_header(p) for p in found}
    if VAL_SHARD not in counts:
        raise UserError(f"{out}: {VAL_SHARD} (the validation shard) is missing")
    return counts
