"""A user's training function for the Ray cluster tests, in a module of its own (no pytest, no Ray).

A function defined in an importable module is pickled by reference: a Ray worker imports
this module by name (Ray puts the driver's working directory, the repository root, on
the workers' ``sys.path``). ``SECONDS_PER_SAMPLE`` makes a trial take seconds, as a bigger
model would, longer than a worker process takes to start: otherwise the node whose trial
ended first takes the next trial too (Tune reuses its actor) and one node runs them all.
"""

from __future__ import annotations

import functools
import time

import torch
from torch.nn import functional as F

import bstune

SPACE = {"name": "blobs", "batch_size": {"min": 16, "max": 128}, "lr": {"min": 1e-3, "max": 3.0}}
SECONDS_PER_SAMPLE = 3e-3


@functools.cache  # a script's data loaded once, as examples/own_loop.py does: its Ray trials must still run
def blobs() -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian blobs of 3 classes in 8 dimensions (as tests.conftest.make_classification)."""
    gen = torch.Generator().manual_seed(0)
    centers = torch.randn(3, 8, generator=gen) * 1.5
    y = torch.randint(0, 3, (520,), generator=gen)
    return centers[y] + torch.randn(520, 8, generator=gen), y


def train_blobs(ctx: bstune.TrialContext) -> None:
    """A small MLP on the blobs, the loop written by hand; reports val_loss at the study's milestones."""
    x, y = blobs()
    data, vx, vy = torch.utils.data.TensorDataset(x[:400], y[:400]), x[400:], y[400:]
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=ctx.config["lr"], momentum=0.9)
    sched = ctx.lr_scheduler(opt)
    noise = ctx.noise_tracker(model)  # B_simple for the probe (the prior mode); idle in a trial
    for xb, yb in ctx.loader(data):
        time.sleep(SECONDS_PER_SAMPLE * len(xb))
        loss = F.cross_entropy(model(xb), yb)
        opt.zero_grad()
        loss.backward()
        noise.observe()
        opt.step()
        sched.step()
        ctx.step(loss)
        if ctx.at_milestone():
            with torch.no_grad():
                ctx.report(val_loss=F.cross_entropy(model(vx), vy))
