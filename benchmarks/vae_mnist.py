"""Static VAE on MNIST (dynamic binarisation): seconds per epoch, test -ELBO and the
importance-sampled test NLL, next to Burda et al. (2016, arXiv:1509.00519, Table 1).

    python benchmarks/vae_mnist.py --data ../shared/data/mnist --epochs 100 --out runs/vae_mnist

Model as in Burda et al.: 784-200-200-50 tanh encoder and decoder, Bernoulli likelihood,
N(0, I) prior, one stochastic layer. Their figure, 86.76 nats, is after 3280 passes over the
data; the target here is <= 87 nats.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from vaelab import VAE, VAEConfig
from vaelab.data import load_mnist
from vaelab.train import TrainConfig, evaluate_elbo, evaluate_nll, fit, load_model, select_device

REFERENCE_NLL = 86.76  # Burda et al. 2016, Table 1, VAE k=1, one stochastic layer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", required=True, help="folder with the MNIST IDX files")
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--lr-decay", type=float, default=1.0, help="per-step LR factor")
    p.add_argument("--samples", type=int, default=5000, help="importance samples K")
    p.add_argument(
        "--test-subset",
        type=int,
        default=0,
        help="evaluate NLL on the first N test images only (0 = all 10000)",
    )
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="checkpoint folder (allows --resume)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--eval-only", action="store_true", help="evaluate OUT/checkpoint.pt")
    args = p.parse_args()

    device = select_device(args.device)
    train, val, test = load_mnist(args.data, binarize="dynamic")
    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU ({torch.get_num_threads()} threads)"
    )
    print(f"device: {name}; train {len(train)}, val {len(val)}, test {len(test)}")

    train_seconds = 0.0
    if args.eval_only:
        model, ckpt = load_model(Path(args.out) / "checkpoint.pt", device)
        epochs = ckpt["epoch"]
    else:
        model = VAE(VAEConfig(x_dim=784, z_dim=50, hidden_dims=[200, 200], activation="tanh"))
        config = TrainConfig(
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            lr_decay=args.lr_decay,
            seed=args.seed,
            device=args.device,
            out_dir=args.out,
            eval_every=5,
            progress=False,
        )
        resume = Path(args.out) / "checkpoint.pt" if args.resume else None
        t0 = time.perf_counter()

        def report(r: dict) -> None:
            if r["kind"] == "val":
                print(
                    json.dumps(
                        {
                            "epoch": r["epoch"],
                            "val_nelbo": round(r["nelbo"], 3),
                            "elapsed_s": round(time.perf_counter() - t0, 1),
                        }
                    ),
                    flush=True,
                )

        history = fit(
            model,
            train,
            val,
            config,
            callback=report,
            resume=resume,
            data_spec={"name": "mnist", "path": args.data},
        )
        train_seconds = time.perf_counter() - t0
        epochs = history[-1]["epoch"]
        new_epochs = epochs - (
            0 if resume is None else torch.load(resume, weights_only=True)["epoch"]
        )
        print(
            f"training: {train_seconds:.1f} s, {train_seconds / max(new_epochs, 1):.2f} "
            f"s/epoch over {new_epochs} epochs this run ({epochs} in total)"
        )

    torch.manual_seed(args.seed)
    elbo = evaluate_elbo(model, test, samples=1, device=device)
    subset = test.subset(slice(0, args.test_subset)) if args.test_subset else test
    t0 = time.perf_counter()
    nll = evaluate_nll(
        model,
        subset,
        num_samples=args.samples,
        batch_size=10,
        chunk_size=500,
        device=device,
        progress=True,
    )
    eval_seconds = time.perf_counter() - t0
    print(f"test -ELBO (bound, 1 sample)      : {elbo['nelbo']:.2f} nats")
    print(
        f"test NLL, importance K={args.samples:<5}     : {nll:.2f} nats on {len(subset)} "
        f"images ({eval_seconds:.0f} s)"
    )
    print(
        f"reference (Burda et al. 2016, T1) : {REFERENCE_NLL:.2f} nats after 3280 passes; "
        f"target <= 87"
    )
    print(
        json.dumps(
            {
                "epochs": epochs,
                "train_seconds": round(train_seconds, 1),
                "test_nelbo": elbo["nelbo"],
                "test_nll_is": nll,
                "K": args.samples,
                "device": name,
            }
        )
    )


if __name__ == "__main__":
    main()
