"""Checkers for notebook 04 (Deep Markov Model): per-sequence reversal of a padded batch, the
DMM's combiner, and the DMM's ELBO written as a loop over time.

Each checker builds random inputs (random weights, so that no module sits at its
initialisation), runs the student's function and compares it with the library
(:func:`vaelab.nn.reverse_sequences`, :class:`vaelab.dmm.Combiner`, :class:`vaelab.dmm.DMM`);
a disagreement that matches a typical mistake is named
(:class:`~vaelab.exercises.common.Mistake`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import torch
from torch import Tensor
from torch.nn.functional import softplus

from vaelab.data import Batch
from vaelab.dmm import Combiner
from vaelab.exercises.common import (
    Mistake,
    call_checked,
    check_close,
    check_padding_kept_out,
    check_shape,
    watch_module,
)
from vaelab.nn import reverse_sequences


def reversal_case(seed: int, batch: int = 4, steps: int = 6, features: int = 3) -> dict:
    """A padded batch ``x [B, T, F]`` (finite padding values) with ``lengths [B]`` (one full
    sequence, the others shorter) and the library's per-sequence reversal."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, steps, features, generator=g)
    lengths = torch.tensor(
        [steps] + [int(n) for n in torch.randint(1, steps, (batch - 1,), generator=g)]
    )
    if batch == steps:  # padding at every length: one sequence of each length 1..T, shuffled
        lengths = 1 + torch.randperm(steps, generator=g)
    return {"x": x, "lengths": lengths, "expected": reverse_sequences(x, lengths)}


def check_reverse_sequences(reverse: Callable) -> None:
    """Check ``reverse(x [B, T, F], lengths [B]) -> [B, T, F]``: every sequence reversed over
    its own length, padding left where it is, against :func:`vaelab.nn.reverse_sequences`."""
    name = "reverse"
    for seed, batch, steps in ((0, 4, 6), (1, 4, 6), (2, 7, 7)):  # the last: every length
        case = reversal_case(seed, batch, steps)
        x, lengths, expected = case["x"], case["lengths"], case["expected"]
        got = check_shape(
            name,
            call_checked(
                name,
                reverse,
                x.clone(),
                lengths.clone(),
                forbidden={
                    reverse_sequences: (
                        "vaelab.nn.reverse_sequences is the library's answer; build "
                        "the index and gather"
                    )
                },
            ),
            x.shape,
        )
        if got.dtype != x.dtype:
            raise Mistake(
                f"{name} returned {got.dtype} for {x.dtype} inputs: reversing moves "
                f"values, it does not change their dtype"
            )
        mask = torch.arange(x.shape[1]) < lengths[:, None]
        if torch.allclose(got, x.flip(1)):
            raise Mistake(
                f"{name} flipped the whole padded tensor (x.flip(1)): the padding "
                f"of a short sequence now comes first, so a forward RNN would read "
                f"it before the observed steps. Reverse each sequence over its own "
                f"length: out[b, t] = x[b, lengths[b] - 1 - t]"
            )
        if torch.allclose(got, x.flip(0)):
            raise Mistake(f"{name} reversed the batch axis (dim 0); reverse time (dim 1)")
        if torch.allclose(got, x):
            raise Mistake(f"{name} returned x unchanged")
        if torch.allclose(got[mask], expected[mask]) and not torch.allclose(
            got[~mask], expected[~mask]
        ):
            raise Mistake(
                f"{name} reverses the observed steps correctly but changes the "
                f"padding: leave out[b, t] = x[b, t] for t >= lengths[b], so that "
                f"reversing twice gives x back"
            )
        check_close(
            name,
            got,
            expected,
            hints={
                (
                    "the indices are off by one: out[b, t] = x[b, lengths[b] - 1 - t]"
                ): _shifted_reversal(x, lengths),
            },
        )


def _shifted_reversal(x: Tensor, lengths: Tensor) -> Tensor:
    """x[b, lengths[b] - t] (clamped into the sequence): the off-by-one reversal."""
    t = torch.arange(x.shape[1])
    index = (lengths[:, None] - t).clamp(max=x.shape[1] - 1)
    index = torch.where(t < lengths[:, None], index, t)
    return x.gather(1, index[..., None].expand_as(x))


