"""The peer reference: the Deep Markov Model of Pyro's ``examples/dmm.py`` (pyro-ppl/pyro),
written here with Pyro's API for timing side by side with vaelab's (``dmm_speed.py --vs-pyro``).

    python benchmarks/pyro_dmm.py --epochs 3 --threads 2     # needs: pip install -e .[bench]

What matches the example: the architecture (a gated transition, a 3-layer emitter giving
Bernoulli probabilities, a combiner fed by a backward ReLU Elman RNN over packed, per-sequence
reversed input, trainable z_0, z_q_0 and h_0, the transition's linear path starting at the
identity), the model and guide as Pyro programs (``pyro.sample`` per time step in a plate, masks
through ``.mask()``, KL annealing through ``poutine.scale``), ``Trace_ELBO`` (so the KL is a
one-sample Monte Carlo estimate), ``ClippedAdam`` and every default of its command line:
mini-batches of 20 from a plain shuffle each epoch, each sorted by length and trimmed to its
longest sequence, and the annealing factor's linear rise. The data are vaelab's packaged JSB
Chorales (``vaelab.data.load_jsb``), the same 229 training chorales that Pyro's loader reads;
``pyro.contrib.examples`` is not imported (its util module needs torchvision). With
``num_iafs > 0`` the guide shares one list of flows across time steps as the example does, so
their one-entry cache holds only the last step's sample and ``Trace_ELBO`` inverts the IAF
(one MADE pass per dimension) at every other step: the example's cost, reproduced.

Benchmark-only: nothing in ``vaelab/`` imports Pyro.
"""

from __future__ import annotations

import argparse
import time

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions.transforms import affine_autoregressive
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import ClippedAdam
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from vaelab.data import Data, load_jsb
from vaelab.nn import reverse_sequences

# The command-line defaults of Pyro's examples/dmm.py. ClippedAdam's "clip_norm" clamps each
# gradient element of the loss summed over the mini-batch; its weight decay acts on that sum.
PYRO_DEFAULTS = {
    "lr": 3e-4,
    "betas": (0.96, 0.999),
    "clip_norm": 10.0,
    "lr_decay": 0.99996,
    "weight_decay": 2.0,
    "batch_size": 20,
    "anneal_epochs": 1000,
    "min_anneal": 0.2,
    "epochs": 5000,
    "num_iafs": 0,
    "iaf_dim": 100,
}


class Emitter(nn.Module):
    """Returns the note probabilities of p(x_t | z_t): two ReLU layers, then a sigmoid."""

    def __init__(self, x_dim: int, z_dim: int, emission_dim: int) -> None:
        super().__init__()
        self.z_to_hidden = nn.Linear(z_dim, emission_dim)
        self.hidden_to_hidden = nn.Linear(emission_dim, emission_dim)
        self.hidden_to_x = nn.Linear(emission_dim, x_dim)

    def forward(self, z: Tensor) -> Tensor:
        h = torch.relu(self.hidden_to_hidden(torch.relu(self.z_to_hidden(z))))
        return torch.sigmoid(self.hidden_to_x(h))  # probabilities, as the example passes them


class GatedTransition(nn.Module):
    """Returns ``(loc, scale)`` of p(z_t | z_{t-1}): a sigmoid gate mixes a linear map of
    z_{t-1} (starting at the identity) with a non-linear proposal; the scale is a softplus of a
    linear map of the rectified proposal (no floor)."""

    def __init__(self, z_dim: int, transition_dim: int) -> None:
        super().__init__()
        self.gate_in = nn.Linear(z_dim, transition_dim)
        self.gate_out = nn.Linear(transition_dim, z_dim)
        self.proposal_in = nn.Linear(z_dim, transition_dim)
        self.proposal_out = nn.Linear(transition_dim, z_dim)
        self.z_to_scale = nn.Linear(z_dim, z_dim)
        self.z_to_loc = nn.Linear(z_dim, z_dim)
        with torch.no_grad():
            self.z_to_loc.weight.copy_(torch.eye(z_dim))
            self.z_to_loc.bias.zero_()

    def forward(self, z_prev: Tensor) -> tuple[Tensor, Tensor]:
        gate = torch.sigmoid(self.gate_out(torch.relu(self.gate_in(z_prev))))
        proposal = self.proposal_out(torch.relu(self.proposal_in(z_prev)))
        loc = (1 - gate) * self.z_to_loc(z_prev) + gate * proposal
        scale = nn.functional.softplus(self.z_to_scale(torch.relu(proposal)))
        return loc, scale


