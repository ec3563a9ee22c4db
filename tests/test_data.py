"""Data sources: IDX folders, .npz files, the embedded sample and TFDS, all without network.

IDX and .npz inputs are tiny files written here; TFDS data is either mocked with
`tfds.testing.mock_data` or a tiny data set prepared on disk without TensorFlow.
"""

from __future__ import annotations

import contextlib
import gzip
import inspect
import io
import json
import os
import socket
import threading
import urllib.parse

import numpy as np

import bench
import pytest
import tensorflow_datasets as tfds
from PIL import Image
from tensorflow_datasets.testing import mocking

from bench.engine import data
from bench.engine.data import IDX_FILES, TFDS_DATASETS, DataError, load_dataset

N_TRAIN, N_TEST = 20, 10
PROXY_VARIABLES = ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "no_proxy", "NO_PROXY",
                   "all_proxy", "ALL_PROXY")


def write_idx(path, array: np.ndarray, magic: int | None = None, cut: int = 0) -> None:
    """Writes array as an IDX file (gzipped when path ends in .gz), cut bytes short."""
    magic = magic if magic is not None else 0x0800 + array.ndim
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    raw = (header + array.astype(np.uint8).tobytes())[: -cut or None]
    path.write_bytes(gzip.compress(raw) if str(path).endswith(".gz") else raw)


def tiny_split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), np.arange(n, dtype=np.uint8) % 10


def idx_folder(folder, suffix: str = "", dotted: bool = False) -> dict[str, np.ndarray]:
    """Writes the four IDX files of a tiny data set into folder; returns its uint8 arrays."""
    folder.mkdir(exist_ok=True)
    arrays = dict(zip(("x_train", "y_train"), tiny_split(N_TRAIN, 0)))
    arrays.update(zip(("x_test", "y_test"), tiny_split(N_TEST, 1)))
    for key, base in IDX_FILES.items():
        name = base.replace("-idx", ".idx") if dotted else base
        write_idx(folder / (name + suffix), arrays[key])
    return arrays


def assert_converted(ds, arrays: dict[str, np.ndarray]) -> None:
    for key, want in arrays.items():
        got = getattr(ds, key)
        if key.startswith("x"):
            assert got.dtype == np.float32 and got.shape == want.shape
            np.testing.assert_allclose(got, want / 255.0, rtol=1e-6)
        else:
            assert got.dtype == np.int32
            np.testing.assert_array_equal(got, want)
        assert not got.flags.writeable


# ---------------------------------------------------------------- IDX


@pytest.mark.parametrize("suffix,dotted", [("", False), (".gz", False), ("", True)])
def test_idx_folder_round_trip(tmp_path, suffix, dotted):
    arrays = idx_folder(tmp_path / "d", suffix, dotted)
    ds = load_dataset(str(tmp_path / "d"), "my_digits")
    assert (ds.name, ds.source, ds.location) == ("my_digits", "idx", str(tmp_path / "d"))
    assert_converted(ds, arrays)
    assert json.loads(json.dumps(ds.describe()))["train_examples"] == N_TRAIN


def _bad_magic(folder):
    write_idx(folder / IDX_FILES["x_train"], tiny_split(N_TRAIN, 0)[0], magic=2049)
    return IDX_FILES["x_train"], ["magic", "2049", "2051"]


def _truncated(folder):
    write_idx(folder / IDX_FILES["x_test"], tiny_split(N_TEST, 1)[0], cut=5)
    return IDX_FILES["x_test"], ["truncated", str(N_TEST * 784), str(N_TEST * 784 - 5)]


def _trailing_bytes(folder):
    raw = (folder / IDX_FILES["y_train"]).read_bytes()
    (folder / IDX_FILES["y_train"]).write_bytes(raw + b"\0\0")
    return IDX_FILES["y_train"], ["trailing", str(N_TRAIN), str(N_TRAIN + 2)]


