"""
The seed genome of an evoresearch search: a small GPT pretraining run in one file.

The search mutates this file; prepare.py (data, tokenizer, evaluation) stays fixed.
Usage: python train.py
Environment (set by the trial runner; all optional):
    EVO_PROFILE      tiny | cpu | gpu  (default: gpu with CUDA, else cpu)
    EVO_TIME_BUDGET  seconds of counted training (default: the profile's)
    EVO_STEP_BUDGET  optimizer steps instead (deterministic: the same on any machine); default: unset
    EVO_SEED         random seed (default 0)
    EVO_DEVICE       cpu | cuda | cuda:N (default: cuda if available)
Prints progress lines while training and a summary block at the end.

Training ends by handing the model to the harness (`save_model`): under evoresearch the
score is computed by the harness in separate processes, never by this file; run by hand,
save_model scores it here and the summary shows val_bpb. The runner stops the process
once STARTUP_ALLOWANCE + TIME_BUDGET seconds have passed on its clock without a model.
"""

import gc
import math
import os
import resource
import sys
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from prepare import (MAX_SEQ_LEN, PROFILE, TIME_BUDGET, Tokenizer, budget_clock, budget_progress, make_dataloader,
                     save_model, time_left)


def per_profile(**values):
    """The value of a hyperparameter under the task profile this trial runs with."""
    return values[PROFILE.name]

# ---------------------------------------------------------------------------
# GPT model
# ---------------------------------------------------------------------------


@dataclass
class GPTConfig:
    sequence_len: int = 2048
    vocab_size: int = 8192
    n_layer: int = 8
    n_head: int = 4
    n_kv_head: int = 4
    n_embd: int = 512
    window_pattern: str = "L"


def norm(x):
    # RMSNorm without a learnable gain (the residual scalars do the scaling).
    return F.rms_norm(x, (x.size(-1),))


def has_value_embedding(layer, n_layer):
    # Every other layer, always including the last one.
    return layer % 2 == (n_layer - 1) % 2


def apply_rotary(x, cos, sin):
    half = x.size(-1) // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos + x2 * sin, x2 * cos - x1 * sin], dim=-1)


class CausalSelfAttention(nn.Module):
    def __init__(self, config, layer):
        super().__init__()
        self.n_head, self.n_kv_head = config.n_head, config.n_kv_head
        self.head_dim = config.n_embd // config.n_head
        assert config.n_embd % config.n_head == 0 and config.n_head % config.n_kv_head == 0
        self.c_q = nn.Linear(config.n_embd, self.n_head * self.head_dim, bias=False)
        self.c_k = nn.Linear(config.n_embd, self.n_kv_head * self.head_dim, bias=False)
        self.c_v = nn.Linear(config.n_embd, self.n_kv_head * self.head_dim, bias=False)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=False)
        # Value embeddings enter through a per-head gate read off the first channels of x.
        self.ve_gate_channels = min(32, config.n_embd)
        self.ve_gate = nn.Linear(self.ve_gate_channels, self.n_kv_head, bias=False) if has_value_embedding(layer, config.n_layer) else None

    def forward(self, x, ve, cos_sin, window):
        B, T, _ = x.shape
        q = self.c_q(x).view(B, T, self.n_head, self.head_dim)
        k = self.c_k(x).view(B, T, self.n_kv_head, self.head_dim)
        v = self.c_v(x).view(B, T, self.n_kv_head, self.head_dim)
        if ve is not None:
            gate = 2 * torch.sigmoid(self.ve_gate(x[..., :self.ve_gate_channels]))  # starts at 1: neutral
            v = v + gate.unsqueeze(-1) * ve.view(B, T, self.n_kv_head, self.head_dim)
        cos, sin = cos_sin
        q, k = norm(apply_rotary(q, cos, sin)), norm(apply_rotary(k, cos, sin))  # QK-norm
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        gqa = self.n_kv_head != self.n_head
        if window >= T:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
        else:  # sliding window: an explicit mask (SDPA then falls back from its flash kernel)
            i = torch.arange(T, device=x.device)
            mask = (i[None, :] <= i[:, None]) & (i[None, :] > i[:, None] - window)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
        return self.c_proj(y.transpose(1, 2).reshape(B, T, -1))


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=False)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=False)

    def forward(self, x):
        return self.c_proj(F.relu(self.c_fc(x)).square())  # ReLU²


