"""Data sources -> one in-memory Dataset (arrays + provenance).

Four sources, named by `--data`:
- `embedded`: a small real MNIST sample shipped in the package (always works, offline);
- a PATH: a folder of the four MNIST-format IDX files (raw or .gz), or an .npz;
- `tfds`: a TensorFlow Datasets data set, read through `tfds.data_source` (array_record
  files, so reading needs no TensorFlow; only preparing it the first time does);
- `auto`: a data set already prepared in the TFDS data directory, else the embedded sample.

Every problem raises DataError naming the file or folder at fault. Images come out
float32 in [0, 1] with shape (N, 28, 28); labels int32 in 0..9.

A run may hold out part of the training split for validation (`hold_out_validation`):
stratified by label, drawn with a seed taken from the training labels themselves, so every
trial, seed and node of a run (and every run on the same data) gets the same split.
"""

from __future__ import annotations

import gzip
import importlib.resources
import importlib.util
import os
import re
import socket
import threading
import urllib.parse
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass, replace

import numpy as np

from bench.contract.registry import DATA_SOURCES, NAMED_SOURCES, TFDS_DATASETS  # noqa: F401 (re-exported)

IMAGE_SHAPE = (28, 28)
NUM_CLASSES = 10
SPLIT_KEYS = ("x_train", "y_train", "x_test", "y_test")

# IDX file base names per split array; each may also end in .gz, and some mirrors
# spell them with a dot ("train-images.idx3-ubyte").
IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
IDX_MAGIC = {"images": 2051, "labels": 2049}

EMBEDDED_FILE = "mnist_sample.npz"
EMBEDDED_NOTE = (
    "class-balanced random sample of MNIST (Y. LeCun, C. Cortes, C.J.C. Burges), "
    "CC BY-SA 3.0; train digits from the official training split, test digits from "
    "the official test split; see bench/embedded/README.md"
)


class DataError(ValueError):
    """A data set could not be found, read or validated."""


# eq=False: field-wise == on numpy arrays is ambiguous; identity is what callers need.
@dataclass(frozen=True, eq=False)
class Dataset:
    """A data set held in memory, with where it came from."""

    name: str
    source: str
    location: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    # Held out of the training split (hold_out_validation); x_train/y_train are the rest.
    x_val: np.ndarray | None = None
    y_val: np.ndarray | None = None
    validation: dict | None = None  # how the validation split was drawn (see describe)

    def describe(self) -> dict:
        """A JSON-able summary: identity, sizes, how a validation split was drawn, and (for
        the embedded sample) provenance. `train_examples` counts what training uses."""
        info = {
            "name": self.name,
            "source": self.source,
            "location": self.location,
            "train_examples": int(self.x_train.shape[0]),
            "test_examples": int(self.x_test.shape[0]),
            "image_shape": list(self.x_train.shape[1:]),
            "num_classes": NUM_CLASSES,
        }
        if self.validation is not None:
            info["validation_examples"] = int(self.x_val.shape[0])
            info["validation"] = dict(self.validation)
        if self.source == "embedded":
            info["provenance"] = EMBEDDED_NOTE
        return info


# ---------------------------------------------------------------- entry points


def check_data_args(data: str, dataset: str) -> None:
    """Raises DataError for an unknown dataset name or a missing path; touches no data."""
    if data in NAMED_SOURCES:
        if dataset not in TFDS_DATASETS:
            raise DataError(f"unknown dataset {dataset!r} for --data {data}; "
                            f"valid: {', '.join(TFDS_DATASETS)}")
        if data == "embedded" and dataset != "mnist":
            raise DataError(f"only mnist is embedded, not {dataset!r}; use --data tfds "
                            "or --data PATH for other data sets")
        return
    if not dataset:
        raise DataError("the dataset label for a PATH source must not be empty")
    if not os.path.exists(data):
        raise DataError(f"no such file or folder: {data!r}; --data takes one of "
                        f"{', '.join(DATA_SOURCES)} (PATH: a folder of IDX files or an .npz)")
    if os.path.isdir(data):
        for base in IDX_FILES.values():
            find_idx_file(data, base)
    elif not data.endswith(".npz"):
        raise DataError(f"{data}: not an .npz file; a PATH is a folder of IDX files or an .npz")


