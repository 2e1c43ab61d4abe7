"""Streams tensors from single or sharded safetensors files, one tensor at a time."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import torch
from safetensors import safe_open

from floorline.errors import CorruptFileError, ModelNotFoundError


def safetensors_files(model_dir: Path) -> list[Path]:
    """The checkpoint's files: from `model.safetensors.index.json` when sharded, else every *.safetensors."""
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (ValueError, KeyError) as e:
            raise CorruptFileError(f"{index}: not a valid safetensors index ({e})") from None
        files = [model_dir / name for name in sorted(set(weight_map.values()))]
        absent = [f.name for f in files if not f.is_file()]
        if absent:
            raise ModelNotFoundError(f"{index} names shard(s) that are missing: {', '.join(absent[:3])}")
        return files
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise ModelNotFoundError(f"no *.safetensors files in {model_dir}")
    return files


def count_tensors(files: list[Path]) -> int:
    total = 0
    for f in files:
        with _open(f) as st:
            total += len(list(st.keys()))
    return total


def iter_safetensors(files: list[Path]) -> Iterator[tuple[str, torch.Tensor]]:
    """Yields (name, tensor) in file order; each tensor is read from the memory map when yielded."""
    for f in files:
        with _open(f) as st:
            for name in st.keys():
                try:
                    tensor = st.get_tensor(name)
                except Exception as e:  # safetensors raises its own error types
                    raise CorruptFileError(f"{f}: cannot read tensor {name} ({e})") from None
                yield name, tensor


def _open(path: Path):
    try:
        return safe_open(str(path), framework="pt")
    except Exception as e:  # header too short, bad JSON, data past the end of the file...
        raise CorruptFileError(f"{path}: not a valid safetensors file ({e})") from None