class Block(nn.Module):
    def __init__(self, config, layer):
        super().__init__()
        self.attn = CausalSelfAttention(config, layer)
        self.mlp = MLP(config)

    def forward(self, x, ve, cos_sin, window):
        x = x + self.attn(norm(x), ve, cos_sin, window)
        return x + self.mlp(norm(x))


class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.blocks = nn.ModuleList([Block(config, i) for i in range(config.n_layer)])
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # Per-layer scalars: how much of the running residual and of the first layer's input x0 to carry.
        self.resid_lambdas = nn.Parameter(torch.ones(config.n_layer))
        self.x0_lambdas = nn.Parameter(torch.zeros(config.n_layer))
        kv_dim = config.n_kv_head * (config.n_embd // config.n_head)
        self.value_embeds = nn.ModuleDict({
            str(i): nn.Embedding(config.vocab_size, kv_dim)
            for i in range(config.n_layer) if has_value_embedding(i, config.n_layer)
        })
        pattern = config.window_pattern.upper()
        assert pattern and set(pattern) <= set("SL"), "WINDOW_PATTERN uses S (half context) and L (full context)"
        self.windows = [config.sequence_len // 2 if pattern[i % len(pattern)] == "S" else config.sequence_len
                        for i in range(config.n_layer)]
        self.windows[-1] = config.sequence_len  # the last layer always sees the full context
        self.register_buffer("cos", torch.empty(0), persistent=False)
        self.register_buffer("sin", torch.empty(0), persistent=False)

    @torch.no_grad()
    def init_weights(self):
        d = self.config.n_embd
        bound = 3**0.5 * d**-0.5  # uniform with std 1/sqrt(d)
        nn.init.normal_(self.wte.weight, std=1.0)
        nn.init.normal_(self.lm_head.weight, std=0.001)
        for block in self.blocks:
            for linear in (block.attn.c_q, block.attn.c_k, block.attn.c_v, block.mlp.c_fc):
                nn.init.uniform_(linear.weight, -bound, bound)
            nn.init.zeros_(block.attn.c_proj.weight)  # every block starts as the identity
            nn.init.zeros_(block.mlp.c_proj.weight)
            if block.attn.ve_gate is not None:
                nn.init.zeros_(block.attn.ve_gate.weight)
        for ve in self.value_embeds.values():
            nn.init.uniform_(ve.weight, -bound, bound)
        self.resid_lambdas.fill_(1.0)
        self.x0_lambdas.fill_(0.1)
        head_dim = d // self.config.n_head
        inv_freq = 1.0 / (10000 ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=self.wte.weight.device) / head_dim))
        freqs = torch.outer(torch.arange(self.config.sequence_len, dtype=torch.float32, device=inv_freq.device), inv_freq)
        self.cos, self.sin = freqs.cos()[None, :, None, :], freqs.sin()[None, :, None, :]

    def estimate_flops(self):
        """Training FLOPs per token: 6 per matmul weight plus attention's score and value products."""
        embedding = self.wte.weight.numel() + sum(ve.weight.numel() for ve in self.value_embeds.values())
        scalars = self.resid_lambdas.numel() + self.x0_lambdas.numel()
        matmul = sum(p.numel() for p in self.parameters()) - embedding - scalars
        head_dim = self.config.n_embd // self.config.n_head
        attention = sum(12 * self.config.n_head * head_dim * min(w, self.config.sequence_len) for w in self.windows)
        return 6 * matmul + attention

    def forward(self, idx, targets=None, reduction="mean"):
        T = idx.size(1)
        cos_sin = self.cos[:, :T].to(self.wte.weight.dtype), self.sin[:, :T].to(self.wte.weight.dtype)
        x = x0 = norm(self.wte(idx))
        for i, block in enumerate(self.blocks):
            x = self.resid_lambdas[i] * x + self.x0_lambdas[i] * x0
            ve = self.value_embeds[str(i)](idx) if str(i) in self.value_embeds else None
            x = block(x, ve, cos_sin, self.windows[i])
        logits = self.lm_head(norm(x)).float()
        logits = LOGIT_SOFTCAP * torch.tanh(logits / LOGIT_SOFTCAP)
        if targets is None:
            return logits
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1, reduction=reduction)