def _bad_gzip(folder):
    (folder / IDX_FILES["y_test"]).unlink()
    (folder / (IDX_FILES["y_test"] + ".gz")).write_bytes(b"\x1f\x8bnot really gzip")
    return IDX_FILES["y_test"] + ".gz", ["gzip"]


def _cut_gzip(folder):
    (folder / IDX_FILES["y_train"]).unlink()
    raw = gzip.compress(b"\0" * 1000)
    (folder / (IDX_FILES["y_train"] + ".gz")).write_bytes(raw[: len(raw) // 2])
    return IDX_FILES["y_train"] + ".gz", ["gzip"]


def _missing(folder):
    (folder / IDX_FILES["x_test"]).unlink()
    return IDX_FILES["x_test"], [str(folder), *IDX_FILES.values()]


def _count_mismatch(folder):
    write_idx(folder / IDX_FILES["y_train"], tiny_split(N_TRAIN - 1, 0)[1])
    return IDX_FILES["y_train"], [IDX_FILES["x_train"], str(N_TRAIN), str(N_TRAIN - 1)]


def _label_range(folder):
    write_idx(folder / IDX_FILES["y_test"], np.full(N_TEST, 10, np.uint8))
    return IDX_FILES["y_test"], ["0..9"]


def _image_dims(folder):
    write_idx(folder / IDX_FILES["x_train"], np.zeros((N_TRAIN, 27, 28), np.uint8))
    return IDX_FILES["x_train"], ["(20, 27, 28)"]


IDX_BREAKAGES = [_bad_magic, _truncated, _trailing_bytes, _bad_gzip, _cut_gzip, _missing,
                 _count_mismatch, _label_range, _image_dims]


@pytest.mark.parametrize("breakage", IDX_BREAKAGES, ids=lambda f: f.__name__.strip("_"))
def test_idx_errors_name_the_file(tmp_path, breakage):
    folder = tmp_path / "d"
    idx_folder(folder)
    filename, fragments = breakage(folder)
    with pytest.raises(DataError) as err:
        load_dataset(str(folder), "mnist")
    assert filename in str(err.value)
    for fragment in fragments:
        assert fragment in str(err.value)


def test_idx_gzipped_under_the_raw_name(tmp_path):
    arrays = idx_folder(tmp_path)
    path = tmp_path / IDX_FILES["x_test"]
    path.write_bytes(gzip.compress(path.read_bytes()))
    assert_converted(load_dataset(str(tmp_path), "mnist"), arrays)


def test_check_data_args_reports_missing_idx_file_before_loading(tmp_path):
    idx_folder(tmp_path)
    (tmp_path / IDX_FILES["y_test"]).unlink()
    with pytest.raises(DataError, match=IDX_FILES["y_test"]):
        data.check_data_args(str(tmp_path), "mnist")


# ---------------------------------------------------------------- .npz


def test_npz_uint8_and_float_images(tmp_path):
    arrays = idx_folder(tmp_path / "d")
    np.savez(tmp_path / "u8.npz", **arrays)
    assert_converted(load_dataset(str(tmp_path / "u8.npz"), "mine"), arrays)
    as_float = {k: (v / 255.0 if k.startswith("x") else v.astype(np.int64))
                for k, v in arrays.items()}
    np.savez(tmp_path / "f.npz", **as_float)
    ds = load_dataset(str(tmp_path / "f.npz"), "mine")
    assert ds.source == "npz" and ds.location == str(tmp_path / "f.npz")
    assert_converted(ds, arrays)


@pytest.mark.parametrize("change,fragments", [
    ({"y_test": None, "x_test": None}, ["missing", "x_test", "y_test"]),
    ({"x_train": np.zeros((N_TRAIN, 28, 27), np.uint8)}, ["x_train", "(20, 28, 27)"]),
    ({"y_train": np.zeros((N_TRAIN, 2), np.uint8)}, ["y_train", "(20, 2)"]),
    ({"y_test": np.zeros(N_TEST + 1, np.uint8)}, ["y_test", "11 labels"]),
    ({"x_test": np.full((N_TEST, 28, 28), 255.0)}, ["x_test", "[0, 1]"]),
    ({"y_train": np.zeros(N_TRAIN, np.float32)}, ["y_train", "integers"]),
], ids=["missing-keys", "image-shape", "label-shape", "count", "float-range", "label-dtype"])
def test_npz_errors(tmp_path, change, fragments):
    arrays = idx_folder(tmp_path / "d")
    arrays.update(change)
    np.savez(tmp_path / "bad.npz", **{k: v for k, v in arrays.items() if v is not None})
    with pytest.raises(DataError) as err:
        load_dataset(str(tmp_path / "bad.npz"), "mine")
    assert "bad.npz" in str(err.value)
    for fragment in fragments:
        assert fragment in str(err.value)


def test_npz_that_is_not_a_zip(tmp_path):
    (tmp_path / "x.npz").write_bytes(b"hello")
    with pytest.raises(DataError, match="x.npz"):
        load_dataset(str(tmp_path / "x.npz"), "mine")


# ---------------------------------------------------------------- embedded


def test_embedded_sample():
    ds = load_dataset("embedded")
    path = os.path.join(os.path.dirname(bench.__file__), "embedded", data.EMBEDDED_FILE)
    assert os.path.getsize(path) <= 2_000_000
    assert 8_000 <= len(ds.x_train) <= 20_000
    assert 4 <= len(ds.x_train) / len(ds.x_test) <= 6
    for x, y in ((ds.x_train, ds.y_train), (ds.x_test, ds.y_test)):
        assert x.shape == (len(y), 28, 28) and x.dtype == np.float32 and y.dtype == np.int32
        assert 0.0 <= x.min() and x.max() <= 1.0 and x.max() > 0.9
        assert set(np.unique(y)) == set(range(10))
    info = ds.describe()
    assert (info["name"], info["source"], info["location"]) == ("mnist", "embedded", "")
    assert "CC BY-SA 3.0" in info["provenance"]


def test_embedded_is_mnist_only():
    with pytest.raises(DataError, match="only mnist"):
        load_dataset("embedded", "fashion_mnist")


# ---------------------------------------------------------------- TFDS


@pytest.fixture
def no_network(monkeypatch):
    """Makes any reachability check fail the test: these paths must not look at the network."""
    def forbidden(*args, **kwargs):
        raise AssertionError("the network was consulted")
    monkeypatch.setattr(data, "host_reachable", forbidden)


def fake_prepared(root, dataset: str, extension: str = "array_record") -> None:
    """Leaves the files by which a prepared TFDS data set is recognised on disk (empty)."""
    folder = root / dataset / str(tfds.builder_cls(dataset).VERSION)
    folder.mkdir(parents=True)
    (folder / "dataset_info.json").write_text("{}")
    (folder / f"{dataset}-train.{extension}-00000-of-00001").write_bytes(b"")


def _mock_getitems(*args, generator, serialized=False):
    """Batch read for mock_data's fake data source, with or without `self` first."""
    assert not serialized
    return [generator[key] for key in args[-1]]


@pytest.mark.parametrize("dataset", TFDS_DATASETS)
def test_tfds_reads_through_data_source(tmp_path, monkeypatch, no_network, dataset):
    # USE_CODE: mock_data generates random examples from the builder's code, and it
    # mocks `as_data_source` itself, so this works without TensorFlow. The on-disk
    # check that the data set is prepared is bench's own and sees the fake files.
    fake_prepared(tmp_path, dataset)
    # tfds 4.9.10's mock sets `__getitems__` as a plain attribute holding a partial
    # that expects `self`, so the batch read bench uses (3x faster than one item at a
    # time on real data) fails inside the mock; this stand-in takes either call shape.
    monkeypatch.setattr(mocking, "_getitems", _mock_getitems)
    with tfds.testing.mock_data(num_examples=12, policy=tfds.testing.MockPolicy.USE_CODE):
        ds = load_dataset("tfds", dataset, data_dir=str(tmp_path))
    assert (ds.name, ds.source, ds.location) == (dataset, "tfds", str(tmp_path))
    for x, y in ((ds.x_train, ds.y_train), (ds.x_test, ds.y_test)):
        assert x.shape == (12, 28, 28) and x.dtype == np.float32 and y.dtype == np.int32
        assert 0.0 <= x.min() and x.max() <= 1.0
        assert ((0 <= y) & (y < 10)).all()


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


class _TinyMnist(tfds.image_classification.MNIST, skip_registration=True):
    """The real MNIST builder over tiny arrays. PNG bytes are passed so that writing
    needs no TensorFlow (TFDS encodes numpy images with TF, but stores bytes as given)."""

    name = "mnist"

    def _split_generators(self, dl_manager):
        return {"train": self._examples(*tiny_split(N_TRAIN, 0)),
                "test": self._examples(*tiny_split(N_TEST, 1))}

    def _examples(self, images, labels):
        for i, (image, label) in enumerate(zip(images, labels)):
            yield i, {"image": _png(image), "label": int(label)}


def test_auto_reads_prepared_tfds_without_network(tmp_path, no_network):
    _TinyMnist(data_dir=str(tmp_path), file_format="array_record").download_and_prepare(
        file_format="array_record")
    ds = load_dataset("auto", "mnist", data_dir=str(tmp_path))
    assert (ds.source, ds.location, len(ds.x_train), len(ds.x_test)) == (
        "tfds", str(tmp_path), N_TRAIN, N_TEST)
    # TFDS shuffles at preparation, so compare (label, image) pairs as sorted lists.
    images, labels = tiny_split(N_TRAIN, 0)
    want = sorted(zip(labels.tolist(), [im.tobytes() for im in images]))
    back = np.rint(ds.x_train * 255).astype(np.uint8)
    assert sorted(zip(ds.y_train.tolist(), [im.tobytes() for im in back])) == want


@pytest.mark.parametrize("on_disk", ["nothing", "tfrecord"])
def test_auto_falls_back_to_embedded_without_network(tmp_path, no_network, on_disk):
    if on_disk == "tfrecord":
        fake_prepared(tmp_path, "mnist", extension="tfrecord")  # unreadable without TF
    ds = load_dataset("auto", "mnist", data_dir=str(tmp_path))
    assert ds.source == "embedded"
    with pytest.raises(DataError, match="not prepared"):
        load_dataset("auto", "kmnist", data_dir=str(tmp_path))


def test_tfds_offline_fails_fast(tmp_path, monkeypatch):
    """Offline, one bounded reachability check of the download host, and no download tried."""
    for var in PROXY_VARIABLES:
        monkeypatch.delenv(var, raising=False)
    limit = inspect.signature(data.host_reachable).parameters["timeout"].default
    checked = []
    monkeypatch.setattr(data, "host_reachable", lambda host, port, timeout=limit: checked.append(
        (host, port, timeout)) or False)
    monkeypatch.setattr(tfds, "builder", lambda *a, **k: pytest.fail("a download was tried"))
    root = str(tmp_path / "tfds")  # a neutral name: pytest's tmp_path contains the test's
    with pytest.raises(DataError) as err:
        load_dataset("tfds", "fashion_mnist", data_dir=root)
    url = urllib.parse.urlsplit(tfds.builder_cls("fashion_mnist").URL)
    endpoint = (url.hostname, url.port or {"http": 80, "https": 443}[url.scheme])
    assert checked == [(*endpoint, limit)] and limit <= 3.0  # once, within seconds
    message = str(err.value).replace(root, "DATA_DIR")
    assert "offline: cannot reach {}:{}".format(*endpoint) in message
    assert "DATA_DIR" in message and "--data embedded" in message


def test_tfds_without_tensorflow_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "host_reachable", lambda host, port, timeout=3.0: True)
    monkeypatch.setattr(data, "_tensorflow_installed", lambda: False)
    with pytest.raises(DataError) as err:
        load_dataset("tfds", "mnist", data_dir=str(tmp_path / "tfds"))
    message = str(err.value).replace(str(tmp_path), "TMP")
    assert "pip install tensorflow" in message and "offline" not in message


def test_tfds_tfrecord_only_is_explained(tmp_path, no_network):
    fake_prepared(tmp_path, "kmnist", extension="tfrecord")
    with pytest.raises(DataError, match="array_record") as err:
        load_dataset("tfds", "kmnist", data_dir=str(tmp_path))
    assert os.path.join(str(tmp_path), "kmnist") in str(err.value)


def test_tfds_data_dir_default_follows_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
    assert data.tfds_data_dir() == str(tmp_path)
    assert data.tfds_data_dir(str(tmp_path / "x")) == str(tmp_path / "x")
    monkeypatch.delenv("TFDS_DATA_DIR")
    assert data.tfds_data_dir() == os.path.expanduser("~/tensorflow_datasets")


# ---------------------------------------------------------------- network check


def test_host_reachable_on_loopback():
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        assert data.host_reachable("127.0.0.1", port, timeout=1.0)
    assert not data.host_reachable("127.0.0.1", port, timeout=1.0)  # closed now: refused


def test_host_reachable_gives_up_on_a_connection_that_hangs(monkeypatch):
    """Name resolution ignores socket timeouts: a connection attempt stuck in it is abandoned
    at the time limit, though it would succeed later (here: when the test ends)."""
    release, asked = threading.Event(), []

    def stuck(address, timeout):
        asked.append((address, timeout))
        release.wait(10)  # a resolver that answers late
        return contextlib.nullcontext()  # and then connects

    monkeypatch.setattr(data.socket, "create_connection", stuck)
    try:
        assert data.host_reachable("example.invalid", 443, timeout=0.05) is False
        assert asked == [(("example.invalid", 443), 0.05)]
    finally:
        release.set()


def test_download_endpoint_goes_through_a_proxy(monkeypatch):
    for var in PROXY_VARIABLES:
        monkeypatch.delenv(var, raising=False)
    url = "https://storage.googleapis.com/cvdf-datasets/mnist/"
    assert data._download_endpoint(url) == ("storage.googleapis.com", 443)
    monkeypatch.setenv("https_proxy", "http://proxy.example:3128")
    assert data._download_endpoint(url) == ("proxy.example", 3128)


# ---------------------------------------------------------------- argument checks


@pytest.mark.parametrize("source", ["auto", "embedded", "tfds"])
def test_unknown_dataset_lists_valid_names(source):
    with pytest.raises(DataError) as err:
        data.check_data_args(source, "cifar10")
    assert "cifar10" in str(err.value)
    for name in TFDS_DATASETS:
        assert name in str(err.value)


def test_missing_path_lists_sources(tmp_path):
    missing = str(tmp_path / "nowhere")
    with pytest.raises(DataError) as err:
        data.check_data_args(missing, "mnist")
    assert missing in str(err.value)
    for source in data.DATA_SOURCES:
        assert source in str(err.value)


def test_file_that_is_not_npz_is_refused(tmp_path):
    (tmp_path / "digits.csv").write_text("1,2,3")
    with pytest.raises(DataError, match="digits.csv"):
        data.check_data_args(str(tmp_path / "digits.csv"), "mnist")


def test_data_sources_cover_the_named_sources():
    assert set(data.DATA_SOURCES) == {"auto", "embedded", "tfds", "PATH"}
