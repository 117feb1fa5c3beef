"""The diffusion process of the DDGANs (:mod:`rbclib.synth.ddgan`), used by training and sampling.

The discretised VP schedule of Xiao, Kreis & Vahdat (ICLR 2022; Park et al. 2025, eqs. (1)-(9)):
forward noising q(x_t | x_0) and q(x_t | x_{t-1}), and draws from the posterior
q(x_{t-1} | x_t, x0).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class Schedule:
    """Discrete VP schedule; arrays indexed by t = 0..T (index 0: no noise).

    Attributes
    ----------
    betas : torch.Tensor
        (T + 1,) beta_t, 0 at t = 0.
    alpha_bars : torch.Tensor
        (T + 1,) cumulative products of 1 - beta_t.
    post_x0, post_xt : torch.Tensor
        (T + 1,) coefficients of x0 and x_t in the mean of q(x_{t-1} | x_t, x0) (derived).
    post_var : torch.Tensor
        (T + 1,) variance of q(x_{t-1} | x_t, x0) (derived; 0 at t = 1).
    """

    betas: torch.Tensor
    alpha_bars: torch.Tensor
    post_x0: torch.Tensor = field(init=False)
    post_xt: torch.Tensor = field(init=False)
    post_var: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        a, ab = 1.0 - self.betas, self.alpha_bars
        ab_prev = torch.cat([ab.new_ones(1), ab[:-1]])
        ab_prev[0] = 1.0
        denom = (1.0 - ab).clamp_min(1e-12)
        self.post_x0 = ab_prev.sqrt() * self.betas / denom
        self.post_xt = a.sqrt() * (1.0 - ab_prev) / denom
        self.post_var = self.betas * (1.0 - ab_prev) / denom
        self.post_x0[0], self.post_xt[0], self.post_var[0] = 1.0, 0.0, 0.0

    @property
    def n_steps(self) -> int:
        """Denoising steps T."""
        return len(self.betas) - 1

    def to(self, device: torch.device) -> "Schedule":
        """The same schedule with its tensors on ``device``.

        Parameters
        ----------
        device : torch.device
            Where the tensors go.

        Returns
        -------
        Schedule
            A new schedule.
        """
        return Schedule(self.betas.to(device), self.alpha_bars.to(device))


def make_schedule(n_steps: int, *, beta_min: float = 0.1, beta_max: float = 20.0) -> Schedule:
    """The discretised VP schedule of Xiao et al.

    beta_t = 1 - exp(-beta_min/T - 0.5 (beta_max - beta_min)(2t - 1)/T^2), t = 1..T.

    Parameters
    ----------
    n_steps : int
        T.
    beta_min, beta_max : float, optional
        The schedule's limits (defaults 0.1 and 20).

    Returns
    -------
    Schedule
        float32 tensors on the CPU.
    """
    t = torch.arange(1, n_steps + 1, dtype=torch.float64)
    betas = 1.0 - torch.exp(-beta_min / n_steps - 0.5 * (beta_max - beta_min) * (2 * t - 1) / n_steps**2)
    betas = torch.cat([torch.zeros(1, dtype=torch.float64), betas])
    alpha_bars = torch.cumprod(1.0 - betas, dim=0)
    return Schedule(betas.float(), alpha_bars.float())


def _bc(v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return v[t][:, None, None, None]


def q_sample(s: Schedule, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """x_t ~ q(x_t | x_0) = N(sqrt(abar_t) x0, (1 - abar_t) I).

    Parameters
    ----------
    s : Schedule
        The schedule.
    x0 : torch.Tensor
        (B, C, H, W) clean data.
    t : torch.Tensor
        (B,) steps in 0..T.
    noise : torch.Tensor
        Standard normal noise shaped as ``x0``.

    Returns
    -------
    torch.Tensor
        x_t, shaped as ``x0``.
    """
    return _bc(s.alpha_bars.sqrt(), t) * x0 + _bc((1.0 - s.alpha_bars).sqrt(), t) * noise


def q_step(s: Schedule, x_prev: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """x_t ~ q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I).

    Parameters
    ----------
    s : Schedule
        The schedule.
    x_prev : torch.Tensor
        (B, C, H, W) x_{t-1}.
    t : torch.Tensor
        (B,) steps in 1..T.
    noise : torch.Tensor
        Standard normal noise shaped as ``x_prev``.

    Returns
    -------
    torch.Tensor
        x_t, shaped as ``x_prev``.
    """
    return _bc((1.0 - s.betas).sqrt(), t) * x_prev + _bc(s.betas.sqrt(), t) * noise


def posterior_sample(s: Schedule, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor,
                     noise: torch.Tensor) -> torch.Tensor:
    """x_{t-1} ~ q(x_{t-1} | x_t, x0); deterministic (= x0) at t = 1.

    Parameters
    ----------
    s : Schedule
        The schedule.
    x0 : torch.Tensor
        (B, C, H, W) clean (or predicted) data.
    x_t : torch.Tensor
        (B, C, H, W) noisy data at step t.
    t : torch.Tensor
        (B,) steps in 1..T.
    noise : torch.Tensor
        Standard normal noise shaped as ``x0``.

    Returns
    -------
    torch.Tensor
        x_{t-1}, shaped as ``x0``.
    """
    mean = _bc(s.post_x0, t) * x0 + _bc(s.post_xt, t) * x_t
    return mean + _bc(s.post_var.sqrt(), t) * noise
