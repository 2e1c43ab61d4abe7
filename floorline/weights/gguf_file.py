"""GGUF container reader: a GGUF v2/v3 file's header, metadata and tensor infos; loads tensors one at a time.

Tensor data stays memory-mapped (copy-on-write, so torch can view it without copying the
file); one tensor at a time is dequantized, so host memory stays bounded by the largest tensor.
"""

from __future__ import annotations

import math
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from floorline.errors import (
    CorruptFileError,
    ModelNotFoundError,
    UnsupportedModelError,
    WeightMismatchError,
)
from floorline.weights.gguf_quants import DEQUANTIZABLE_TYPES, GGML_TYPES, dequantize

__all__ = ["GGUFFile", "GGUFTensorInfo"]

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32

# Metadata value type id -> little-endian numpy dtype (scalars and arrays alike).
_NUMERIC = {
    0: np.dtype("<u1"), 1: np.dtype("<i1"), 2: np.dtype("<u2"), 3: np.dtype("<i2"),
    4: np.dtype("<u4"), 5: np.dtype("<i4"), 6: np.dtype("<f4"), 7: np.dtype("?"),
    10: np.dtype("<u8"), 11: np.dtype("<i8"), 12: np.dtype("<f8"),
}
_STRING, _ARRAY = 8, 9
_U32, _U64 = struct.Struct("<I"), struct.Struct("<Q")


@dataclass(frozen=True)
class GGUFTensorInfo:
    """One tensor of a GGUF file; `shape` is in torch order (the reverse of GGUF's `ne`)."""

    name: str
    type_id: int
    type_name: str
    shape: tuple[int, ...]  # weights: [out_features, in_features]
    offset: int  # absolute byte offset in the file
    nbytes: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


class _Reader:
    """Bounds-checked little-endian reads from the header part of the file."""

    def __init__(self, buf: memoryview, path: Path):
        self.buf, self.path, self.pos = buf, path, 0

    def _need(self, n: int, what: str) -> None:
        if self.pos + n > len(self.buf):
            raise CorruptFileError(f"{self.path}: truncated GGUF header (reading {what} past end of file)")

    def u32(self, what: str) -> int:
        self._need(4, what)
        (v,) = _U32.unpack_from(self.buf, self.pos)
        self.pos += 4
        return v

    def u64(self, what: str) -> int:
        self._need(8, what)
        (v,) = _U64.unpack_from(self.buf, self.pos)
        self.pos += 8
        return v

    def string(self, what: str) -> str:
        n = self.u64(what)
        self._need(n, what)
        # surrogateescape: token strings that are not valid UTF-8 keep their bytes.
        s = str(self.buf[self.pos : self.pos + n], "utf-8", "surrogateescape")
        self.pos += n
        return s

    def value(self, vtype: int, what: str) -> Any:
        if vtype == _STRING:
            return self.string(what)
        if vtype == _ARRAY:
            etype, count = self.u32(what), self.u64(what)
            if etype in _NUMERIC:
                return self._numeric(_NUMERIC[etype], count, what).tolist()
            return [self.value(etype, what) for _ in range(count)]
        if vtype in _NUMERIC:
            return self._numeric(_NUMERIC[vtype], 1, what)[0].item()
        raise CorruptFileError(f"{self.path}: unknown metadata value type {vtype} in {what}")

    def _numeric(self, dtype: np.dtype, count: int, what: str) -> np.ndarray:
        self._need(count * dtype.itemsize, what)
        arr = np.frombuffer(self.buf, dtype=dtype, count=count, offset=self.pos)
        self.pos += count * dtype.itemsize
        return arr


