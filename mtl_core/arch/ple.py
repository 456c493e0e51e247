"""PLE: Progressive Layered Extraction (Tang et al., RecSys 2020).

Tang, Liu, Zhao and Gong, "Progressive Layered Extraction (PLE): A Novel
Multi-Task Learning (MTL) Model for Personalized Recommendations", RecSys 2020.
Each task gets experts of its own besides the shared ones, so a task can keep
what the others would disturb (the paper's "seesaw phenomenon"); stacking
extraction layers lets the shared representation be refined level by level.
"""

from __future__ import annotations

import torch
from torch import nn

from mtl_core.arch.base import ARCHS, Architecture, mlp, tower
from mtl_core.config import ModelConfig


def _experts(in_dim: int, n: int, cfg: ModelConfig) -> tuple[nn.ModuleList, int]:
    """``n`` MLPs of ``cfg.hidden`` and their output width."""
    blocks = [mlp(in_dim, cfg) for _ in range(n)]
    return nn.ModuleList(block for block, _ in blocks), blocks[0][1]


def _run(experts: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
    """``x`` (B, D) through every expert: (B, E, H)."""
    return torch.stack([e(x) for e in experts], dim=1)


def _mix(weights: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
    """Gate ``weights`` (B, E) times expert outputs (B, E, H): (B, H)."""
    return torch.einsum("be,beh->bh", weights, experts)


class Extraction(nn.Module):
    """One extraction layer, a CGC (the paper's Section 4.2, Eq. 2-5).

    Each task's experts read that task's input, and the shared experts read the
    shared input. Task ``t``'s gate, on ``t``'s input, mixes ``t``'s experts then
    the shared ones; the shared gate, on the shared input, mixes the shared
    experts then every task's, in task order.

    Args:
        in_dim: Width of this level's inputs (every task's and the shared one).
        tasks: Task names, in order.
        cfg: ``n_experts`` (shared), ``n_task_experts`` (per task), expert layers ``hidden``.
        shared_gate: Build the shared gate; every level has one except the top.
    """

    def __init__(self, in_dim: int, tasks: list[str], cfg: ModelConfig, shared_gate: bool) -> None:
        super().__init__()
        n_s, n_t = cfg.n_experts, cfg.n_task_experts
        self.shared, self.out_dim = _experts(in_dim, n_s, cfg)
        self.task_experts = nn.ModuleDict({t: _experts(in_dim, n_t, cfg)[0] for t in tasks})
        self.task_gates = nn.ModuleDict({t: nn.Linear(in_dim, n_t + n_s) for t in tasks})
        self.shared_gate = nn.Linear(in_dim, n_s + len(tasks) * n_t) if shared_gate else None

    def gate_weights(
        self, xs: dict[str, torch.Tensor], s: torch.Tensor
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        """Softmax weights: ``{task: (B, n_task_experts + n_experts)}`` and the shared gate's.

        The shared gate's are (B, n_experts + T * n_task_experts), or None at the top level.
        """
        task_w = {t: gate(xs[t]).softmax(dim=-1) for t, gate in self.task_gates.items()}
        shared_w = None if self.shared_gate is None else self.shared_gate(s).softmax(dim=-1)
        return task_w, shared_w

    def forward(
        self, xs: dict[str, torch.Tensor], s: torch.Tensor
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        """Task inputs ``{task: (B, D)}`` and shared input (B, D) -> the same, (B, H) wide.

        The shared output is None at the top level, which has no shared gate.
        """
        task_w, shared_w = self.gate_weights(xs, s)
        shared = _run(self.shared, s)  # (B, Es, H)
        own = {t: _run(experts, xs[t]) for t, experts in self.task_experts.items()}  # (B, Et, H)
        ys = {t: _mix(task_w[t], torch.cat([own[t], shared], dim=1)) for t in own}
        if shared_w is None:
            return ys, None
        every = torch.cat([shared, *own.values()], dim=1)  # (B, Es + T * Et, H)
        return ys, _mix(shared_w, every)


@ARCHS.register("ple")
class PLE(Architecture):
    """``cfg.n_levels`` extraction layers (:class:`Extraction`), then a tower per task.

    The first level's task and shared inputs are all the encoded input; each
    level's task outputs feed the same task's experts and gate in the next, and
    its shared-gate output feeds the next level's shared experts and gate.

    Sharing follows what each task's output depends on. Shared experts and shared
    gates are shared; towers belong to their task. A task's experts and gate are
    its own at the top level, and so is its gate one level below (it feeds only the
    task's top-level experts and gate). Deeper down they reach a shared gate (a
    task's experts feed their level's; its gate feeds the next level's task experts,
    which feed theirs), so every task depends on them and they count as shared.
    With one level (the default), each task's experts, gate and tower are its own.

    Args:
        in_dim: Width of the encoded input.
        out_dims: Output units per task, in task order.
        cfg: ``n_levels``, ``n_experts`` (shared per level), ``n_task_experts`` (per
            task per level), expert layers ``hidden``, towers ``head_hidden``.
    """

    def __init__(self, in_dim: int, out_dims: dict[str, int], cfg: ModelConfig) -> None:
        super().__init__(in_dim, out_dims, cfg)
        tasks, width = list(out_dims), in_dim
        self.levels = nn.ModuleList()
        for k in range(cfg.n_levels):
            self.levels.append(Extraction(width, tasks, cfg, shared_gate=k < cfg.n_levels - 1))
            width = self.levels[-1].out_dim
        self.heads = nn.ModuleDict({t: tower(width, n, cfg) for t, n in out_dims.items()})

    def forward(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        """``z`` (B, in_dim) -> every level -> ``{task: (B, out_dim)}`` through its tower."""
        xs, s = dict.fromkeys(self.heads, z), z
        for level in self.levels:
            xs, s = level(xs, s)
        return {t: head(xs[t]) for t, head in self.heads.items()}

    def gate_weights(
        self, z: torch.Tensor
    ) -> list[tuple[dict[str, torch.Tensor], torch.Tensor | None]]:
        """Every level's :meth:`Extraction.gate_weights`, bottom first, for inspection."""
        xs, s, out = dict.fromkeys(self.heads, z), z, []
        for level in self.levels:
            out.append(level.gate_weights(xs, s))
            xs, s = level(xs, s)
        return out

    def _task_modules(self, task: str) -> list[nn.Module]:
        # Lower down, a task's experts and gates reach a shared gate (see the class docstring).
        top = len(self.levels) - 1
        mods = [self.heads[task]]
        for k, level in enumerate(self.levels):
            if k == top:
                mods.append(level.task_experts[task])
            if k >= top - 1:
                mods.append(level.task_gates[task])
        return mods

    def shared_parameters(self) -> list[nn.Parameter]:
        """Shared experts and gates, and the task experts and gates every task depends on."""
        own = {id(p) for t in self.heads for p in self.task_parameters(t)}
        return [p for p in self.parameters() if id(p) not in own]

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        """``task``'s tower, its top-level experts, and its gates in the top two levels."""
        return [p for m in self._task_modules(task) for p in m.parameters()]
