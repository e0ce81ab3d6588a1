"""The model protocol, written once: every model of vaelab subclasses :class:`Model` (static) or
:class:`SequentialModel` (sequences), fills in a few methods and inherits the rest.

The trainer, the plots, the CLI and the dashboard know a model only through what is declared
here and :data:`MODELS` (the registry that ``@register`` fills, next to each model). A
capability is an attribute or a method of the base with an honest default, never probed with
``hasattr`` or ``inspect`` (dynamax's state-space base is the example followed).

    Model                       elbo (abstract), sample, latents, reconstruct, kl_per_dim,
                                decode, importance_log_likelihood, incompatibility,
                                support_mismatch
    SequentialModel(Model)      check (masks), prior, posterior, the masked ELBO assembly and
                                ancestral sampling from four factors: initial_prior,
                                transition_prior, emission, guide
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, cast

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, Independent, Normal, kl_divergence

from vaelab.objectives import ELBOTerms, importance_log_likelihood, kl_term, masked_sum

if TYPE_CHECKING:
    from vaelab.data import Batch, Data

# name -> (Config, Model): what the CLI, the trainer's checkpoints and the dashboard list
MODELS: dict[str, tuple[type, type[Model]]] = {}


def register(cls: type[Model]) -> type[Model]:
    """Class decorator: adds ``cls`` to :data:`MODELS` under ``cls.name``. Adding a model is
    its file and this decorator; nothing else lists models."""
    if not (isinstance(cls, type) and issubclass(cls, Model)):
        raise TypeError(f"@register takes a subclass of vaelab.protocol.Model, got {cls!r}")
    if not cls.name or cls.Config is None:
        raise ValueError(
            f"{cls.__name__} needs the class attributes name and Config to be registered"
        )
    MODELS[cls.name] = (cls.Config, cls)
    return cls


def model_class(name: str) -> type[Model]:
    """The registered model class called ``name``; ValueError naming the choices otherwise."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    return MODELS[name][1]


def shift(a: Tensor) -> Tensor:
    """``a [B, T, A]`` one step later: ``out[:, t] = a[:, t - 1]``, zeros at t = 1 (a_0 = 0)."""
    return torch.cat([torch.zeros_like(a[:, :1]), a[:, :-1]], dim=1)


def is_binary(x: Tensor) -> bool:
    """True when every observed value of ``x`` is 0 or 1 (notes, binarised pixels)."""
    return bool(((x == 0) | (x == 1)).all())


MAX_LEVELS = 256  # data in [0, 1] with at most this many distinct values: pixels or notes


def discrete_levels(data: Data) -> int | None:
    """The number of distinct values of ``data.x`` when they all lie in [0, 1] and are at
    most :data:`MAX_LEVELS` (pixels, notes), else None (real-valued data)."""
    x = data.x
    if x.numel() == 0 or float(x.min()) < 0.0 or float(x.max()) > 1.0:
        return None
    levels = torch.unique(x).numel()
    return levels if levels <= MAX_LEVELS else None


