"""The harness's own language-model loss: a trained model, exported by the script, scored on a split the
agent never sees.

Export contract (what a training script does when the harness sets ``SPEEDRUNNER_EXPORT=<path>``): after
training, save a TorchScript module at ``<path>`` whose ``forward(idx)`` takes int64 token ids of shape
``[B, T]`` and returns logits of shape ``[B, T, V]`` (for example ``torch.jit.trace`` of a small wrapper
around the model). The harness then reads the held-out shard itself and computes the mean next-token
cross-entropy over its first ``max_tokens`` tokens in windows of ``seq_len`` tokens. Nothing of the
script's own evaluation code is involved.
"""

from __future__ import annotations

import math
from pathlib import Path

SHARD_MAGIC = 20240520
HEADER_INTS = 256


def read_tokens(path: Path, max_tokens: int | None = None):
    import torch

    raw = Path(path).read_bytes()
    header = torch.frombuffer(bytearray(raw[: HEADER_INTS * 4]), dtype=torch.int32)
    if int(header[0]) != SHARD_MAGIC or int(header[1]) != 1:
        raise ValueError(f"{path}: not a speedrun shard (bad magic or version)")
    n = int(header[2])
    body = raw[HEADER_INTS * 4:]
    if len(body) != 2 * n:
        raise ValueError(f"{path}: truncated: header says {n} tokens, file holds {len(body) // 2}")
    tokens = torch.frombuffer(bytearray(body), dtype=torch.uint16).to(torch.int64)
    return tokens[: max_tokens + 1] if max_tokens else tokens


def test_loss(export_path: Path, shard: Path, seq_len: int, max_tokens: int, batch_size: int = 8,
              threads: int = 1) -> dict[str, float]:
    """Mean cross-entropy (nats per token) of the exported model on ``shard``."""
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    try:
        model = torch.jit.load(str(export_path), map_location="cpu")
    except Exception as e:
        raise ValueError(f"{export_path}: not a loadable TorchScript module ({type(e).__name__}: {e})") from None
    model.eval()
    tokens = read_tokens(shard, max_tokens)
    n_windows = (len(tokens) - 1) // seq_len
    if n_windows == 0:
        raise ValueError(f"{shard}: fewer than {seq_len + 1} tokens")
    x = tokens[: n_windows * seq_len].view(n_windows, seq_len)
    y = tokens[1: n_windows * seq_len + 1].view(n_windows, seq_len)
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, n_windows, batch_size):
            logits = model(x[i:i + batch_size])
            if logits.dim() != 3 or logits.shape[:2] != x[i:i + batch_size].shape:
                raise ValueError(f"{export_path}: forward must return logits [B, T, V]; got {tuple(logits.shape)}")
            loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y[i:i + batch_size].reshape(-1),
                                   reduction="sum")
            total += float(loss)
            count += y[i:i + batch_size].numel()
    value = total / count
    if not math.isfinite(value):
        raise ValueError(f"{export_path}: the test loss is not finite")
    return {"test_loss": value, "test_tokens": float(count)}
