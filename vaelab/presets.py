"""Named settings for the DMM, so that the README and the benchmarks name a preset, not a
flag string: ``apply_preset("krishnan")`` gives the model-config and TrainConfig overrides.

    model_kw, train_kw = apply_preset("pyro")
    model = DMM(build_config(DMMConfig, model_kw))
    config = TrainConfig(**{**DMM.train_defaults, **train_kw})
    fit(model, train, val, config, optimizer=preset_optimizer("pyro"))

Each preset's ``doc`` says what it reproduces. A preset's values are defaults: settings given
explicitly (a command-line flag, ``--set``) go on top of them. Model settings are keyed as
``--set`` takes them: the comparison-only ones in ``DMMConfig.compat``
(:mod:`vaelab.dmm_variants`) as ``compat.softplus_variance`` and so on
(:func:`vaelab.config.build_config` builds the config).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from vaelab.train.optim import Adam, ClippedAdam


@dataclass(frozen=True)
class Preset:
    """A named set of overrides for one model's config (``model``) and for
    :class:`vaelab.train.TrainConfig` (``train``), with ``doc`` saying what it reproduces, and
    the optimiser recipe ``optimizer`` (:mod:`vaelab.train.optim`) it trains with."""

    name: str
    doc: str
    model: MappingProxyType = field(default_factory=lambda: MappingProxyType({}))
    train: MappingProxyType = field(default_factory=lambda: MappingProxyType({}))
    model_name: str = "dmm"  # the MODELS entry whose config ``model`` overrides
    optimizer: Adam = field(default_factory=Adam)


def _preset(
    name: str,
    doc: str,
    model: dict[str, Any],
    train: dict[str, Any],
    optimizer: Adam | None = None,
    model_name: str = "dmm",
) -> Preset:
    return Preset(
        name,
        " ".join(doc.split()),
        MappingProxyType(model),
        MappingProxyType(train),
        model_name=model_name,
        optimizer=optimizer or Adam(),
    )


# Pyro's examples/dmm.py, whose training defaults are also DMM.train_defaults; repeated here so
# that a preset states every setting it depends on
_PYRO_TRAIN = {
    "epochs": 5000,
    "batch_size": 20,
    "lr": 3e-4,
    "betas": (0.96, 0.999),
    "lr_decay": 0.99996,
    "anneal_epochs": 1000,
    "min_kl_weight": 0.2,
    "weight_decay_sum": 2.0,
}
_PYRO_WIDTHS = {"z_dim": 100, "emission_dim": 100, "transition_dim": 200, "rnn_dim": 600}

# Krishnan et al.'s settings (the krishnan preset), shared by the augmented models' presets
_KRISHNAN_MODEL = {
    "compat.softplus_variance": True,
    "compat.standard_initial_prior": True,
    "emission_dim": 200,
    "transition_dim": 400,
}
_KRISHNAN_TRAIN = {
    **_PYRO_TRAIN,
    "epochs": 1300,
    "lr": 8e-4,
    "lr_decay": 1.0,
    "anneal_epochs": 417,
    "min_kl_weight": 0.01,
    "clip_norm": 10.0,
}

PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        _preset(
            "pyro",
            """Pyro's examples/dmm.py on JSB with every default of its command line:
        a ReLU backward RNN, the one-sample Monte Carlo KL (Trace_ELBO), ClippedAdam (lr 3e-4,
        betas 0.96/0.999, decay 0.99996 per step, L2 2.0 and an element-wise gradient clamp at
        10 on the batch's summed loss, no norm clip), KL weight from 0.2 rising over 1000
        epochs, mini-batches of 20 from a plain shuffle, 5000 epochs. What stays ours: the
        scale floor min_scale (Pyro has none, and its softplus underflowing to 0 ended runs),
        Adam's epsilon on a per-step loss, and the KL weight's rise lagging Pyro's by one
        step.""",
            {**_PYRO_WIDTHS, "rnn_nonlinearity": "relu", "analytic_kl": False},
            {**_PYRO_TRAIN, "clip_norm": math.inf, "bucket_jitter": math.inf},
            ClippedAdam(clip_value_sum=10.0),
        ),
        _preset(
            "krishnan",
            """The README's best flow-free JSB settings: Krishnan, Shalit & Sontag
        (2017, arXiv:1609.09869)'s learning rate (8e-4, constant), parameterisation (softplus
        gives the variance; p(z_1) = N(0, I), the guide starting from z_0 = 0), hidden widths
        (emission 200, transition 400) and annealing (KL weight from 0.01 over 417 epochs,
        their 5000 updates), on the defaults' Elman tanh guide with the closed-form KL and
        Pyro's optimiser otherwise (benchmarks/dmm_jsb.py's defaults). 1300 epochs: the
        README's test -ELBO 6.941 and IS NLL 6.526 (K=2000), seed 0, at epoch 1300; nothing in
        the schedule depends on the total, so --epochs only moves the stop.""",
            {
                "compat.softplus_variance": True,
                "compat.standard_initial_prior": True,
                "emission_dim": 200,
                "transition_dim": 400,
            },
            {
                **_PYRO_TRAIN,
                "epochs": 1300,
                "lr": 8e-4,
                "lr_decay": 1.0,
                "anneal_epochs": 417,
                "min_kl_weight": 0.01,
                "clip_norm": 10.0,
            },
        ),
        _preset(
            "krishnan-aug",
            """The krishnan preset on the augmented DMM (dmm_aug): the
        previous step's notes x_{t-1} feed the transition and the emission, as Krishnan et
        al.'s DMM-Aug (their --use_prev_input and conditional emission), whose JSB test figures
        are -ELBO 6.773 and IS NLL 6.288.""",
            {**_KRISHNAN_MODEL},
            {**_KRISHNAN_TRAIN},
            model_name="dmm_aug",
        ),
        _preset(
            "krishnan-aug-made",
            """krishnan-aug with an emission autoregressive over the 88
        notes (a MADE with 200 hidden units reading [z_t, x_{t-1}]), Krishnan et al.'s DMM-Aug
        with a NADE emission: JSB test -ELBO 5.335, IS NLL 5.118.""",
            {**_KRISHNAN_MODEL, "emission": "made", "made_dim": 200},
            {**_KRISHNAN_TRAIN},
            model_name="dmm_aug",
        ),
        _preset(
            "krishnan-aug-made-deep",
            """krishnan-aug-made with a deeper emission: two hidden
        layers of 400 units and direct connections from the earlier notes to each note's logit.
        1300 epochs, seed 0, best validation epoch: JSB test -ELBO 5.242 and IS NLL 5.057
        (K=2000), against Krishnan et al.'s NADE emission's 5.335 and 5.118
        (benchmarks/README.md).""",
            {
                **_KRISHNAN_MODEL,
                "emission": "made",
                "made_dim": 400,
                "made_layers": 2,
                "made_direct": True,
            },
            {**_KRISHNAN_TRAIN},
            model_name="dmm_aug",
        ),
        _preset(
            "quick",
            """A small DMM for notebooks and the dashboard, reproducing no
        published figure: widths z 16, emission 32, transition 32, RNN 64, Adam at 1e-3
        without decay, KL weight from 0.2 over 5 epochs, 20 epochs of mini-batches of 20: a
        first look at JSB's training curves. Measured with benchmarks/dmm_jsb.py --preset quick
        on one thread of the 2-core CPU (loaded): 13 s of training, test -ELBO 11.40 (5
        samples), far from the full settings' 6.9-7.0.""",
            {"z_dim": 16, "emission_dim": 32, "transition_dim": 32, "rnn_dim": 64},
            {
                "epochs": 20,
                "batch_size": 20,
                "lr": 1e-3,
                "lr_decay": 1.0,
                "anneal_epochs": 5,
                "min_kl_weight": 0.2,
                "weight_decay_sum": 0.0,
            },
        ),
    )
}


def apply_preset(name: str) -> tuple[dict, dict]:
    """Returns ``(model_overrides, train_overrides)`` of the preset ``name``: fresh dicts of
    model-config and :class:`~vaelab.train.TrainConfig` fields, for the caller to put under
    any explicitly given settings.

    Raises
    ------
    ValueError
        If ``name`` is not in :data:`PRESETS`; the message names the known presets.
    """
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    preset = PRESETS[name]
    return dict(preset.model), dict(preset.train)


def preset_optimizer(name: str | None) -> Adam:
    """The optimiser recipe of preset ``name`` for :func:`vaelab.train.fit`'s ``optimizer``
    (plain :class:`~vaelab.train.optim.Adam` for None and for presets that change none).

    Raises
    ------
    ValueError
        If ``name`` is not in :data:`PRESETS`; the message names the known presets.
    """
    if name is None:
        return Adam()
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name].optimizer