def combiner_case(
    seed: int,
    batch: int = 6,
    z_dim: int = 3,
    rnn_dim: int = 5,
    min_scale: float = 1e-3,
    dtype: torch.dtype = torch.float64,
) -> dict:
    """A random :class:`vaelab.dmm.Combiner` and its inputs ``z_prev [B, Z]``,
    ``h_rnn [B, R]`` (in (-1, 1), like a tanh RNN's state), its weights ``W [R, Z]``,
    ``b [R]``, ``W_out [2Z, R]``, ``b_out [2Z]`` and the library's ``loc``, ``scale``, in
    float64 (a float32 case's values are rounded to float32 first)."""
    g = torch.Generator().manual_seed(seed)
    combiner = Combiner(z_dim, rnn_dim, min_scale).double()

    def randn(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype).double()

    with torch.no_grad():
        for p in combiner.parameters():
            p.copy_(randn(*p.shape))
        z_prev = randn(batch, z_dim)
        h_rnn = torch.tanh(2 * randn(batch, rnn_dim)).to(dtype).double()
        q = combiner(z_prev, h_rnn).base_dist
    return {
        "z_prev": z_prev,
        "h_rnn": h_rnn,
        "W": combiner.z_to_hidden.weight.detach(),
        "b": combiner.z_to_hidden.bias.detach(),
        "W_out": combiner.hidden_to_loc_scale.weight.detach(),
        "b_out": combiner.hidden_to_loc_scale.bias.detach(),
        "min_scale": min_scale,
        "loc": q.loc,
        "scale": q.scale,
    }


def check_combiner(combiner: Callable) -> None:
    """Check ``combiner(z_prev, h_rnn, W, b, W_out, b_out, min_scale) -> (loc, scale)``:
    ``h = 1/2 (tanh(W z_prev + b) + h_rnn)``, ``[loc | s] = W_out h + b_out``,
    ``scale = softplus(s) + min_scale``, against :class:`vaelab.dmm.Combiner`."""
    name = "combiner"
    for seed, batch, dtype in (
        (0, 6, torch.float64),
        (1, 6, torch.float64),
        (2, 5, torch.float32),
    ):
        case = combiner_case(seed, batch, dtype=dtype)
        z_prev, h_rnn, W, b, W_out, b_out, min_scale = (
            case[k] for k in ("z_prev", "h_rnn", "W", "b", "W_out", "b_out", "min_scale")
        )
        inputs = (t.to(dtype) for t in (z_prev, h_rnn, W, b, W_out, b_out))
        loc, scale = call_checked(
            name,
            combiner,
            *inputs,
            min_scale,
            outputs=2,
            forbidden_files={
                "dmm.py": "vaelab.dmm is the library's answer; "
                "write the combiner with torch "
                "operations"
            },
            shapes=f"\n(W is [R, Z] = {list(W.shape)} and W_out [2Z, R] = "
            f"{list(W_out.shape)}, as torch.nn.Linear stores them: for a "
            f"batch z_prev [B, Z], W z_prev + b is z_prev @ W.T + b)",
        )
        z_dim = case["loc"].shape[-1]

        def split(h: Tensor, W_out=W_out, b_out=b_out, z_dim=z_dim) -> tuple[Tensor, Tensor]:
            out = h @ W_out.T + b_out  # [B, 2Z] = [loc | pre-softplus scale]
            return out[:, :z_dim], out[:, z_dim:]

        tanh_z = torch.tanh(z_prev @ W.T + b)
        hidden = {
            "the 1/2 is missing: h = 1/2 (tanh(W z_prev + b) + h_rnn)": tanh_z + h_rnn,
            "the tanh is missing: h = 1/2 (tanh(W z_prev + b) + h_rnn)": 0.5
            * (z_prev @ W.T + b + h_rnn),
            "the 1/2 multiplies the tanh only: h = 1/2 (tanh(W z_prev + b) + h_rnn)": 0.5 * tanh_z
            + h_rnn,
            "the non-linearity is a tanh, not a relu: h = 1/2 (tanh(W z_prev + b) + h_rnn)": 0.5
            * (torch.relu(z_prev @ W.T + b) + h_rnn),
        }
        loc_hints = {k: split(h)[0] for k, h in hidden.items()}
        _, s = split(0.5 * (tanh_z + h_rnn))
        loc_hints["loc and the scale are swapped: the first Z outputs are the loc"] = s
        check_close(f"{name}'s loc", loc, case["loc"], dtype=dtype, hints=loc_hints)
        scale_hints = {k: softplus(split(h)[1]) + min_scale for k, h in hidden.items()}
        scale_hints.update(
            {
                "the softplus is missing: scale = softplus(s) + min_scale keeps it positive": s
                + min_scale,
                "the scale uses exp(s); vaelab uses softplus(s) + min_scale": s.exp() + min_scale,
                "the min_scale floor is missing: scale = softplus(s) + min_scale": softplus(s),
                "this is the variance, not the scale: Normal takes the standard deviation "
                "softplus(s) + min_scale, do not square it": (softplus(s) + min_scale) ** 2,
                "softplus was taken as the variance (Krishnan et al.'s choice, scale = "
                "sqrt(softplus(s) + min_scale^2)); here softplus gives the scale "
                "itself": torch.sqrt(softplus(s) + min_scale**2),
            }
        )
        check_close(f"{name}'s scale", scale, case["scale"], dtype=dtype, hints=scale_hints)