class Combiner(nn.Module):
    """Returns ``(loc, scale)`` of q(z_t | z_{t-1}, x_{t:T}) from
    ``h = 1/2 (tanh(W z_{t-1} + b) + h_rnn_t)``, with separate linear heads for loc and scale."""

    def __init__(self, z_dim: int, rnn_dim: int) -> None:
        super().__init__()
        self.z_to_hidden = nn.Linear(z_dim, rnn_dim)
        self.hidden_to_loc = nn.Linear(rnn_dim, z_dim)
        self.hidden_to_scale = nn.Linear(rnn_dim, z_dim)

    def forward(self, z_prev: Tensor, h_rnn: Tensor) -> tuple[Tensor, Tensor]:
        h = 0.5 * (torch.tanh(self.z_to_hidden(z_prev)) + h_rnn)
        return self.hidden_to_loc(h), nn.functional.softplus(self.hidden_to_scale(h))


class PyroDMM(nn.Module):
    """The DMM of Pyro's example: ``model`` and ``guide`` are Pyro programs over one mini-batch
    (from :func:`prepare_batch`), with the example's widths as defaults."""

    def __init__(
        self,
        x_dim: int = 88,
        z_dim: int = 100,
        emission_dim: int = 100,
        transition_dim: int = 200,
        rnn_dim: int = 600,
        num_iafs: int = 0,
        iaf_dim: int = 100,
    ) -> None:
        super().__init__()
        self.emitter = Emitter(x_dim, z_dim, emission_dim)
        self.transition = GatedTransition(z_dim, transition_dim)
        self.combiner = Combiner(z_dim, rnn_dim)
        # the example asks for dropout 0.1, which nn.RNN ignores with one layer: none here
        self.rnn = nn.RNN(x_dim, rnn_dim, nonlinearity="relu", batch_first=True)
        self.iafs = [affine_autoregressive(z_dim, hidden_dims=[iaf_dim]) for _ in range(num_iafs)]
        self.iaf_modules = nn.ModuleList(self.iafs)
        self.z_0 = nn.Parameter(torch.zeros(z_dim))  # p(z_1) = transition(z_0)
        self.z_q_0 = nn.Parameter(torch.zeros(z_dim))  # the guide's z_0
        self.h_0 = nn.Parameter(torch.zeros(1, 1, rnn_dim))

    def model(
        self,
        x: Tensor,
        x_rev: PackedSequence,
        mask: Tensor,
        lengths: Tensor,
        annealing: float = 1.0,
    ) -> None:
        """p(x_{1:T}, z_{1:T}) one step at a time; ``mask [B, T]`` bool drops the padding."""
        pyro.module("dmm", self)
        z_prev = self.z_0.expand(len(x), -1)
        with pyro.plate("sequences", len(x)):
            for t in pyro.markov(range(x.shape[1])):
                loc, scale = self.transition(z_prev)
                with poutine.scale(scale=annealing):  # the KL's weight
                    z = pyro.sample(
                        f"z_{t + 1}", dist.Normal(loc, scale).mask(mask[:, t : t + 1]).to_event(1)
                    )
                pyro.sample(
                    f"x_{t + 1}",
                    dist.Bernoulli(self.emitter(z)).mask(mask[:, t : t + 1]).to_event(1),
                    obs=x[:, t],
                )
                z_prev = z

    def guide(
        self,
        x: Tensor,
        x_rev: PackedSequence,
        mask: Tensor,
        lengths: Tensor,
        annealing: float = 1.0,
    ) -> None:
        """q(z_{1:T} | x_{1:T}): the backward RNN once, then the combiner step by step."""
        pyro.module("dmm", self)
        h_0 = self.h_0.expand(1, len(x), -1).contiguous()
        out, _ = self.rnn(x_rev, h_0)
        h_rnn, _ = pad_packed_sequence(out, batch_first=True)  # reversed time
        h_rnn = reverse_sequences(h_rnn, lengths)  # [B, T, R], forward time
        z_prev = self.z_q_0.expand(len(x), -1)
        with pyro.plate("sequences", len(x)):
            for t in pyro.markov(range(x.shape[1])):
                loc, scale = self.combiner(z_prev, h_rnn[:, t])
                with poutine.scale(scale=annealing):
                    if self.iafs:  # the flows correlate the dimensions: one event already
                        q_z = dist.TransformedDistribution(dist.Normal(loc, scale), self.iafs)
                        z = pyro.sample(f"z_{t + 1}", q_z.mask(mask[:, t]))
                    else:
                        z = pyro.sample(
                            f"z_{t + 1}",
                            dist.Normal(loc, scale).mask(mask[:, t : t + 1]).to_event(1),
                        )
                z_prev = z


def prepare_batch(
    data: Data, index: Tensor, device: torch.device | None = None
) -> tuple[Tensor, PackedSequence, Tensor, Tensor]:
    """The example's mini-batch: the sequences at ``index`` sorted by decreasing length and
    trimmed to the longest, ``(x [B, T, X], x reversed per sequence and packed, mask [B, T]
    bool, lengths [B])``."""
    lengths, order = torch.sort(data.lengths[index], descending=True)
    x = data.x[index[order], : int(lengths[0])]
    mask = torch.arange(x.shape[1]) < lengths[:, None]
    x_rev = reverse_sequences(x, lengths)
    if device is not None:
        x, x_rev, mask = x.to(device), x_rev.to(device), mask.to(device)
    return x, pack_padded_sequence(x_rev, lengths, batch_first=True), mask, lengths


