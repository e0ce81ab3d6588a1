"""python -m vaelab sweep: independent training processes, one per seed, summarised."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vaelab.sweep import METRICS, SweepRun, run_sweep, summarise

TINY = [
    "--model",
    "vae",
    "--data",
    "digits",
    "--max-steps",
    "2",
    "--batch-size",
    "64",
    "--set",
    "hidden_dims=[8]",
    "--train-set",
    "progress=False",
]


@pytest.mark.integration  # a process of its own: make test, not test-fast
def test_sweep_runs_every_seed_as_its_own_process(tmp_path: Path) -> None:
    runs = run_sweep(TINY, seeds=[0, 1, 2], out=tmp_path, jobs=2)
    assert [r.seed for r in runs] == [0, 1, 2]
    assert all(r.returncode == 0 and r.error is None for r in runs), [r.error for r in runs]
    for r in runs:
        assert (tmp_path / f"seed_{r.seed}" / "checkpoint.pt").is_file()
        assert r.result["steps"] == 2
        assert set(METRICS) <= set(r.result)  # every metric --metric accepts is reported
        ckpt = torch.load(r.out / "checkpoint.pt", weights_only=True)
        assert ckpt["train_config"]["seed"] == r.seed
    # different seeds train different weights
    w = [torch.load(r.out / "checkpoint.pt", weights_only=True)["state_dict"] for r in runs]
    assert not all(torch.equal(w[0][k], w[1][k]) for k in w[0])
    summary = summarise(runs, "train_nelbo")
    values = [r.result["train_nelbo"] for r in runs]
    assert summary["runs"] == 3 and summary["failed"] == 0
    assert summary["mean"] == pytest.approx(sum(values) / 3)
    assert summary["min"] == min(values) and summary["max"] == max(values)


@pytest.mark.integration  # a process of its own: make test, not test-fast
def test_sweep_reports_a_failed_run_with_its_message(tmp_path: Path) -> None:
    runs = run_sweep([*TINY, "--set", "z_dim=-1"], seeds=[0], out=tmp_path)
    assert runs[0].returncode == 2 and runs[0].result is None
    assert "z_dim" in runs[0].error
    summary = summarise(runs)
    assert summary["failed"] == 1 and summary["mean"] is None  # JSON null, never NaN
    assert summary["notes"] == ["no run finished with a val_nelbo, so there is no mean"]


@pytest.mark.parametrize(
    "args, seeds, jobs, match",
    [
        (TINY, [], 1, "at least one seed"),
        (TINY, [1, 1], 1, "must differ"),
        (TINY, [0], 0, "--jobs must be >= 1"),
        (TINY, [0], -1, "--jobs must be >= 1"),
        ([*TINY, "--seed", "3"], [0], 1, "sets --seed itself"),
        ([*TINY, "--out=x"], [0], 1, "sets --out itself"),
    ],
)
def test_sweep_bad_arguments(tmp_path: Path, args, seeds, jobs, match) -> None:
    with pytest.raises(ValueError, match=match):
        run_sweep(args, seeds=seeds, out=tmp_path, jobs=jobs)


def test_sweep_out_must_not_be_a_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("")
    with pytest.raises(ValueError, match="is a file"):
        run_sweep(TINY, seeds=[0], out=tmp_path / "f")


def test_summarise_single_run_has_no_spread() -> None:
    summary = summarise([SweepRun(0, Path("."), 0, {"val_nelbo": 3.0})])
    assert summary["mean"] == 3.0 and summary["sd"] is None
    assert summary["notes"] == ["one run has no spread: sd is null (pass two or more seeds)"]
