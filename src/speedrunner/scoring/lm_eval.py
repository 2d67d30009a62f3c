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

from speedrunner.data.shards import read_shard


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
    tokens = read_shard(shard).to(torch.int64)
    tokens = tokens[: max_tokens + 1] if max_tokens else tokens
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