def build_model(**config):
    """A fresh model from GPTConfig fields: how the harness rebuilds the trained model to score it."""
    model = GPT(GPTConfig(**config))
    model.init_weights()  # also makes the rotary tables, which are not saved with the weights
    return model

# ---------------------------------------------------------------------------
# Optimizer: Muon for matrices, AdamW for embeddings, head and scalars
# ---------------------------------------------------------------------------

# Polar Express coefficients (Amsel et al., 2025) for five orthogonalization steps.
POLAR_EXPRESS = (
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
)


def orthogonalize(G, steps, dtype):
    """Push the singular values of each matrix in the stack G towards 1 (Polar Express)."""
    X = G.to(dtype)
    tall = X.size(-2) > X.size(-1)
    if tall:
        X = X.mT
    X = X / (X.norm(dim=(-2, -1), keepdim=True) * 1.02 + 1e-6)
    for a, b, c in POLAR_EXPRESS[:steps]:
        A = X @ X.mT
        X = a * X + (b * A + c * (A @ A)) @ X
    return X.mT if tall else X


def muon_update(grads, params, momentum_buf, variance_buf, momentum, lr, wd, beta2, steps: int, reduce_dim: int, dtype: torch.dtype):
    # Nesterov momentum on the stacked gradients.
    momentum_buf.lerp_(grads, 1 - momentum)
    update = orthogonalize(grads.lerp_(momentum_buf, momentum), steps, dtype).float()
    # NorMuon: equalize the update's scale across rows (or columns) with a second moment,
    # keeping its overall norm.
    row_power = update.square().mean(dim=reduce_dim, keepdim=True)
    variance_buf.lerp_(row_power, 1 - beta2)
    scaled = update * variance_buf.clamp_min(1e-10).rsqrt()
    scaled = scaled * (update.norm(dim=(-2, -1), keepdim=True) / scaled.norm(dim=(-2, -1), keepdim=True).clamp_min(1e-10))
    # Cautious weight decay: only where the update and the weight agree in sign.
    decay = (scaled * params >= 0).to(params.dtype)
    params.sub_(lr * scaled.to(params.dtype) + lr * wd * params * decay)


def adamw_update(param, grad, exp_avg, exp_avg_sq, step, lr, beta1, beta2, eps, wd):
    param.mul_(1 - lr * wd)
    exp_avg.lerp_(grad.to(exp_avg.dtype), 1 - beta1)
    exp_avg_sq.lerp_(grad.to(exp_avg.dtype).square(), 1 - beta2)
    denom = (exp_avg_sq / (1 - beta2**step)).sqrt() + eps
    param.sub_((exp_avg / denom).to(param.dtype) * (lr / (1 - beta1**step)))


