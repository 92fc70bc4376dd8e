"""Finding and safely loading original GLM checkpoints (released, flat, single-file and THUDM Hub layouts).

The released files are pickles that also hold numpy RNG states, so `torch.load(weights_only=True)` refuses them.
We never fall back to arbitrary unpickling: exactly the numpy globals GLM checkpoints need are allow-listed (under
numpy 2's `numpy._core` and numpy 1.x's `numpy.core` names, since the releases were pickled with numpy 1.x), and
anything else is refused with an error naming the global and `--trust-remote-pickle`.
"""

from __future__ import annotations

import _compat_pickle
import io
import json
import pickletools
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

TRACKER_FILE = "latest_checkpointed_iteration.txt"
SHARD_PATTERN = re.compile(r"^mp_rank_(\d+)_model_states\.pt$")
HUB_WEIGHTS_FILE = "pytorch_model.bin"


class CheckpointError(ValueError):
    """An original checkpoint that cannot be read or converted; the message says what and what to do."""


def _numpy_safe_globals() -> list[Any]:
    """The numpy objects inside GLM's `np_rng_state`, under both numpy module names."""
    objects = {
        "multiarray._reconstruct": np._core.multiarray._reconstruct,
        "multiarray.ndarray": np.ndarray,
    }
    allowed: list[Any] = [np.ndarray, np.dtype, np._core.multiarray._reconstruct]
    for prefix in ("numpy.core", "numpy._core"):
        allowed += [(obj, f"{prefix}.{name}") for name, obj in objects.items()]
    allowed += [(np.ndarray, "numpy.ndarray"), (np.dtype, "numpy.dtype")]
    dtype_classes = {type(np.dtype(code)) for code in "?bBhHiIlLqQefdgFDGSUVO"}
    allowed += sorted(dtype_classes, key=lambda cls: cls.__name__)
    return allowed


SAFE_GLOBALS = _numpy_safe_globals()


@dataclass
class CheckpointSource:
    """The files of one original checkpoint: model-parallel shards in rank order, or one Hub weights file."""

    root: Path
    files: list[Path]
    layout: str  # "released", "flat", "file" or "hub"
    hub_config: dict[str, Any] | None = None


def locate_checkpoint(source: str | Path) -> CheckpointSource:
    """Find the weight files of `source`, which may be any of the layouts GLM was released in."""
    path = Path(source)
    if not path.exists():
        raise CheckpointError(f"{path} does not exist.")
    if path.is_file():
        return CheckpointSource(
            root=path.parent, files=[path], layout="hub" if path.name == HUB_WEIGHTS_FILE else "file"
        )

    if (path / HUB_WEIGHTS_FILE).is_file():
        return CheckpointSource(
            root=path, files=[path / HUB_WEIGHTS_FILE], layout="hub", hub_config=_read_json(path / "config.json")
        )
    layout, folder = "flat", path
    tracker = path / TRACKER_FILE
    if tracker.is_file():
        tag = tracker.read_text().strip()
        folder = path / tag
        if not tag or not folder.is_dir():
            raise CheckpointError(f"{tracker} names iteration/tag {tag!r}, but {folder} is not a folder.")
        layout = "released"
    shards = _rank_ordered_shards(folder)
    if not shards:
        raise CheckpointError(
            f"No GLM checkpoint in {path}: expected {TRACKER_FILE} with <tag>/mp_rank_XX_model_states.pt, "
            f"mp_rank_XX_model_states.pt files, or {HUB_WEIGHTS_FILE}."
        )
    return CheckpointSource(root=path, files=shards, layout=layout)


def _rank_ordered_shards(folder: Path) -> list[Path]:
    """The mp_rank_XX files of a folder, checked to be ranks 0..N-1 with none missing."""
    ranks = {}
    for file in folder.iterdir():
        match = SHARD_PATTERN.match(file.name)
        if match:
            ranks[int(match.group(1))] = file
    missing = sorted(set(range(max(ranks, default=-1) + 1)) - set(ranks))
    if missing:
        names = ", ".join(f"mp_rank_{rank:02d}_model_states.pt" for rank in missing)
        raise CheckpointError(f"Missing model-parallel shard(s) in {folder}: {names}.")
    return [ranks[rank] for rank in sorted(ranks)]


