import copy
import os
import sys
import time
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

with open(__file__) as f:
    code = f.read()  # the log starts with this file's source, so a log is self-describing
print("=" * 100)
print(code)
print("=" * 100)

# -----------------------------------------------------------------------------
# Sizes: the same ladder at three scales. The target val loss of a size is the same for every record.
# full = the benchmark; demo = an easier target, about a minute; smoke = seconds, for tests.

SIZES = {
    "full": dict(steps=21, batch_size=16, val_tokens=57344, val_every=0),
    "demo": dict(steps=5, batch_size=16, val_tokens=57344, val_every=0),
    "smoke": dict(steps=10, batch_size=4, val_tokens=8192, val_every=0),
}


@dataclass
class Hyperparameters:
    data_dir: str = os.environ.get("SPEEDRUNNER_DATA_DIR", "data")
    size: str = os.environ.get("SPEEDRUNNER_SIZE", "full")
    threads: int = int(os.environ.get("SPEEDRUNNER_THREADS", "1"))
    seed: int = int(os.environ.get("SPEEDRUNNER_SEED", "1337"))
    vocab_size: int = 2048
    seq_len: int = 256
    bigram_buckets: int = 8192  # hashed (previous token, token) embedding table
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    no_attn_layers: tuple = (0, 3)  # the first and last blocks keep only their MLP: half the attention saved
    embed_lr: float = 0.06  # Adam, for the input embedding (free now that it is not the head)
    head_lr: float = 0.02  # AdamW, for the output head: tuned (5.5x the shared rate it had inherited)
    weight_decay: float = 0.1
    muon_lr: float = 0.03  # Muon, for the matrices inside the blocks (re-tuned with the schedule)
    muon_momentum: float = 0.95
    warmup_frac: float = 0.05  # trapezoid: linear warm-up, constant, then linear decay to zero
    warmdown_frac: float = 0.25  # re-tuned: a shorter decay now that runs are a few dozen steps
    untimed_warmup_steps: int = 3  # run, then undone: weights and optimizer state are restored
    val_batch_size: int = 16


args = Hyperparameters()
if args.size not in SIZES:
    raise SystemExit(f"SPEEDRUNNER_SIZE must be one of {sorted(SIZES)}, got {args.size!r}")
size = SIZES[args.size]
torch.set_num_threads(args.threads)
torch.manual_seed(args.seed)

# -----------------------------------------------------------------------------
# Data: speedrun shards (256 int32 header: magic 20240520, version 1, token count; then uint16 tokens)


def load_shard(path):
    with open(path, "rb") as f:
        header = torch.frombuffer(bytearray(f.read(256 * 4)), dtype=torch.int32)
        assert header[0] == 20240520 and header[1] == 1, f"{path}: bad magic or version"
        n = int(header[2])
        data = bytearray(f.read())
    assert len(data) == 2 * n, f"{path}: truncated: expected {2 * n} token bytes, found {len(data)}"
    return torch.frombuffer(data, dtype=torch.uint16).to(torch.int64)


class TokenStream:
    """Reads train.bin in order, batch after batch, wrapping around at the end."""

    def __init__(self, tokens):
        self.tokens = tokens
        self.pos = 0

    def next_batch(self, batch_size, seq_len):
        n = batch_size * seq_len
        if self.pos + n + 1 > len(self.tokens):
            self.pos = 0
        buf = self.tokens[self.pos : self.pos + n + 1]
        self.pos += n
        return buf[:-1].view(batch_size, seq_len), buf[1:].view(batch_size, seq_len)


train_tokens = load_shard(os.path.join(args.data_dir, "train.bin"))
val_tokens = load_shard(os.path.join(args.data_dir, "val.bin"))[: size["val_tokens"] + 1]
assert len(val_tokens) == size["val_tokens"] + 1, "val.bin is shorter than the validation slice"
print(f"val_tokens:{size['val_tokens']}")

# -----------------------------------------------------------------------------
# Model: GPT-2 with rotary position embeddings and RMSNorm (no learned affine), no biases


def norm(x):
    return F.rms_norm(x, (x.size(-1),))


