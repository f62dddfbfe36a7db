"""Running observation normalization, as SB3's ``VecNormalize`` does it.

``y = clip((x - mean) / sqrt(var + eps), -clip, clip)`` with the mean and variance of every
observation the training envs returned so far (Chan et al.'s parallel update, in float64). Defaults
``eps=1e-8``, ``clip=10`` and the initial pseudo-count ``1e-4`` are SB3's (``RunningMeanStd``,
``VecNormalize(clip_obs=10.0, epsilon=1e-8)``).

The replay buffer stores *raw* observations and batches are normalized when sampled (SB3 does the
same with ``ReplayBuffer.sample(env=vec_normalize)``): early transitions were collected while the
statistics were still moving, and normalizing them at insert time would freeze them in stale units.
The cost is two elementwise ops on a [B, obs_dim] batch per update.

The module is self-contained for export: buffers ``mean``, ``var`` (float64) and ``count``,
attributes ``eps`` and ``clip``, and a ``forward`` that ``torch.jit.script`` accepts.
"""

from __future__ import annotations

from typing import Any, Sequence, Union

import numpy as np
import torch
from torch import nn


def standardize(obs: torch.Tensor, mean: torch.Tensor, var: torch.Tensor, eps: float, clip: float) -> torch.Tensor:
    """(obs - mean) / sqrt(var + eps), clipped to ±clip (0: no clip), in ``obs``'s dtype with the
    statistics' float64 std rounded once to it: what training, the exported module and the C++
    runtime all compute."""
    std = torch.sqrt(torch.as_tensor(var, dtype=torch.float64) + eps)
    y = (obs - torch.as_tensor(mean, dtype=torch.float64).to(obs.dtype)) / std.to(obs.dtype)
    return torch.clamp(y, -clip, clip) if clip > 0 else y


class RunningNormalizer(nn.Module):
    def __init__(
        self, shape: Union[int, Sequence[int]], eps: float = 1e-8, clip: float = 10.0, initial_count: float = 1e-4
    ):
        super().__init__()
        shape = (int(shape),) if isinstance(shape, (int, np.integer)) else tuple(int(s) for s in shape)
        if not eps > 0 or not clip > 0:
            raise ValueError(f"eps and clip must be > 0, got eps={eps}, clip={clip}")
        self.eps = float(eps)
        self.clip = float(clip)
        self.register_buffer("mean", torch.zeros(shape, dtype=torch.float64))
        self.register_buffer("var", torch.ones(shape, dtype=torch.float64))
        # A tiny pseudo-count (SB3's epsilon) makes the first update replace the initial (0, 1) stats.
        self.register_buffer("count", torch.tensor(float(initial_count), dtype=torch.float64))

    @torch.no_grad()
    def update(self, x: Union[np.ndarray, torch.Tensor]) -> None:
        """Fold a batch ``x`` of shape [N, *shape] into the running statistics."""
        if not isinstance(x, torch.Tensor):
            # float64 numpy either way; a read-only array (a Ray worker's chunk, zero-copy from the
            # object store) is copied by the conversion instead of being wrapped.
            a = np.asarray(x, dtype=np.float64)
            x = torch.from_numpy(a if a.flags.writeable else a.copy())
        x = x.to(self.mean.device, torch.float64).reshape(-1, *self.mean.shape)
        n = x.shape[0]
        if n == 0:
            return
        batch_mean = x.mean(0)
        batch_var = x.var(0, unbiased=False)
        # Chan, Golub & LeVeque (1979): merge (mean, M2, count) of two sets without revisiting them.
        delta = batch_mean - self.mean
        total = self.count + n
        m2 = self.var * self.count + batch_var * n + delta.square() * self.count * n / total
        self.mean += delta * n / total
        self.var.copy_(m2 / total)
        self.count.copy_(total)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return standardize(obs, self.mean, self.var, self.eps, self.clip)

    def normalize(self, obs: Union[np.ndarray, torch.Tensor]) -> torch.Tensor:
        """``forward`` on a numpy array or tensor, returned as a float32 tensor on this module's device."""
        return self(torch.as_tensor(obs, dtype=torch.float32, device=self.mean.device))

    # Plain-dict form for checkpoints and model files (loadable with torch.load(weights_only=True)).
    def to_dict(self) -> dict[str, Any]:
        return {
            "mean": self.mean.detach().cpu().clone(),
            "var": self.var.detach().cpu().clone(),
            "count": self.count.detach().cpu().clone(),
            "eps": self.eps,
            "clip": self.clip,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunningNormalizer":
        mean = torch.as_tensor(d["mean"], dtype=torch.float64)
        norm = cls(tuple(mean.shape), eps=float(d["eps"]), clip=float(d["clip"]))
        norm.mean.copy_(mean)
        norm.var.copy_(torch.as_tensor(d["var"], dtype=torch.float64))
        norm.count.copy_(torch.as_tensor(d["count"], dtype=torch.float64))
        return norm

    def extra_repr(self) -> str:
        return f"shape={tuple(self.mean.shape)}, eps={self.eps}, clip={self.clip}, count={float(self.count):.0f}"
