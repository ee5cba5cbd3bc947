"""
A tiny byte-level transformer trained for a fixed time, autoresearch-style: edit this file,
run it, read val_bpb. Usage: python train.py
"""

import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from prepare import MAX_SEQ_LEN, TIME_BUDGET, VOCAB_SIZE, evaluate_bpb, load_split, make_batch

# ---------------------------------------------------------------------------
# Hyperparameters
# ---------------------------------------------------------------------------

N_EMBD = 64            # model width
N_LAYER = 1            # transformer blocks
N_HEAD = 4             # attention heads
BATCH_SIZE = 32        # windows per step
LEARNING_RATE = 0.003  # AdamW
WEIGHT_DECAY = 0.0
WARMDOWN_RATIO = 0.3   # fraction of the budget with a falling learning rate

# ---------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(N_EMBD), nn.LayerNorm(N_EMBD)
        self.qkv = nn.Linear(N_EMBD, 3 * N_EMBD)
        self.proj = nn.Linear(N_EMBD, N_EMBD)
        self.mlp = nn.Sequential(nn.Linear(N_EMBD, 4 * N_EMBD), nn.GELU(), nn.Linear(4 * N_EMBD, N_EMBD))

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(B, T, 3, N_HEAD, C // N_HEAD).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, C)
        x = x + self.proj(y)
        return x + self.mlp(self.ln2(x))


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.tok = nn.Embedding(VOCAB_SIZE, N_EMBD)
        self.pos = nn.Embedding(MAX_SEQ_LEN, N_EMBD)
        self.blocks = nn.Sequential(*[Block() for _ in range(N_LAYER)])
        self.head = nn.Linear(N_EMBD, VOCAB_SIZE)

    def forward(self, idx):
        x = self.tok(idx) + self.pos(torch.arange(idx.size(1)))
        return self.head(self.blocks(x))

# ---------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------


def main():
    t_start = time.time()
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    train = load_split("train")
    model = Model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)
    step, training = 0, 0.0
    while training < TIME_BUDGET:
        t0 = time.time()
        progress = training / TIME_BUDGET
        scale = min(1.0, (1 - progress) / WARMDOWN_RATIO) if WARMDOWN_RATIO > 0 else 1.0
        for group in optimizer.param_groups:
            group["lr"] = LEARNING_RATE * scale
        x, y = make_batch(train, BATCH_SIZE, rng)
        logits = model(torch.from_numpy(x))
        loss = F.cross_entropy(logits.reshape(-1, VOCAB_SIZE), torch.from_numpy(y).reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        training += time.time() - t0
        step += 1
        if step % 20 == 0:
            print(f"step {step:05d} | {100 * progress:5.1f}% | loss {loss.item():.6f}", flush=True)
    model.eval()
    val_bpb = evaluate_bpb(model)
    print("---")
    print(f"val_bpb:          {val_bpb:.6f}")
    print(f"training_seconds: {training:.1f}")
    print(f"total_seconds:    {time.time() - t_start:.1f}")
    print(f"num_steps:        {step}")


if __name__ == "__main__":
    main()
