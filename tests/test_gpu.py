"""CUDA checks: the device-specific code paths give the CPU's numbers, and every model trains on
a GPU into a checkpoint that loads on the CPU.

On CUDA the DMM guide's backward RNN runs through cuDNN (``nn.RNN``) instead of the CPU's
hand-written ``elman_rnn``, and its scan replays CUDA graphs (one per padded length); these
tests compare them with the CPU and the eager path. They need a CUDA GPU and are skipped on a
machine without one (CI has none; they run on a lent GPU, see benchmarks/gpu_session.sh).
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

from tests.test_dmm import ragged_batch, small_dmm, small_dmm_iaf
from vaelab import MODELS, fast
from vaelab.config import make_model
from vaelab.data import Batch
from vaelab.datasets import load_dataset
from vaelab.fast.scan import captured_graphs
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
    for (name, _), a, b in zip(cpu.named_parameters(), grads_cpu, grads_gpu, strict=False):
        torch.testing.assert_close(b, a, msg=name)


def test_cuda_rnn_path_equals_the_cpu_elman_rnn():
    """rnn_states takes cuDNN on CUDA and elman_rnn on the CPU: same states at observed steps."""
    cpu = small_dmm().double()
    gpu = copy.deepcopy(cpu).to(CUDA)
    batch = ragged_batch([7, 3, 6])
    x, _, mask = cpu.check(Batch(batch.x.double(), mask=batch.mask))
    lengths = mask.sum(dim=1)
    h_cpu = fast.dmm.rnn_states(cpu, x, lengths)
    h_gpu = fast.dmm.rnn_states(gpu, x.to(CUDA), lengths.to(CUDA)).cpu()
    mask = batch.mask
    torch.testing.assert_close(h_gpu[mask], h_cpu[mask])


SMALL = {
    "vae": ("digits", {"hidden_dims": [16], "z_dim": 2}),
    "ssm": ("linear", {"z_dim": 2, "hidden_dim": 8, "rnn_dim": 8}),
    "realnvp": ("moons", {"hidden_dim": 8, "num_layers": 2}),
    "dmm": ("jsb", {"z_dim": 3, "emission_dim": 8, "transition_dim": 8, "rnn_dim": 8}),
    "dmm_iaf": (
        "jsb",
        {"z_dim": 3, "emission_dim": 8, "transition_dim": 8, "rnn_dim": 8, "iaf_dim": 8},
    ),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_every_model_trains_on_cuda_and_its_checkpoint_loads_on_the_cpu(name, tmp_path):
    data, overrides = SMALL[name]
    train, val, _ = load_dataset(data)
    model = make_model(name, train, overrides)
    config = TrainConfig(
        epochs=2,
        batch_size=16,
        lr=1e-3,
        device="cuda",
        max_steps=6,
        out_dir=str(tmp_path),
        progress=False,
    )
    history = fit(model, train, val, config)
    assert next(model.parameters()).device.type == "cuda"
    losses = [r["loss"] for r in history if r["kind"] == "train"]
    assert losses and all(torch.isfinite(torch.tensor(losses)))
    loaded, ckpt = load_model(tmp_path / "checkpoint.pt", "cpu")
    assert ckpt["model"] == name and next(loaded.parameters()).device.type == "cpu"
    for key, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value.cpu(), rtol=0, atol=0, msg=key)


def test_the_guide_scan_replayed_from_cuda_graphs_equals_the_eager_scan(monkeypatch):
    """float64, same noise: the ELBO and every gradient with the scan replayed from CUDA graphs
    (captured once per padded length, then fed new inputs) equal the eager scan's; batches of
    lengths 9 and 13 share the 16-step graph, 20 takes a 32-step one."""
    model = small_dmm().double().to(CUDA)
    monkeypatch.setattr(fast.scan, "GRAPH_BUCKET", 16)
    for lengths in ([9, 5, 2, 9], [13, 13, 4, 1], [20, 3, 20, 7], [9, 9, 9, 2]):
        batch = ragged_batch(lengths)
        batch = Batch(batch.x.double(), mask=batch.mask).to(CUDA)
        noise = torch.randn(4, max(lengths), model.config.z_dim, dtype=torch.double, device=CUDA)
        results = []
        for graphs in (False, True):
            monkeypatch.setattr(fast.scan, "CUDA_GRAPHS", graphs)
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # a failed capture warns: not here
                terms = model.elbo(batch, noise=noise)
                grads = torch.autograd.grad(terms.elbo.sum(), list(model.parameters()))
            results.append((terms.elbo.detach(), grads))
            # release the eager pass's autograd graph before the next capture: a graph kept
            # alive keeps the parameters' AccumulateGrad nodes on the default stream, and
            # capturing beside them invalidates the capture (seen on an H200, torch 2.11)
            del terms
        (elbo_eager, grads_eager), (elbo_graph, grads_graph) = results
        torch.testing.assert_close(elbo_graph, elbo_eager)
        for (name, _), a, b in zip(
            model.named_parameters(), grads_eager, grads_graph, strict=False
        ):
            torch.testing.assert_close(b, a, msg=name)
    captured = [
        key[:2] for key, graph in captured_graphs(model.combiner).items() if graph is not None
    ]
    assert sorted(captured) == [(16, 4), (32, 4)]


def test_fit_on_cuda_trains_through_the_graphs_with_a_read_every_few_steps(monkeypatch):
    """fit on CUDA: sync_every defaults to 50 and the scan replays graphs; the records equal
    those of an eager run with a read per step, to float32 rounding."""
    train, val, _ = load_dataset("jsb")
    histories = []
    for graphs, every in ((False, 1), (True, None)):
        torch.manual_seed(0)
        model = make_model("dmm", train, SMALL["dmm"][1])
        monkeypatch.setattr(fast.scan, "CUDA_GRAPHS", graphs)
        config = TrainConfig(
            epochs=1,
            batch_size=16,
            lr=1e-3,
            device="cuda",
            max_steps=12,
            sync_every=every,
            progress=False,
            eval_every=0,
        )
        histories.append([r for r in fit(model, train, val, config) if r["kind"] == "train"])
        found = captured_graphs(model.combiner)
        assert bool(found) == graphs and all(found.values())
    eager, graphed = histories
    assert [r["step"] for r in graphed] == list(range(1, 13))
    for a, b in zip(eager, graphed, strict=False):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-3)
