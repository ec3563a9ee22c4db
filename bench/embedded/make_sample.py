"""Builds mnist_sample.npz, the MNIST sample embedded in bench, from the official IDX files.

    python bench/embedded/make_sample.py path/to/mnist-idx-folder

The folder holds the four official files (raw or .gz). Training digits are drawn from
the official training split, test digits from the official test split: the same number
of each class, by a seeded random choice, kept in their official order. The defaults
reproduce the shipped file; see README.md next to this script.
"""

from __future__ import annotations

import argparse
import os

import numpy as np

from bench.engine.data import IDX_FILES, IDX_MAGIC, NUM_CLASSES, find_idx_file, read_idx

SEED = 0
TRAIN_EXAMPLES = 10_000
TEST_EXAMPLES = 2_000
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mnist_sample.npz")


def balanced_indices(labels: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """count // NUM_CLASSES random indices of each class, in ascending (official) order."""
    per_class = count // NUM_CLASSES
    chosen = [rng.choice(np.flatnonzero(labels == c), per_class, replace=False)
              for c in range(NUM_CLASSES)]
    return np.sort(np.concatenate(chosen))


def read_split(folder: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """The uint8 images and labels of the official 'train' or 'test' split."""
    x = read_idx(find_idx_file(folder, IDX_FILES[f"x_{split}"]), IDX_MAGIC["images"])
    y = read_idx(find_idx_file(folder, IDX_FILES[f"y_{split}"]), IDX_MAGIC["labels"])
    return x, y


def make_sample(folder: str, out: str, seed: int, train: int, test: int) -> None:
    """Writes the sample drawn from the IDX files in folder to out."""
    rng = np.random.default_rng(seed)
    x_train, y_train = read_split(folder, "train")
    x_test, y_test = read_split(folder, "test")
    i = balanced_indices(y_train, train, rng)
    j = balanced_indices(y_test, test, rng)
    np.savez_compressed(out, x_train=x_train[i], y_train=y_train[i],
                        x_test=x_test[j], y_test=y_test[j])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("idx_folder", help="folder with the four official MNIST IDX files")
    p.add_argument("--out", default=OUT)
    p.add_argument("--seed", type=int, default=SEED)
    p.add_argument("--train", type=int, default=TRAIN_EXAMPLES)
    p.add_argument("--test", type=int, default=TEST_EXAMPLES)
    a = p.parse_args()
    make_sample(a.idx_folder, a.out, a.seed, a.train, a.test)
    print(f"wrote {a.out}: {a.train} train + {a.test} test digits, "
          f"{os.path.getsize(a.out):,} bytes")


if __name__ == "__main__":
    main()