def load_dataset(data: str = "auto", dataset: str = "mnist", *,
                 data_dir: str | None = None, prepare: bool = True) -> Dataset:
    """Loads `dataset` from source `data` (see DATA_SOURCES); data_dir is the TFDS directory.

    `prepare=False` (a cluster's workers) reads TFDS data only if already prepared."""
    check_data_args(data, dataset)
    if data == "embedded":
        return load_embedded()
    if data == "tfds":
        return _load_tfds(dataset, tfds_data_dir(data_dir), allow_prepare=prepare)
    if data == "auto":
        root = tfds_data_dir(data_dir)
        if _prepared_versions(dataset, root):
            return _load_tfds(dataset, root, allow_prepare=False)
        if dataset != "mnist":
            raise DataError(f"{dataset} is not prepared in {root} and only mnist is "
                            "embedded; use --data tfds to obtain it")
        return load_embedded()
    if os.path.isdir(data):
        return _load_idx_folder(data, dataset)
    return _load_npz(data, dataset)


def load_embedded() -> Dataset:
    """The MNIST sample shipped in bench/embedded (see its README for provenance)."""
    resource = importlib.resources.files("bench").joinpath("embedded", EMBEDDED_FILE)
    with importlib.resources.as_file(resource) as path:
        arrays = _read_npz(str(path))
    return Dataset("mnist", "embedded", "", *arrays)


# ---------------------------------------------------------------- the validation split

VALIDATION_DRAWN = ("stratified by label from the training split: per class, its share of "
                    "the examples (largest remainders to round), drawn without replacement "
                    "by numpy.random.default_rng(seed), seed = CRC-32 of the training labels")


def check_validation_fraction(fraction) -> float:
    """`fraction` as a float if it is a number strictly between 0 and 1, else DataError."""
    number = isinstance(fraction, (int, float)) and not isinstance(fraction, bool)
    if not (number and 0 < fraction < 1):
        raise DataError(f"validation: {fraction!r} is not a fraction of the training split "
                        "strictly between 0 and 1 (e.g. 0.1667 holds out 10,000 of MNIST's 60,000)")
    return float(fraction)


def hold_out_validation(dataset: Dataset, fraction: float) -> Dataset:
    """`dataset` with a stratified `fraction` of its training split held out as validation
    (x_val, y_val) and training left with the rest, in their original order."""
    fraction = check_validation_fraction(fraction)
    if dataset.validation is not None:
        raise DataError("this data set already holds out a validation split")
    labels = dataset.y_train
    seed = zlib.crc32(np.ascontiguousarray(labels, np.int32).tobytes())
    held = validation_indices(labels, fraction, seed)
    if len(held) == 0 or len(held) == len(labels):
        left = "no example" if len(held) == 0 else "every example"
        raise DataError(f"validation {fraction:g} of {len(labels):,} training examples holds "
                        f"out {left}; give a fraction that leaves both splits examples")
    rest = np.setdiff1d(np.arange(len(labels)), held)
    split = {"x_train": dataset.x_train[rest], "y_train": labels[rest],
             "x_val": dataset.x_train[held], "y_val": labels[held]}
    for array in split.values():
        array.setflags(write=False)
    how = {"fraction": fraction, "examples": len(held), "of_train_examples": len(labels),
           "seed": seed, "drawn": VALIDATION_DRAWN}
    return replace(dataset, **split, validation=how)


