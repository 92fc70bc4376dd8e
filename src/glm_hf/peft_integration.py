"""PEFT on GLM: default LoRA targets, and GLM's 2D positions under prompt tuning, P-Tuning and prefix tuning.

`import glm_hf` calls `register_glm_with_peft()` when peft is installed, so a plain `peft.get_peft_model(model,
config)` works on a GLM:

- LoRA (and AdaLoRA, LoHa, LoKr, IA3) need no `target_modules`: the defaults below are registered for
  `model_type="glm_blocklm"` in PEFT's tables.
- Prompt learning prepends n virtual tokens (prompt tuning, P-Tuning) or n cached key/value columns (prefix tuning).
  PEFT 0.21 drops `position_ids` for the first two (with a warning), adds n to them for prefix tuning, and passes
  `block_position_ids` and `prefix_length` on unchanged. For a GLM base model that step is replaced: the virtual
  columns sit in Part A at positions 0..n-1 with block position 0, real tokens' positions and `prefix_length` move
  by n and their block positions stay, in training and in every `generate()` step
  (`shift_positions_for_virtual_tokens` in the model file holds the rule; other models keep PEFT's behaviour).
"""

from __future__ import annotations

import functools
import sys
import warnings
from typing import Any

from .modeling.configuration_glm import GLMConfig
from .modeling.modeling_glm import shift_positions_for_virtual_tokens

# LoRA on every linear layer of the blocks: the fused attention projection `query_key_value`, the attention output
# `dense` (named with its parent, so that a classification head's `dense` stays out), and the MLP's `dense_h_to_4h` /
# `dense_4h_to_h`. Adapting the MLP too is what comes closest to full fine-tuning (QLoRA, Dettmers et al. 2023);
# pass `target_modules=["query_key_value"]` for the smallest adapter.
GLM_LORA_TARGET_MODULES = ["query_key_value", "attention.dense", "dense_h_to_4h", "dense_4h_to_h"]
# IA3 rescales the fused attention projection's outputs and the input of the MLP's output layer, as for BLOOM.
GLM_IA3_TARGET_MODULES = ["query_key_value", "mlp.dense_4h_to_h"]
GLM_IA3_FEEDFORWARD_MODULES = ["mlp.dense_4h_to_h"]

# PEFT's tables of default targets (names in `peft.utils.constants`) and what GLM registers in each.
_DEFAULT_TARGETS = {
    "TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING": GLM_LORA_TARGET_MODULES,
    "TRANSFORMERS_MODELS_TO_ADALORA_TARGET_MODULES_MAPPING": GLM_LORA_TARGET_MODULES,
    "TRANSFORMERS_MODELS_TO_LOHA_TARGET_MODULES_MAPPING": GLM_LORA_TARGET_MODULES,
    "TRANSFORMERS_MODELS_TO_LOKR_TARGET_MODULES_MAPPING": GLM_LORA_TARGET_MODULES,
    "TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING": GLM_IA3_TARGET_MODULES,
    "TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING": GLM_IA3_FEEDFORWARD_MODULES,
}

# Prompt-learning methods whose virtual columns are cached keys/values rather than prepended embeddings.
_CACHED_PREFIX_METHODS = ("PREFIX_TUNING", "CARTRIDGE")
# `prefix_length` meaning "every column is Part A" (the default of a first pass, which a prefix cache hides).
WHOLE_INPUT_IS_PART_A = sys.maxsize


def is_glm_model(model: Any) -> bool:
    """Whether `model` (a transformers model, e.g. a PEFT model's base model) is a GLM of this package."""
    return getattr(getattr(model, "config", None), "model_type", None) == GLMConfig.model_type


def _cached_length(cache: Any) -> int:
    """Columns in a transformers `Cache` or a legacy tuple of (key, value) pairs; 0 for `None`."""
    if cache is None:
        return 0
    if hasattr(cache, "get_seq_length"):
        return int(cache.get_seq_length())
    return int(cache[0][0].shape[-2]) if len(cache) else 0


def glm_prompt_learning_kwargs(
    peft_type: str, num_virtual_tokens: int, kwargs: dict[str, Any], positions_from_ids: bool = False
) -> None:
    """Give a GLM's position kwargs (in place) the n virtual tokens of a prompt-learning method.

    Prompt tuning / P-Tuning on a first pass (no cache, or an empty one): the n prompt embeddings are prepended,
    so `position_ids` / `block_position_ids` get n leading columns. Decoding steps after them, and every step of
    prefix tuning (the n columns live in the cache): positions shift only. `prefix_length` counts the n columns in
    both cases; prefix tuning with no `prefix_length` makes the whole real input Part A, as a first pass without
    PEFT does. The column indices `mask_positions` of `GLMForMultipleChoice`'s single-token cloze move with
    prepended columns.

    `positions_from_ids` (ChatGLM, whose P-Tuning v2 prefix is this cached prefix): positions do not move, as in
    the original; only a given `prefix_length` counts the n columns (without one, the model makes the cached
    columns and the prompt's context the prefix).
    """
    cached_prefix = str(getattr(peft_type, "value", peft_type)) in _CACHED_PREFIX_METHODS
    if cached_prefix and positions_from_ids:
        if kwargs.get("prefix_length") is not None:
            kwargs["prefix_length"] = kwargs["prefix_length"] + num_virtual_tokens
        return
    cache = kwargs.get("past_key_values", kwargs.get("cache"))  # `cache` from transformers 5.24 on
    prepend = not cached_prefix and _cached_length(cache) == 0
    position_ids, block_position_ids, prefix_length = shift_positions_for_virtual_tokens(
        num_virtual_tokens,
        kwargs.get("position_ids"),
        kwargs.get("block_position_ids"),
        kwargs.get("prefix_length"),
        prepend=prepend,
    )
    if cached_prefix and prefix_length is None:
        prefix_length = WHOLE_INPUT_IS_PART_A
    if prepend and kwargs.get("mask_positions") is not None:  # `GLMForMultipleChoice` reads logits at these columns
        kwargs["mask_positions"] = kwargs["mask_positions"] + num_virtual_tokens
    for key, value in (
        ("position_ids", position_ids),
        ("block_position_ids", block_position_ids),
        ("prefix_length", prefix_length),
    ):
        if value is not None or key in kwargs:
            kwargs[key] = value