class Model(nn.Module, ABC):
    """A latent-variable model trained by its ELBO (or, for a flow, its exact likelihood).

    Subclasses set the class attributes and implement :meth:`elbo`, :meth:`sample` and
    :meth:`latents`; everything else has a default that is true for them or says "not
    available" (None) where it is not.
    """

    name: ClassVar[str] = ""  # the registry key
    Config: ClassVar[Any] = None  # the model's dataclass config
    card: ClassVar[str] = ""  # markdown model card (what it is, its paper) for the dashboard
    preferred_data: ClassVar[str] = ""  # the built-in data set it is shown with first
    sequential: ClassVar[bool] = False  # x [B, T, X] with a mask; else x [B, X]
    has_latents: ClassVar[bool] = True  # False for a flow: its "latents" are base points
    unit: ClassVar[str] = "nats per example"  # what -ELBO / N is reported in
    train_defaults: ClassVar[dict] = {}  # TrainConfig overrides that suit the model
    # True when elbo(samples=S) shares the work that does not depend on the draw (the DMM's
    # backward RNN); otherwise forward repeats the batch S times
    shares_samples: ClassVar[bool] = False

    config: Any

    def forward(self, batch: Batch, samples: int = 1, **kw) -> ELBOTerms:
        """The ELBO terms of ``samples`` guide draws per example (``[S*B]``, sample-major as
        ``batch.repeat(S)``). Training calls the model through ``forward`` so that a
        DistributedDataParallel wrapper synchronises gradients; ``kw`` goes to :meth:`elbo`."""
        if samples < 1:
            raise ValueError(f"samples must be >= 1, got {samples}")
        if samples > 1 and self.shares_samples:
            # a model that sets shares_samples takes elbo(..., samples=S) (the DMM's does),
            # which the abstract signature cannot say
            elbo = cast("Callable[..., ELBOTerms]", self.elbo)
            return elbo(batch, samples=samples, **kw)
        return self.elbo(batch if samples == 1 else batch.repeat(samples), **kw)

    @abstractmethod
    def elbo(self, batch: Batch, analytic_kl: bool | None = None) -> ELBOTerms:
        """Returns the ELBO terms per example, ``[B]`` each, summed over time, unweighted."""

    @abstractmethod
    def sample(
        self, n: int, steps: int | None = None, a: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Returns ``(z, x)`` drawn from the model (x as the emission's mean)."""

    @abstractmethod
    def latents(self, batch: Batch) -> Tensor:
        """Returns the posterior means (``[B, Z]``, or ``[B, T, Z]`` for sequences)."""

    def reconstruct(self, batch: Batch) -> Tensor | None:
        """Returns E[x | z] at the posterior means, shaped like ``batch.x``; None when the
        model has no decoder to reconstruct with."""
        return None

    def kl_per_dim(self, batch: Batch) -> Tensor | None:
        """Returns the KL per latent dimension, ``[Z]``, averaged over examples (and observed
        steps); None when the model's KL does not split over dimensions (flows)."""
        return None

    def decode(self, z: Tensor) -> Tensor | None:
        """Returns E[x | z] for latents ``z [N, Z]`` (image traversals); None when the model
        has no static decoder."""
        return None

    @torch.no_grad()
    def importance_log_likelihood(
        self, batch: Batch, num_samples: int = 1000, chunk_size: int | None = None
    ) -> Tensor:
        """Returns the importance-sampled estimate of log p(x) per example, ``[B]``
        (:func:`vaelab.objectives.importance_log_likelihood`)."""
        return importance_log_likelihood(self, batch, num_samples, chunk_size)

    def figures(
        self, batch: Batch, info: dict | None = None, labels: Tensor | None = None
    ) -> dict[str, Any]:
        """The matplotlib figures that suit the model and its data, by title (the dashboard's
        "latents and samples" view): :func:`vaelab.plots.model_figures` unless a model adds
        its own."""
        from vaelab.plots import model_figures  # plots come after the models

        return model_figures(self, batch, info, labels)

    @property
    def continuous(self) -> bool:
        """True when the likelihood is a density over real values (a Gaussian, a flow), which
        is no likelihood for 0/1 data."""
        return False

    @torch.no_grad()
    def incompatibility(self, data: Data) -> str | None:
        """Why this model cannot train on ``data``, in a newcomer's words, or None when it
        can: the model's own checks on two examples (the dashboard's summary of what the
        trainer reports in detail), then :meth:`support_mismatch`."""
        batch = data.batch(torch.arange(min(2, len(data))))
        what = data.name.split("-")[0]
        try:
            terms = self.elbo(batch.to(next(self.parameters()).device))
        except (ValueError, RuntimeError, TypeError) as e:
            text = str(e)
            if "time axis" in text and not data.is_sequence:
                return (
                    f"{self.name} models sequences x [N, T, X]; {what} holds single vectors "
                    f"x [N, X]: pick a static model"
                )
            if data.is_sequence and "must be [B," in text:
                return (
                    f"{self.name} models single vectors x [N, X]; {what} holds sequences "
                    f"x [N, T, X]: pick a sequence model"
                )
            if "binary" in text or ("support" in text and "Bernoulli" in text):
                return f"{self.name}'s Bernoulli likelihood needs 0/1 data; {what} is real-valued"
            return f"{self.name} cannot train on {what}: {text}"
        if terms.log_likelihood.shape != (len(batch),):
            return f"{self.name}.elbo returned {list(terms.log_likelihood.shape)} terms, not [B]"
        return self.support_mismatch(data, batch)

    @torch.no_grad()
    def support_mismatch(self, data: Data, batch: Batch | None = None) -> str | None:
        """Why the likelihood cannot measure ``data``, or None: a density over real values
        refuses 0/1 data and data of at most :data:`MAX_LEVELS` levels in [0, 1] (grey-level
        pixels), where its log p(x) has no bound. ``batch``: two examples of ``data`` already
        drawn. The rule of the CLI (before training) and of the dashboard (in
        :meth:`incompatibility`)."""
        if not self.continuous:
            return None
        if batch is None:
            batch = data.batch(torch.arange(min(2, len(data))))
        what = data.name.split("-")[0]
        x = batch.x if batch.mask is None else batch.x[batch.mask]
        if is_binary(x):
            return (
                f"{self.name}'s likelihood is a density over real values; {what} holds 0/1 "
                f"values, where a density is unbounded and its nats measure nothing"
            )
        levels = discrete_levels(data)
        if levels is not None:
            return (
                f"{self.name} is a density over real numbers; {what} holds values in [0, 1] "
                f"with {levels} levels (pixels or notes), where a density's log p(x) has no "
                f"bound and its nats mean nothing: pick a model with a Bernoulli likelihood"
            )
        return None


class SequentialModel(Model):
    """A state-space model over sequences, with a guide: fill in the four factors

        initial_prior(n)                 p(z_1)
        transition_prior(z_prev, a_prev)  p(z_t | z_{t-1}, a_{t-1})
        emission(z, a_prev)              p(x_t | z_t[, a_{t-1}])
        guide(x, a, mask, noise)         z ~ q(z | x, a), with q's conditionals along z

    and inherit the input checks, the masked ELBO, the posterior means, the KL per
    dimension and ancestral sampling. Tensors are batch-first: ``x [B, T, X]``,
    ``a [B, T, A]`` (``a[:, t]`` is taken after ``x[:, t]``), ``mask [B, T]`` True on a prefix.
    """

    sequential = True
    unit = "nats per observed step"
    default_steps: ClassVar[int] = 20  # sample() without steps or actions
    # True when the model's inputs a_t are its own observations x_t (an augmented DMM reads
    # x_{t-1}): sampling then draws x_t step by step and feeds it back
    feeds_back_x: ClassVar[bool] = False

    @property
    def a_dim(self) -> int:
        """Width of the actions a_t; 0 for a model without actions."""
        return 0

    # ------------------------------------------------------------------ the four factors

    @abstractmethod
    def initial_prior(self, n: int) -> Distribution:
        """Returns p(z_1), batch ``[n]``, event ``[Z]``."""

    @abstractmethod
    def transition_prior(self, z_prev: Tensor, a_prev: Tensor) -> Distribution:
        """Returns p(z_t | z_{t-1}, a_{t-1}) for ``z_prev [..., Z]``, ``a_prev [..., A]``."""

    @abstractmethod
    def emission(self, z: Tensor, a_prev: Tensor) -> Distribution:
        """Returns p(x_t | z_t) for ``z [..., Z]``, event ``[X]``; ``a_prev [..., A]`` is
        a_{t-1} (0 at t = 1), which only an emission that reads the past uses."""

    @abstractmethod
    def guide(
        self, x: Tensor, a: Tensor, mask: Tensor, noise: Tensor | None = None
    ) -> tuple[Tensor, Distribution]:
        """Samples a path ``z [B, T, Z] ~ q(z | x, a)`` (reparameterised; ``noise [B, T, Z]``
        gives the standard-normal draws, zeros the path of the means) and returns it with
        q(z_t | ...) along it, batch ``[B, T]``."""

    # ------------------------------------------------------------------ inherited

    def check(self, batch: Batch) -> tuple[Tensor, Tensor, Tensor]:
        """Returns ``x [B, T, X]``, ``a [B, T, A]`` and ``mask [B, T]`` with the padding of x
        and a zeroed (it may hold anything, NaN too, and ``0 * NaN`` is NaN); raises
        ValueError naming the problem and the fix."""
        x, x_dim = batch.x, self.config.x_dim
        if x.dim() != 3 or x.shape[-1] != x_dim:
            fix = (
                "add a time axis"
                if x.dim() == 2
                else f"build the model with x_dim={x.shape[-1]}"
                if x.dim() == 3
                else "pass padded sequences"
            )
            raise ValueError(f"x must be [B, T, {x_dim}], got {list(x.shape)}; {fix}")
        size, steps = x.shape[:2]
        mask = batch.mask
        if mask is None:
            mask = torch.ones(size, steps, dtype=torch.bool, device=x.device)
        if mask.shape != (size, steps) or mask.dtype != torch.bool:
            raise ValueError(
                f"mask must be bool [B, T] = {[size, steps]}, got {mask.dtype} "
                f"{list(mask.shape)}; build it as t < lengths[:, None]"
            )
        lengths = mask.sum(dim=1)
        if int(lengths.min()) < 1:
            raise ValueError("every sequence needs at least one observed step; drop empty ones")
        if not torch.equal(mask, torch.arange(steps, device=x.device) < lengths[:, None]):
            raise ValueError(
                "mask must be True on a prefix of each sequence (padding at the "
                "end); shift the observed steps to the start"
            )
        a = batch.a
        if a is None:
            if self.a_dim > 0:
                raise ValueError(
                    f"this model takes actions: the batch needs a [B, T, "
                    f"{self.a_dim}], or build it with a_dim=0"
                )
            a = x.new_zeros(size, steps, 0)
        elif self.a_dim == 0 and a.shape[-1] > 0:
            raise ValueError(
                f"{self.name} takes no actions, and the batch has a "
                f"{list(a.shape)}: pick a model with actions (ssm), or drop them"
            )
        elif a.shape != (size, steps, self.a_dim):
            raise ValueError(
                f"a must be [{size}, {steps}, {self.a_dim}] like x, got "
                f"{list(a.shape)}; build the model with a_dim={a.shape[-1]}"
            )
        x = torch.where(mask[..., None], x, torch.zeros((), dtype=x.dtype, device=x.device))
        a = torch.where(mask[..., None], a, torch.zeros((), dtype=a.dtype, device=a.device))
        return x, a, mask

    def prior(self, z: Tensor, a: Tensor | None = None) -> Independent:
        """Returns p(z_1) and p(z_t | z_{t-1}, a_{t-1}) for t >= 2 along a path ``z [B, T, Z]``
        as one diagonal Gaussian, batch ``[B, T]``: the transition runs on every step in one
        call."""
        if a is None:
            a = z.new_zeros(*z.shape[:2], self.a_dim)
        p_1 = self.initial_prior(len(z))  # batch [B]
        p_t = self.transition_prior(z[:, :-1], a[:, :-1])  # batch [B, T - 1]
        loc = torch.cat([p_1.mean[:, None], p_t.mean], dim=1)
        scale = torch.cat([p_1.stddev[:, None], p_t.stddev], dim=1)
        return Independent(Normal(loc, scale), 1)

    def posterior(self, batch: Batch, sample: bool = True) -> tuple[Tensor, Distribution]:
        """Returns a path ``z [B, T, Z]`` from the guide (the path of its means when
        ``sample`` is False) and q(z_t | ...) along it, batch ``[B, T]``."""
        x, a, mask = self.check(batch)
        noise = None if sample else x.new_zeros(*x.shape[:2], self.config.z_dim)
        return self.guide(x, a, mask, noise)

    def elbo(
        self, batch: Batch, analytic_kl: bool | None = None, noise: Tensor | None = None
    ) -> ELBOTerms:
        """Returns the sequential ELBO per sequence, ``[B]`` each, summed over observed steps:

            ELBO = sum_t E_q[log p(x_t | z_t)] - E_q[KL(q(z_t | .) || p(z_t | z_{t-1}, a_{t-1}))]

        with one reparameterised path z ~ q (``noise [B, T, Z]`` fixes its draws); each KL in
        closed form given the sampled z_{t-1} (``analytic_kl``), else ``log q - log p``."""
        analytic = self.config.analytic_kl if analytic_kl is None else analytic_kl
        x, a, mask = self.check(batch)
        if noise is not None and noise.shape != (*x.shape[:2], self.config.z_dim):
            raise ValueError(
                f"noise must be {[*x.shape[:2], self.config.z_dim]}, got {list(noise.shape)}"
            )
        z, q_z = self.guide(x, a, mask, noise)  # [B, T, Z], q batch [B, T]
        log_px = self.emission(z, shift(a)).log_prob(x)  # [B, T], every step in one call
        kl = kl_term(q_z, self.prior(z, a), z, analytic)  # [B, T]
        return ELBOTerms(
            masked_sum(log_px, mask), masked_sum(kl, mask), mask.sum(dim=1).to(log_px.dtype)
        )

    @torch.no_grad()
    def latents(self, batch: Batch) -> Tensor:
        """Returns the guide's mean path ``[B, T, Z]`` (each z_t the mean given the previous
        one), 0 at padding."""
        z = self.posterior(batch, sample=False)[0]
        mask = self.check(batch)[2]
        return torch.where(mask[..., None], z, torch.zeros_like(z))

    @torch.no_grad()
    def reconstruct(self, batch: Batch) -> Tensor:
        """Returns E[x_t | z_t] at the guide's mean path, ``[B, T, X]``."""
        a = self.check(batch)[1]
        return self.emission(self.latents(batch), shift(a)).mean

    @torch.no_grad()
    def kl_per_dim(self, batch: Batch) -> Tensor | None:
        """Returns KL(q(z_t | .) || p(z_t | z_{t-1}, a_{t-1})) per latent dimension, ``[Z]``,
        averaged over observed steps along one sampled guide path; None when the guide is not
        a diagonal Gaussian (a flow's KL does not split over dimensions)."""
        x, a, mask = self.check(batch)
        z, q_z = self.guide(x, a, mask)
        if not (isinstance(q_z, Independent) and isinstance(q_z.base_dist, Normal)):
            return None
        kl = kl_divergence(q_z.base_dist, self.prior(z, a).base_dist)  # [B, T, Z]
        return kl[mask].mean(dim=0)

    @torch.no_grad()
    def sample(
        self, n: int, steps: int | None = None, a: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Ancestral sampling: returns ``(z [n, T, Z], x [n, T, X])`` with x the emission's
        mean, driven by actions ``a [n, T, A]`` (zeros when None). ``steps`` defaults to
        ``a``'s length, else :attr:`default_steps`."""
        p = next(self.parameters())
        if steps is None:
            steps = self.default_steps if a is None else a.shape[1]
        if n < 1 or steps < 1:
            raise ValueError(f"n and steps must be >= 1, got {n} and {steps}")
        if a is None:
            a = p.new_zeros(n, steps, self.a_dim)
        if a.shape != (n, steps, self.a_dim):
            raise ValueError(
                f"a must be [n, steps, {self.a_dim}] = [{n}, {steps}, "
                f"{self.a_dim}], got {list(a.shape)}"
            )
        if self.feeds_back_x:
            return self._sample_feeding_back(n, steps)
        zs = [self.initial_prior(n).sample()]
        for t in range(1, steps):
            zs.append(self.transition_prior(zs[-1], a[:, t - 1]).sample())
        z = torch.stack(zs, dim=1)  # [n, T, Z]
        return z, self.emission(z, shift(a)).mean

    def _sample_feeding_back(self, n: int, steps: int) -> tuple[Tensor, Tensor]:
        """Ancestral sampling where a_t is the sampled x_t: ``(z, x)`` with x the draws."""
        z_t = self.initial_prior(n).sample()
        x_prev = z_t.new_zeros(n, self.config.x_dim)  # x_0 = 0
        zs, xs = [], []
        for t in range(steps):
            if t > 0:
                z_t = self.transition_prior(z_t, x_prev).sample()
            x_prev = self.emission(z_t, x_prev).sample()  # fed to the next step
            zs.append(z_t)
            xs.append(x_prev)
        return torch.stack(zs, dim=1), torch.stack(xs, dim=1)