def validation_indices(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of a stratified `fraction` of `labels`: round(fraction x N) in all,
    each class its proportional share (largest remainders get the odd ones)."""
    classes, counts = np.unique(labels, return_counts=True)
    quotas = fraction * counts
    take = np.floor(quotas).astype(int)
    short = int(round(fraction * len(labels))) - int(take.sum())
    # Stable: equal remainders go to the lower class, so the split is fully determined.
    take[np.argsort(-(quotas - take), kind="stable")[:short]] += 1
    rng = np.random.default_rng(seed)
    held = [rng.choice(np.flatnonzero(labels == c), n, replace=False)
            for c, n in zip(classes, take)]
    return np.sort(np.concatenate(held)) if held else np.array([], int)


# ---------------------------------------------------------------- conversion


def _images(x: np.ndarray, where: str) -> np.ndarray:
    """uint8 0..255 or float [0, 1] images, (N, 28, 28[, 1]) or (N, 784) -> float32 (N, 28, 28)."""
    if x.ndim == 2 and x.shape[1] == IMAGE_SHAPE[0] * IMAGE_SHAPE[1]:
        x = x.reshape(-1, *IMAGE_SHAPE)
    if x.ndim == 4 and x.shape[-1] == 1:
        x = x[..., 0]
    if x.ndim != 3 or x.shape[1:] != IMAGE_SHAPE:
        raise DataError(f"{where}: images have shape {x.shape}; expected (N, 28, 28)")
    if np.issubdtype(x.dtype, np.integer):
        if x.size and (x.min() < 0 or x.max() > 255):
            raise DataError(f"{where}: integer pixel values must lie in 0..255")
        return x.astype(np.float32) / 255.0
    if not np.issubdtype(x.dtype, np.floating):
        raise DataError(f"{where}: images have dtype {x.dtype}; expected uint8 or float")
    if x.size and not (np.isfinite(x).all() and x.min() >= 0.0 and x.max() <= 1.0):
        raise DataError(f"{where}: float pixel values must already lie in [0, 1]")
    return x.astype(np.float32)


def _labels(y: np.ndarray, where: str) -> np.ndarray:
    """Integer labels in 0..9, shape (N,) -> int32."""
    if y.ndim != 1:
        raise DataError(f"{where}: labels have shape {y.shape}; expected (N,)")
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{where}: labels have dtype {y.dtype}; expected integers")
    if y.size and (y.min() < 0 or y.max() >= NUM_CLASSES):
        raise DataError(f"{where}: labels must lie in 0..{NUM_CLASSES - 1}, "
                        f"found {y.min()}..{y.max()}")
    return y.astype(np.int32)


def _split(x: np.ndarray, y: np.ndarray, x_where: str, y_where: str):
    """Validated, converted (images, labels) of one split; both read-only."""
    images, labels = _images(x, x_where), _labels(y, y_where)
    if len(images) != len(labels):
        raise DataError(f"{x_where} holds {len(images)} images but {y_where} holds "
                        f"{len(labels)} labels")
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


# ---------------------------------------------------------------- IDX folders


def _idx_candidates(base: str) -> list[str]:
    dotted = base.replace("-idx", ".idx")
    return [base, base + ".gz", dotted, dotted + ".gz"]


def find_idx_file(folder: str, base: str) -> str:
    """Path of `base` (or a .gz / dotted variant) in folder, else DataError listing the names."""
    for name in _idx_candidates(base):
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            return path
    expected = ", ".join(IDX_FILES.values())
    raise DataError(f"{folder}: missing {base} (or {base}.gz); a data folder holds the "
                    f"four MNIST-format IDX files: {expected}")


def _idx_bytes(path: str) -> bytes:
    """The file's bytes, gunzipped when it is named .gz or starts with the gzip magic."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from e
    if not (path.endswith(".gz") or raw[:2] == b"\x1f\x8b"):
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: corrupt or incomplete gzip file ({e})") from e


def read_idx(path: str, magic: int) -> np.ndarray:
    """The uint8 array in an IDX file (raw or gzipped), checking magic number and length."""
    raw = _idx_bytes(path)
    if len(raw) < 4:
        raise DataError(f"{path}: truncated: {len(raw)} bytes, shorter than an IDX header")
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise DataError(f"{path}: bad magic number {found}; expected {magic} "
                        "(is this an MNIST-format IDX file?)")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated: header needs {header} bytes, file has {len(raw)}")
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    expected, actual = int(np.prod(dims)), len(raw) - header
    if actual != expected:
        state = "truncated" if actual < expected else "has trailing bytes"
        raise DataError(f"{path}: {state}: header {dims} needs {expected} bytes of data, "
                        f"file has {actual}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _load_idx_folder(folder: str, label: str) -> Dataset:
    """The four IDX files of an MNIST-format folder."""
    arrays = []
    for split in ("train", "test"):
        x_path = find_idx_file(folder, IDX_FILES[f"x_{split}"])
        y_path = find_idx_file(folder, IDX_FILES[f"y_{split}"])
        x = read_idx(x_path, IDX_MAGIC["images"])
        y = read_idx(y_path, IDX_MAGIC["labels"])
        arrays += _split(x, y, x_path, y_path)
    return Dataset(label, "idx", os.path.abspath(folder), *arrays)


# ---------------------------------------------------------------- .npz files


def _npz_arrays(path: str) -> dict[str, np.ndarray]:
    """The split arrays present in an .npz file."""
    try:
        with open(path, "rb") as f:
            if f.read(2) != b"PK":  # an .npz is a zip archive
                raise ValueError("not a zip archive, which an .npz is")
        npz = np.load(path, allow_pickle=False)
        if not isinstance(npz, np.lib.npyio.NpzFile):  # a bare .npy under an .npz name
            raise ValueError("holds a single array, not named arrays")
        with npz:
            return {k: npz[k] for k in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise DataError(f"{path}: not a readable .npz file ({e})") from e


def _read_npz(path: str) -> list[np.ndarray]:
    """Validated, converted x_train, y_train, x_test, y_test of an .npz file."""
    raw = _npz_arrays(path)
    missing = [k for k in SPLIT_KEYS if k not in raw]
    if missing:
        raise DataError(f"{path}: missing arrays {missing}; an .npz needs "
                        f"{list(SPLIT_KEYS)} (found {sorted(raw)})")
    train = _split(raw["x_train"], raw["y_train"], f"{path}[x_train]", f"{path}[y_train]")
    test = _split(raw["x_test"], raw["y_test"], f"{path}[x_test]", f"{path}[y_test]")
    return [*train, *test]


def _load_npz(path: str, label: str) -> Dataset:
    return Dataset(label, "npz", os.path.abspath(path), *_read_npz(path))


# ---------------------------------------------------------------- TensorFlow Datasets


def tfds_data_dir(data_dir: str | None = None) -> str:
    """The TFDS data directory: data_dir, else $TFDS_DATA_DIR, else ~/tensorflow_datasets."""
    chosen = data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"
    return os.path.abspath(os.path.expanduser(chosen))


_VERSION = re.compile(r"^\d+\.\d+\.\d+$")


def _version_dirs(dataset: str, root: str) -> list[str]:
    """Version folders of `dataset` under root with a dataset_info.json, newest first."""
    folder = os.path.join(root, dataset)
    if not os.path.isdir(folder):
        return []
    versions = [v for v in os.listdir(folder) if _VERSION.match(v)
                and os.path.isfile(os.path.join(folder, v, "dataset_info.json"))]
    return sorted(versions, key=lambda v: tuple(map(int, v.split("."))), reverse=True)


def _prepared_versions(dataset: str, root: str) -> list[str]:
    """Versions prepared as array_record (what data_source reads without TF), newest first."""
    return [v for v in _version_dirs(dataset, root)
            if any(".array_record" in f for f in os.listdir(os.path.join(root, dataset, v)))]


def _load_tfds(dataset: str, root: str, allow_prepare: bool) -> Dataset:
    """A TFDS data set prepared under root, preparing it first when allowed and needed."""
    versions = _prepared_versions(dataset, root)
    if not versions:
        _refuse_other_formats(dataset, root)
        if not allow_prepare:
            raise DataError(f"{dataset} is not prepared in {root}")
        _prepare_tfds(dataset, root)
        versions = _prepared_versions(dataset, root)
    arrays = []
    for split in ("train", "test"):
        arrays += _read_tfds_split(f"{dataset}:{versions[0]}", split, root)
    return Dataset(dataset, "tfds", root, *arrays)


def _refuse_other_formats(dataset: str, root: str) -> None:
    """Raises DataError if `dataset` is prepared under root, but not as array_record."""
    versions = _version_dirs(dataset, root)
    if versions:
        found = os.path.join(root, dataset, versions[0])
        # Preparing again would be a no-op: TFDS reuses any existing version folder.
        raise DataError(
            f"{found}: prepared without array_record files (probably tfrecord), which "
            "bench cannot read without TensorFlow; convert it with `tfds convert_format "
            f"--dataset_version_dir={found} --out_file_format=array_record` or use "
            "another --data-dir")


def _read_tfds_split(name: str, split: str, root: str):
    """(images, labels) of one split through tfds.data_source (array_record; no TF needed)."""
    import tensorflow_datasets as tfds  # deferred: a second of import most runs never need

    where = f"{os.path.join(root, name.replace(':', '/'))} [{split}]"
    try:
        source = tfds.data_source(name, split=split, data_dir=root, download=False)
        examples = source.__getitems__(range(len(source)))
        x = np.stack([np.asarray(ex["image"]) for ex in examples])
        y = np.array([ex["label"] for ex in examples])
    except Exception as e:  # TFDS raises many types (IO, proto, format); report them as one
        raise DataError(f"{where}: cannot read with tfds.data_source ({e})") from e
    return _split(x, y, where, where)


def _prepare_tfds(dataset: str, root: str) -> None:
    """Downloads and prepares `dataset` once into root as array_record, or says why it cannot."""
    import tensorflow_datasets as tfds

    host, port = _download_endpoint(tfds.builder_cls(dataset).URL)
    problems = []
    if not host_reachable(host, port):
        problems.append(f"offline: cannot reach {host}:{port}")
    if not _tensorflow_installed():
        problems.append("TensorFlow is not installed; TFDS needs it once to prepare a data "
                        "set (pip install tensorflow)")
    if problems:
        raise DataError(f"{dataset} is not prepared in {root} and cannot be prepared now: "
                        + "; ".join(problems)
                        + ". Alternatives: --data embedded, or --data PATH (IDX files or .npz)")
    try:
        builder = tfds.builder(dataset, data_dir=root, file_format="array_record")
        builder.download_and_prepare(file_format="array_record")
    except Exception as e:  # download and generation errors come in many types
        raise DataError(f"preparing {dataset} in {root} failed: {e}") from e


def _tensorflow_installed() -> bool:
    return importlib.util.find_spec("tensorflow") is not None


def _download_endpoint(url: str) -> tuple[str, int]:
    """(host, port) a download of url connects to first: the proxy if one is configured."""
    parts = urllib.parse.urlsplit(url)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(parts.hostname or ""):
        parts = urllib.parse.urlsplit(proxy if "://" in proxy else "http://" + proxy)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return parts.hostname or "", port


def host_reachable(host: str, port: int, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to host:port opens within timeout seconds, DNS included."""
    opened, finished = threading.Event(), threading.Event()

    def attempt() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                opened.set()
        except OSError:
            pass
        finally:
            finished.set()

    # A thread, because name resolution ignores socket timeouts and can stall for long.
    threading.Thread(target=attempt, daemon=True).start()
    finished.wait(timeout)
    return opened.is_set()