def register_glm_with_peft() -> bool:
    """Register GLM's default PEFT targets and its prompt-learning positions with the installed peft (idempotent).

    Returns False when peft is not installed (nothing to do).
    """
    try:
        import peft
        import peft.utils.constants as peft_constants
        from peft import PeftModel
    except ImportError:
        return False
    for table_name, targets in _DEFAULT_TARGETS.items():
        table = getattr(peft_constants, table_name, None)
        if table is not None:  # shared with the tuners, which imported the same dict
            table.setdefault(GLMConfig.model_type, list(targets))

    _take_turns_with_glm_generation(getattr(peft, "PeftModelForCausalLM", None))
    adjust = getattr(PeftModel, "_adjust_prompt_learning_kwargs", None)
    if adjust is None:  # LoRA still works; only prompt learning would lose GLM's positions
        warnings.warn(
            f"peft {getattr(peft, '__version__', '?')} has no PeftModel._adjust_prompt_learning_kwargs, where "
            "glm_hf gives prompt tuning, P-Tuning and prefix tuning GLM's positions: with this version they would "
            "drop position_ids. Install peft 0.21 (pip install 'peft>=0.21') before using them on GLM.",
            stacklevel=2,
        )
        return True
    if getattr(adjust, "_glm_hf_original", None) is None:

        @functools.wraps(adjust)
        def adjust_prompt_learning_kwargs(
            self: Any, peft_config: Any, *, kwargs: dict[str, Any], **options: Any
        ) -> None:
            if not is_glm_model(self.get_base_model()):
                return adjust(self, peft_config, kwargs=kwargs, **options)
            glm_prompt_learning_kwargs(
                peft_config.peft_type,
                peft_config.num_virtual_tokens,
                kwargs,
                positions_from_ids=self.get_base_model().config.positions_from_ids,
            )
            # generate() checked the ids before they moved by n: the forward checks them again
            self.get_base_model().base_model.run_flags.positions_prechecked = False
            return None

        adjust_prompt_learning_kwargs._glm_hf_original = adjust  # type: ignore[attr-defined]
        PeftModel._adjust_prompt_learning_kwargs = adjust_prompt_learning_kwargs
    return True


def _take_turns_with_glm_generation(peft_causal_lm: type | None) -> None:
    """Make `PeftModelForCausalLM.generate` on a GLM hold the model's generation lock for the whole run (idempotent).

    PEFT sets the base model's `prepare_inputs_for_generation` to its own (prompt learning's virtual tokens) before
    calling the base model's `generate()`, and sets the base model's own back after it. Under the lock, another
    thread's run cannot begin or end in between (it would take PEFT's inputs away from this run, or give them to a
    run without PEFT), and what was there before comes back: the outer run's, for a run nested in another on this
    thread; nothing, so that the base model is as it was (and takes its own fast paths again, without PEFT).
    """
    generate = getattr(peft_causal_lm, "generate", None)
    if generate is None or getattr(generate, "_glm_hf_original", None) is not None:
        return

    @functools.wraps(generate)
    def generate_in_turn(self: Any, *args: Any, **kwargs: Any) -> Any:
        base = self.get_base_model()
        lock = getattr(base, "generation_lock", None)
        if lock is None or not is_glm_model(base):
            return generate(self, *args, **kwargs)
        with lock:
            missing = object()
            before = vars(base).get("prepare_inputs_for_generation", missing)
            try:
                return generate(self, *args, **kwargs)
            finally:
                if before is missing:
                    vars(base).pop("prepare_inputs_for_generation", None)
                else:
                    base.prepare_inputs_for_generation = before

    generate_in_turn._glm_hf_original = generate  # type: ignore[attr-defined]
    peft_causal_lm.generate = generate_in_turn


__all__ = [
    "GLM_IA3_FEEDFORWARD_MODULES",
    "GLM_IA3_TARGET_MODULES",
    "GLM_LORA_TARGET_MODULES",
    "WHOLE_INPUT_IS_PART_A",
    "glm_prompt_learning_kwargs",
    "is_glm_model",
    "register_glm_with_peft",
]