def _read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def load_checkpoint_file(path: Path, trust_remote_pickle: bool = False) -> Mapping[str, Any]:
    """`torch.load` one file on the CPU, allowing only the globals GLM checkpoints need.

    Zip-format files (every torch.save since 1.6) are memory-mapped, so tensors are read only when used; the
    legacy format is read whole.
    """
    mmap = zipfile.is_zipfile(path)
    try:
        if trust_remote_pickle:
            return torch.load(path, map_location="cpu", mmap=mmap, weights_only=False)
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", mmap=mmap, weights_only=True)
    except Exception as error:  # torch raises many types for a damaged or refused file
        refused = next(iter(disallowed_globals(path)), None) if not trust_remote_pickle else None
        if refused is not None:
            raise CheckpointError(
                f"{path} holds a call to {refused}, which no GLM checkpoint contains and which would run code if "
                "the file were unpickled; nothing was executed. If you trust the file, --trust-remote-pickle "
                "(trust_remote_pickle=True) loads it."
            ) from None
        raise _unreadable(path, error) from None


def pickled_globals(path: Path) -> list[str]:
    """The `module.name` globals a torch checkpoint's pickle refers to, read from its opcodes without executing any
    (zip format: the `data.pkl` member; legacy format: the pickles at the start of the file)."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            member = next((name for name in archive.namelist() if name.endswith("data.pkl")), None)
            streams = [io.BytesIO(archive.read(member))] if member else []
            count = 1
    else:
        streams = [open(path, "rb")]  # noqa: SIM115 (closed below)
        count = 4  # magic number, protocol, sys info, then the object
    found: list[str] = []
    for stream in streams:
        with stream:
            for _ in range(count):
                strings: list[str] = []
                try:
                    for opcode, argument, _ in pickletools.genops(stream):
                        if opcode.name == "GLOBAL":
                            found.append(_python3_name(*str(argument).split(" ", 1)))
                        elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                            found.append(_python3_name(strings[-2], strings[-1]))
                        elif isinstance(argument, str):
                            strings.append(argument)
                except Exception:  # noqa: BLE001 (the end of the pickles, or damage: what was read is the answer)
                    break
    return list(dict.fromkeys(found))


def _python3_name(module: str, name: str) -> str:
    """`module.name` as Python 3 imports it (protocol-2 pickles write Python 2's `__builtin__`, `copy_reg`)."""
    return f"{_compat_pickle.IMPORT_MAPPING.get(module, module)}.{name}"


def disallowed_globals(path: Path) -> list[str]:
    """The globals of `path`'s pickle that the safe loader refuses (neither in torch's weights-only set nor GLM's
    numpy ones): a `posix.system`, `builtins.eval`, ... that unpickling would call."""
    ours = {obj[1] if isinstance(obj, tuple) else f"{obj.__module__}.{obj.__qualname__}" for obj in SAFE_GLOBALS}
    try:
        from torch._weights_only_unpickler import _get_allowed_globals

        torch_allowed: set[str] | None = set(_get_allowed_globals())
    except (ImportError, AttributeError):  # torch moved it: judge by the modules a checkpoint's globals come from
        torch_allowed = None
    try:
        names = pickled_globals(path)
    except (OSError, zipfile.BadZipFile):
        return []

    def refused(name: str) -> bool:
        if name in ours:
            return False
        if torch_allowed is None:
            return not name.startswith(("torch.", "collections.", "numpy.", "_codecs."))
        return name not in torch_allowed

    return [name for name in names if refused(name)]


def _unreadable(path: Path, error: Exception) -> CheckpointError:
    return CheckpointError(
        f"{path} is not a readable PyTorch checkpoint ({type(error).__name__}: {error}); "
        "is it truncated, corrupt, or not a checkpoint?"
    )


def model_state_dict(loaded: Mapping[str, Any], path: Path) -> Mapping[str, torch.Tensor]:
    """The tensors of a loaded file: its `module` dict (Megatron/DeepSpeed files) or the file itself (Hub files)."""
    state = loaded.get("module", loaded) if isinstance(loaded, Mapping) else None
    if not isinstance(state, Mapping) or not state or not all(torch.is_tensor(value) for value in state.values()):
        raise CheckpointError(f"{path} holds no GLM weights (no `module` dict of tensors).")
    return state