class MuonAdamW(torch.optim.Optimizer):
    """One optimizer for both kinds of group: kind='muon' (same-shape matrices, updated stacked) or kind='adamw'.

    Hyperparameters reach the (optionally compiled) update functions as 0-d tensors so a
    changing learning rate does not trigger recompilation."""

    def __init__(self, param_groups, compile_updates=False):
        super().__init__(param_groups, defaults={})
        self._muon = torch.compile(muon_update, dynamic=False, fullgraph=True) if compile_updates else muon_update
        self._adamw = torch.compile(adamw_update, dynamic=False, fullgraph=True) if compile_updates else adamw_update
        self._scalars = {}

    def _scalar(self, name, value):
        t = self._scalars.setdefault(name, torch.zeros((), dtype=torch.float32))
        t.fill_(value)
        return t

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            if group["kind"] == "adamw":
                for p in group["params"]:
                    if p.grad is None:
                        continue
                    state = self.state[p]
                    if not state:
                        state["step"] = 0
                        state["exp_avg"] = torch.zeros_like(p, dtype=torch.float32)
                        state["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.float32)
                    state["step"] += 1
                    s = self._scalar
                    self._adamw(p, p.grad, state["exp_avg"], state["exp_avg_sq"], s("step", state["step"]),
                                s("lr", group["lr"]), s("beta1", group["betas"][0]), s("beta2", group["betas"][1]),
                                s("eps", group["eps"]), s("wd", group["weight_decay"]))
            else:
                params = group["params"]
                rows, cols = params[0].shape
                state = self.state[params[0]]
                if not state:
                    state["momentum"] = torch.zeros(len(params), rows, cols, dtype=torch.float32, device=params[0].device)
                    state["variance"] = torch.zeros(len(params), rows, 1, dtype=torch.float32, device=params[0].device) if rows >= cols \
                        else torch.zeros(len(params), 1, cols, dtype=torch.float32, device=params[0].device)
                grads = torch.stack([p.grad.float() for p in params])
                stacked = torch.stack(list(params))
                s = self._scalar
                lr = group["lr"] * max(1.0, rows / cols) ** 0.5  # tall matrices take larger steps
                self._muon(grads, stacked, state["momentum"], state["variance"], s("momentum", group["momentum"]),
                           s("muon_lr", lr), s("muon_wd", group["weight_decay"]), s("muon_beta2", group["beta2"]),
                           group["ns_steps"], -1 if rows >= cols else -2, group["ns_dtype"])
                torch._foreach_copy_(params, list(stacked.unbind(0)))

# ---------------------------------------------------------------------------
# Hyperparameters (edit these directly; per_profile(...) sets one value per task profile)
# ---------------------------------------------------------------------------

# Model architecture
DEPTH = per_profile(tiny=2, cpu=4, gpu=8)            # number of transformer layers
ASPECT_RATIO = per_profile(tiny=32, cpu=32, gpu=64)  # model_dim = DEPTH * ASPECT_RATIO, rounded up to HEAD_DIM
HEAD_DIM = per_profile(tiny=32, cpu=32, gpu=128)     # attention head dimension
WINDOW_PATTERN = "L"                                 # per-layer attention window: L = full context, S = half
LOGIT_SOFTCAP = 15.0                                 # logits pass through softcap * tanh(logits / softcap)

# Optimization
TOTAL_BATCH_SIZE = per_profile(tiny=2**11, cpu=2**12, gpu=2**19)  # tokens per optimizer step
DEVICE_BATCH_SIZE = per_profile(tiny=16, cpu=16, gpu=128)         # rows per forward/backward pass
EMBEDDING_LR = 0.6       # token and value embeddings (AdamW)
UNEMBEDDING_LR = 0.004   # lm_head (AdamW)
MATRIX_LR = 0.04         # transformer matrices (Muon)
SCALAR_LR = 0.5          # per-layer residual scalars (AdamW)
WEIGHT_DECAY = 0.2       # cautious weight decay of the Muon matrices, decays to 0 with progress
ADAM_BETAS = (0.8, 0.95)
MUON_MOMENTUM = 0.95     # reached after MUON_MOMENTUM_WARMUP steps, starting from 0.85
MUON_MOMENTUM_WARMUP = 300
WARMUP_RATIO = 0.0       # fraction of the time budget with a rising learning rate
WARMDOWN_RATIO = 0.5     # fraction of the time budget with a falling learning rate
FINAL_LR_FRAC = 0.0      # learning rate at the end, as a fraction of the peak

# ---------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------


def lr_multiplier(progress):
    if progress < WARMUP_RATIO:
        return progress / WARMUP_RATIO
    if progress < 1.0 - WARMDOWN_RATIO:
        return 1.0
    cooldown = (1.0 - progress) / WARMDOWN_RATIO
    return cooldown + (1.0 - cooldown) * FINAL_LR_FRAC


def muon_momentum(step):
    frac = min(step / MUON_MOMENTUM_WARMUP, 1.0)
    return (1 - frac) * 0.85 + frac * MUON_MOMENTUM


def peak_flops(device):
    """Dense bf16 peak of the accelerator, for MFU; 0 when unknown (CPU included)."""
    if device.type != "cuda":
        return 0.0
    name = torch.cuda.get_device_name(device)
    for key, flops in (("H100", 989.5e12), ("H200", 989.5e12), ("B200", 2250e12), ("A100", 312e12), ("L40S", 362e12), ("4090", 165.2e12)):
        if key in name:
            return flops
    return 0.0


def build_optimizer(model, device):
    d = model.config.n_embd
    scale = (d / 768) ** -0.5  # AdamW rates were tuned at width 768
    adamw = dict(kind="adamw", betas=ADAM_BETAS, eps=1e-10, weight_decay=0.0)
    groups = [
        dict(adamw, params=[model.lm_head.weight], lr=UNEMBEDDING_LR * scale),
        dict(adamw, params=[model.wte.weight] + [ve.weight for ve in model.value_embeds.values()], lr=EMBEDDING_LR * scale),
        dict(adamw, params=[model.resid_lambdas], lr=SCALAR_LR * 0.01),
        dict(adamw, params=[model.x0_lambdas], lr=SCALAR_LR, betas=(0.96, 0.95)),
    ]
    matrices = [p for p in model.blocks.parameters()]
    for shape in sorted({p.shape for p in matrices}):
        groups.append(dict(kind="muon", params=[p for p in matrices if p.shape == shape], lr=MATRIX_LR,
                           momentum=0.85, beta2=0.95, weight_decay=WEIGHT_DECAY, ns_steps=5,
                           ns_dtype=torch.bfloat16 if device.type == "cuda" else torch.float32))
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters())), "every parameter needs a group"
    optimizer = MuonAdamW(groups, compile_updates=device.type == "cuda")
    for g in groups:
        g["initial_lr"] = g["lr"]
    return optimizer


