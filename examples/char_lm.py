"""Measure the gradient noise scale of a tiny character-level language model.

The text is English that ships with every Python: the documentation topics of
``pydoc_data.topics`` (what ``help("if")`` prints), about 465k characters. It is cut
into fixed sequences of 64 characters; the model reads each one and predicts every
next character. The model is a two-layer causal transformer of ~70k parameters,
written out in full below (nanoGPT in miniature).

For bstune one *example* is one sequence, so B_simple is counted in sequences: the
batch size at which the gradient noise of a batch of sequences equals the signal.

Run it with::

    python examples/char_lm.py --out runs/char_lm

It trains for a minute or so on two CPU cores, tracking B_simple from the training
batches, then measures B_simple at the trained parameters with per-example gradients
and writes ``<out>/noise_scale.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import pydoc_data.topics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import bstune

CONTEXT = 64  # characters per sequence


class Block(nn.Module):
    """Pre-norm transformer block: causal self-attention, then an MLP."""

    def __init__(self, dim: int, heads: int, context: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.ln2 = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, 4 * dim)
        self.out = nn.Linear(4 * dim, dim)
        self.register_buffer("causal", torch.ones(context, context, dtype=torch.bool).tril(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(c, dim=2)
        q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2) for z in (q, k, v))
        # Attention written out rather than F.scaled_dot_product_attention: torch.func.vmap
        # (per-example gradients) has no batching rule for the fused CPU kernel and falls
        # back to a slow per-example loop, with a warning.
        att = (q @ k.transpose(-2, -1)) / math.sqrt(c // self.heads)
        att = att.masked_fill(~self.causal[:t, :t], float("-inf")).softmax(dim=-1)
        x = x + self.proj((att @ v).transpose(1, 2).reshape(b, t, c))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class CharTransformer(nn.Module):
    """Token + position embeddings, a few blocks, a linear head over the vocabulary."""

    def __init__(self, vocab: int, dim: int = 48, layers: int = 2, heads: int = 4, context: int = CONTEXT) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(context, dim)
        self.blocks = nn.Sequential(*[Block(dim, heads, context) for _ in range(layers)])
        self.ln = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:  # (B, T) char ids -> (B, T, vocab) logits
        h = self.tok(idx) + self.pos(torch.arange(idx.shape[1], device=idx.device))
        return self.head(self.ln(self.blocks(h)))


def next_char_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over all B*T positions. Every sequence has the same length, so this
    is also the mean over sequences of each sequence's mean loss: the batch mean that
    bstune needs (Task checks it on two examples)."""
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


def next_char_accuracy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return (logits.argmax(dim=-1) == targets).float().mean()


def load_text() -> str:
    """The pydoc topics joined in a fixed order, non-ASCII characters replaced by '?'."""
    topics = pydoc_data.topics.topics
    text = "\n".join(topics[key] for key in sorted(topics))
    return text.encode("ascii", errors="replace").decode("ascii")


def make_task(context: int = CONTEXT, dim: int = 48, layers: int = 2) -> bstune.Task:
    """Non-overlapping sequences of ``context`` characters; the last 10% of the text is validation."""
    text = load_text()
    vocab = sorted(set(text))
    lookup = {ch: i for i, ch in enumerate(vocab)}
    ids = torch.tensor([lookup[ch] for ch in text], dtype=torch.long)
    n_seq = (len(ids) - 1) // context
    x = ids[: n_seq * context].view(n_seq, context)
    y = ids[1 : n_seq * context + 1].view(n_seq, context)  # each target is the next character
    n_train = int(0.9 * n_seq)  # contiguous split: validation text is never seen in training

    def model() -> nn.Module:
        return CharTransformer(len(vocab), dim=dim, layers=layers, context=context)

    return bstune.Task(
        model=model,
        train_data=(x[:n_train], y[:n_train]),
        val_data=(x[n_train:], y[n_train:]),
        loss=next_char_loss,
        metrics={"accuracy": bstune.Metric(next_char_accuracy, direction="maximize")},
        # Adam: SGD is slow to train even a tiny transformer. bstune's noise scale is
        # then the raw-gradient one (set noise_preconditioned=True for Adam's variant).
        optimizer="adam",
        name="char_lm",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/char_lm", help="directory for noise_scale.json (default: runs/char_lm)")
    parser.add_argument(
        "--max-samples", type=int, default=8_000, help="training budget in sequences of 64 chars (default: 8000)"
    )
    parser.add_argument("--batch-size", type=int, default=32, help="training batch size in sequences (default: 32)")
    parser.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate (default: 3e-3)")
    parser.add_argument("--measure-batch", type=int, default=32, help="batch size of the noise estimator (default: 32)")
    parser.add_argument(
        "--measure-batches", type=int, default=40, help="batches the noise estimator draws (default: 40)"
    )
    parser.add_argument("--seed", type=int, default=0, help="model init, data order and estimator batches (default: 0)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    started = time.perf_counter()

    task = make_task()
    n_params = sum(p.numel() for p in task.make_model().parameters())
    print(
        f"task {task.name}: {task.n_train} train / {task.n_val} val sequences of {CONTEXT} chars, {n_params} parameters"
    )

    # -- 1. train, tracking B_simple from the two halves of every batch ----------------
    config = bstune.TrainConfig(
        batch_size=args.batch_size,
        lr=args.lr,
        max_samples=args.max_samples,
        eval_at_start=True,
        eval_train_examples=512,  # the train loss is measured on this fixed subset
        eval_batch_size=256,  # 1024 sequences at once make (B, heads, T, T) attention maps too big to be fast
        track_noise=True,
        seed=args.seed,
        device="cpu",
    )
    run = bstune.train(task, config)
    print(f"trained {run.samples} sequences ({run.steps} steps) in {run.wall_time_s:.1f}s: status {run.status.value}")
    print(f"\n{'samples':>8} {'val loss':>9} {'bits/char':>9} {'val acc':>8} {'B_simple':>9} {'90% CI':>18}")
    for rec in run.history:
        noise = rec.noise
        b = f"{noise.b_simple:9.1f}" if noise else f"{'-':>9}"
        ci = f"[{noise.ci[0]:.1f}, {noise.ci[1]:.1f}]" if noise else "-"
        print(
            f"{rec.samples:>8} {rec.val_loss:>9.3f} {rec.val_loss / math.log(2):>9.2f} "
            f"{rec.metrics['val_accuracy']:>8.3f} {b} {ci:>18}"
        )

    # -- 2. measure at the trained parameters ------------------------------------------
    # method="per_example" works: vmap handles every op of this model. (It would not for
    # nn.GRU/nn.LSTM, whose fused kernels fail under vmap; use method="micro_batch" there.)
    assert run.model is not None
    t0 = time.perf_counter()
    est = bstune.measure_noise_scale(
        task, model=run.model, batch_size=args.measure_batch, n_batches=args.measure_batches, seed=args.seed
    )
    print(f"\nper_example: {est}  [{time.perf_counter() - t0:.1f}s]")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "noise_scale.json"
    summary = {
        "task": task.name,
        "n_train": task.n_train,
        "n_params": n_params,
        "estimate": est.to_dict(),
        "run": run.to_dict(),
    }
    path.write_text(json.dumps(summary, indent=2))
    print(f"wrote {path} ({time.perf_counter() - started:.1f}s in all)")


if __name__ == "__main__":
    main()