class Rotary(nn.Module):
    def __init__(self, head_dim, max_len, base=10000.0):
        super().__init__()
        inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        angles = torch.outer(torch.arange(max_len, dtype=torch.float32), inv_freq)
        self.register_buffer("cos", angles.cos()[None, None], persistent=False)
        self.register_buffer("sin", angles.sin()[None, None], persistent=False)

    def forward(self, x):  # x: (B, H, T, D)
        T = x.size(2)
        cos, sin = self.cos[:, :, :T], self.sin[:, :, :T]
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((x1 * cos + x2 * sin, x2 * cos - x1 * sin), dim=-1)


class CausalSelfAttention(nn.Module):
    def __init__(self, dim, n_head, max_len):
        super().__init__()
        self.n_head = n_head
        self.c_q = nn.Linear(dim, dim, bias=False)
        self.c_k = nn.Linear(dim, dim, bias=False)
        self.c_v = nn.Linear(dim, dim, bias=False)
        self.c_proj = nn.Linear(dim, dim, bias=False)
        self.rotary = Rotary(dim // n_head, max_len)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.c_q(x), self.c_k(x), self.c_v(x)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        q, k = self.rotary(norm(q)), self.rotary(norm(k))  # QK-norm
        with torch.autocast("cpu", enabled=False):  # this CPU attention kernel is faster in fp32 than bf16
            y = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=True)
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))


class MLP(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.c_fc = nn.Linear(dim, 4 * dim, bias=False)
        self.c_proj = nn.Linear(4 * dim, dim, bias=False)

    def forward(self, x):
        return self.c_proj(F.relu(self.c_fc(x)).square())  # ReLU^2


class Block(nn.Module):
    def __init__(self, dim, n_head, max_len, attn=True):
        super().__init__()
        self.attn = CausalSelfAttention(dim, n_head, max_len) if attn else None
        self.mlp = MLP(dim)

    def forward(self, x):
        if self.attn is not None:
            x = x + self.attn(norm(x))
        return x + self.mlp(norm(x))


class GPT(nn.Module):
    def __init__(self, vocab_size, seq_len, n_layer, n_head, dim, bigram_buckets, no_attn_layers):
        super().__init__()
        self.wte = nn.Embedding(vocab_size, dim)
        self.bigram = nn.Embedding(bigram_buckets, dim)  # hashed bigram embedding, starts at zero
        self.blocks = nn.ModuleList(
            [Block(dim, n_head, seq_len, attn=i not in no_attn_layers) for i in range(n_layer)]
        )
        self.lm_head = nn.Linear(dim, vocab_size, bias=False)  # untied
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight") or name in ("lm_head.weight", "bigram.weight"):
                nn.init.zeros_(p)  # every block starts as the identity
            elif p.dim() == 2:
                nn.init.normal_(p, mean=0.0, std=0.02)

    def forward(self, idx, targets):
        prev = F.pad(idx[:, :-1], (1, 0))  # the token before each position (0 = <|endoftext|> at the start)
        pair = ((prev * 36313) ^ (idx * 27191)) % self.bigram.num_embeddings
        x = norm(self.wte(idx) + self.bigram(pair))
        for block in self.blocks:
            x = block(x)
        logits = self.lm_head(norm(x))
        if targets is None:
            return logits
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))


model = GPT(
    args.vocab_size, args.seq_len, args.n_layer, args.n_head, args.n_embd, args.bigram_buckets,
    args.no_attn_layers,
)

# -----------------------------------------------------------------------------
# Optimizers: Muon (orthogonalized momentum) for the matrices in the blocks, AdamW for the rest


def orthogonalize(G, steps=5):
    """Approximately replace G by U V^T (its nearest semi-orthogonal matrix) with a quintic
    Newton-Schulz iteration whose coefficients push all singular values towards 1 quickly."""
    a, b, c = 3.4445, -4.7750, 2.0315
    X = G / (G.norm() + 1e-7)
    tall = X.size(0) > X.size(1)
    if tall:
        X = X.T
    for _ in range(steps):
        A = X @ X.T
        X = a * X + (b * A + c * A @ A) @ X
    return X.T if tall else X


class Muon(torch.optim.Optimizer):
    def __init__(self, params, lr=0.02, momentum=0.95, ns_steps=5):
        super().__init__(params, dict(lr=lr, momentum=momentum, ns_steps=ns_steps))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p.grad)
                buf = state["momentum_buffer"]
                buf.mul_(group["momentum"]).add_(p.grad)
                g = p.grad.add(buf, alpha=group["momentum"])  # Nesterov
                g = orthogonalize(g, group["ns_steps"])
                p.add_(g, alpha=-group["lr"] * max(1.0, p.size(0) / p.size(1)) ** 0.5)


