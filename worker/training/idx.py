"""Fetch, verify and parse the IDX files of MNIST and Fashion-MNIST.

What is verified, and why: every file is checked against a ``Checksum`` record before it is
used, both a file already in the data directory and a fresh download (which is verified in a
temporary file and only then moved into place with ``os.replace``, so a reader never sees a
partial or corrupt file). SHA-256 is used when a genuine value is known; MD5 is only the fallback
for records without one (MD5 is broken against deliberate collisions, but still catches truncation
and corruption); the byte size, when known, is checked first as a cheap guard. Checksums are never
made up: each value below was read from the public source named next to it, and the MNIST sizes
and MD5s agree with ``shared/notes/facts.md``. The built-in records carry SHA-256 for all eight
files, so those are what is verified; the MD5s (torchvision's) are kept as provenance and for
callers that build records without a SHA-256.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import logging
import math
import os
import struct
import tempfile
import urllib.request
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions: count, rows, columns
LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension: count
DEFAULT_TIMEOUT_S = 30.0
_CHUNK = 1 << 16
_MAX_UNSIZED_DOWNLOAD = 512 * 1024 * 1024  # cap for files whose size is not known

log = logging.getLogger(__name__)


class DatasetUnavailableError(RuntimeError):
    """A dataset file is missing (or fails verification) and no mirror could supply it."""


@dataclass(frozen=True)
class Checksum:
    """What a file must match: ``sha256`` when known, else ``md5``; ``size`` in bytes if known."""

    sha256: str | None = None
    md5: str | None = None
    size: int | None = None

    def __post_init__(self) -> None:
        if self.sha256 is None and self.md5 is None:
            raise ValueError("a Checksum needs a sha256 or an md5 digest")
        for algorithm, value, length in (("sha256", self.sha256, 64), ("md5", self.md5, 32)):
            if value is not None and (
                len(value) != length or value.lower() != value or not _is_hex(value)
            ):
                raise ValueError(
                    f"{algorithm} must be {length} lowercase hex digits, got {value!r}"
                )
        if self.size is not None and self.size < 0:
            raise ValueError(f"size must be >= 0, got {self.size}")

    @property
    def digest(self) -> tuple[str, str]:
        """The (algorithm, hex digest) pair that is verified: SHA-256 if known, else MD5."""
        if self.sha256 is not None:
            return "sha256", self.sha256
        assert self.md5 is not None  # guaranteed by __post_init__
        return "md5", self.md5


def _is_hex(value: str) -> bool:
    try:
        int(value, 16)
    except ValueError:
        return False
    return True


# MNIST. SHA-256 and sizes: tensorflow/datasets tensorflow_datasets/url_checksums/mnist.txt
# (commit 31f1255e57e5); MD5s: pytorch/vision torchvision/datasets/mnist.py (commit 01977a187961).
MNIST_CHECKSUMS: dict[str, Checksum] = {
    "train-images-idx3-ubyte.gz": Checksum(
        sha256="440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
        md5="f68b3c2dcbeaaa9fbdd348bbdeb94873",
        size=9_912_422,
    ),
    "train-labels-idx1-ubyte.gz": Checksum(
        sha256="3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
        md5="d53e105ee54ea40749a09fcbcd1e9432",
        size=28_881,
    ),
    "t10k-images-idx3-ubyte.gz": Checksum(
        sha256="8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
        md5="9fb629c4189551a2d022fa330f9573f3",
        size=1_648_877,
    ),
    "t10k-labels-idx1-ubyte.gz": Checksum(
        sha256="f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
        md5="ec29112dd5afa0611ce80d1b7f02629c",
        size=4_542,
    ),
}

# Fashion-MNIST. SHA-256 and sizes: tensorflow/datasets tensorflow_datasets/url_checksums/
# fashion_mnist.txt (commit 90b66237ad09); MD5s: pytorch/vision torchvision/datasets/mnist.py
# (commit 01977a187961).
FASHION_MNIST_CHECKSUMS: dict[str, Checksum] = {
    "train-images-idx3-ubyte.gz": Checksum(
        sha256="3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
        md5="8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        size=26_421_880,
    ),
    "train-labels-idx1-ubyte.gz": Checksum(
        sha256="a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
        md5="25c81989df183df01b3e8a0aad5dffbe",
        size=29_515,
    ),
    "t10k-images-idx3-ubyte.gz": Checksum(
        sha256="346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
        md5="bef4ecab320f06d8554ea6380940ec79",
        size=4_422_102,
    ),
    "t10k-labels-idx1-ubyte.gz": Checksum(
        sha256="67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
        md5="bb300cfdad3c16e7a12a480ee83cd310",
        size=5_148,
    ),
}


def verify_file(path: Path, expected: Checksum) -> str | None:
    """Return ``None`` if ``path`` matches ``expected``, else why it does not."""
    size = path.stat().st_size
    if expected.size is not None and size != expected.size:
        return f"size is {size} bytes, expected {expected.size}"
    algorithm, want = expected.digest
    hasher = hashlib.new(algorithm, usedforsecurity=algorithm != "md5")
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            hasher.update(chunk)
    got = hasher.hexdigest()
    return None if got == want else f"{algorithm} is {got}, expected {want}"


class _BadDownload(Exception):
    """A mirror answered, but with data that failed verification."""


def ensure_file(
    filename: str,
    dest_dir: Path,
    mirrors: Sequence[str],
    expected: Checksum,
    *,
    timeout: float = DEFAULT_TIMEOUT_S,
    hint: str = "",
) -> Path:
    """Return ``dest_dir / filename``, verified, downloading it from the first mirror that works.

    A mirror is a base URL (``http``, ``https`` or ``file``); the file's URL is
    ``base.rstrip('/') + '/' + filename``. Dead mirrors and corrupt downloads are skipped; when
    all fail, ``DatasetUnavailableError`` says what to place where (``hint`` is appended).
    """
    if not filename or filename in (".", "..") or "/" in filename or "\\" in filename:
        raise ValueError(f"not a plain file name: {filename!r}")
    target = dest_dir / filename
    existing_problem: str | None = None
    if target.is_file():
        existing_problem = verify_file(target, expected)
        if existing_problem is None:
            return target
        log.warning("%s fails verification (%s); downloading it again", target, existing_problem)
    dest_dir.mkdir(parents=True, exist_ok=True)
    failures: list[str] = []
    for base in mirrors:
        url = base.rstrip("/") + "/" + filename
        try:
            _download_verified(url, target, expected, timeout)
        except (_BadDownload, OSError, http.client.HTTPException, ValueError) as exc:
            reason = str(exc) or type(exc).__name__
            log.warning("could not use %s: %s", url, reason)
            failures.append(f"  - {url}: {reason}")
            continue
        log.info("downloaded %s from %s", target, url)
        return target
    algorithm, digest = expected.digest
    lines = [f"Dataset file {filename!r} is not available at {target}."]
    if existing_problem is not None:
        lines.append(f"The file there fails verification ({existing_problem}).")
    lines.append("Mirrors tried:" if failures else "No mirrors were configured.")
    lines.extend(failures)
    lines.append(
        f"Download {filename} by other means and place it at {target} "
        f"(it must have {algorithm} {digest}"
        + (f" and be {expected.size} bytes)." if expected.size is not None else ").")
    )
    if hint:
        lines.append(hint)
    raise DatasetUnavailableError("\n".join(lines))


def _download_verified(url: str, target: Path, expected: Checksum, timeout: float) -> None:
    """Stream ``url`` into a temporary file beside ``target``, verify it, then move it in place."""
    limit = expected.size if expected.size is not None else _MAX_UNSIZED_DOWNLOAD
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            _stream(url, out, limit, timeout)
            out.flush()
            os.fsync(out.fileno())
        problem = verify_file(tmp, expected)
        if problem is not None:
            raise _BadDownload(f"downloaded file is corrupt: {problem}")
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _stream(url: str, out: BinaryIO, limit: int, timeout: float) -> None:
    request = urllib.request.Request(url, headers={"User-Agent": "normlab-dataset-fetch"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        total = 0
        while chunk := response.read(_CHUNK):
            total += len(chunk)
            if total > limit:
                raise _BadDownload(f"download is larger than the expected {limit} bytes")
            out.write(chunk)


def _read_bytes(path: Path) -> bytes:
    raw = path.read_bytes()
    if path.suffix != ".gz":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise ValueError(f"{path} is not a valid gzip file: {exc}") from exc


def parse_idx(data: bytes, *, magic: int, source: str = "<bytes>") -> np.ndarray:
    """Parse an unsigned-byte IDX blob whose magic number must be ``magic``; read-only result."""
    if len(data) < 4:
        raise ValueError(f"{source}: too short to be an IDX file ({len(data)} bytes)")
    (found,) = struct.unpack(">I", data[:4])
    if found != magic:
        raise ValueError(f"{source}: IDX magic number is 0x{found:08X}, expected 0x{magic:08X}")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{source}: truncated IDX header ({len(data)} bytes)")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    if any(d == 0 for d in dims):
        raise ValueError(f"{source}: IDX dimensions {dims} include a zero")
    expected = header + math.prod(dims)
    if len(data) != expected:
        raise ValueError(
            f"{source}: IDX dimensions {dims} need {expected} bytes, the file has {len(data)}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def read_idx_images(path: Path) -> np.ndarray:
    """uint8 images ``[count, rows, columns]`` from an IDX file (``.gz`` is decompressed)."""
    return parse_idx(_read_bytes(path), magic=IMAGES_MAGIC, source=str(path))


def read_idx_labels(path: Path) -> np.ndarray:
    """uint8 labels ``[count]`` from an IDX file (``.gz`` is decompressed)."""
    return parse_idx(_read_bytes(path), magic=LABELS_MAGIC, source=str(path))
