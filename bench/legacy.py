"""The training step as it was before the seams (commit efc905d), frozen for one comparison.

``bench.throughput`` measures what the seams cost: the task-type, architecture and
weighting registries, the input encoder and the weighting hook between the forward
pass and the optimiser step. This module is the earlier code path, copied, not
imported: the plain ``MultiTaskNet`` (an MLP trunk and a head per task), the old
loss (a loop over tasks with masking and a weighted sum) and the old epoch loop
(one gather per epoch, contiguous slices, fused AdamW, foreach clipping). Only
what that measurement needs is kept: no early stopping, callbacks or history.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from mtl_core.train import DeviceSplit


class MultiTaskNet(nn.Module):
    """The pre-seam network: ReLU trunk of ``hidden`` layers, one linear head per task."""

    def __init__(self, in_dim: int, out_dims: dict[str, int], hidden: list[int]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_dim
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.trunk = nn.Sequential(*layers)
        self.heads = nn.ModuleDict({t: nn.Linear(width, n) for t, n in out_dims.items()})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, in_dim) -> {task: (B, out)}."""
        z = self.trunk(x)
        return {name: head(z) for name, head in self.heads.items()}


def _task_losses(outputs, targets, names):
    losses = {}
    for name in names:  # regression tasks only, as in the benchmark's data
        y = targets[name]
        mask = ~torch.isnan(y)
        per_row = F.mse_loss(
            outputs[name].float()[:, 0], torch.where(mask, y, 0.0), reduction="none"
        )
        losses[name] = (per_row * mask).sum() / mask.sum().clamp_min(1)
    return losses


@torch.no_grad()
def _val_losses(model, val: DeviceSplit, names) -> float:
    model.eval()
    out = model(val.X)
    losses = _task_losses(out, val.y, names)
    model.train()
    return float(torch.stack(list(losses.values())).mean())


def fit(
    model: nn.Module,
    train: DeviceSplit,
    val: DeviceSplit,
    epochs: int,
    batch: int,
    lr: float,
    grad_clip: float,
    seed: int,
) -> None:
    """``epochs`` epochs of the pre-seam loop, each followed by a validation pass."""
    names = list(model.heads)
    generator = torch.Generator(device=train.X.device).manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, fused=True)
    weights = dict.fromkeys(names, 1.0)
    for _ in range(epochs):
        model.train()
        n = len(train)
        perm = torch.randperm(n, device=train.X.device, generator=generator)
        X = train.X.index_select(0, perm)
        Y = {t: train.y[t].index_select(0, perm) for t in names}
        total_sum = torch.zeros((), device=X.device)
        task_sum = torch.zeros(len(names), device=X.device)
        steps = 0
        for start in range(0, n, batch):
            stop = min(start + batch, n)
            if stop - start < 2 and n > 1:
                continue
            yb = {t: Y[t][start:stop] for t in names}
            out = model(X[start:stop])
            per_task = _task_losses(out, yb, names)
            total = sum(weights[t] * per_task[t] for t in names)
            opt.zero_grad(set_to_none=True)
            total.backward()
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip, foreach=True)
            opt.step()
            total_sum += total.detach()
            task_sum += torch.stack([per_task[t].detach() for t in names])
            steps += 1
        (task_sum / max(steps, 1)).tolist()
        total_sum.item()
        _val_losses(model, val, names)
