"""The GGUF file format (v2/v3): a reader and the de-quantisation of its tensor types, in numpy.

Contract:
- ``read_gguf(path) -> GGUFFile``: parses the header, the metadata (every value type, arrays of arrays
  included), the tensor infos and the alignment over a read-only memory map; nothing is de-quantised yet.
- ``GGUFFile.tensor(name)``: one tensor as a float32 numpy array of its row-major shape (GGUF dims are
  stored fastest-varying first, so the shape is the dims reversed).
- ``dequantize(raw, ggml_type, n)``: F32, F16, Q8_0, Q4_0, Q4_1, vectorised over blocks (no Python loop).
- Malformed input (bad magic, unknown version or value type, truncated header or tensor data, unsupported
  tensor type) raises ``GGUFError`` with one line saying what is wrong.

Deliberately left out: K-quants, I-quants and the other ggml types; writing GGUF. Format facts:
the GGUF specification (docs/gguf.md in the ggml repository). What the tensors mean is ``convert_gguf``'s business.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

GGUF_MAGIC = b"GGUF"

# Scalar metadata value types: type id -> struct format (little-endian).
_SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q",
           12: "<d"}
_STRING, _ARRAY = 8, 9
# ggml tensor types: id -> (name, elements per block, bytes per block).
GGML_TYPES = {0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20),
              8: ("Q8_0", 32, 34)}


class GGUFError(ValueError):
    """The GGUF file is malformed or describes something this converter does not support."""


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # row-major (GGUF dims reversed)
    ggml_type: int
    offset: int  # absolute byte offset in the file


class _Cursor:
    """Sequential little-endian reads over a byte buffer; running off the end is a GGUFError."""

    def __init__(self, buf: memoryview):
        self.buf, self.pos = buf, 0

    def take(self, n: int) -> memoryview:
        if n < 0 or self.pos + n > len(self.buf):
            raise GGUFError(f"truncated file: needed {n} bytes at offset {self.pos}, file has {len(self.buf)}")
        out = self.buf[self.pos:self.pos + n]
        self.pos += n
        return out

    def scalar(self, fmt: str):
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        raw = self.take(self.scalar("<Q"))
        try:
            return bytes(raw).decode("utf-8")
        except UnicodeDecodeError as e:
            raise GGUFError(f"invalid UTF-8 in a string at offset {self.pos}: {e}") from None

    def value(self, vtype: int) -> Any:
        if vtype in _SCALAR:
            return self.scalar(_SCALAR[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            etype, count = self.scalar("<I"), self.scalar("<Q")
            if etype in _SCALAR and etype != 7:  # numeric arrays in one read
                dt = np.dtype(_SCALAR[etype])
                return np.frombuffer(self.take(count * dt.itemsize), dtype=dt).copy()
            return [self.value(etype) for _ in range(count)]
        raise GGUFError(f"unknown metadata value type {vtype} at offset {self.pos}")


@dataclass(frozen=True)
class GGUFFile:
    path: Path
    version: int
    metadata: Mapping[str, Any]
    tensors: Mapping[str, TensorInfo]
    data: np.ndarray  # uint8 memory map of the whole file

    def tensor(self, name: str) -> np.ndarray:
        """De-quantised float32 copy of tensor ``name`` in its row-major shape."""
        info = self.tensors[name]
        n = int(np.prod(info.shape, dtype=np.int64))
        _, block, block_bytes = GGML_TYPES[info.ggml_type]
        raw = self.data[info.offset:info.offset + n // block * block_bytes]
        return dequantize(raw, info.ggml_type, n).reshape(info.shape)


def read_gguf(path: str | os.PathLike) -> GGUFFile:
    path = Path(path)
    try:
        data = np.memmap(path, dtype=np.uint8, mode="r")
    except (OSError, ValueError) as e:  # ValueError: empty file
        raise GGUFError(f"cannot read {path}: {e}") from None
    cur = _Cursor(memoryview(data))
    if bytes(cur.take(4)) != GGUF_MAGIC:
        raise GGUFError(f"{path} is not a GGUF file (bad magic)")
    version = cur.scalar("<I")
    if version not in (2, 3):
        raise GGUFError(f"unsupported GGUF version {version} (expected 3)")
    n_tensors, n_kv = cur.scalar("<Q"), cur.scalar("<Q")
    metadata: dict[str, Any] = {}
    for _ in range(n_kv):
        key = cur.string()
        metadata[key] = cur.value(cur.scalar("<I"))
    raw_infos = []
    for _ in range(n_tensors):
        name = cur.string()
        dims = [cur.scalar("<Q") for _ in range(cur.scalar("<I"))]
        raw_infos.append((name, tuple(reversed(dims)), cur.scalar("<I"), cur.scalar("<Q")))
    align = int(metadata.get("general.alignment", 32))
    data_start = (cur.pos + align - 1) // align * align
    tensors = {}
    for name, shape, gtype, off in raw_infos:
        if gtype not in GGML_TYPES:
            raise GGUFError(f"tensor {name!r} has ggml type {gtype}, unsupported "
                            f"(supported: {', '.join(t[0] for t in GGML_TYPES.values())})")
        n = int(np.prod(shape, dtype=np.int64))
        _, block, block_bytes = GGML_TYPES[gtype]
        if shape and shape[-1] % block:
            raise GGUFError(f"tensor {name!r}: row length {shape[-1]} is not a multiple of {block}")
        end = data_start + off + n // block * block_bytes
        if end > len(data):
            raise GGUFError(f"truncated file: tensor {name!r} ends at byte {end}, file has {len(data)}")
        tensors[name] = TensorInfo(name, shape, gtype, data_start + off)
    return GGUFFile(path, version, metadata, tensors, data)


def dequantize(raw: np.ndarray, ggml_type: int, n: int) -> np.ndarray:
    """Flat float32 values of ``n`` elements stored as ``ggml_type`` in the uint8 buffer ``raw``."""
    raw = np.asarray(raw, dtype=np.uint8)
    if ggml_type == 0:
        return raw.view("<f4").astype(np.float32)
    if ggml_type == 1:
        return raw.view("<f2").astype(np.float32)
    _, block, block_bytes = GGML_TYPES[ggml_type]
    blocks = raw.reshape(n // block, block_bytes)
    d = blocks[:, 0:2].copy().view("<f2").astype(np.float32)  # (nb, 1) scale per block
    if ggml_type == 8:  # Q8_0: x = q * d
        q = blocks[:, 2:].copy().view(np.int8).astype(np.float32)
        return (q * d).reshape(-1)
    packed = blocks[:, -16:]
    # Low nibbles are elements 0-15 of a block, high nibbles elements 16-31.
    nib = np.concatenate([packed & 0x0F, packed >> 4], axis=1).astype(np.float32)
    if ggml_type == 2:  # Q4_0: x = (nibble - 8) * d
        return ((nib - 8.0) * d).reshape(-1)
    m = blocks[:, 2:4].copy().view("<f2").astype(np.float32)  # Q4_1: x = nibble * d + m
    return (nib * d + m).reshape(-1)