hidden = [p for p in model.blocks.parameters() if p.dim() == 2]
optimizer = torch.optim.AdamW(
    [
        dict(params=[model.wte.weight, model.bigram.weight], lr=args.embed_lr, weight_decay=0.0),
        dict(params=[model.lm_head.weight], lr=args.head_lr, weight_decay=args.weight_decay),
    ],
    betas=(0.8, 0.95),  # beta1 0.9 -> 0.8: the embeddings and head follow their gradients faster
    eps=1e-8,
)
muon = Muon(hidden, lr=args.muon_lr, momentum=args.muon_momentum)
optimizers = [optimizer, muon]
for opt in optimizers:
    for group in opt.param_groups:
        group["initial_lr"] = group["lr"]
steps = size["steps"]


def lr_multiplier(step):
    warmup = max(1, int(args.warmup_frac * steps))
    warmdown = max(1, int(args.warmdown_frac * steps))
    if step < warmup:
        return (step + 1) / warmup
    if step < steps - warmdown:
        return 1.0
    return (steps - step) / warmdown


def train_step(step, stream):
    x, y = stream.next_batch(size["batch_size"], args.seq_len)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # matmuls in bfloat16; weights and loss stay fp32
        loss = model(x, y)
    loss.backward()
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = group["initial_lr"] * lr_multiplier(step)
        opt.step()
    model.zero_grad(set_to_none=True)


@torch.no_grad()
def evaluate():
    model.eval()
    n = args.val_batch_size * args.seq_len
    losses = []
    for i in range(0, size["val_tokens"], n):
        buf = val_tokens[i : i + n + 1]
        x, y = buf[:-1].view(-1, args.seq_len), buf[1:].view(-1, args.seq_len)
        losses.append(model(x, y).item())
    model.train()
    return sum(losses) / len(losses)


# -----------------------------------------------------------------------------
# Untimed warm-up (then weights, optimizer state and the token stream are reset), then the timed run

initial_model = copy.deepcopy(model.state_dict())
initial_optimizers = [copy.deepcopy(opt.state_dict()) for opt in optimizers]
for step in range(args.untimed_warmup_steps):
    train_step(step, TokenStream(train_tokens))
model.load_state_dict(initial_model)
for opt, state in zip(optimizers, initial_optimizers, strict=True):
    opt.load_state_dict(state)
del initial_model, initial_optimizers

stream = TokenStream(train_tokens)
training_time_ms = 0.0
t0 = time.perf_counter()
for step in range(steps + 1):
    last_step = step == steps
    if last_step or step == 0 or (size["val_every"] > 0 and step % size["val_every"] == 0):
        training_time_ms += 1000 * (time.perf_counter() - t0)  # the clock stops during validation
        val_loss = evaluate()
        print(
            f"step:{step}/{steps} val_loss:{val_loss:.4f} train_time:{training_time_ms:.0f}ms "
            f"step_avg:{training_time_ms / max(step, 1):.2f}ms"
        )
        t0 = time.perf_counter()
    if last_step:
        break
    train_step(step, stream)
    elapsed_ms = training_time_ms + 1000 * (time.perf_counter() - t0)
    print(f"step:{step + 1}/{steps} train_time:{elapsed_ms:.0f}ms step_avg:{elapsed_ms / (step + 1):.2f}ms")
sys.stdout.flush()

# -----------------------------------------------------------------------------
# Export for trusted re-evaluation: when the harness sets SPEEDRUNNER_EXPORT, save the trained model as a
# TorchScript module mapping token ids [B, T] to logits [B, T, V]. The harness scores it on held-out data.

if os.environ.get("SPEEDRUNNER_EXPORT"):

    class Logits(nn.Module):
        def __init__(self, gpt):
            super().__init__()
            self.gpt = gpt

        def forward(self, idx):
            return self.gpt(idx, None)

    with torch.no_grad():
        example = torch.zeros(1, args.seq_len, dtype=torch.long)
        torch.jit.save(torch.jit.trace(Logits(model).eval(), example), os.environ["SPEEDRUNNER_EXPORT"])
