"""Named presets: each builds a valid model and TrainConfig, unknown names say what exists, and
the values are what their docs say they reproduce."""

from __future__ import annotations

import math
from dataclasses import asdict

import pytest
import torch

from vaelab import MODELS
from vaelab.config import build_config, flat
from vaelab.data import Batch
from vaelab.dmm import DMM
from vaelab.dmm_variants import Compat
from vaelab.presets import PRESETS, apply_preset, preset_optimizer
from vaelab.train import Adam, ClippedAdam, TrainConfig


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_builds_a_valid_model_and_train_config(name):
    model_kw, train_kw = apply_preset(name)
    preset = PRESETS[name]
    assert preset.name == name and len(preset.doc) > 80  # says what it reproduces
    config_cls, model_cls = MODELS[preset.model_name]
    config = build_config(config_cls, model_kw)
    stored = flat(asdict(config))  # keyed as the preset keys them: compat.softplus_variance
    for field, value in model_kw.items():
        assert stored[field] == value
    # alone and over the model's own defaults, as the CLI layers them
    for train in (
        TrainConfig(**train_kw),
        TrainConfig(**{**model_cls.train_defaults, **train_kw}),
    ):
        for field, value in train_kw.items():
            assert getattr(train, field) == value
    model = model_cls(config)
    x = torch.bernoulli(torch.full((2, 3, config.x_dim), 0.3))
    terms = model.elbo(Batch(x, mask=torch.tensor([[True] * 3, [True, True, False]])))
    assert terms.elbo.shape == (2,) and torch.isfinite(terms.elbo).all()


def test_unknown_preset_names_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown preset 'pyr'.*'krishnan'.*'pyro'.*'quick'"):
        apply_preset("pyr")


def test_apply_preset_returns_fresh_dicts():
    model_kw, train_kw = apply_preset("krishnan")
    model_kw["emission_dim"], train_kw["lr"] = 1, 1.0
    assert apply_preset("krishnan") == (
        {
            "compat.softplus_variance": True,
            "compat.standard_initial_prior": True,
            "emission_dim": 200,
            "transition_dim": 400,
        },
        dict(PRESETS["krishnan"].train),
    )
    with pytest.raises(TypeError):  # the registry itself is read-only
        PRESETS["krishnan"].train["lr"] = 1.0


def test_pyro_preset_is_pyros_example_apart_from_what_its_doc_names():
    model_kw, train_kw = apply_preset("pyro")
    assert model_kw["rnn_nonlinearity"] == "relu" and model_kw["analytic_kl"] is False
    # ClippedAdam clamps elements of the summed loss's gradient and clips no norm
    assert preset_optimizer("pyro") == ClippedAdam(clip_value_sum=10.0)
    assert "clip_value_sum" not in train_kw and train_kw["clip_norm"] == math.inf
    assert train_kw["bucket_jitter"] == math.inf  # a plain shuffle
    # the settings the README's Pyro runs used: DMM.train_defaults
    for field in (
        "batch_size",
        "lr",
        "betas",
        "lr_decay",
        "anneal_epochs",
        "min_kl_weight",
        "weight_decay_sum",
        "epochs",
    ):
        assert train_kw[field] == DMM.train_defaults[field], field


def test_krishnan_preset_is_the_readmes_best_command():
    # the README's flags --anneal-epochs 417 --min-kl-weight 0.01 --lr 8e-4 --lr-decay 1
    # --softplus-variance --standard-initial-prior --emission-dim 200 --transition-dim 400,
    # over dmm_jsb.py's defaults (DMM.train_defaults)
    model_kw, train_kw = apply_preset("krishnan")
    train = TrainConfig(**{**DMM.train_defaults, **train_kw})
    assert (train.anneal_epochs, train.min_kl_weight, train.lr, train.lr_decay) == (
        417,
        0.01,
        8e-4,
        1.0,
    )
    expected = {
        **DMM.train_defaults,
        "anneal_epochs": 417,
        "min_kl_weight": 0.01,
        "lr": 8e-4,
        "lr_decay": 1.0,
        "epochs": 1300,
    }
    for field, value in expected.items():
        assert getattr(train, field) == value, field
    config = build_config(MODELS["dmm"][0], model_kw)
    assert config.rnn_nonlinearity == "tanh" and config.analytic_kl is True
    assert (config.emission_dim, config.transition_dim) == (200, 400)
    # Krishnan et al.'s parameterisation, on Pyro's Elman guide
    assert config.compat == Compat(softplus_variance=True, standard_initial_prior=True)


def test_preset_optimizer_is_plain_adam_unless_a_preset_reproduces_another_optimiser():
    assert preset_optimizer(None) == Adam() == preset_optimizer("krishnan")
    assert preset_optimizer("quick") == Adam()
    with pytest.raises(ValueError, match=r"unknown preset 'nosuch'; choose one of"):
        preset_optimizer("nosuch")


def test_the_deep_made_preset_differs_from_krishnan_aug_made_only_in_its_emission():
    """krishnan-aug-made-deep is the measured command: the MADE preset with two hidden
    layers of 400 units and direct connections, nothing else changed."""
    base_model, base_train = apply_preset("krishnan-aug-made")
    model_kw, train_kw = apply_preset("krishnan-aug-made-deep")
    assert train_kw == base_train
    assert model_kw == {**base_model, "made_dim": 400, "made_layers": 2, "made_direct": True}
    assert PRESETS["krishnan-aug-made-deep"].model_name == "dmm_aug"
    config_cls, model_cls = MODELS["dmm_aug"]
    made = model_cls(build_config(config_cls, model_kw)).emitter.made
    assert len(made.layers) == 2 and made.direct is not None
