"""glm-hf folder -> the original checkpoint layout, so weights fine-tuned here can go back to the original code.

Writes `latest_checkpointed_iteration.txt` ("release") and `release/mp_rank_XX_model_states.pt`, each a dict with
the original `module` state dict (split over `mp` ranks as Megatron splits GLM) and `mp_world_size`, which the
original `load_checkpoint` reads. Converting the result back gives the same tensors bit for bit.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path

import torch
from safetensors import safe_open
from tqdm.auto import tqdm

from ..progress import is_long_work
from .atomic import atomic_output_folder, check_output_location, check_replaceable
from .checkpoint import TRACKER_FILE, CheckpointError
from .keys import hf_to_original_key
from .merge import split_partitions
from .safetensors_writer import read_weight_files

RELEASE_TAG = "release"


def read_converted_folder(folder: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """The config dict and the original-named backbone tensors of a converted glm-hf folder."""
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"{folder} has no config.json: not a converted GLM folder.")
    config = json.loads(config_file.read_text())
    if config.get("model_type") != "glm_blocklm":
        raise CheckpointError(f"{folder} holds model_type {config.get('model_type')!r}, not 'glm_blocklm'.")
    if config.get("position_embedding_type", "learned") != "learned":
        raise CheckpointError(
            f"{folder} is a ChatGLM-6B model (rotary positions): export-original writes THUDM/GLM's Megatron layout, "
            "which has no such model. Use the converted folder itself, or export it as Hub remote code "
            "(glm-hf export-remote-code)."
        )
    tensors: dict[str, torch.Tensor] = {}
    for file in read_weight_files(folder):
        with safe_open(file, framework="pt") as handle:
            for key in handle.keys():
                name = hf_to_original_key(key)
                if name is not None:
                    tensors[name] = handle.get_tensor(key)
    return config, tensors


def is_original_layout(folder: Path) -> bool:
    """Whether `folder` is one `export_original` wrote: the tracker file and release/mp_rank_XX files only."""
    try:
        names = {path.name for path in folder.iterdir()}
        shards = [path.name for path in (folder / RELEASE_TAG).iterdir()] if (folder / RELEASE_TAG).is_dir() else []
    except OSError:
        return False
    return names == {TRACKER_FILE, RELEASE_TAG} and all(
        name.startswith("mp_rank_") and name.endswith("_model_states.pt") for name in shards
    )


def export_original(
    folder: str | Path, output: str | Path, mp: int = 1, overwrite: bool = False, force: bool = False
) -> list[Path]:
    """Write the model in `folder` in the original layout at `output`, split over `mp` model-parallel ranks.

    `overwrite` replaces an earlier export (`is_original_layout`), `force` whatever is at `output`."""
    folder, output = Path(folder), Path(output)
    if mp < 1:
        raise ValueError(f"--mp must be at least 1, got {mp}.")
    check_output_location(output, [folder])
    check_replaceable(output, overwrite, is_original_layout, force)
    config, tensors = read_converted_folder(folder)
    if config["num_attention_heads"] % mp:
        raise ValueError(f"{config['num_attention_heads']} attention heads cannot be split over --mp {mp} ranks.")

    shards: list[OrderedDict[str, torch.Tensor]] = [OrderedDict() for _ in range(mp)]
    quiet = not is_long_work(sum(tensor.numel() * tensor.element_size() for tensor in tensors.values()))
    for name, tensor in tqdm(sorted(tensors.items()), desc="Splitting", unit="tensor", disable=quiet):
        for rank, part in enumerate(split_partitions(name, tensor, mp)):
            shards[rank][name] = part

    written = []
    with atomic_output_folder(
        output, overwrite, sources=[folder], replaceable=is_original_layout, force=force
    ) as staging:
        (staging / TRACKER_FILE).write_text(RELEASE_TAG)
        (staging / RELEASE_TAG).mkdir()
        for rank, module in enumerate(shards):
            path = staging / RELEASE_TAG / f"mp_rank_{rank:02d}_model_states.pt"
            torch.save({"module": module, "mp_world_size": mp, "iteration": 0}, path)
            written.append(output / RELEASE_TAG / path.name)
    return written
