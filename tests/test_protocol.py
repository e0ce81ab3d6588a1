"""The model protocol (vaelab.protocol): every registered model honours it, and adding a model is
one file: a small sequence model defined here, registered with @register, trains through
``fit``, checkpoints, resumes and is listed by the CLI, without touching any other file."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch import Tensor, nn
from torch.distributions import Independent, Normal

from tests.test_gpu import SMALL
from vaelab import MODELS, Model, SequentialModel, live, register
from vaelab.__main__ import main
from vaelab.config import make_model
from vaelab.data import Data, load_digits
from vaelab.datasets import load_dataset
from vaelab.distributions import BernoulliLogits, DiagGaussian
from vaelab.train import TrainConfig, fit, load_checkpoint, load_model

# every model small, on the data set it is shown with first (shared with the CUDA tests)


# ----------------------------------------------------------------------------- a new model


@dataclass
class ToyConfig:
    x_dim: int = 88
    z_dim: int = 3
    hidden_dim: int = 16
    analytic_kl: bool = True

    def __post_init__(self) -> None:
        if self.z_dim < 1 or self.hidden_dim < 1:
            raise ValueError(
                f"z_dim and hidden_dim must be >= 1, got {self.z_dim}, {self.hidden_dim}"
            )


class Toy(SequentialModel):
    """A filtering state-space model over binary notes, written as a course exercise would:
    the four factors and nothing else."""

    name = "toy_ssm"
    Config = ToyConfig
    card = "**A toy sequence model** defined in tests/test_protocol.py."
    preferred_data = "jsb"

    def __init__(self, config: ToyConfig) -> None:
        super().__init__()
        self.config = c = config
        self.z_0 = nn.Parameter(torch.zeros(c.z_dim))
        self.transition = DiagGaussian(c.z_dim, c.z_dim, [c.hidden_dim], nn.Tanh)
        self.emitter = BernoulliLogits(c.z_dim, c.x_dim, [c.hidden_dim], nn.Tanh)
        self.combiner = DiagGaussian(c.z_dim + c.x_dim, c.z_dim, [c.hidden_dim], nn.Tanh)

    def initial_prior(self, n: int) -> Independent:
        return self.transition(self.z_0.expand(n, -1))

    def transition_prior(self, z_prev: Tensor, a_prev: Tensor) -> Independent:
        return self.transition(z_prev)

    def emission(self, z: Tensor, a_prev: Tensor) -> Independent:
        return self.emitter(z)

    def guide(self, x, a, mask, noise=None):
        if noise is None:
            noise = torch.randn(*x.shape[:2], self.config.z_dim)
        z_prev, zs, locs, scales = self.z_0.expand(len(x), -1), [], [], []
        for t in range(x.shape[1]):
            q_t = self.combiner(z_prev, x[:, t])
            z_prev = q_t.mean + q_t.stddev * noise[:, t]
            zs.append(z_prev)
            locs.append(q_t.mean)
            scales.append(q_t.stddev)
        q_z = Independent(Normal(torch.stack(locs, 1), torch.stack(scales, 1)), 1)
        return torch.stack(zs, 1), q_z


@pytest.fixture
def toy_registered():
    register(Toy)
    yield Toy
    del MODELS[Toy.name]


def test_a_model_defined_in_one_file_trains_checkpoints_resumes_and_is_listed(
    toy_registered, tmp_path, capsys
):
    train, val, _ = load_dataset("jsb")
    train = train.subset(slice(0, 40))
    model = make_model("toy_ssm", train, {})
    assert isinstance(model, SequentialModel) and model.unit == "nats per observed step"
    config = TrainConfig(
        epochs=2, batch_size=20, lr=3e-3, out_dir=str(tmp_path / "a"), progress=False, eval_every=1
    )
    history = fit(model, train, val.subset(slice(0, 10)), config)
    losses = [r["loss"] for r in history if r["kind"] == "train"]
    assert len(losses) == 4 and losses[-1] < losses[0]
    loaded, ckpt = load_model(tmp_path / "a" / "checkpoint.pt")
    assert ckpt["model"] == "toy_ssm" and isinstance(loaded, Toy)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    # resume: two more epochs continue the step count
    more = TrainConfig(**{**ckpt["train_config"], "epochs": 4, "out_dir": str(tmp_path / "a")})
    resumed = fit(
        loaded, train, val.subset(slice(0, 10)), more, resume=tmp_path / "a" / "checkpoint.pt"
    )
    steps = [r["step"] for r in resumed if r["kind"] == "train"]
    assert steps[-1] == 8 and load_checkpoint(tmp_path / "a" / "checkpoint.pt")["step"] == 8
    # the CLI lists it and trains it
    assert main(["models"]) == 0
    assert "toy_ssm" in capsys.readouterr().out
    code = main(
        [
            "train",
            "--model",
            "toy_ssm",
            "--data",
            "jsb",
            "--epochs",
            "1",
            "--max-steps",
            "2",
            "--out",
            str(tmp_path / "b"),
        ]
    )
    assert code == 0 and (tmp_path / "b" / "checkpoint.pt").exists()


# ----------------------------------------------------------------------------- every model


@pytest.mark.parametrize("name", list(SMALL))
def test_every_registered_model_honours_the_protocol(name):
    data, overrides = SMALL[name]
    train, _, _ = load_dataset(data)
    model = make_model(name, train, overrides)
    cls = MODELS[name][1]
    assert isinstance(model, Model) and cls.name == name and cls.Config is MODELS[name][0]
    assert cls.card and cls.preferred_data == data and model.incompatibility(train) is None
    batch = train.batch(torch.arange(4))
    terms = model(batch)
    assert terms.log_likelihood.shape == terms.kl.shape == terms.steps.shape == (4,)
    twice = model(batch, samples=2)  # S draws per example, sample-major
    assert twice.log_likelihood.shape == (8,)
    z = model.latents(batch)
    assert z.shape[0] == 4 and torch.isfinite(z).all()
    kl = model.kl_per_dim(batch)
    assert kl is None or kl.shape == (z.shape[-1],)
    recon = model.reconstruct(batch)
    assert recon is None or recon.shape == batch.x.shape
    steps = 5 if model.sequential else None
    a = None if batch.a is None or model.sequential else batch.a[:3]
    _zs, xs = model.sample(3, steps=steps, a=a)
    assert xs.shape[0] == 3 and torch.isfinite(xs).all()
    assert model.sequential == (xs.dim() == 3)
    log_p = model.importance_log_likelihood(batch, num_samples=4)
    assert log_p.shape == (4,) and torch.isfinite(log_p).all()


@pytest.mark.parametrize(
    ("name", "data", "reason"),
    [
        ("ssm", "jsb", "density over real values"),
        ("realnvp", "digits", "density over real values"),
        ("vae", "jsb", "single vectors|sequences"),
        ("dmm", "digits", "sequences"),
        ("dmm", "linear", "takes no actions"),
    ],
)
def test_a_model_names_why_it_cannot_train_on_a_data_set(name, data, reason):
    train, _, _ = load_dataset(data)
    model = make_model(name, train, SMALL[name][1])
    why = model.incompatibility(train)
    assert why is not None
    assert any(part in why for part in reason.split("|")), why


@pytest.mark.parametrize("name", ["realnvp", "ssm"])
def test_the_dashboard_and_the_cli_refuse_a_density_on_data_of_a_few_levels_alike(name):
    """One rule: a density over real values on data of at most 256 levels in [0, 1] (digits at
    17 grey levels; for ssm, the same values as sequences of 8 rows) is refused by
    Model.support_mismatch (the CLI's check), and incompatibility (the dashboard's) says the
    same; a model with a Bernoulli likelihood is not refused."""
    train = load_digits(binarize=False)[0]
    if name == "ssm":
        train = Data(train.x.reshape(-1, 8, 8), name="digit rows")
    model = make_model(name, train, SMALL[name][1])
    why = model.support_mismatch(train)
    assert why is not None and "17 levels" in why and "density over real numbers" in why, why
    assert model.incompatibility(train) == live.incompatibility(name, train) == why
    vae = make_model("vae", load_digits(binarize=False)[0], SMALL["vae"][1])
    assert vae.support_mismatch(load_digits(binarize=False)[0]) is None


def test_a_class_that_is_not_a_model_cannot_register():
    with pytest.raises(TypeError, match="subclass of vaelab.protocol.Model"):
        register(nn.Linear)

    class Nameless(Toy):
        name = ""

    with pytest.raises(ValueError, match="name and Config"):
        register(Nameless)


def test_the_static_models_refuse_sequence_arguments_to_sample():
    vae = make_model("vae", load_dataset("digits")[0], SMALL["vae"][1])
    with pytest.raises(ValueError, match="static"):
        vae.sample(2, steps=4)
    flow = make_model("realnvp", load_dataset("moons")[0], SMALL["realnvp"][1])
    with pytest.raises(ValueError, match="static"):
        flow.sample(2, steps=4)
