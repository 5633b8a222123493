"""Read and write the IDX format of MNIST and Fashion-MNIST, plain or gzip-compressed.

An IDX file is a 4-byte magic number (two zero bytes, a type code, the number of dimensions),
one big-endian uint32 per dimension, then the data in C order, big-endian.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from minivit.errors import DataError

IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"


def parse_idx(raw: bytes, name: str = "IDX data", expect_ndim: int | None = None) -> np.ndarray:
    """Parse IDX bytes into a writable numpy array in native byte order.

    Args:
        raw: the uncompressed file content.
        name: how to refer to the data in error messages (usually the file path).
        expect_ndim: the number of dimensions the caller needs (3 for images, 1 for labels).

    Raises:
        DataError: on a bad magic number, an unknown type code, or a size that does not match
            the header (a truncated or padded file).
    """
    fix = "the file is corrupted or not an IDX file; delete it and download it again"
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataError(f"{name}: bad IDX magic number {raw[:4].hex() or '(empty)'}", hint=fix)
    type_code, ndim = raw[2], raw[3]
    if type_code not in IDX_DTYPES:
        raise DataError(f"{name}: unknown IDX type code 0x{type_code:02x}", hint=fix)
    if expect_ndim is not None and ndim != expect_ndim:
        raise DataError(f"{name}: expected {expect_ndim}-D IDX data, the header says {ndim}-D", hint=fix)
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{name}: truncated IDX header", hint=fix)
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = IDX_DTYPES[type_code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    found = len(raw) - header
    if found != expected:
        problem = "truncated" if found < expected else "has trailing bytes"
        raise DataError(
            f"{name}: IDX data {problem}: shape {shape} needs {expected} bytes, found {found}", hint=fix
        )
    array = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return array.astype(dtype.newbyteorder("="), copy=True)


def read_idx(path: str | os.PathLike, expect_ndim: int | None = None) -> np.ndarray:
    """Read an IDX file; gzip compression is detected from the content, not the file name."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"IDX file not found: {path}") from None
    except OSError as err:
        raise DataError(f"cannot read {path}: {err.strerror or err}") from None
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:
            raise DataError(
                f"{path}: not a valid gzip file ({err})",
                hint="the download was probably cut short; delete the file and fetch it again",
            ) from None
    return parse_idx(raw, str(path), expect_ndim)


def encode_idx(array: np.ndarray) -> bytes:
    """Encode a numpy array as (uncompressed) IDX bytes."""
    array = np.asarray(array)
    wanted = (array.dtype.kind, array.dtype.itemsize)
    codes = [c for c, d in IDX_DTYPES.items() if (d.kind, d.itemsize) == wanted]
    if not codes:
        raise DataError(
            f"IDX cannot store dtype {array.dtype}", hint="use uint8, int8, int16, int32, float32 or float64"
        )
    type_code, dtype = codes[0], IDX_DTYPES[codes[0]]
    if array.ndim > 255:
        raise DataError("IDX supports at most 255 dimensions")
    header = bytes([0, 0, type_code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array, dtype=dtype).tobytes()


def write_idx(array: np.ndarray, path: str | os.PathLike, compress: bool | None = None) -> Path:
    """Write ``array`` as an IDX file, gzip-compressed when ``compress`` (default: name ends in .gz)."""
    path = Path(path)
    data = encode_idx(array)
    if compress if compress is not None else path.suffix == ".gz":
        data = gzip.compress(data, mtime=0)
    path.write_bytes(data)
    return path
