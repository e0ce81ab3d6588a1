"""CUDA checks: the device-specific code paths give the CPU's numbers, and every model trains on
a GPU into a checkpoint that loads on the CPU.

On CUDA the DMM guide's backward RNN runs through cuDNN (``nn.RNN``) instead of the CPU's
hand-written ``elman_rnn``; these tests compare the two. They need a CUDA GPU and are skipped
on a machine without one (CI has none; they were run on the lent H100, see the README).
"""

from __future__ import annotations

import copy

import pytest
import torch

from tests.test_dmm import ragged_batch, small_dmm, small_dmm_iaf
from vaelab import MODELS
from vaelab.config import make_model
from vaelab.data import Batch
from vaelab.datasets import load_dataset
from vaelab.train import TrainConfig, fit, load_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

CUDA = torch.device("cuda")


@pytest.mark.parametrize("make", [small_dmm, small_dmm_iaf])
def test_dmm_elbo_and_gradients_on_cuda_equal_the_cpu(make):
    """Same weights, same guide noise: the ELBO and every gradient agree (float64)."""
    cpu = make().double()
    gpu = copy.deepcopy(cpu).to(CUDA)
    batch = ragged_batch([9, 5, 2, 9])
    batch = Batch(batch.x.double(), mask=batch.mask)
    noise = torch.randn(4, 9, cpu.config.z_dim, dtype=torch.double)
    results = []
    for model, device in ((cpu, "cpu"), (gpu, CUDA)):
        terms = model.elbo(batch.to(device), noise=noise.to(device))
        value = terms.elbo.sum()
        grads = torch.autograd.grad(value, list(model.parameters()))
        results.append((terms.elbo.detach().cpu(), [g.cpu() for g in grads]))
    (elbo_cpu, grads_cpu), (elbo_gpu, grads_gpu) = results
    assert torch.isfinite(elbo_cpu).all()
    torch.testing.assert_close(elbo_gpu, elbo_cpu)
    for (name, _), a, b in zip(cpu.named_parameters(), grads_cpu, grads_gpu):
        torch.testing.assert_close(b, a, msg=name)


def test_cuda_rnn_path_equals_the_cpu_elman_rnn():
    """rnn_states takes cuDNN on CUDA and elman_rnn on the CPU: same states at observed steps."""
    cpu = small_dmm().double()
    gpu = copy.deepcopy(cpu).to(CUDA)
    batch = ragged_batch([7, 3, 6])
    x, _, lengths = cpu._check(Batch(batch.x.double(), mask=batch.mask))
    h_cpu = cpu.rnn_states(x, lengths)
    h_gpu = gpu.rnn_states(x.to(CUDA), lengths.to(CUDA)).cpu()
    mask = batch.mask
    torch.testing.assert_close(h_gpu[mask], h_cpu[mask])


SMALL = {
    "vae": ("digits", {"hidden_dims": [16], "z_dim": 2}),
    "ssm": ("linear", {"z_dim": 2, "hidden_dim": 8, "rnn_dim": 8}),
    "realnvp": ("moons", {"hidden_dim": 8, "num_layers": 2}),
    "dmm": ("jsb", {"z_dim": 3, "emission_dim": 8, "transition_dim": 8, "rnn_dim": 8}),
    "dmm_iaf": ("jsb", {"z_dim": 3, "emission_dim": 8, "transition_dim": 8, "rnn_dim": 8,
                        "iaf_dim": 8}),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_every_model_trains_on_cuda_and_its_checkpoint_loads_on_the_cpu(name, tmp_path):
    data, overrides = SMALL[name]
    train, val, _ = load_dataset(data)
    model = make_model(name, train, overrides)
    config = TrainConfig(epochs=2, batch_size=16, lr=1e-3, device="cuda", max_steps=6,
                         out_dir=str(tmp_path), progress=False)
    history = fit(model, train, val, config)
    assert next(model.parameters()).device.type == "cuda"
    losses = [r["loss"] for r in history if r["kind"] == "train"]
    assert losses and all(torch.isfinite(torch.tensor(losses)))
    loaded, ckpt = load_model(tmp_path / "checkpoint.pt", "cpu")
    assert ckpt["model"] == name and next(loaded.parameters()).device.type == "cpu"
    for key, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value.cpu(), rtol=0, atol=0,
                                   msg=key)
