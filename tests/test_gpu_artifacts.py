"""Files a GPU wrote, checked on the CPU: ``tests/data/dmm_cuda_checkpoint.pt`` is the checkpoint
of a DMM that the dashboard trained on an NVIDIA H200 with device "cuda" (540 steps on JSB,
``benchmarks/gpu_dashboard.py``; torch 2.11+cu130). It must load on a CPU-only machine, pass its
checksum, give a finite ELBO and resume training here."""

from __future__ import annotations

from pathlib import Path

import torch

from vaelab.datasets import load_dataset
from vaelab.train import TrainConfig, fit, load_checkpoint, load_model

CKPT = Path(__file__).parent / "data" / "dmm_cuda_checkpoint.pt"


def test_a_checkpoint_written_on_cuda_loads_and_evaluates_on_the_cpu():
    ckpt = load_checkpoint(CKPT)  # checksum checked, weights_only
    assert ckpt["train_config"]["device"] == "cuda" and ckpt["step"] == 540
    assert all(t.device.type == "cpu" for t in ckpt["state_dict"].values())
    model, _ = load_model(CKPT, "cpu")
    _, val, _ = load_dataset("jsb")
    batch = val.batch(torch.arange(16))
    terms = model.elbo(batch)
    per_step = (-terms.elbo.sum() / batch.mask.sum()).item()
    # 540 steps of a tiny DMM: well below the ~61 nats per step of an untrained one
    assert torch.isfinite(terms.elbo).all() and per_step < 30, per_step


def test_a_cuda_checkpoint_resumes_on_the_cpu(tmp_path):
    model, ckpt = load_model(CKPT, "cpu")
    train, val, _ = load_dataset("jsb")
    config = TrainConfig(
        **{
            **ckpt["train_config"],
            "device": "cpu",
            "out_dir": str(tmp_path),
            "max_steps": ckpt["step"] + 3,
            "progress": False,
        }
    )
    history = fit(model, train, val, config, resume=CKPT)
    steps = [r["step"] for r in history if r["kind"] == "train"]
    assert steps[-3:] == [541, 542, 543]
