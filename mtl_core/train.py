"""Training: ``fit`` a multi-task model with early stopping on the validation objective.

Tabular batches are sliced from tensors that already sit on the device and
are reshuffled each epoch; there is no DataLoader or collate on the hot path,
and no host sync inside an epoch. Per-epoch callbacks are injected so that the
search can feed a pruner and the tracker can log, without this module
importing either.

The validation objective (``val/objective``, lower is better) is the
unweighted mean over tasks of each task's validation loss: log-loss for
classification, MSE of the standardised target for regression (1 - R^2 up to
the variance estimate). It ignores the task weights on purpose, so that a
search over weights cannot improve it by shifting weight between tasks.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from mtl_core.config import ExperimentConfig, TrainConfig
from mtl_core.data import PreparedData, Split
from mtl_core.errors import NonFiniteLossError
from mtl_core.losses import MultiTaskLoss, build_loss, task_loss_sums
from mtl_core.model import MultiTaskModel, build_model, model_spec


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` is CUDA when available, else CPU; anything else is passed to torch."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@dataclass
class DeviceSplit:
    """Inputs ``X`` (N, n_dense), ``C`` (N, n_cat) and targets {task: (N,)} on one device."""

    X: torch.Tensor
    C: torch.Tensor
    y: dict[str, torch.Tensor]

    @classmethod
    def from_split(cls, split: Split, device: torch.device) -> DeviceSplit:
        """Copy a numpy split to ``device`` once."""
        return cls(
            X=torch.as_tensor(split.X, device=device),
            C=torch.as_tensor(split.C, device=device),
            y={k: torch.as_tensor(v, device=device) for k, v in split.y.items()},
        )

    def __len__(self) -> int:
        return self.X.shape[0]


@dataclass
class EpochLog:
    """What one epoch produced; passed to every callback."""

    epoch: int
    train_loss: float
    train_task_losses: dict[str, float]
    val_objective: float
    val_task_losses: dict[str, float]
    lr: float
    seconds: float

    def metrics(self) -> dict[str, float]:
        """Flat metric keys: ``train/loss``, ``train/{task}/loss``, ``val/objective``, ..."""
        out = {"train/loss": self.train_loss, "val/objective": self.val_objective, "lr": self.lr}
        out.update({f"train/{t}/loss": v for t, v in self.train_task_losses.items()})
        out.update({f"val/{t}/loss": v for t, v in self.val_task_losses.items()})
        return out


EpochCallback = Callable[[EpochLog], None]


@dataclass
class FitResult:
    """History, best epoch and best weights of a training run (weights are restored)."""

    history: list[EpochLog]
    best_epoch: int
    best_val_objective: float
    best_state: dict[str, torch.Tensor] = field(repr=False)
    stopped_early: bool
    seconds: float
    device: str

    @property
    def epochs_run(self) -> int:
        """Epochs actually trained."""
        return len(self.history)


@torch.no_grad()
def split_losses(
    model: nn.Module, split: DeviceSplit, loss: MultiTaskLoss, chunk: int = 65536
) -> tuple[float, dict[str, float]]:
    """Objective and per-task losses of ``model`` on a split (eval mode, no penalty).

    Returns:
        ``(objective, {task: loss})``; the objective is the mean of the task losses.
    """
    was_training = model.training
    model.eval()
    names = loss.names
    sums = torch.zeros(len(names), device=split.X.device, dtype=torch.float64)
    counts = torch.zeros(len(names), device=split.X.device, dtype=torch.float64)
    for start in range(0, len(split), chunk):
        rows = slice(start, start + chunk)
        out = model(split.X[rows], split.C[rows])
        s, n = task_loss_sums(loss.tasks, out, {t: split.y[t][rows] for t in names})
        sums += s
        counts += n
    model.train(was_training)
    # A task with no label in this split has no loss (NaN) and stays out of the objective.
    values = torch.where(counts > 0, sums / counts.clamp_min(1), torch.nan).tolist()
    per_task = dict(zip(names, values, strict=True))
    return float(np.nanmean(values)), per_task


def _optimizer(params: list[nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
    try:  # the fused kernel updates every parameter in one call (CPU and CUDA)
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    except (RuntimeError, TypeError):  # a device or dtype without the fused kernel
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig, epochs: int):
    if cfg.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    if cfg.scheduler == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.step_size, gamma=cfg.gamma)
    return None


def _check_finite(epoch: int, total: float, per_task: dict[str, float]) -> None:
    if np.isfinite(total) and all(np.isfinite(v) for v in per_task.values()):
        return
    bad = [t for t, v in per_task.items() if not np.isfinite(v)] or ["penalty"]
    raise NonFiniteLossError(
        f"loss became non-finite in epoch {epoch} (task(s) {bad}); "
        "lower the learning rate or the penalties, or enable grad_clip"
    )


def train_epoch(
    model: nn.Module,
    train: DeviceSplit,
    loss: MultiTaskLoss,
    opt: torch.optim.Optimizer,
    cfg: TrainConfig,
    generator: torch.Generator,
) -> tuple[float, dict[str, float]]:
    """One pass over ``train`` in shuffled mini-batches; returns mean total and task losses."""
    model.train()
    device = train.X.device
    names = loss.names
    n, bs = len(train), cfg.batch_size
    perm = torch.randperm(n, device=device, generator=generator)
    # One gather per epoch, then contiguous slices (views): far cheaper than a gather per batch.
    X = train.X.index_select(0, perm)  # (N, n_dense)
    C = train.C.index_select(0, perm)  # (N, n_cat)
    Y = {t: train.y[t].index_select(0, perm) for t in names}  # {task: (N,)}
    autocast = torch.autocast(
        device_type="cuda", dtype=torch.bfloat16, enabled=cfg.bf16 and device.type == "cuda"
    )
    total_sum = torch.zeros((), device=device)
    task_sum = torch.zeros(len(names), device=device)
    shared = model.shared_parameters()
    steps = 0
    for start in range(0, n, bs):
        stop = min(start + bs, n)
        if stop - start < 2 and n > 1:  # a 1-row batch breaks batch norm and adds only noise
            continue
        xb, cb = X[start:stop], C[start:stop]  # (B, n_dense), (B, n_cat)
        yb = {t: Y[t][start:stop] for t in names}
        with autocast:
            out = model(xb, cb)
        per_task = loss.task_losses(out, yb)
        opt.zero_grad(set_to_none=True)
        total = loss.backward(model, per_task, shared)
        if cfg.grad_clip:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip, foreach=True)
        opt.step()
        loss.after_step(lambda xb=xb, cb=cb, yb=yb: _recompute(model, loss, xb, cb, yb, autocast))
        total_sum += total
        task_sum += torch.stack([per_task[t].detach() for t in names])
        steps += 1
    steps = max(steps, 1)
    task_means = (task_sum / steps).tolist()  # the epoch's one host sync
    return total_sum.item() / steps, dict(zip(names, task_means, strict=True))


@torch.no_grad()
def _recompute(model, loss, xb, cb, yb, autocast) -> dict[str, torch.Tensor]:
    with autocast:
        out = model(xb, cb)
    return loss.task_losses(out, yb)


def fit(
    model: nn.Module,
    data: PreparedData,
    loss: MultiTaskLoss,
    cfg: TrainConfig,
    device: str | torch.device | None = None,
    callbacks: Sequence[EpochCallback] = (),
    epochs: int | None = None,
) -> FitResult:
    """Train ``model`` on ``data``'s train split, early-stopping on ``val/objective``.

    Args:
        model: A :class:`~mtl_core.model.MultiTaskModel` (or any module mapping
            ``(x, c)`` to ``{task: outputs}`` with ``shared_parameters()``); it is
            moved to the device and left holding the best weights.
        data: Prepared splits; only ``train`` and ``val`` are used.
        loss: Task losses, penalty and weighting method.
        cfg: Optimiser, schedule, clipping, early stopping and seed.
        device: ``auto`` (CUDA when present), ``cpu``, ``cuda:N``; default ``cfg.device``.
        callbacks: Called after every epoch with its :class:`EpochLog`. An
            exception raised there (e.g. a pruning signal) propagates.
        epochs: Overrides ``cfg.epochs``.

    Returns:
        A :class:`FitResult` with the history, best epoch and best weights.

    Raises:
        NonFiniteLossError: A task loss or the total became NaN or infinite.
    """
    dev = resolve_device(device or cfg.device)
    torch.manual_seed(cfg.seed)
    generator = torch.Generator(device=dev).manual_seed(cfg.seed)
    model.to(dev)
    loss.weighting.to(dev)
    train = DeviceSplit.from_split(data.splits["train"], dev)
    val = DeviceSplit.from_split(data.splits["val"], dev)
    n_epochs = epochs or cfg.epochs
    # A weighting method's learned task weights join the optimiser, unless it steps them itself.
    opt = _optimizer([*model.parameters(), *loss.weighting.optimised_parameters()], cfg)
    sched = _scheduler(opt, cfg, n_epochs)

    history: list[EpochLog] = []
    best = (float("inf"), 0, copy.deepcopy(model.state_dict()))
    since_best, stopped_early, t0 = 0, False, time.perf_counter()
    for epoch in range(1, n_epochs + 1):
        t_epoch = time.perf_counter()
        lr = opt.param_groups[0]["lr"]
        train_loss, train_tasks = train_epoch(model, train, loss, opt, cfg, generator)
        _check_finite(epoch, train_loss, train_tasks)
        loss.weighting.epoch_end(train_tasks)
        val_obj, val_tasks = split_losses(model, val, loss)
        _check_finite(epoch, val_obj, val_tasks)
        if sched is not None:
            sched.step()
        log = EpochLog(
            epoch, train_loss, train_tasks, val_obj, val_tasks, lr, time.perf_counter() - t_epoch
        )
        history.append(log)
        if val_obj < best[0] - cfg.min_delta:
            best = (val_obj, epoch, copy.deepcopy(model.state_dict()))
            since_best = 0
        else:
            since_best += 1
        for cb in callbacks:
            cb(log)
        if cfg.patience and since_best >= cfg.patience:
            stopped_early = True
            break

    model.load_state_dict(best[2])
    return FitResult(
        history, best[1], best[0], best[2], stopped_early, time.perf_counter() - t0, str(dev)
    )


def train_from_config(
    cfg: ExperimentConfig,
    data: PreparedData,
    *,
    device: str | torch.device | None = None,
    callbacks: Sequence[EpochCallback] = (),
    epochs: int | None = None,
) -> tuple[MultiTaskModel, FitResult]:
    """Build the model, loss and optimiser of ``cfg`` and train them: the one training recipe.

    The search's trials, the final model, the single-task baselines and the
    benchmarks all train through here, so they cannot drift apart.

    Args:
        cfg: The experiment; its ``features``, ``model``, ``loss`` and ``train`` sections apply.
        data: Prepared data in ``cfg.features``' representation (see
            :meth:`~mtl_core.data.PreparedData.with_features`).
        device: Overrides ``cfg.train.device``.
        callbacks: Per-epoch callbacks, as in :func:`fit`.
        epochs: Overrides ``cfg.train.epochs``.

    Returns:
        The trained model (holding its best weights) and the fit's result.

    Raises:
        ValueError: ``data`` was prepared for another feature representation.
        NonFiniteLossError: Training diverged.
    """
    if data.preprocessor.settings.preprocessing_key() != cfg.features.preprocessing_key():
        raise ValueError(
            "data was prepared with features "
            f"{data.preprocessor.settings.preprocessing_key()}, the config asks for "
            f"{cfg.features.preprocessing_key()}; use data.with_features(cfg.features)"
        )
    model = build_model(model_spec(cfg.model, cfg.features, data), cfg.train.seed)
    loss = build_loss(cfg.loss, data.tasks)
    result = fit(model, data, loss, cfg.train, device=device, callbacks=callbacks, epochs=epochs)
    return model, result


def predict_outputs(
    model: nn.Module,
    X: np.ndarray,
    C: np.ndarray | None = None,
    device: str | torch.device = "auto",
    chunk: int = 65536,
) -> dict[str, np.ndarray]:
    """Raw model outputs ``{task: (N, out_dim)}`` for inputs ``X`` and codes ``C``, in eval mode."""
    dev = resolve_device(device)
    model.to(dev).eval()
    if C is None:
        C = np.zeros((len(X), 0), dtype=np.int64)
    parts: dict[str, list[np.ndarray]] = {}
    with torch.no_grad():
        for start in range(0, len(X), chunk):
            xb = torch.as_tensor(X[start : start + chunk], device=dev)
            cb = torch.as_tensor(C[start : start + chunk], device=dev)
            for name, out in model(xb, cb).items():
                parts.setdefault(name, []).append(out.float().cpu().numpy())
    return {k: np.concatenate(v) for k, v in parts.items()}
