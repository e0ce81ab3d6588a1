"""The dashboard on a GPU: the page (Streamlit's AppTest, the real app.py) starts a DMM on JSB
with device "cuda" as a training process over a run folder, its chart updates while it
trains, Stop saves a checkpoint, and that checkpoint is copied to OUT so that a CPU-only
machine can load it (tests/test_gpu_artifacts.py keeps one).

    python benchmarks/gpu_dashboard.py OUT

Prints one JSON line: device, the step the run folder held at each poll, the checkpoint.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
from streamlit.testing.v1 import AppTest

from vaelab import runs

APP = str(Path(__file__).resolve().parents[1] / "app.py")
SIZES = {"z_dim_dmm": 4, "rnn_dim_dmm": 8, "emission_dim_dmm": 8, "transition_dim_dmm": 8}


def main(out: Path) -> None:
    device = "cuda" if torch.cuda.is_available() else "cpu"  # the CPU: a dry run of the script
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    assert at.selectbox(key="device").value == device, at.selectbox(key="device").options
    at.selectbox(key="model").set_value("dmm").run()
    at.selectbox(key="data_dmm").set_value("jsb").run()
    for key, value in {**SIZES, "epochs_dmm": 1000}.items():
        at.number_input(key=key).set_value(value)
    root = Path(tempfile.mkdtemp())
    at.text_input(key="out_root").set_value(str(root))
    at.button(key="train").click().run()
    assert not at.exception and not at.error, (at.exception, [e.value for e in at.error])
    run_id = at.query_params["run"]
    folder = root / (run_id[0] if isinstance(run_id, list) else run_id)
    t0, polls = time.monotonic(), []
    for _ in range(20):  # twenty polls, a second apart, while it trains
        time.sleep(1.0)
        at.run()  # the page's poll
        assert not at.exception, at.exception
        polls.append(
            {
                "t": round(time.monotonic() - t0, 1),
                "step": runs.read_status(folder)["step"],
                "charts": len(at.get("vega_lite_chart")),
            }
        )
    settings = runs.read_json(folder / "settings.json")
    assert settings["train_config"]["device"] == device, settings["train_config"]["device"]
    at.button(key="stop").click().run()
    end = time.monotonic() + 120
    while runs.read_status(folder)["state"] in runs.ACTIVE and time.monotonic() < end:
        time.sleep(0.5)
        at.run()
    status = runs.read_status(folder)
    assert status["state"] == "stopped", status
    ckpt = folder / "checkpoint.pt"
    shutil.copy(ckpt, out / "dmm_cuda_checkpoint.pt")
    steps = [p["step"] for p in polls]
    assert steps[-1] > steps[0] and polls[-1]["charts"] > 0, polls
    name = torch.cuda.get_device_name(0) if device == "cuda" else "cpu"
    print(
        json.dumps(
            {
                "device": name,
                "status": status["state"],
                "final_step": status["step"],
                "polls": polls,
                "checkpoint_bytes": ckpt.stat().st_size,
            }
        )
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]))
