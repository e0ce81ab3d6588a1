"""Training steps per second of the sequential VAE at the seed's size: T = 20, batch 1000,
latent 4, observation 2, action 2 (the built-in point-mass system), both guides.

    python benchmarks/ssm_speed.py --steps 20 --device cpu
    python benchmarks/ssm_speed.py --device all      # CPU, then CUDA when present
"""

from __future__ import annotations

import argparse
import time

import torch

from vaelab.objectives import loss
from vaelab.ssm import SSM, SSMConfig
from vaelab.systems import load_linear


def steps_per_second(
    guide: str,
    device: torch.device,
    steps: int,
    warmup: int = 3,
    hidden_dim: int = 64,
    rnn_dim: int = 64,
) -> float:
    """Adam steps per second on one batch of 1000 sequences of 20 steps."""
    torch.manual_seed(0)
    train, _, _ = load_linear(n_train=1000, n_val=1, n_test=1, steps=20)
    batch = next(train.batches(1000, shuffle=False)).to(device)
    model = SSM(
        SSMConfig(x_dim=2, a_dim=2, z_dim=4, hidden_dim=hidden_dim, rnn_dim=rnn_dim, guide=guide)
    ).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss(model.elbo(batch)).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()

    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="timed steps per setting")
    parser.add_argument("--device", default="all", help="cpu, cuda, or all (cpu + cuda)")
    parser.add_argument("--hidden-dim", type=int, default=64)
    parser.add_argument("--rnn-dim", type=int, default=64)
    args = parser.parse_args()
    if args.device == "all":
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    else:
        devices = [args.device]
    print(
        f"torch {torch.__version__}, CPU threads {torch.get_num_threads()}; "
        f"T=20, batch 1000, z 4, x 2, a 2, hidden {args.hidden_dim}, rnn {args.rnn_dim}"
    )
    for name in devices:
        device = torch.device(name)
        label = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        for guide in ("filtering", "smoothing"):
            rate = steps_per_second(
                guide, device, args.steps, hidden_dim=args.hidden_dim, rnn_dim=args.rnn_dim
            )
            print(f"{label:>24s}  {guide:>9s} guide: {rate:7.2f} training steps/s")


if __name__ == "__main__":
    main()
