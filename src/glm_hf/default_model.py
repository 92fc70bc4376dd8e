"""The embedded default GLM: a small model trained with `glm-hf pretrain`, shipped inside the package.

`glm-hf demo`, `glm-hf infill` and `glm-hf show-batch` use it when no model folder is given, so they run offline on a
fresh machine. Its folder is an ordinary `from_pretrained` folder (fp16 safetensors, the BERT uncased tokenizer, a
model card with the training data, configuration, losses and held-out accuracy); `examples/train_default_model.py`
rebuilds it.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, PreTrainedTokenizerBase

from .modeling import GLMForConditionalGeneration
from .progress import transformers_progress_bars

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "default_glm"
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


def default_model_folder() -> Path:
    """The packaged model's folder; a clear error when the installation lacks its files."""
    missing = [name for name in REQUIRED_FILES if not (DEFAULT_MODEL_DIR / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"The embedded default model is incomplete ({', '.join(missing)} missing in {DEFAULT_MODEL_DIR}). "
            "Reinstall glm-hf, or rebuild it with examples/train_default_model.py."
        )
    return DEFAULT_MODEL_DIR


def default_model_and_tokenizer(
    dtype: torch.dtype | str = torch.float32,
) -> tuple[GLMForConditionalGeneration, PreTrainedTokenizerBase]:
    """The embedded default model (in eval mode, `dtype`, or "auto": fp16, as stored) and its tokenizer."""
    folder = default_model_folder()
    with transformers_progress_bars(False):  # 9 MB: no "Loading weights" bar
        model = AutoModelForSeq2SeqLM.from_pretrained(folder, dtype=dtype).eval()
    return model, AutoTokenizer.from_pretrained(folder)


__all__ = ["DEFAULT_MODEL_DIR", "default_model_and_tokenizer", "default_model_folder"]
