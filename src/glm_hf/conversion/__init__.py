"""Original THUDM/GLM checkpoints <-> glm-hf safetensors folders."""

from .checkpoint import CheckpointError, load_checkpoint_file, locate_checkpoint
from .convert import ConversionReport, convert_checkpoint
from .export import export_original
from .keys import ORIGINAL_TO_HF, find_backbone, hf_to_original_key, original_to_hf_key, original_to_hf_state_dict
from .merge import merge_partitions, split_partitions

__all__ = [
    "ORIGINAL_TO_HF",
    "CheckpointError",
    "ConversionReport",
    "convert_checkpoint",
    "export_original",
    "find_backbone",
    "hf_to_original_key",
    "load_checkpoint_file",
    "locate_checkpoint",
    "merge_partitions",
    "original_to_hf_key",
    "original_to_hf_state_dict",
    "split_partitions",
]