def diverged(error: BaseException) -> bool:
    """Whether ``error`` is torch.distributions rejecting NaN/inf parameters (divergence)."""
    return isinstance(error, ValueError) and "found invalid values" in str(error)


def annealing_factor(
    epoch: int, batch: int, batches_per_epoch: int, anneal_epochs: int, min_anneal: float
) -> float:
    """The example's KL weight: a linear rise from ``min_anneal`` reaching 1 at the last
    mini-batch of epoch ``anneal_epochs - 1``, then 1."""
    if anneal_epochs <= 0 or epoch >= anneal_epochs:
        return 1.0
    done = epoch * batches_per_epoch + batch + 1
    return min_anneal + (1.0 - min_anneal) * done / (anneal_epochs * batches_per_epoch)


class PyroTraining:
    """Pyro's example's training loop on ``train``, one :meth:`epoch` at a time.

    Parameters
    ----------
    max_batches : int, optional
        Stop each epoch after this many mini-batches (tests).
    settings : keyword arguments
        Overrides of :data:`PYRO_DEFAULTS` (``num_iafs``, ``lr``, ...).
    """

    def __init__(
        self,
        train: Data,
        seed: int = 0,
        max_batches: int | None = None,
        device: str | torch.device = "cpu",
        **settings,
    ) -> None:
        unknown = set(settings) - set(PYRO_DEFAULTS)
        if unknown:
            raise ValueError(
                f"unknown Pyro settings {sorted(unknown)}; choose from {sorted(PYRO_DEFAULTS)}"
            )
        if not train.is_sequence:
            raise ValueError("the Pyro DMM trains on sequences [N, T, X]; pass piano rolls")
        if max_batches is not None and max_batches < 1:
            raise ValueError(f"max_batches must be >= 1 or None, got {max_batches}")
        self.s = {**PYRO_DEFAULTS, **settings}
        self.train, self.max_batches = train, max_batches
        self.device = torch.device(device)
        self.restart(seed)

    def restart(self, seed: int) -> None:
        """Fresh weights, optimiser and shuffle from ``seed``, at epoch 0 (after a divergence:
        the example's ReLU RNN sends some seeds to NaN within a few epochs)."""
        s = self.s
        pyro.clear_param_store()
        pyro.set_rng_seed(seed)
        self.dmm = PyroDMM(self.train.x_dim, num_iafs=s["num_iafs"], iaf_dim=s["iaf_dim"])
        self.dmm.to(self.device)
        optim = ClippedAdam(
            {
                "lr": s["lr"],
                "betas": s["betas"],
                "clip_norm": s["clip_norm"],
                "lrd": s["lr_decay"],
                "weight_decay": s["weight_decay"],
            }
        )
        self.svi = SVI(self.dmm.model, self.dmm.guide, optim, loss=Trace_ELBO())
        self.shuffle = torch.Generator().manual_seed(seed)
        self.epochs_done = 0

    def epoch(self) -> tuple[float, float]:
        """One training epoch; returns ``(seconds, loss per observed time step)``, the loss
        being the annealed -ELBO that ``svi.step`` minimises, as the example reports it.

        Raises
        ------
        ValueError
            From the distributions' argument checks when the weights have diverged to NaN
            (:func:`diverged` tells this apart; :meth:`restart` starts afresh).
        """
        s, train = self.s, self.train
        batches = train.num_batches(s["batch_size"])
        start = time.perf_counter()
        order = torch.randperm(len(train), generator=self.shuffle)
        total, steps = 0.0, 0
        for i, index in enumerate(order.split(s["batch_size"])):
            if self.max_batches is not None and i >= self.max_batches:
                break
            x, x_rev, mask, lengths = prepare_batch(train, index, self.device)
            a = annealing_factor(self.epochs_done, i, batches, s["anneal_epochs"], s["min_anneal"])
            total += self.svi.step(x, x_rev, mask, lengths, a)
            steps += int(lengths.sum())
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - start
        self.epochs_done += 1
        return seconds, total / steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-iafs", type=int, default=0)
    p.add_argument("--max-batches", type=int, default=None, help="mini-batches per epoch")
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    train, _, _ = load_jsb()
    run = PyroTraining(train, args.seed, args.max_batches, args.device, num_iafs=args.num_iafs)
    for e in range(args.epochs):
        seconds, loss = run.epoch()
        print(f"epoch {e}: {seconds:.3f} s, loss {loss:.4f} per observed step", flush=True)


if __name__ == "__main__":
    main()
