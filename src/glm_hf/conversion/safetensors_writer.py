"""Writing (sharded) safetensors one tensor at a time, so that memory stays bounded by the largest tensor.

`safetensors.torch.save_file` needs every tensor of a shard in memory at once; converting glm-10b (20 GB) on a
24 GiB machine cannot afford that, so this writes the format directly: an 8-byte little-endian header length, the
JSON header (names, dtypes, shapes, byte offsets), then the raw bytes of each tensor in header order.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

SAFETENSORS_DTYPES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


@dataclass
class PlannedTensor:
    """A tensor to write: its name, shape and dtype up front, its values produced only when written."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    produce: Callable[[], torch.Tensor]

    @property
    def nbytes(self) -> int:
        count = 1
        for size in self.shape:
            count *= size
        return count * torch.empty((), dtype=self.dtype).element_size()


def parse_size(size: str | int) -> int:
    """Bytes of a size like "5GB" (10^9), "500MiB" (2^20) or "8Gb" (bits), as transformers reads `max_shard_size`."""
    if isinstance(size, int):
        return size
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(([KMGT]?)(i?)([Bb]))?\s*", size, flags=re.IGNORECASE)
    if not match or (match.group(2) and match.group(5) not in "Bb"):
        raise ValueError(f"Cannot read the size {size!r}; write it like 5GB, 500MB or 2GiB.")
    number = float(match.group(1))
    prefix, binary, unit = (match.group(3) or "").upper(), match.group(4), match.group(5) or "B"
    exponent = "KMGT".index(prefix) + 1 if prefix else 0
    scale = (2**10 if binary else 10**3) ** exponent
    return int(number * scale / (8 if unit == "b" else 1))


def plan_shards(tensors: list[PlannedTensor], max_shard_size: int) -> list[list[PlannedTensor]]:
    """Group tensors, in order, into shards of at most `max_shard_size` bytes (a larger tensor gets its own)."""
    shards: list[list[PlannedTensor]] = [[]]
    current = 0
    for tensor in tensors:
        if shards[-1] and current + tensor.nbytes > max_shard_size:
            shards.append([])
            current = 0
        shards[-1].append(tensor)
        current += tensor.nbytes
    return shards


def write_safetensors_file(path: Path, tensors: list[PlannedTensor], progress: tqdm | None = None) -> None:
    """Write one safetensors file, producing and releasing one tensor at a time."""
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for tensor in tensors:
        header[tensor.name] = {
            "dtype": SAFETENSORS_DTYPES[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + tensor.nbytes],
        }
        offset += tensor.nbytes
    header_bytes = json.dumps(header, separators=(",", ":")).encode()
    header_bytes += b" " * (-len(header_bytes) % 8)
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(header_bytes)))
        handle.write(header_bytes)
        for tensor in tensors:
            values = tensor.produce()
            if tuple(values.shape) != tensor.shape or values.dtype != tensor.dtype:
                raise ValueError(
                    f"{tensor.name}: produced {tuple(values.shape)} {values.dtype}, planned {tensor.shape} "
                    f"{tensor.dtype}."
                )
            handle.write(values.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().data)
            del values
            if progress is not None:
                progress.update(1)


def write_sharded_safetensors(
    folder: Path, tensors: list[PlannedTensor], max_shard_size: int | str, show_progress: bool = True
) -> list[str]:
    """Write `model.safetensors`, or `model-0000i-of-0000n.safetensors` + the index when one file is too big."""
    shards = plan_shards(tensors, parse_size(max_shard_size))
    names = (
        [SINGLE_FILE]
        if len(shards) == 1
        else [f"model-{index:05d}-of-{len(shards):05d}.safetensors" for index in range(1, len(shards) + 1)]
    )
    with tqdm(total=len(tensors), desc="Writing tensors", unit="tensor", disable=not show_progress) as progress:
        for name, shard in zip(names, shards, strict=True):
            write_safetensors_file(folder / name, shard, progress)
    if len(shards) > 1:
        index = {
            "metadata": {"total_size": sum(tensor.nbytes for tensor in tensors)},
            "weight_map": {tensor.name: name for name, shard in zip(names, shards, strict=True) for tensor in shard},
        }
        (folder / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
        names.append(INDEX_FILE)
    return names


def read_weight_files(folder: Path) -> Iterable[Path]:
    """The safetensors files of a saved model folder, via its index when it has one."""
    index = folder / INDEX_FILE
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        files = [folder / name for name in dict.fromkeys(weight_map.values())]
    else:
        files = [folder / SINGLE_FILE]
    missing = [str(file) for file in files if not file.is_file()]
    if missing:
        raise FileNotFoundError(f"Missing weight file(s) in {folder}: {', '.join(missing)}")
    return files