class GGUFFile:
    """A GGUF file: `.metadata`, `.tensors` (name -> GGUFTensorInfo), `.load(name)`."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            with open(self.path, "rb") as f:
                magic = f.read(4)
                if magic != GGUF_MAGIC:
                    raise CorruptFileError(
                        f"{self.path}: not a GGUF file (magic {magic!r}, expected {GGUF_MAGIC!r})"
                    )
                # Copy-on-write: pages are shared with the page cache until written (never),
                # and the mapping is writable so torch.frombuffer can view it without a warning.
                self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        except FileNotFoundError as e:
            raise ModelNotFoundError(f"{self.path}: GGUF file not found") from e
        except OSError as e:
            raise CorruptFileError(f"{self.path}: cannot read GGUF file ({e.strerror})") from e
        self.file_size = len(self._mm)
        buf = memoryview(self._mm)
        try:
            self._parse(_Reader(buf, self.path))
        except BaseException:
            buf.release()
            self._mm.close()
            raise
        buf.release()

    def _parse(self, r: _Reader) -> None:
        r.pos = 4
        self.version = r.u32("version")
        if self.version not in SUPPORTED_VERSIONS:
            swapped = self.version & 0xFFFF == 0 and self.version >> 16 != 0
            detail = "big-endian GGUF" if swapped else f"GGUF version {self.version}"
            raise UnsupportedModelError(
                f"{self.path}: unsupported {detail}; supported: little-endian GGUF versions "
                f"{', '.join(map(str, SUPPORTED_VERSIONS))}"
            )
        num_tensors, num_kv = r.u64("tensor count"), r.u64("metadata count")
        self.metadata: dict[str, Any] = {}
        for i in range(num_kv):
            key = r.string(f"metadata key #{i}")
            self.metadata[key] = r.value(r.u32(key), key)
        infos = [self._tensor_info(r) for _ in range(num_tensors)]
        alignment = int(self.metadata.get("general.alignment", DEFAULT_ALIGNMENT))
        if alignment <= 0:
            raise CorruptFileError(f"{self.path}: invalid general.alignment {alignment}")
        self.data_offset = -(-r.pos // alignment) * alignment
        self.tensors: dict[str, GGUFTensorInfo] = {}
        for name, type_id, shape, rel_offset, nbytes in infos:
            start = self.data_offset + rel_offset
            if start + nbytes > self.file_size:
                raise CorruptFileError(
                    f"{self.path}: truncated file: tensor {name!r} needs bytes {start}..{start + nbytes}"
                    f" but the file has {self.file_size}"
                )
            t = GGML_TYPES[type_id]
            self.tensors[name] = GGUFTensorInfo(name, type_id, t.name, shape, start, nbytes)

    def _tensor_info(self, r: _Reader) -> tuple[str, int, tuple[int, ...], int, int]:
        name = r.string("tensor name")
        ndim = r.u32(name)
        ne = [r.u64(name) for _ in range(ndim)]
        type_id = r.u32(name)
        rel_offset = r.u64(name)
        t = GGML_TYPES.get(type_id)
        if t is None:
            known = ", ".join(f"{k}={v.name}" for k, v in GGML_TYPES.items())
            raise UnsupportedModelError(
                f"{self.path}: tensor {name!r} has unknown ggml type id {type_id}; known: {known}"
            )
        numel = math.prod(ne)
        if ne and ne[0] % t.block_size:
            raise CorruptFileError(
                f"{self.path}: tensor {name!r} of type {t.name} has rows of {ne[0]} weights,"
                f" not a multiple of the block size {t.block_size}"
            )
        return name, type_id, tuple(reversed(ne)), rel_offset, numel // t.block_size * t.type_size

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", ""))

    def load(self, name: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The tensor `name`, dequantized to `dtype`, in torch-order shape; owns its memory."""
        info = self.tensors.get(name)
        if info is None:
            raise WeightMismatchError(f"{self.path}: no tensor named {name!r}")
        if info.nbytes == 0:
            return torch.empty(info.shape, dtype=dtype)
        raw = torch.frombuffer(self._mm, dtype=torch.uint8, count=info.nbytes, offset=info.offset)
        return dequantize(raw, info.type_name, dtype).reshape(info.shape)

    def check_dequantizable(self) -> None:
        """Raises UnsupportedModelError, before anything loads, if a tensor type cannot be decoded."""
        bad = sorted({t.type_name for t in self.tensors.values()} - set(DEQUANTIZABLE_TYPES))
        if bad:
            raise UnsupportedModelError(
                f"{self.path}: unsupported ggml tensor type(s) {', '.join(bad)}; "
                f"supported: {', '.join(DEQUANTIZABLE_TYPES)}"
            )

    def close(self) -> None:
        try:
            self._mm.close()
        except BufferError:
            pass  # a caller still holds a view; the map closes when that is collected

    def __enter__(self) -> "GGUFFile":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"GGUFFile({str(self.path)!r}, arch={self.architecture!r}, tensors={len(self.tensors)})"