def main():
    t_start = time.time()
    seed = int(os.environ.get("EVO_SEED", "0"))
    device = torch.device(os.environ.get("EVO_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)

    tokenizer = Tokenizer.load()
    model_dim = -(-DEPTH * ASPECT_RATIO // HEAD_DIM) * HEAD_DIM
    config = GPTConfig(sequence_len=MAX_SEQ_LEN, vocab_size=tokenizer.vocab_size, n_layer=DEPTH,
                       n_head=model_dim // HEAD_DIM, n_kv_head=model_dim // HEAD_DIM, n_embd=model_dim,
                       window_pattern=WINDOW_PATTERN)
    print(f"profile: {PROFILE.name} | device: {device} | seed: {seed} | time budget: {TIME_BUDGET:g}s")
    print(f"model: {asdict(config)}")
    with torch.device("meta"):
        model = GPT(config)
    model.to_empty(device=device)
    model.init_weights()
    if device.type == "cuda":  # embeddings are looked up, not multiplied: bf16 halves their memory
        model.wte.to(torch.bfloat16)
        model.value_embeds.to(torch.bfloat16)
    num_params = sum(p.numel() for p in model.parameters())
    flops_per_token = model.estimate_flops()
    optimizer = build_optimizer(model, device)
    train_model = torch.compile(model, dynamic=False) if device.type == "cuda" else model

    tokens_per_pass = DEVICE_BATCH_SIZE * MAX_SEQ_LEN
    assert TOTAL_BATCH_SIZE % tokens_per_pass == 0, "TOTAL_BATCH_SIZE must be a multiple of DEVICE_BATCH_SIZE * sequence length"
    accum_steps = TOTAL_BATCH_SIZE // tokens_per_pass
    train_loader = make_dataloader(tokenizer, DEVICE_BATCH_SIZE, MAX_SEQ_LEN, "train", device=device, seed=seed)
    x, y, epoch = next(train_loader)
    peak = peak_flops(device)
    print(f"parameters: {num_params:,} | FLOPs/token: {flops_per_token:.3e} | gradient accumulation: {accum_steps}")

    # The first steps compile and warm up; they are not counted against the budget.
    untimed_steps = 10 if device.type == "cuda" else 1
    step, training_time, smooth_loss, last_print = 0, 0.0, 0.0, 0.0
    while True:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = budget_clock()  # the runner's clock: wall time on a GPU, CPU time / threads on a CPU
        for _ in range(accum_steps):
            with autocast:
                loss = train_model(x, y)
            train_loss = loss.detach()
            (loss / accum_steps).backward()
            x, y, epoch = next(train_loader)
        progress = budget_progress(step, training_time)
        lrm = lr_multiplier(progress)
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"] * lrm
            if group["kind"] == "muon":
                group["momentum"] = muon_momentum(step)
                group["weight_decay"] = WEIGHT_DECAY * (1 - progress)
        optimizer.step()
        model.zero_grad(set_to_none=True)
        loss_value = train_loss.item()
        if not math.isfinite(loss_value) or loss_value > 100:
            print(f"FAIL: training loss is {loss_value} at step {step} (NaN or exploding)", flush=True)
            sys.exit(1)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        dt = budget_clock() - t0
        if step >= untimed_steps:
            training_time += dt
        step += 1

        smooth_loss = 0.9 * smooth_loss + 0.1 * loss_value
        debiased = smooth_loss / (1 - 0.9**step)
        now = time.time()
        # Stop at the budget, or earlier if start-up ate into it: the model must be handed over
        # before the runner's deadline, with a little time left to save it.
        done = step > untimed_steps and (budget_progress(step, training_time) >= 1 or
                                         time_left() < max(1.0, 0.02 * TIME_BUDGET))
        if now - last_print >= 0.25 or done:  # progress lines for people and for the runner's pruner
            last_print = now
            mfu = 100 * flops_per_token * TOTAL_BATCH_SIZE / dt / peak if peak else 0.0
            print(f"step {step:05d} | {100 * progress:5.1f}% | loss {debiased:.6f} | lrm {lrm:.2f} | dt {dt * 1000:.0f}ms | "
                  f"tok/s {int(TOTAL_BATCH_SIZE / dt):,} | mfu {mfu:.1f}% | epoch {epoch} | remaining {max(0.0, TIME_BUDGET - training_time):.0f}s",
                  flush=True)
        if step == 1:  # Python's cyclic GC stalls for hundreds of ms; nothing here needs it
            gc.collect()
            gc.freeze()
            gc.disable()
        if done:
            break

    total_tokens = step * TOTAL_BATCH_SIZE
    val_bpb = save_model(model, build_model, asdict(config))  # None under the engine: the harness scores it
    timed_steps = max(step - untimed_steps, 1)
    mfu = 100 * flops_per_token * TOTAL_BATCH_SIZE * timed_steps / training_time / peak if peak and training_time else 0.0
    if device.type == "cuda":
        peak_memory_mb = torch.cuda.max_memory_allocated(device) / 1024**2
    else:  # no device memory on a CPU: report the process's peak resident memory instead
        peak_memory_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("---")
    if val_bpb is not None:
        print(f"val_bpb:          {val_bpb:.6f}")
    print(f"training_seconds: {training_time:.1f}")
    print(f"total_seconds:    {time.time() - t_start:.1f}")
    print(f"peak_vram_mb:     {peak_memory_mb:.1f}")
    print(f"mfu_percent:      {mfu:.2f}")
    print(f"total_tokens_M:   {total_tokens / 1e6:.1f}")
    print(f"num_steps:        {step}")
    print(f"num_params_M:     {num_params / 1e6:.1f}")
    print(f"depth:            {DEPTH}", flush=True)


if __name__ == "__main__":
    main()
