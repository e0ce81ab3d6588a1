"""Images: the 8x8 digits shipped with the package and MNIST from its IDX files."""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from vaelab.data.checks import check_bool, check_int, check_path
from vaelab.data.dataset import Data, split_indices


def load_digits(binarize: bool = True) -> tuple[Data, Data, Data]:
    """The 8x8 hand-written digits shipped with the package (1797 images, UCI; the copy in
    scikit-learn), scaled to [0, 1]: 1297 train, 200 validation, 300 test images ``[N, 64]``."""
    binarize = check_bool("binarize", binarize)
    with resources.files("vaelab.assets").joinpath("digits.npz").open("rb") as f:
        arrays = np.load(f)
        images, labels = arrays["images"], arrays["labels"]
    x = torch.from_numpy(images.reshape(len(images), 64).astype(np.float32) / 16.0)
    info = {"image_shape": (8, 8), "labels": torch.from_numpy(labels.astype(np.int64))}
    data = Data(x, binarize=binarize, name="digits", info=info)
    train, val, test = (_with_labels(data, info, idx) for idx in split_indices(len(x), 200, 300))
    return train, val, test


def _with_labels(data: Data, info: dict, idx: Tensor) -> Data:
    part = data.subset(idx)
    part.info = {**info, "labels": info["labels"][idx]}
    return part


# ----------------------------------------------------------------------------- MNIST

MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (gzip-compressed or not): uint8 images ``[N, H, W]`` or labels
    ``[N]``."""
    path = check_path("path", path)
    if path.is_dir():
        raise ValueError(
            f"{path} is a folder, not an IDX file; pass a file such as "
            f"{path / MNIST_FILES['train_images']}.gz"
        )
    if not path.exists():
        raise FileNotFoundError(f"IDX file {path} not found; download the MNIST files")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
        if len(raw) < 4:
            raise ValueError(f"it holds {len(raw)} bytes, fewer than the 4-byte magic number")
        (magic,) = struct.unpack(">I", raw[:4])
        ndim = magic & 0xFF
        if magic >> 8 != 0x08 or ndim not in (1, 3):
            raise ValueError(f"bad magic number {magic:#010x}")
        header = 4 + 4 * ndim
        if len(raw) < header:
            raise ValueError(f"its header needs {header} bytes, the file holds {len(raw)}")
        shape = struct.unpack(f">{ndim}I", raw[4:header])
        if len(raw) - header != math.prod(shape):
            raise ValueError(
                f"its header promises {' x '.join(map(str, shape))} = {math.prod(shape)} "
                f"bytes of data, the file holds {len(raw) - header}: it is "
                f"{'truncated' if len(raw) - header < math.prod(shape) else 'too long'}"
            )
        return np.frombuffer(raw, np.uint8, offset=header).reshape(shape)
    except (OSError, EOFError, ValueError, struct.error, zlib.error) as e:
        raise ValueError(
            f"{path} is not a valid IDX file ({e}); re-download the MNIST files "
            f"(uint8 IDX, optionally .gz)"
        ) from None


def _find_mnist(root: Path, stem: str) -> Path:
    for candidate in (root / f"{stem}.gz", root / stem):
        if candidate.is_dir():
            raise ValueError(
                f"{candidate} is a folder; it should be the MNIST file itself "
                f"(unpack or re-download it)"
            )
        if candidate.exists():
            return candidate
    expected = ", ".join(f"{s}[.gz]" for s in MNIST_FILES.values())
    raise FileNotFoundError(
        f"MNIST file {stem}[.gz] not found in {root}; the folder must hold {expected}"
    )


def load_mnist(
    path: str | Path, binarize: str = "dynamic", n_val: int = 10000, seed: int = 0
) -> tuple[Data, Data, Data]:
    """MNIST from the standard IDX files in folder ``path``: the last ``n_val`` training images
    are the validation set (50000/10000/10000 by default), pixels scaled to [0, 1].

    binarize : ``"dynamic"`` draws x ~ Bernoulli(pixel) for every batch; ``"static"`` draws
    once with ``seed`` (a fixed sample; not Larochelle & Murray's set); ``"none"`` keeps grey.
    """
    if binarize not in ("dynamic", "static", "none"):
        raise ValueError(f"binarize must be 'dynamic', 'static' or 'none', got {binarize!r}")
    n_val = check_int("n_val", n_val, low=1)
    seed = check_int("seed", seed)
    root = check_path("path", path)
    if root.is_file():
        raise ValueError(
            f"{root} is a file; pass the folder holding it and the other MNIST "
            f"IDX files ({', '.join(MNIST_FILES.values())}, optionally .gz)"
        )
    if not root.is_dir():
        raise FileNotFoundError(
            f"MNIST folder {root} does not exist; pass the folder holding "
            f"{MNIST_FILES['train_images']}.gz and the other IDX files"
        )
    files = {k: _find_mnist(root, stem) for k, stem in MNIST_FILES.items()}
    arrays = {k: read_idx(file) for k, file in files.items()}
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.ndim != 3 or labels.ndim != 1:
            raise ValueError(
                f"{files[f'{split}_images'].name} must hold images [N, H, W] and "
                f"{files[f'{split}_labels'].name} labels [N], got shapes "
                f"{list(images.shape)} and {list(labels.shape)}; are the two "
                f"files swapped?"
            )
        if len(images) != len(labels):
            raise ValueError(
                f"{files[f'{split}_images']} holds {len(images)} images but "
                f"{files[f'{split}_labels']} holds {len(labels)} labels; both must "
                f"come from the same download (re-download them)"
            )
    if arrays["train_images"].shape[1:] != arrays["test_images"].shape[1:]:
        raise ValueError(
            f"training images are {list(arrays['train_images'].shape[1:])} but "
            f"test images {list(arrays['test_images'].shape[1:])} pixels; both "
            f"files must come from the same data set"
        )
    n_images = len(arrays["train_images"])
    if n_val >= n_images:
        raise ValueError(
            f"n_val={n_val} validation images leave none to train on: "
            f"{files['train_images']} holds {n_images} images; choose "
            f"n_val < {n_images}"
        )
    g = torch.Generator().manual_seed(seed)
    image_shape = tuple(int(s) for s in arrays["train_images"].shape[1:])

    def make(images: np.ndarray, labels: np.ndarray, name: str) -> Data:
        x = torch.from_numpy(images.reshape(len(images), -1).astype(np.float32) / 255.0)
        if binarize == "static":
            x = torch.bernoulli(x, generator=g)
        info = {"image_shape": image_shape, "labels": torch.from_numpy(labels.astype(np.int64))}
        return Data(x, binarize=binarize == "dynamic", name=name, info=info)

    n_train = n_images - n_val
    train = make(arrays["train_images"][:n_train], arrays["train_labels"][:n_train], "mnist")
    val = make(arrays["train_images"][n_train:], arrays["train_labels"][n_train:], "mnist-val")
    test = make(arrays["test_images"], arrays["test_labels"], "mnist-test")
    return train, val, test
