"""Population training: K models of one shape trained at once, as one batched model.

On tables a small network spends most of a step in per-step overhead, so
training K of them one after another wastes the machine. Here the K members'
weights are stacked along a leading member dimension and one step runs every
member's forward and backward at once: :func:`torch.func.functional_call` on the
ordinary :class:`~mtl_core.model.MultiTaskModel`, under :func:`torch.func.vmap`
(batched matmuls), so every registered architecture and input representation
works unchanged. Members train from one set of device tensors; each step
gathers each member's own mini-batch from them.

What is batched (may differ between the members of one group):

- the static task weights, ``loss.l1`` and ``loss.l2``, the learning rate, weight
  decay, gradient clipping, ``model.dropout`` (its rate; dropout on or off changes
  the module list, so that is part of the shape), the seed (initial weights and
  batch order; dropout masks differ per member, ``randomness="different"``),
  early stopping (``patience``, ``min_delta``), and the data: the train and
  validation rows, so the k folds of a cross-validated trial train together;
- each member keeps its own optimiser state and step count, best epoch and
  best-weights snapshot, history of :class:`~mtl_core.train.EpochLog`, and ends on
  its own (early stopping, divergence, or a stop requested by a callback).

What is not: members are grouped by everything that changes shapes or the
computation (architecture and its sizes, activation, norm, towers, the input
representation and its embeddings, the parameter shapes, batch size, epochs,
optimiser kind, schedule, penalty scope, weighting method, bf16, device).

Every registered weighting method is batched (:data:`BATCHED_WEIGHTINGS`):

- ``static``: each member's task weights;
- ``dwa``: each member's weights from its own last two epochs, at its own temperature;
- ``uncertainty``: each member's learned log-variances, stacked with its weights
  and stepped by its AdamW, as ``fit`` steps them with the model;
- ``famo``: each member's task logits, stepped after each step by their own Adam
  from the batch's losses recomputed under the new weights, as torchjd's ``FAMO``
  steps them (a task without labels in the batch sits the step out, as in
  :mod:`mtl_core.weighting.famo`);
- ``upgrad`` and ``pcgrad``: one backward pass per task gives every member's task
  gradients at once, the (K, T, T) Gramians of their shared parts are one batched
  product, and torchjd's own weighting of the method turns each member's Gramian
  into its T weights (a small call per member and step), which combine its task
  gradients as ``torchjd.autojac.jac_to_grad`` combines them in ``fit``. PCGrad
  draws its random task order from torch's global generator, so with three tasks
  or more its order differs from ``fit``'s, as dropout masks do.

A method not in :data:`BATCHED_WEIGHTINGS` (a new one, until it is added there),
and a group of one, train sequentially through
:func:`~mtl_core.train.train_from_config` (``fit``), with the same
callbacks. BatchNorm (``model.norm: batch``) is batched, with each member's
running statistics stacked like its weights; since a padded row would enter the
batch statistics, its members are also grouped by their number of training rows.
Without batch norm, members whose row counts differ (folds) are padded with rows
whose targets are missing, which :func:`~mtl_core.losses.masked_loss` leaves out.

A member whose loss becomes non-finite is masked from that step on (its updates
and optimiser state are frozen) and fails at the end of the epoch with fit's
error; the others are unaffected. Members that end leave the stacked state at
the end of the epoch, so the rest stops paying for them.

Numerically a member follows ``fit``: the same initial weights, batch order,
masked losses and update rule, so batched matmuls and the hand-written AdamW
leave differences at float32 rounding (one member matches ``fit`` to about 1e-7
after a few epochs). Two differ by design: dropout masks come from vmap's random
stream, not fit's; and under batch norm the bias of the Linear before it, whose
true gradient is zero, follows rounding noise that AdamW scales up to lr-sized
steps, so evaluation-mode results differ at about 1e-3. On CUDA with
``train.bf16`` the forward runs under bf16 autocast, as in ``fit``.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, vmap

from mtl_core.config import ExperimentConfig, TrainConfig
from mtl_core.data import PreparedData
from mtl_core.errors import NonFiniteLossError
from mtl_core.losses import masked_task_losses, penalised_parameters, task_loss_sums
from mtl_core.model import MultiTaskModel, build_model, model_spec
from mtl_core.train import (
    EpochCallback,
    EpochLog,
    FitResult,
    _check_finite,
    _scheduler,
    resolve_device,
    train_from_config,
)
from mtl_core.weighting import WEIGHTINGS
from mtl_core.weighting.famo import ABSENT

BETAS = (0.9, 0.999)  # torch.optim.AdamW's defaults, which fit uses
EPS = 1e-8
FAMO_EPS = 1e-8  # torchjd's FAMO adds it to each loss before the logarithm


@dataclass
class Member:
    """One model of a population: its whole config and its data.

    ``data`` must be prepared in ``cfg.features``' representation, as for
    :func:`~mtl_core.train.train_from_config`; only its ``train`` and ``val``
    splits are read.
    """

    cfg: ExperimentConfig
    data: PreparedData


@dataclass
class MemberResult(FitResult):
    """A :class:`~mtl_core.train.FitResult` plus why the member ended early, if it did.

    ``error`` is None for a member that finished (all epochs or early stopping);
    otherwise the :class:`~mtl_core.errors.NonFiniteLossError` it diverged with,
    or the exception a callback raised or ``on_epoch`` returned for it (a
    pruning signal, say). ``best_state`` is a ``state_dict`` of the member's own
    :class:`~mtl_core.model.MultiTaskModel` as of its best epoch.
    """

    error: BaseException | None = None


@dataclass
class EpochEvent:
    """What one epoch of one group produced, for ``on_epoch``.

    Attributes:
        group: Indices (into the caller's member list) of the members trained together.
        epoch: The epoch, from 1.
        logs: The epoch's log of each member that trained it and did not fail.
        ended: Members that left in this epoch: None for a normal end (early
            stopping, last epoch), else the error.
    """

    group: list[int]
    epoch: int
    logs: dict[int, EpochLog]
    ended: dict[int, BaseException | None]


# Returns the members to stop now, each with the exception recorded as its error.
OnEpoch = Callable[[EpochEvent], Mapping[int, BaseException] | None]


# The weighting methods the batched trainer implements (see the module's docstring).
BATCHED_WEIGHTINGS = ("static", "dwa", "uncertainty", "famo", "upgrad", "pcgrad")
# Those of them that aggregate the Jacobian of the task losses on the shared parameters.
JACOBIAN_WEIGHTINGS = ("upgrad", "pcgrad")


def sequential_reason(member: Member) -> str | None:
    """Why ``member`` cannot be batched, or None when it can."""
    if member.cfg.loss.weighting not in BATCHED_WEIGHTINGS:
        return (
            f"loss.weighting '{member.cfg.loss.weighting}' is not batched "
            f"(only {', '.join(BATCHED_WEIGHTINGS)} are)"
        )
    return None


def train_population(
    members: Sequence[Member],
    *,
    device: str | torch.device | None = None,
    epochs: int | None = None,
    callbacks: Sequence[Sequence[EpochCallback]] | None = None,
    on_epoch: OnEpoch | None = None,
) -> list[tuple[MultiTaskModel | None, MemberResult]]:
    """Train every member: groups of one shape batched, the rest one by one.

    Args:
        members: The models to train, each with its config and data.
        device: Overrides each member's ``train.device``.
        epochs: Overrides each member's ``train.epochs``.
        callbacks: Per member, called after each of its epochs with its
            :class:`EpochLog`; an exception raised there ends that member only,
            recorded as its ``error``.
        on_epoch: Called once per epoch of each group, after the callbacks;
            returns the members to stop, with their errors.

    Returns:
        Per member, in order: its model holding its best weights (None when it
        ended with an error) and its :class:`MemberResult`.
    """
    callbacks = callbacks or [()] * len(members)
    groups, singles = group_members(members, device=device, epochs=epochs)
    out: dict[int, tuple[MultiTaskModel | None, MemberResult]] = {}
    for group in groups:
        try:
            done = fit_group(
                [members[i] for i in group],
                device=device,
                epochs=epochs,
                callbacks=[callbacks[i] for i in group],
                on_epoch=_reindexed(on_epoch, group),
            )
        except Exception as exc:  # the whole group failed (out of memory, say): each member did
            dev = str(resolve_device(device or members[group[0]].cfg.train.device))
            failed = MemberResult([], 0, math.inf, {}, False, 0.0, dev, error=exc)
            done = [(None, failed)] * len(group)
        out.update(zip(group, done, strict=True))
    for i in singles:
        out[i] = _fit_one(i, members[i], device, epochs, callbacks[i], on_epoch)
    return [out[i] for i in range(len(members))]


def group_members(
    members: Sequence[Member],
    *,
    device: str | torch.device | None = None,
    epochs: int | None = None,
) -> tuple[list[list[int]], list[int]]:
    """Split members into batchable groups of two or more, and the rest.

    Returns:
        ``(groups, singles)``: lists of member indices; a group's members share
        one shape key, a single is trained on its own by ``fit``.
    """
    keyed: dict[tuple, list[int]] = {}
    singles = []
    shapes: dict[str, tuple] = {}  # per spec layout: the members of a batch mostly share one
    for i, m in enumerate(members):
        if sequential_reason(m) is not None:
            singles.append(i)
            continue
        try:
            key = _shape_key(m, device, epochs, shapes)
        except Exception:  # fit raises the same error, with its message, for this member
            singles.append(i)
            continue
        keyed.setdefault(key, []).append(i)
    groups = [g for g in keyed.values() if len(g) > 1]
    singles += [g[0] for g in keyed.values() if len(g) == 1]
    return groups, sorted(singles)


def _shape_key(member: Member, device, epochs, shapes: dict[str, tuple] | None = None) -> tuple:
    """Everything that must be equal for members to share one batched model.

    ``shapes`` memoises the parameter shapes per spec layout (the spec with each
    bin list replaced by its length, and without the batched dropout rate and
    frequency scale: all the shapes depend on), so a batch that shares its choices
    builds one model here, not one per member.
    """
    cfg, t = member.cfg, member.cfg.train
    model = cfg.model.model_dump(mode="json")
    model["dropout"] = model["dropout"] > 0  # the rate is batched; a Dropout layer or none is not
    features = cfg.features.model_dump(mode="json")
    features.pop("frequency_scale")  # only the initial frequencies: batched
    spec = model_spec(cfg.model, cfg.features, member.data)
    # The rates and scales batched above change no shape either: left out, so that the
    # members of a batch, which sample them, share one layout.
    layout = asdict(spec) | {"model": model, "features": features}
    layout["bins"] = [len(b) for b in spec.bins] if spec.bins is not None else None
    layout_key = json.dumps(layout, sort_keys=True)
    memo = shapes if shapes is not None else {}
    if layout_key not in memo:
        net = build_model(spec, t.seed).to("meta")
        memo[layout_key] = tuple(
            (k, tuple(v.shape), str(v.dtype)) for k, v in net.state_dict().items()
        )
    train = member.data.splits["train"]
    return (
        json.dumps([model, features], sort_keys=True),
        memo[layout_key],
        (member.data.preprocessor.n_dense, len(member.data.preprocessor.categorical)),
        tuple(member.data.out_dims.items()),
        t.batch_size,
        epochs or t.epochs,
        t.optimizer,
        t.momentum,
        t.scheduler,
        t.step_size,
        t.gamma,
        t.bf16,
        str(resolve_device(device or t.device)),
        cfg.loss.penalty_scope,
        cfg.loss.weighting,
        len(train) if cfg.model.norm == "batch" else None,
    )


def _reindexed(on_epoch: OnEpoch | None, group: list[int]) -> OnEpoch | None:
    """``on_epoch`` seeing the caller's member indices instead of the group's positions."""
    if on_epoch is None:
        return None

    def call(event: EpochEvent) -> dict[int, BaseException]:
        stops = on_epoch(
            EpochEvent(
                list(group),
                event.epoch,
                {group[r]: log for r, log in event.logs.items()},
                {group[r]: e for r, e in event.ended.items()},
            )
        )
        where = {i: r for r, i in enumerate(group)}
        return {where[i]: exc for i, exc in (stops or {}).items() if i in where}

    return call


def _fit_one(
    index: int,
    member: Member,
    device,
    epochs: int | None,
    callbacks: Sequence[EpochCallback],
    on_epoch: OnEpoch | None,
) -> tuple[MultiTaskModel | None, MemberResult]:
    """One member through ``train_from_config``, with the population's callback contract."""
    history: list[EpochLog] = []
    t0 = time.perf_counter()

    def report(log: EpochLog) -> None:
        history.append(log)
        for cb in callbacks:
            cb(log)
        if on_epoch is not None:
            stops = on_epoch(EpochEvent([index], log.epoch, {index: log}, {})) or {}
            if index in stops:
                raise stops[index]

    try:
        model, res = train_from_config(
            member.cfg, member.data, device=device, callbacks=[report], epochs=epochs
        )
    except Exception as exc:
        best = min(history, key=lambda log: log.val_objective, default=None)
        result = MemberResult(
            history,
            best.epoch if best else 0,
            best.val_objective if best else math.inf,
            {},
            False,
            time.perf_counter() - t0,
            str(resolve_device(device or member.cfg.train.device)),
            error=exc,
        )
        return None, result
    fields = {k: getattr(res, k) for k in FitResult.__dataclass_fields__}
    return model, MemberResult(**fields)


# --------------------------------------------------------------------------- the batched trainer


class _MemberDropout(nn.Module):
    """Inverted dropout whose rate is a (per-member, under vmap) buffer instead of a float.

    ``F.dropout`` takes a Python float, so members with their own rates need this;
    under ``vmap(randomness="different")`` every member draws its own mask.
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        self.register_buffer("p", torch.tensor(float(p)), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        keep = torch.rand_like(x) >= self.p
        return x * keep / (1.0 - self.p)


def _functional_base(model: MultiTaskModel) -> tuple[nn.Module, list[str]]:
    """A parameter-free copy of ``model`` whose Dropouts take their rate from a buffer."""
    base = copy.deepcopy(model).to("meta")
    names = []
    for name, module in list(base.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.Dropout):
                setattr(module, child_name, _MemberDropout(child.p).to("meta"))
                names.append(f"{name}.{child_name}.p" if name else f"{child_name}.p")
    return base, names


def _pad(arrays: list[np.ndarray], rows: int, fill) -> np.ndarray:
    """Stack arrays of (N_v, ...) into (V, rows, ...), padding with ``fill``."""
    out = np.full((len(arrays), rows, *arrays[0].shape[1:]), fill, dtype=arrays[0].dtype)
    for v, a in enumerate(arrays):
        out[v, : len(a)] = a
    return out


class _Rows:
    """One split of every member's data, stacked: (V, N_max + 1, ...) with padding rows.

    Members that share their data (the same arrays) share one variant ``v``; the
    last row is padding (zeros, targets missing) and is what unused batch slots point at.
    """

    def __init__(self, splits: list, tasks: list[str], device: torch.device) -> None:
        self.n = [len(s) for s in splits]
        rows = max(self.n) + 1
        self.pad = rows - 1
        self.X = torch.as_tensor(_pad([s.X for s in splits], rows, 0.0), device=device)
        self.C = torch.as_tensor(_pad([s.C for s in splits], rows, 0), device=device)
        self.y = {
            t: torch.as_tensor(_pad([s.y[t] for s in splits], rows, np.nan), device=device)
            for t in tasks
        }

    def take(self, v: torch.Tensor, idx: torch.Tensor):
        """Rows ``idx`` (K, B) of each member's variant ``v`` (K,): X, C and targets."""
        v = v[:, None]
        return self.X[v, idx], self.C[v, idx], {t: y[v, idx] for t, y in self.y.items()}


class _Population:
    """The stacked state of the members still training; one row per member.

    Parameters live in one flat leaf tensor (K, P + E) whose split views are the
    member's named parameters, so the optimiser, clipping, masking, snapshots
    and dropping members are each a handful of whole-tensor operations. The E
    extra columns are what the weighting method learns (uncertainty's T
    log-variances; none for the others): the optimiser steps them with the
    model, the penalty and clipping leave them out, as in ``fit``.
    """

    def __init__(self, members: Sequence[Member], models: list[MultiTaskModel], device) -> None:
        self.device = device
        self.tasks = list(members[0].data.tasks)
        self.task_names = [t.name for t in self.tasks]
        cfgs = [m.cfg for m in members]
        self.weighting = cfgs[0].loss.weighting
        self.n_extra = len(self.task_names) if self.weighting == "uncertainty" else 0
        self._stack_weights(models, [c.model.dropout for c in cfgs])
        self._stack_settings(cfgs, models[0])
        self._stack_data(members)
        self.autocast = torch.autocast(
            device_type="cuda",
            dtype=torch.bfloat16,
            enabled=cfgs[0].train.bf16 and torch.device(device).type == "cuda",
        )
        self._train_fn = vmap(self._member_loss, randomness="different")
        self._val_fns: dict[bool, Callable] = {}

    def _stack_weights(self, models: list[MultiTaskModel], dropout: list[float]) -> None:
        """Parameters into one flat (K, P) leaf, buffers stacked, snapshots of both."""
        first, dev = models[0], self.device
        self.base, dropout_names = _functional_base(first)
        named = list(first.named_parameters())
        self.names = [n for n, _ in named]
        self.shapes = [p.shape for _, p in named]
        self.sizes = [p.numel() for _, p in named]
        self.n_model = sum(self.sizes)
        self.state_keys = list(first.state_dict())
        extra = torch.zeros(self.n_extra)  # log-variances start at 0, as torchjd's UW's do
        self.flat = torch.stack(
            [torch.cat([*(p.detach().reshape(-1) for p in m.parameters()), extra]) for m in models]
        ).to(dev)
        self.flat.requires_grad_(True)
        buffers = [dict(m.named_buffers()) for m in models]
        self.buffers = {n: torch.stack([b[n] for b in buffers]).to(dev) for n in buffers[0]}
        for n in dropout_names:  # each member's dropout rate, (K,)
            self.buffers[n] = torch.tensor(dropout, dtype=torch.float32, device=dev)
        self.persistent = [n for n in self.state_keys if n in self.buffers]
        self.best_flat = self.flat.detach().clone()
        self.best_buffers = {n: self.buffers[n].clone() for n in self.persistent}

    def _stack_settings(self, cfgs: list[ExperimentConfig], first: MultiTaskModel) -> None:
        """Per-member settings as vectors over the member dimension, and optimiser state."""
        dev, k = self.device, len(cfgs)

        def vec(values: list, dtype=torch.float32) -> torch.Tensor:
            return torch.tensor(values, dtype=dtype, device=dev)

        self.lr = vec([c.train.lr for c in cfgs], torch.float64)
        self.wd = vec([c.train.weight_decay for c in cfgs])
        self.wd_on = any(c.train.weight_decay > 0 for c in cfgs)
        self.clip = vec([c.train.grad_clip or math.inf for c in cfgs])
        self.l1 = vec([c.loss.l1 for c in cfgs])
        self.l2 = vec([c.loss.l2 for c in cfgs])
        self.W = vec([[c.task_weights()[t] for t in self.task_names] for c in cfgs])  # (K, T)
        if self.weighting == "dwa":  # 1 each until two epochs' mean losses exist
            self.W = torch.ones_like(self.W)
        self.temperature = vec([c.loss.dwa_temperature for c in cfgs])
        if self.weighting == "famo":  # W holds the task logits, 0 at the start as torchjd's
            self.W = torch.zeros_like(self.W)
        if self.weighting in JACOBIAN_WEIGHTINGS:  # fit sums the losses outside the shared part
            self.W = torch.ones_like(self.W)
            method = WEIGHTINGS[self.weighting](self.task_names, **cfgs[0].loss.weighting_options())
            # torchjd's Gramian-based weighting of the method, as its aggregator applies it.
            self.gramian_weighting = method.aggregator.gramian_weighting
            shared = {id(p) for p in first.shared_parameters() if p.requires_grad}
            self.smask = torch.cat(  # (P + E,): True on the shared parameters
                [torch.full((p.numel(),), id(p) in shared) for p in first.parameters()]
                + [torch.zeros(self.n_extra, dtype=torch.bool)]
            ).to(dev)
        # FAMO's logits' own Adam: rates, moments and step count (None under other methods).
        famo = self.weighting == "famo"
        self.famo_lr = vec([c.loss.famo_lr for c in cfgs], torch.float64) if famo else None
        self.famo_decay = vec([c.loss.famo_decay for c in cfgs]) if famo else None
        self.famo_m = torch.zeros_like(self.W) if famo else None
        self.famo_v = torch.zeros_like(self.W) if famo else None
        self.famo_step = torch.zeros(k, dtype=torch.float64, device=dev) if famo else None
        self.epoch_means: list[torch.Tensor] = []  # DWA: the last two epochs' task losses (K, T)
        penalised = {id(p) for p in penalised_parameters(first, cfgs[0].loss.penalty_scope)}
        self.pmask = torch.cat(  # (P + E,): 1 where the L1/L2 penalty applies
            [torch.full((p.numel(),), float(id(p) in penalised)) for p in first.parameters()]
            + [torch.zeros(self.n_extra)]
        ).to(dev)
        self.optimizer, self.momentum = cfgs[0].train.optimizer, cfgs[0].train.momentum
        self.m = torch.zeros_like(self.flat, requires_grad=False)  # first moment, or momentum
        self.v = torch.zeros_like(self.m) if self.optimizer == "adamw" else None
        self.step = torch.zeros(k, dtype=torch.float64, device=dev)
        self.ok = torch.ones(k, dtype=torch.bool, device=dev)  # False once a loss is non-finite
        # A row's error other than a non-finite loss (the weighting's solver failing, say):
        # the row is frozen (ok False) and ends with it at the end of the epoch.
        self.errors: list[Exception | None] = [None] * k
        self.batch_size = cfgs[0].train.batch_size
        self.generators = [torch.Generator(device=dev).manual_seed(c.train.seed) for c in cfgs]

    def _stack_data(self, members: Sequence[Member]) -> None:
        """Train and val rows on the device, once per distinct data (a fold, a representation)."""
        keys = list(dict.fromkeys(_data_key(m.data) for m in members))
        datas = {_data_key(m.data): m.data for m in members}
        self.train = _Rows([datas[k].splits["train"] for k in keys], self.task_names, self.device)
        self.val = _Rows([datas[k].splits["val"] for k in keys], self.task_names, self.device)
        variant = [keys.index(_data_key(m.data)) for m in members]
        self.variant = torch.tensor(variant, device=self.device)
        self.n_train = [self.train.n[v] for v in variant]
        self.n_val = [self.val.n[v] for v in variant]

    def __len__(self) -> int:
        return self.flat.shape[0]

    # ------------------------------------------------------------------ per-member functions

    def params(self) -> dict[str, torch.Tensor]:
        """Each parameter as a (K, *shape) view of the flat tensor (gradients flow to it)."""
        k = len(self)
        parts = self.flat[:, : self.n_model].split(self.sizes, dim=1)
        return {n: t.view(k, *s) for n, t, s in zip(self.names, parts, self.shapes, strict=True)}

    def _member_loss(self, params, buffers, x, c, y, w, extra):
        """One member's weighted total and task losses (T,).

        ``w`` (T,) are the member's task weights (static, or DWA's of this epoch), or
        FAMO's task logits; ``extra`` (E,) what its weighting learns (uncertainty's
        log-variances s).
        """
        out = functional_call(self.base, (params, buffers), (x, c))
        per_task = masked_task_losses(self.tasks, out, y)
        losses = torch.stack([per_task[t] for t in self.task_names])  # (T,)
        if self.weighting == "uncertainty":  # torchjd's UW: sum_t (exp(-s_t) L_t + s_t) / 2
            return (0.5 * torch.exp(-extra) * losses + 0.5 * extra).sum(), losses
        if self.weighting == "famo":  # torchjd's FAMO: c sum_t z_t log(L_t + eps), c held
            shifted = _famo_sat_out(losses) + FAMO_EPS
            z = torch.softmax(w, dim=0).detach()
            normalizer = (z / shifted).sum().detach()
            return ((z / normalizer) * torch.log(shifted)).sum(), losses
        return (w * losses).sum(), losses

    def _member_sums(self, params, buffers, x, c, y):
        out = functional_call(self.base, (params, buffers), (x, c))
        return task_loss_sums(self.tasks, out, y)

    # ------------------------------------------------------------------ an epoch

    def _batches(self) -> tuple[torch.Tensor, list[int], list[int], torch.Tensor]:
        """This epoch's row indices (K, S*B), per-step widths, steps per member, step masks."""
        bs, k = self.batch_size, len(self)
        # fit skips a last batch of one row (it breaks batch norm and adds only noise).
        steps = []
        for n in self.n_train:
            s = -(-n // bs)
            if n > 1 and n - (s - 1) * bs < 2:
                s -= 1
            steps.append(max(s, 0))
        n_steps = max(steps)
        idx = torch.full((k, n_steps * bs), self.train.pad, dtype=torch.long, device=self.device)
        for r, (n, g) in enumerate(zip(self.n_train, self.generators, strict=True)):
            perm = torch.randperm(n, device=self.device, generator=g)  # as fit draws it
            used = min(n, steps[r] * bs)
            idx[r, :used] = perm[:used]
        widths = [
            max(
                (min(bs, n - s * bs) if s < st else 0)
                for n, st in zip(self.n_train, steps, strict=True)
            )
            for s in range(n_steps)
        ]
        has = torch.tensor(
            [[s < st for st in steps] for s in range(n_steps)], device=self.device
        ).reshape(n_steps, k)
        return idx, widths, steps, has

    def train_epoch(self, lr: torch.Tensor) -> tuple[list[float], list[list[float]]]:
        """One pass over each member's rows; per member its mean total and task losses."""
        self.base.train()
        idx, widths, steps, has = self._batches()
        bs = self.batch_size
        k, n_tasks = len(self), len(self.task_names)
        total_sum = torch.zeros(k, device=self.device)
        task_sum = torch.zeros(k, n_tasks, device=self.device)
        l1_on, l2_on = bool((self.l1 > 0).any()), bool((self.l2 > 0).any())
        clip_on = bool(torch.isfinite(self.clip).any())
        for s, width in enumerate(widths):
            xb, cb, yb = self.train.take(self.variant, idx[:, s * bs : s * bs + width])
            extra = self.flat[:, self.n_model :]
            with self.autocast:
                weighted, losses = self._train_fn(
                    self.params(), self.buffers, xb, cb, yb, self.W, extra
                )
            penalty = torch.zeros((), device=self.device)
            if l1_on:
                penalty = penalty + self.l1 * (self.flat.abs() * self.pmask).sum(1)
            if l2_on:
                penalty = penalty + self.l2 * (self.flat.square() * self.pmask).sum(1)
            total = weighted.float() + penalty
            # A member that diverges is frozen from this step on; the others go on.
            self.ok &= torch.isfinite(total.detach()) | ~has[s]
            if self.weighting in JACOBIAN_WEIGHTINGS:
                grad = self._jacobian_grad(losses, penalty, has[s] & self.ok)
            else:
                self.flat.grad = None
                total.sum().backward()
                grad = self.flat.grad
            with torch.no_grad():
                if clip_on:  # each member's own norm, as clip_grad_norm_ over its model's
                    model_grad = grad[:, : self.n_model]  # parameters (not the weighting's)
                    norm = torch.linalg.vector_norm(model_grad, dim=1)
                    scale = (self.clip / (norm + 1e-6)).clamp(max=1.0)[:, None]
                    if self.n_extra:
                        grad = torch.cat([model_grad * scale, grad[:, self.n_model :]], dim=1)
                    else:
                        grad = grad * scale
                self._update(grad, has[s] & self.ok, lr)
                if self.weighting == "famo":
                    self._famo_step(losses.detach().float(), (xb, cb, yb), has[s] & self.ok)
                total_sum += torch.where(has[s], total.detach(), 0.0)
                task_sum += torch.where(has[s][:, None], losses.detach().float(), 0.0)
        n = torch.tensor([max(st, 1) for st in steps], device=self.device, dtype=torch.float32)
        if self.weighting == "dwa":
            self._dwa_epoch_end(task_sum / n[:, None])
        both = torch.cat([(total_sum / n)[:, None], task_sum / n[:, None]], dim=1).tolist()
        return [row[0] for row in both], [row[1:] for row in both]  # the epoch's one host sync

    def _jacobian_grad(
        self, losses: torch.Tensor, penalty: torch.Tensor, active: torch.Tensor
    ) -> torch.Tensor:
        """Each member's update direction under UPGrad or PCGrad, as ``Aggregated`` gives it.

        Shared parameters: torchjd's weighting of the member's task-gradient Gramian
        combines its task gradients there, plus the penalty's gradient. Every other
        parameter: the gradient of the sum of the losses plus the penalty.
        """
        n_tasks = losses.shape[1]
        rows = []
        for t in range(n_tasks):  # one backward per task: every member's gradient of task t
            (g,) = torch.autograd.grad(
                losses[:, t].float().sum(), self.flat, retain_graph=True, allow_unused=True
            )
            rows.append(torch.zeros_like(self.flat) if g is None else g)
        pen = None
        if penalty.requires_grad:
            (pen,) = torch.autograd.grad(penalty.sum(), self.flat, allow_unused=True)
        with torch.no_grad():
            jac = torch.stack(rows, dim=1)  # (K, T, P + E)
            shared = jac[:, :, self.smask]  # (K, T, S)
            gramians = (shared @ shared.transpose(1, 2)).cpu()  # (K, T, T)
            weights = torch.zeros(len(self), n_tasks, dtype=shared.dtype)
            for k in torch.nonzero(active.cpu()).flatten().tolist():
                if not bool(torch.isfinite(gramians[k]).all()):
                    weights[k] = math.nan  # as in fit: the step, then the loss, is non-finite
                    continue
                try:
                    weights[k] = self.gramian_weighting(gramians[k])
                except Exception as exc:  # as in fit, where it ends the trial: this member only
                    self.errors[k] = exc
                    self.ok[k] = False
            grad = jac.sum(1)
            grad[:, self.smask] = torch.einsum("kt,kts->ks", weights.to(shared.device), shared)
            return grad if pen is None else grad + pen

    @torch.no_grad()
    def _famo_step(self, before: torch.Tensor, batch: tuple, active: torch.Tensor) -> None:
        """Step each active member's task logits from its losses before and after the step.

        As ``Famo.after_step``: the batch's losses recomputed under the new weights,
        delta_t = log(L_t before) - log(L_t after), the softmax's gradient along delta
        and one step of torch's Adam (L2 weight decay ``loss.famo_decay``) at
        ``loss.famo_lr``. A task without labels in the batch keeps its logit and moments.
        """
        xb, cb, yb = batch
        extra = self.flat[:, self.n_model :]
        with self.autocast:
            _, after = self._train_fn(self.params(), self.buffers, xb, cb, yb, self.W, extra)
        present = (before > 0) & active[:, None]  # (K, T)
        delta = torch.log(_famo_sat_out(before) + FAMO_EPS) - torch.log(
            _famo_sat_out(after.float(), before) + FAMO_EPS
        )
        z = torch.softmax(self.W, dim=1)
        g = z * (delta - (z * delta).sum(1, keepdim=True))  # d softmax(w) / dw, along delta
        g = g + self.famo_decay[:, None] * self.W  # torch.optim.Adam's weight decay
        b1, b2 = BETAS
        step = self.famo_step + active
        m = torch.lerp(self.famo_m, g, 1 - b1)
        v = self.famo_v * b2 + (1 - b2) * g * g
        seen = step.clamp_min(1)
        bc1 = 1 - b1**seen
        bc2_sqrt = (1 - b2**seen).sqrt()
        denom = v.sqrt() / bc2_sqrt.to(v.dtype)[:, None] + EPS
        w = self.W - (self.famo_lr / bc1).to(v.dtype)[:, None] * (m / denom)
        self.W = torch.where(present, w, self.W)
        self.famo_m = torch.where(present, m, self.famo_m)
        self.famo_v = torch.where(present, v, self.famo_v)
        self.famo_step = step

    @torch.no_grad()
    def _dwa_epoch_end(self, means: torch.Tensor) -> None:
        """Next epoch's DWA weights from this epoch's mean task losses (K, T), as torchjd's DWA.

        With two epochs' means, member k's weight of task t is
        T softmax_t(r_kt / temperature_k), r_kt the ratio of its last to its previous mean.
        """
        self.epoch_means = [*self.epoch_means, means][-2:]
        if len(self.epoch_means) == 2:
            older, newer = self.epoch_means
            rates = newer / older / self.temperature[:, None]
            self.W = means.shape[1] * torch.softmax(rates, dim=1)

    @torch.no_grad()
    def _update(self, grad: torch.Tensor, active: torch.Tensor, lr: torch.Tensor) -> None:
        """One optimiser step for the active members; the others keep weights and state.

        Neither ``torch.optim`` nor tabm nor ``torch.func`` has per-member learning rates
        on stacked parameters (and Adam is invariant to the loss's scale, so scaling a
        member's loss would not do), so AdamW and SGD are written out here, following
        ``torch.optim``'s update rules, with ``lr`` a vector over the member dimension.
        """
        step = self.step + active
        if self.optimizer == "adamw":
            self._adamw(grad, active, lr, step)
        else:
            self._sgd(grad, active, lr, step)
        self.step = step

    def _adamw(self, grad, active, lr, step) -> None:
        # In place, with a row's inactive flag as a zero factor: an inactive row's gradient
        # is zeroed (it may be non-finite) and then weights, m and v stay exactly as they were.
        p, b1, b2 = self.flat, *BETAS
        on = active[:, None].to(p.dtype)  # (K, 1)
        g = torch.where(active[:, None], grad, 0.0)
        if self.wd_on:
            p.mul_(1 - lr.to(p.dtype)[:, None] * self.wd[:, None] * on)
        self.m.lerp_(g, (1 - b1) * on)
        self.v.mul_(1 - (1 - b2) * on).addcmul_(g, g, value=1 - b2)
        seen = step.clamp_min(1)  # a row that never stepped has m = v = 0: no 0/0
        bc1 = 1 - b1**seen  # float64, as torch computes them in Python floats
        bc2_sqrt = (1 - b2**seen).sqrt()
        denom = (self.v.sqrt() / bc2_sqrt.to(p.dtype)[:, None]).add_(EPS)
        p.sub_(self.m.div(denom).mul_((lr / bc1).to(p.dtype)[:, None] * on))

    def _sgd(self, grad, active, lr, step) -> None:
        # torch.optim.SGD with momentum and weight decay; inactive rows keep everything.
        p, a = self.flat, active[:, None]
        d = grad + self.wd[:, None] * p
        if self.momentum:
            m = torch.where((step <= 1)[:, None], d, self.momentum * self.m + d)
            self.m = torch.where(a, m, self.m)
            d = m
        p.copy_(torch.where(a, p - lr.to(p.dtype)[:, None] * d, p))

    @torch.no_grad()
    def validate(self) -> tuple[list[float], list[list[float]]]:
        """Each member's objective and task losses on its validation rows (eval mode)."""
        self.base.eval()
        k, shared = len(self), self.val.X.shape[0] == 1
        if shared not in self._val_fns:
            data_dim = None if shared else 0
            self._val_fns[shared] = vmap(
                self._member_sums, in_dims=(0, 0, data_dim, data_dim, data_dim)
            )
        fn = self._val_fns[shared]
        n_tasks = len(self.task_names)
        sums = torch.zeros(k, n_tasks, dtype=torch.float64, device=self.device)
        counts = torch.zeros_like(sums)
        chunk = max(256, 65536 // k)
        params = {n: t.detach() for n, t in self.params().items()}
        for start in range(0, max(self.n_val), chunk):
            rows = slice(start, min(start + chunk, max(self.n_val)))
            if shared:
                x, c = self.val.X[0, rows], self.val.C[0, rows]
                y = {t: v[0, rows] for t, v in self.val.y.items()}
            else:
                x, c = self.val.X[self.variant, rows], self.val.C[self.variant, rows]
                y = {t: v[self.variant, rows] for t, v in self.val.y.items()}
            s, n = fn(params, self.buffers, x, c, y)
            sums += s
            counts += n
        self.base.train()
        values = torch.where(counts > 0, sums / counts.clamp_min(1), torch.nan).tolist()
        # A task with no label in a split stays out of the objective, as in split_losses.
        return [float(np.nanmean(v)) for v in values], values

    # ------------------------------------------------------------------ snapshots and leaving

    @torch.no_grad()
    def snapshot(self, improved: list[int]) -> None:
        """Copy the current weights (and persistent buffers) of the improved rows as their best."""
        if not improved:
            return
        mask = torch.zeros(len(self), dtype=torch.bool, device=self.device)
        mask[improved] = True
        self.best_flat = torch.where(mask[:, None], self.flat.detach(), self.best_flat)
        for n in self.persistent:
            shape = (-1,) + (1,) * (self.buffers[n].ndim - 1)
            self.best_buffers[n] = torch.where(
                mask.view(shape), self.buffers[n], self.best_buffers[n]
            )

    def best_state(self, row: int) -> dict[str, torch.Tensor]:
        """Row ``row``'s best weights as a ``MultiTaskModel`` state_dict."""
        parts = self.best_flat[row, : self.n_model].split(self.sizes)
        pairs = zip(self.names, parts, self.shapes, strict=True)
        state = {n: t.view(s).clone() for n, t, s in pairs}
        state.update({n: self.best_buffers[n][row].clone() for n in self.persistent})
        return {k: state[k] for k in self.state_keys}

    @torch.no_grad()
    def keep(self, rows: list[int]) -> None:
        """Drop every member not in ``rows`` from the stacked state."""
        idx = torch.tensor(rows, dtype=torch.long, device=self.device)
        self.flat = self.flat.detach().index_select(0, idx).requires_grad_(True)
        names = ("m", "v", "step", "ok", "best_flat", "lr", "wd", "clip", "l1", "l2", "W")
        famo = ("famo_lr", "famo_decay", "famo_m", "famo_v", "famo_step")
        for name in (*names, "temperature", *famo):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, value.index_select(0, idx))
        self.epoch_means = [m.index_select(0, idx) for m in self.epoch_means]
        self.variant = self.variant.index_select(0, idx)
        self.buffers = {n: b.index_select(0, idx) for n, b in self.buffers.items()}
        self.best_buffers = {n: b.index_select(0, idx) for n, b in self.best_buffers.items()}
        self.n_train = [self.n_train[r] for r in rows]
        self.n_val = [self.n_val[r] for r in rows]
        self.generators = [self.generators[r] for r in rows]
        self.errors = [self.errors[r] for r in rows]


def _famo_sat_out(losses: torch.Tensor, like: torch.Tensor | None = None) -> torch.Tensor:
    """Losses with FAMO's ``ABSENT`` where a task had no label in the batch (``like``'s 0s)."""
    gone = (losses if like is None else like) <= 0
    return torch.where(gone, torch.full_like(losses, ABSENT), losses)


def _data_key(data: PreparedData) -> tuple[int, int]:
    """Members whose train and val arrays are the same objects share one copy on the device."""
    return id(data.splits["train"].X), id(data.splits["val"].X)


def _lr_factors(members: Sequence[Member], epochs: int) -> list[float]:
    """The schedule's factor on the base learning rate at each epoch, from torch's own scheduler."""
    cfg = members[0].cfg.train.model_copy(update={"lr": 1.0})
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = _scheduler(opt, cfg, epochs)
    factors = []
    for _ in range(epochs):
        factors.append(opt.param_groups[0]["lr"])
        if sched is not None:
            opt.step()
            sched.step()
    return factors


def _check_member(member: Member) -> None:
    settings, cfg = member.data.preprocessor.settings, member.cfg.features
    if settings.preprocessing_key() != cfg.preprocessing_key():
        raise ValueError(
            f"data was prepared with features {settings.preprocessing_key()}, the config asks "
            f"for {cfg.preprocessing_key()}; use data.with_features(cfg.features)"
        )


@dataclass
class _Progress:
    """One member's history and early-stopping state, as ``fit`` keeps them."""

    cfg: TrainConfig
    history: list[EpochLog] = field(default_factory=list)
    best_val: float = math.inf
    best_epoch: int = 0
    since_best: int = 0
    stopped_early: bool = False

    def record(self, log: EpochLog) -> bool:
        """Append ``log``; True when it is the member's new best epoch."""
        self.history.append(log)
        if log.val_objective < self.best_val - self.cfg.min_delta:
            self.best_val, self.best_epoch, self.since_best = log.val_objective, log.epoch, 0
            return True
        self.since_best += 1
        return False

    def out_of_patience(self) -> bool:
        """Early stopping's verdict after the latest epoch."""
        self.stopped_early = bool(self.cfg.patience) and self.since_best >= self.cfg.patience
        return self.stopped_early


def _epoch_logs(
    epoch: int,
    names: list[str],
    lr: list[float],
    seconds: float,
    train: tuple[list[float], list[list[float]]],
    val: tuple[list[float], list[list[float]]],
) -> list[EpochLog | NonFiniteLossError]:
    """Each row's EpochLog, or fit's error for a row whose losses are not finite."""
    out = []
    for r in range(len(lr)):
        tr = dict(zip(names, train[1][r], strict=True))
        va = dict(zip(names, val[1][r], strict=True))
        try:
            _check_finite(epoch, train[0][r], tr)
            _check_finite(epoch, val[0][r], va)
        except NonFiniteLossError as exc:
            out.append(exc)
            continue
        out.append(EpochLog(epoch, train[0][r], tr, val[0][r], va, lr[r], seconds))
    return out


def fit_group(
    members: Sequence[Member],
    *,
    device: str | torch.device | None = None,
    epochs: int | None = None,
    callbacks: Sequence[Sequence[EpochCallback]] | None = None,
    on_epoch: OnEpoch | None = None,
) -> list[tuple[MultiTaskModel | None, MemberResult]]:
    """Train members of one shape (see :func:`group_members`) as one batched model.

    Each member is built exactly as :func:`~mtl_core.train.train_from_config`
    builds it (same spec, same seed, same initial weights) and trained with fit's
    recipe: the same batch order from its seed, the same masked losses, penalty,
    clipping, AdamW or SGD update, schedule, early stopping and best weights.

    Args:
        members: Members sharing one shape key; ``loss.weighting`` must be one of
            :data:`BATCHED_WEIGHTINGS`.
        device: Overrides the members' ``train.device``.
        epochs: Overrides the members' ``train.epochs``.
        callbacks: Per member, as in :func:`train_population`.
        on_epoch: As in :func:`train_population` (indices are positions in ``members``).

    Returns:
        Per member: its model with its best weights (None if it ended with an
        error) and its :class:`MemberResult`.
    """
    for m in members:
        if reason := sequential_reason(m):
            raise ValueError(f"cannot batch this member: {reason}")
        _check_member(m)
    dev = resolve_device(device or members[0].cfg.train.device)
    n_epochs = epochs or members[0].cfg.train.epochs
    callbacks = callbacks or [()] * len(members)
    models = [
        build_model(model_spec(m.cfg.model, m.cfg.features, m.data), m.cfg.train.seed)
        for m in members
    ]
    pop = _Population(members, models, dev)
    factors = _lr_factors(members, n_epochs)
    progress = [_Progress(m.cfg.train) for m in members]
    rows = list(range(len(members)))  # the member in each row of the population
    results: dict[int, MemberResult] = {}
    t0 = time.perf_counter()

    for epoch in range(1, n_epochs + 1):
        t_epoch = time.perf_counter()
        lr = pop.lr * factors[epoch - 1]
        train = pop.train_epoch(lr)
        val = pop.validate()
        seconds = time.perf_counter() - t_epoch
        outcome = _epoch_logs(epoch, pop.task_names, lr.tolist(), seconds, train, val)
        outcome = [o if e is None else e for o, e in zip(outcome, pop.errors, strict=True)]
        logs = {i: o for i, o in zip(rows, outcome, strict=True) if isinstance(o, EpochLog)}
        ended: dict[int, BaseException | None] = {
            i: o for i, o in zip(rows, outcome, strict=True) if not isinstance(o, EpochLog)
        }
        pop.snapshot([r for r, i in enumerate(rows) if i in logs and progress[i].record(logs[i])])
        for i, log in logs.items():
            try:
                for cb in callbacks[i]:
                    cb(log)
            except Exception as exc:  # a pruning signal, say: this member ends, the rest go on
                ended[i] = exc
                continue
            if progress[i].out_of_patience() or epoch == n_epochs:
                ended[i] = None
        if on_epoch is not None:
            stops = on_epoch(EpochEvent(list(range(len(members))), epoch, logs, dict(ended)))
            ended.update({i: e for i, e in (stops or {}).items() if i in rows and i not in ended})
        for r, i in enumerate(rows):
            if i in ended:
                p = progress[i]
                results[i] = MemberResult(
                    p.history,
                    p.best_epoch,
                    p.best_val,
                    pop.best_state(r),
                    p.stopped_early,
                    time.perf_counter() - t0,
                    str(dev),
                    error=ended[i],
                )
        if ended:
            keep = [r for r, i in enumerate(rows) if i not in ended]
            rows = [rows[r] for r in keep]
            if not rows:
                break
            pop.keep(keep)

    out = []
    for i, model in enumerate(models):
        res = results[i]
        if res.error is not None:
            out.append((None, res))
            continue
        model.load_state_dict(res.best_state)
        out.append((model.to(dev), res))
    return out