# ------------------------------------------------------- the DMM's ELBO, a loop over time (builds)


def dmm_case(seed: int, padding: str) -> dict:
    """A small random :class:`vaelab.dmm.DMM` (random weights), a padded batch of binary
    sequences ``x [B, T, X]`` with one sequence of length 1 and one of length T, its ``mask``,
    standard-normal ``noise [B, T, Z]`` and the library's ``elbo [B]`` along that path
    (closed-form KL). The padding holds NaN (``"nan"``) or finite values (``"finite"``)."""
    from vaelab.dmm import DMM, DMMConfig

    g = torch.Generator().manual_seed(seed)
    model = DMM(DMMConfig(x_dim=6, z_dim=3, emission_dim=8, transition_dim=8, rnn_dim=8))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))
    batch, steps = 4, 7
    lengths = torch.tensor([steps, 1, 4, 6])
    mask = torch.arange(steps) < lengths[:, None]
    x = torch.bernoulli(torch.full((batch, steps, 6), 0.4), generator=g)
    x[~mask] = float("nan") if padding == "nan" else 1.0
    noise = torch.randn(batch, steps, 3, generator=g)
    with torch.no_grad():
        expected = model.elbo(Batch(x, mask=mask), analytic_kl=True, noise=noise).elbo
    return {"model": model, "x": x, "mask": mask, "noise": noise, "elbo": expected}


def check_dmm_elbo(dmm_elbo: Callable) -> None:
    """Check ``dmm_elbo(model, x [B, T, X], mask [B, T], noise [B, T, Z]) -> [B]``: the guide's
    loop over time (combiner of the previous sample and the backward RNN's state, one
    reparameterised sample per step from ``noise``), the emitter's log-likelihood and the
    closed-form KL against the gated transition of the previous sample, summed over the
    observed steps; against :meth:`vaelab.dmm.DMM.elbo` on random models and padded batches
    (NaN and finite padding, lengths 1 to T)."""
    from vaelab.dmm import DMM

    name = "dmm_elbo"
    library = {
        DMM.elbo: "DMM.elbo is the library's answer; write the loop over time",
        DMM.forward: "DMM.forward is DMM.elbo, the library's answer",
        DMM.guide: "DMM.guide is the library's loop over time; write yours with model.combiner",
    }
    for seed, padding in ((0, "finite"), (1, "nan")):
        case = dmm_case(seed, padding)
        x, mask, noise, expected = (case[k] for k in ("x", "mask", "noise", "elbo"))
        got = call_checked(
            name,
            dmm_elbo,
            case["model"],
            x.clone(),
            mask.clone(),
            noise.clone(),
            forbidden=library,
            shapes=f"\n(x is [B, T, X] = {list(x.shape)}, mask [B, T], noise [B, T, Z] "
            f"= {list(noise.shape)}: step t uses x[:, t], mask[:, t] and "
            f"noise[:, t]; the padding may hold NaN, which a Bernoulli refuses: "
            f"score torch.where(mask[:, t, None], x[:, t], 0.0))",
        )
        got = check_padding_kept_out(
            name,
            got,
            expected.shape,
            ", and multiplying a step's terms by the mask gives 0 * NaN = NaN; keep the "
            "observed steps with torch.where(mask[:, t], ..., 0.0)",
        )
        check_close(name, got, expected)  # float32, as the model


__all__ = [
    "check_combiner",
    "check_dmm_elbo",
    "check_reverse_sequences",
    "combiner_case",
    "dmm_case",
    "reversal_case",
]

watch_module(sys.modules[__name__])
