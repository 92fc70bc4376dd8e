"""The original GLM (THUDM/GLM) as a transformers model: 2D positions, the mixed attention mask and a KV cache.

Architecture, as in the original `model/modeling_glm.py` + `mpu/transformer.py`:
embedding = word[input_ids] + position[position_ids] + block_position[block_position_ids]; pre-LayerNorm blocks
with a fused `query_key_value` projection (rows Q;K;V) and a tanh-GELU MLP; a final LayerNorm; logits through the
word embedding (tied head). Part A (the first `prefix_length` columns) is seen by every query in both directions,
every later column is causal. The loss is not shifted: Part B targets are already the next tokens.

ChatGLM-6B (THUDM/chatglm-6b) is the same model with four config switches: rotary 2-D positions instead of the
tables (`position_embedding_type="rotary"`), the DeepNorm residual `LN(x) * alpha + f(LN(x))`
(`deepnorm_alpha`), positions and the bidirectional context read from the [gMASK]/[MASK] and [sop] ids
(`positions_from_ids`), and a shifted loss (`shifted_loss`). Its per-head grouped `query_key_value` rows are
reordered to Q;K;V at conversion.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.modules import module as module_hooks
from transformers import TextIteratorStreamer, TextStreamer
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer, StaticCache
from transformers.configuration_utils import PreTrainedConfig
from transformers.generation import GenerationConfig, GenerationMixin, GenerationMode
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import (
    BaseModelOutputWithPast,
    CausalLMOutputWithPast,
    MultipleChoiceModelOutput,
    SequenceClassifierOutput,
)
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, PreTrainedModel
from transformers.utils import logging

from .captured_decoding import (
    DecodeSteps,
    autocast_dtypes,
    decode_on_static_cache,
    graph_capture_supported,
    parameter_pointers,
    static_cache_loop_applies,
)
from .chatglm_positions import chatglm_context_lengths, chatglm_position_ids, chatglm_step_position_ids
from .chatglm_rotary import ChatGLMRotaryEmbedding, apply_rotary
from .configuration_glm import GLMConfig
from .direct_layers import DirectLayers, calls_as_defined, direct_layers_apply, patched_on_instance, remember_calls

logger = logging.get_logger(__name__)

# transformers 5.24 renamed the cache: `generate()` hands it to `forward` as `cache` and the output classes hold it in
# a `cache` field (earlier releases: `past_key_values` both ways). The model takes either name and returns the cache
# in the field that the installed release declares.
CACHE_OUTPUT_FIELD = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"
# generate()'s own static caches hold a whole multiple of this many columns (one cache and graph for many lengths).
STATIC_CACHE_COLUMNS = 256
# What generate() compiles and keeps on the model: GLM's decode step (`captured_decoding`), transformers' compiled
# `__call__` and the config it was compiled with (`PreTrainedModel.get_compiled_call`). Never copied with the model.
COMPILED_GENERATION_STATE = ("_compiled_decode_step", "_compiled_call", "_last_compile_config")
# The name `generate()` takes a cache under without a deprecation warning.
_GENERATION_INPUTS = inspect.signature(GenerationMixin.prepare_inputs_for_generation).parameters
GENERATE_CACHE_KWARG = "cache" if "cache" in _GENERATION_INPUTS else "past_key_values"


def resolve_cache_argument(past_key_values: Cache | None, cache: Cache | None) -> Cache | None:
    """The cache a caller passed under either name (`past_key_values`, or `cache` from transformers 5.24 on)."""
    if past_key_values is not None and cache is not None and past_key_values is not cache:
        raise ValueError("Pass the cache once, as `cache` or as `past_key_values`, not both.")
    return cache if cache is not None else past_key_values


def keep_logit_columns(hidden_states: torch.Tensor, logits_to_keep: int | torch.Tensor) -> torch.Tensor:
    """The columns whose logits are computed: the last `logits_to_keep` (every column for 0), or those indexed by a
    1-D tensor (transformers' `logits_to_keep` convention)."""
    if isinstance(logits_to_keep, int):
        return hidden_states if logits_to_keep == 0 else hidden_states[:, -logits_to_keep:, :]
    return hidden_states[:, logits_to_keep, :]


# SDPA backends GLM allows where shapes change from call to call: not cuDNN attention, which builds a new execution
# plan for every new key length (about 0.5 ms of host time per call on an H200), i.e. at every decode step of every
# layer on a growing cache.
SDPA_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
NO_CONTEXT = nullcontext()  # reusable: entering it does nothing


def attention_backends(attn_implementation: str, fixed_shapes: bool = False) -> AbstractContextManager[None]:
    """The SDPA backends for one forward (`SDPA_BACKENDS`); nothing to choose for other implementations or inside a
    compiled graph (whose kernels were chosen when it was traced). With `fixed_shapes` (a decode step of generate()
    on the static cache it keeps: the same shapes at every step and run, and a captured step replays its plan) every
    backend may run, cuDNN included: for one query over 512 columns of glm-2b it takes 7 us on an H200, the
    memory-efficient kernel 18."""
    if attn_implementation != "sdpa" or torch.compiler.is_compiling() or fixed_shapes:
        return NO_CONTEXT
    return sdpa_kernel(SDPA_BACKENDS)


def additive_attention_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A boolean mask (True = attend) as SDPA's additive float mask (0 / -inf), the conversion SDPA would otherwise
    repeat in every layer (two kernels each)."""
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, float("-inf"))


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain softmax attention; `attention_mask` is boolean (True = attend), [B, 1, T, S]."""
    attn_weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        attn_weights = attn_weights.masked_fill(~attention_mask, torch.finfo(attn_weights.dtype).min)
    attn_weights = nn.functional.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query.dtype)
    attn_weights = nn.functional.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value).transpose(1, 2).contiguous()
    return attn_output, attn_weights


def sdpa_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """`scaled_dot_product_attention` with GLM's mask (boolean; on CUDA its additive form, converted once per
    forward by `GLMModel`); the output [B, T, heads, head_dim] is a view.

    The same kernel call as transformers' `sdpa_attention_forward`, without its checks for what GLM never has (grouped
    heads, a causal flag, position biases): those cost host time in every layer of every decode step."""
    attn_output = nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=attention_mask, dropout_p=dropout, scale=scaling
    )
    return attn_output.transpose(1, 2), None


# GLM's own attention functions; any other implementation is looked up in transformers' registry.
GLM_ATTENTION_FUNCTIONS: dict[str, Callable] = {"eager": eager_attention_forward, "sdpa": sdpa_attention_forward}


def resolve_attention_interface(attn_implementation: str) -> Callable:
    """The attention function of an implementation: GLM's own, else the one registered in transformers."""
    return GLM_ATTENTION_FUNCTIONS.get(attn_implementation) or ALL_ATTENTION_FUNCTIONS.get_interface(
        attn_implementation, eager_attention_forward
    )


def build_glm_attention_mask(
    query_positions: torch.Tensor,
    key_length: int,
    prefix_length: torch.Tensor,
    padding_mask: torch.Tensor | None,
) -> torch.Tensor:
    """GLM's mixed mask, boolean [B, 1, T, S] (True = attend).

    Column j is visible to the query at absolute position q when j < prefix (Part A, bidirectional) or j <= q
    (causal), and the padding mask keeps it. A row left with no visible column (a pad query in the causal part)
    is opened to every column so that softmax stays finite; its output is never used (the original gives such
    rows uniform weights).
    """
    key_positions = torch.arange(key_length, device=query_positions.device)
    causal = key_positions[None, :] <= query_positions[:, None]  # [T, S]
    filled = key_positions <= query_positions.max()  # a static cache's later columns are still empty
    in_prefix = (key_positions[None, :] < prefix_length[:, None]) & filled  # [B, S]
    mask = causal[None, :, :] | in_prefix[:, None, :]  # [B, T, S]
    if padding_mask is not None:
        mask = mask & padding_mask[:, None, :].bool()
    mask = mask | ~mask.any(dim=-1, keepdim=True)
    return mask[:, None, :, :]


def explicit_mask_to_bool(
    attention_mask: torch.Tensor, query_length: int, filled_length: int, key_length: int
) -> torch.Tensor:
    """A caller's 3-D/4-D mask over the `filled_length` cached + new columns as boolean [B, 1, T, key_length]:
    bool (True = attend) or additive float (0 = attend). `key_length` exceeds `filled_length` for static caches."""
    if attention_mask.dim() == 3:
        attention_mask = attention_mask[:, None]
    if attention_mask.shape[-2] != query_length or attention_mask.shape[-1] not in (key_length, filled_length):
        raise ValueError(
            f"The 4-D attention_mask has shape {tuple(attention_mask.shape)}, but this input needs "
            f"[batch, 1, {query_length}, {filled_length}] (query length x cached + new columns)."
        )
    if attention_mask.shape[-1] < key_length:  # a static cache holds unfilled columns beyond the mask: hide them
        fill = False if attention_mask.dtype == torch.bool else torch.finfo(attention_mask.dtype).min
        attention_mask = nn.functional.pad(attention_mask, (0, key_length - attention_mask.shape[-1]), value=fill)
    mask = attention_mask
    if mask.dtype != torch.bool:
        if (mask > 0).any():
            raise ValueError(
                "A float 4-D attention_mask is additive (0 = attend, negative = masked), but this one has positive "
                "values: it looks like the original's 1/0 mask. Pass it as a bool mask (mask > 0) instead."
            )
        mask = mask >= 0
    return mask | ~mask.any(dim=-1, keepdim=True)


class GLMDynamicLayer(DynamicLayer):
    """A `DynamicLayer` whose keys and values are views of buffers with spare columns, written in place.

    transformers' layer concatenates at every token, copying the whole cache per decode step (150 MB at 768 tokens
    of glm-large); this one copies only when the buffer is full, growing it by a quarter (at least 64 columns), so
    a step reads the cache instead of rewriting it. The first update allocates exactly (a forward that is not
    followed by decoding holds no spare columns). Beam search reorders the buffers; anything else that replaces
    `keys` (batch selection, repeat_interleave, offloading) is adopted at the next update, and `crop` keeps a view.
    States that require grad, new or cached, are concatenated as transformers does. Buffers made under
    `torch.inference_mode()` are copied to new ones before a write outside it (inference tensors are read-only there).
    """

    min_growth = 64

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.key_buffer: torch.Tensor | None = None
        self.value_buffer: torch.Tensor | None = None
        self._written: tuple[torch.Tensor | None, torch.Tensor | None] = (None, None)  # the views last handed out
        # The shapes, dtype and device of the states last written in place (they fit the buffers), and whether that
        # write was in inference mode.
        self._written_layout: tuple[torch.Size, torch.Size, torch.dtype, torch.device, bool] | None = None

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        super().lazy_initialization(key_states, value_states)
        self.key_buffer = self.value_buffer = None
        self._written = (None, None)
        self._written_layout = None

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        cached_grad = self.keys is not None and (self.keys.requires_grad or self.values.requires_grad)
        if key_states.requires_grad or value_states.requires_grad or cached_grad:
            # Autograd keeps the views a step returns; writing later tokens into their buffer would corrupt them.
            return super().update(key_states, value_states, *args, **kwargs)
        new_columns = key_states.shape[-2]
        if self._next_step_fits(key_states, value_states):  # a decode step like the last one: plain comparisons
            length = self.keys.shape[-2]
        else:
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            length = self.get_seq_length()
            total = length + new_columns
            if not self._buffers_hold(key_states, value_states, total):
                capacity = total if length == 0 else total + max(self.min_growth, total // 4)
                self.key_buffer = self._grown(self.keys, key_states, length, capacity)
                self.value_buffer = self._grown(self.values, value_states, length, capacity)
            self._written_layout = self._layout(key_states, value_states)
        total = length + new_columns
        self.key_buffer.narrow(-2, length, new_columns).copy_(key_states)
        self.value_buffer.narrow(-2, length, new_columns).copy_(value_states)
        self.keys = self.key_buffer.narrow(-2, 0, total)
        self.values = self.value_buffer.narrow(-2, 0, total)
        self._written = (self.keys, self.values)
        return self.keys, self.values

    def _next_step_fits(self, key_states: torch.Tensor, value_states: torch.Tensor) -> bool:
        """Whether `keys` and `values` are still the views last handed out, the new states are shaped and placed like
        the last ones written (so they fit the buffers' layout) and there is room for them."""
        written_keys, written_values = self._written
        return (
            self.keys is written_keys
            and self.values is written_values
            and self._layout(key_states, value_states) == self._written_layout
            and written_keys.shape[-2] + key_states.shape[-2] <= self.key_buffer.shape[-2]
        )

    @staticmethod
    def _layout(
        key_states: torch.Tensor, value_states: torch.Tensor
    ) -> tuple[torch.Size, torch.Size, torch.dtype, torch.device, bool]:
        """What a write in place depends on: the new states' shapes, dtype and device, and the inference mode."""
        inference = torch.is_inference_mode_enabled()
        return key_states.shape, value_states.shape, key_states.dtype, key_states.device, inference

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Reorder the buffers, spare columns included, so that the next token is still written in place (one copy
        per step instead of a reorder and a regrowth)."""
        length = self.get_seq_length()
        if length == 0 or not self._buffers_back_cache():
            super().reorder_cache(beam_idx)
            return
        self.key_buffer = self.key_buffer.index_select(0, beam_idx.to(self.key_buffer.device))
        self.value_buffer = self.value_buffer.index_select(0, beam_idx.to(self.value_buffer.device))
        self.keys = self.key_buffer[..., :length, :]
        self.values = self.value_buffer[..., :length, :]
        self._written = (self.keys, self.values)

    def _buffers_back_cache(self) -> bool:
        """Whether `keys` and `values` are still views of the buffers (nothing has replaced them since)."""
        written_keys, written_values = self._written
        if written_keys is not None and self.keys is written_keys and self.values is written_values:
            return True  # still the views the last update or reorder made: no layout to read
        pairs = ((self.key_buffer, self.keys), (self.value_buffer, self.values))
        return all(
            buffer is not None
            and current.data_ptr() == buffer.data_ptr()
            and current.stride() == buffer.stride()
            and current.shape[:-2] == buffer.shape[:-2]
            for buffer, current in pairs
        )

    def _buffers_hold(self, key_states: torch.Tensor, value_states: torch.Tensor, total: int) -> bool:
        """Whether the buffers back the cache and have room for `total` columns like the new states (plain
        comparisons: this runs in every layer of every decode step)."""
        if not self._buffers_back_cache():
            return False
        key_buffer, value_buffer = self.key_buffer, self.value_buffer
        writable = torch.is_inference_mode_enabled() or not (key_buffer.is_inference() or value_buffer.is_inference())
        return (
            writable
            and total <= key_buffer.shape[-2]
            and total <= value_buffer.shape[-2]
            and _same_layout(key_buffer, key_states)
            and _same_layout(value_buffer, value_states)
        )

    @staticmethod
    def _grown(current: torch.Tensor, new: torch.Tensor, length: int, capacity: int) -> torch.Tensor:
        """A buffer of `capacity` columns shaped like `new`, holding the first `length` columns of `current`."""
        buffer = new.new_empty((*new.shape[:-2], capacity, new.shape[-1]))
        if length:
            buffer[..., :length, :].copy_(current)
        return buffer


def _same_layout(buffer: torch.Tensor, states: torch.Tensor) -> bool:
    """Whether `states` fit `buffer` apart from the column count: batch, heads, head size, dtype and device."""
    buffer_shape, states_shape = buffer.shape, states.shape
    return (
        buffer_shape[:-2] == states_shape[:-2]
        and buffer_shape[-1] == states_shape[-1]
        and buffer.dtype == states.dtype
        and buffer.device == states.device
    )


class GLMDynamicCache(DynamicCache):
    """`DynamicCache` with `GLMDynamicLayer`s: the cache GLM's forward and `generate()` create by default."""

    def __init__(self, config: PreTrainedConfig) -> None:
        super().__init__(config=config)
        self.layers = [GLMDynamicLayer() for _ in self.layers]

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The layer's update, called directly when there is nothing else to do (no offloading, the layer exists):
        one Python call less in every layer of every decode step."""
        if self.offloading or layer_idx >= len(self.layers):
            return super().update(key_states, value_states, layer_idx, *args, **kwargs)
        return self.layers[layer_idx].update(key_states, value_states, *args, **kwargs)


class GLMResidualProjection(nn.Linear):
    """A projection that writes into the residual stream (attention `dense`, MLP `dense_4h_to_h`).

    Identical to `nn.Linear`; the type only tells `_init_weights` to use the original's scaled std.
    """


def new_cache_positions(query_length: int, past_length: int | torch.Tensor, device: torch.device) -> torch.Tensor:
    """Cache positions of `query_length` new columns after `past_length` cached ones (a static cache's length is a
    0-dim device tensor: added on the device, no host sync)."""
    return torch.arange(query_length, device=device) + past_length


def default_position_ids(
    cache_position: torch.Tensor, batch_size: int, attention_mask: torch.Tensor | None
) -> torch.Tensor:
    """Positions 0, 1, ... of the real tokens: from a 2-D padding mask when there is one, else the cache positions."""
    if attention_mask is None or attention_mask.dim() != 2:
        return cache_position.unsqueeze(0).expand(batch_size, -1)
    counted = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    return counted[:, -cache_position.shape[0] :]  # the mask covers cached + new columns; keep the new ones


def split_stacked_positions(
    position_ids: torch.Tensor | None, block_position_ids: torch.Tensor | None
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The original's stacked `[B, 2, T]` position ids as `(position_ids, block_position_ids)`, each `[B, T]`; other
    forms pass through."""
    if position_ids is None or position_ids.dim() != 3:
        return position_ids, block_position_ids
    if block_position_ids is not None:
        raise ValueError("Pass block_position_ids either inside a [B, 2, T] position_ids or alone, not both.")
    return position_ids[:, 0], position_ids[:, 1]


def shift_positions_for_virtual_tokens(
    num_virtual_tokens: int,
    position_ids: torch.Tensor | None,
    block_position_ids: torch.Tensor | None,
    prefix_length: int | torch.Tensor | None,
    prepend: bool,
) -> tuple[torch.Tensor | None, torch.Tensor | None, int | torch.Tensor | None]:
    """GLM positions of an input behind n virtual (soft-prompt) columns: prompt tuning, P-Tuning, prefix tuning.

    The virtual columns sit in Part A at positions 0..n-1 with block position 0, so the real tokens' positions and
    `prefix_length` move by n and their block positions stay (a Part B token's position is its mask's index + n).
    `prepend=True`: the virtual embeddings are prepended to this input, so the `[B, T]` ids (or the stacked
    `[B, 2, T]` form) also get the n virtual columns in front. `prepend=False`: the virtual columns are already in
    the cache (prefix tuning, or decoding after the prompt), so the ids only shift. `None` stays `None` (the defaults
    already count the virtual columns).
    """
    n = num_virtual_tokens
    if position_ids is not None and position_ids.dim() == 3 and block_position_ids is not None:
        # `GLMForMultipleChoice`'s one-row-per-candidate ids `[B, C, T]` (the stacked form never comes with block ids)
        if prepend:
            raise ValueError(
                "Soft-prompt embeddings cannot be prepended to one-row-per-candidate inputs [batch, choices, length]; "
                "use prefix tuning or LoRA for multi-token candidates, or single-token verbalizers."
            )
        prefix_length = prefix_length + n if prefix_length is not None else None
        return position_ids + n, block_position_ids, prefix_length
    position_ids, block_position_ids = split_stacked_positions(position_ids, block_position_ids)
    if position_ids is not None:
        position_ids = position_ids + n
        if prepend:
            virtual = torch.arange(n, device=position_ids.device, dtype=position_ids.dtype)
            position_ids = torch.cat([virtual.expand(position_ids.shape[0], -1), position_ids], dim=-1)
    if block_position_ids is not None and prepend:
        block_position_ids = nn.functional.pad(block_position_ids, (n, 0), value=0)
    if prefix_length is not None:
        prefix_length = prefix_length + n
    return position_ids, block_position_ids, prefix_length


def align_positions_to_input(
    position_ids: torch.Tensor | None,
    block_position_ids: torch.Tensor | None,
    prefix_length: int | torch.Tensor | None,
    query_length: int,
    past_length: int,
) -> tuple[torch.Tensor | None, torch.Tensor | None, int | torch.Tensor | None]:
    """Position ids shorter than a first-pass input by n: n soft-prompt embeddings were prepended to
    `inputs_embeds` (by hand, or by PEFT's prompt tuning, which passes our kwargs on unchanged). The given ids and
    `prefix_length` describe the real tokens; the n leading columns join Part A (`shift_positions_for_virtual_tokens`).
    """
    lengths = {ids.shape[-1] for ids in (position_ids, block_position_ids) if ids is not None}
    if not lengths or lengths == {query_length}:
        return position_ids, block_position_ids, prefix_length
    if len(lengths) > 1 or past_length > 0 or max(lengths) > query_length:
        raise ValueError(
            f"position_ids / block_position_ids cover {sorted(lengths)} columns but the input has {query_length} new "
            f"columns ({past_length} cached). Pass one position per new column; only a first pass may give fewer, "
            "when soft-prompt embeddings were prepended to inputs_embeds (the ids then describe the real tokens)."
        )
    num_virtual_tokens = query_length - lengths.pop()
    return shift_positions_for_virtual_tokens(
        num_virtual_tokens, position_ids, block_position_ids, prefix_length, prepend=True
    )


def real_token_index(attention_mask: torch.Tensor, length: int) -> torch.Tensor:
    """`[B, length]`: each of the last `length` columns' index among the real tokens of those columns (left pads
    0). Only the prompt's own columns count: a mask that also covers cached columns (a PEFT prefix) does not move
    them."""
    return (attention_mask[:, -length:].long().cumsum(-1) - 1).clamp(min=0)


def chatglm_prompt_positions(
    input_ids: torch.Tensor, config: GLMConfig, attention_mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """ChatGLM's `(position_ids, block_position_ids or None, context_lengths [B])` of prompts `[B, T]`.

    With a 2-D padding mask the positions count the real tokens (left pads take 0, the real tokens start at 0), as
    the original tokenizer's padded batches give them; without one they are column indices, pads included, as the
    original model derives them from the ids alone.
    """
    two_d = config.block_position_encoding
    positions = chatglm_position_ids(
        input_ids, config.mask_token_id, config.gmask_token_id, config.sop_token_id, position_encoding_2d=two_d
    )
    if attention_mask is not None and attention_mask.dim() == 2:
        columns = real_token_index(attention_mask, input_ids.shape[1]).gather(
            -1, positions[:, 0] if two_d else positions
        )
        positions = torch.stack((columns, positions[:, 1]), dim=1) if two_d else columns
    context_lengths = chatglm_context_lengths(input_ids, config.sop_token_id)
    if two_d:
        return positions[:, 0], positions[:, 1], context_lengths
    return positions, None, context_lengths


def chatglm_mask_positions(
    input_ids: torch.Tensor, config: GLMConfig, attention_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """`[B, 1]` index of each row's [gMASK] (else [MASK]), counting only real tokens under a 2-D padding mask: the
    position a 1-D ChatGLM gives every generated token (`chatglm_step_position_ids`)."""
    positions = chatglm_step_position_ids(
        input_ids, config.mask_token_id, config.gmask_token_id, config.sop_token_id, position_encoding_2d=False
    )
    if attention_mask is not None and attention_mask.dim() == 2:
        positions = real_token_index(attention_mask, input_ids.shape[1]).gather(-1, positions)
    return positions


class GLMPositionEmbeddings(nn.Module):
    """GLM's 2D positional encoding: a learned position table plus a learned block-position table, summed."""

    def __init__(self, config: GLMConfig):
        super().__init__()
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.block_position_embeddings = (
            nn.Embedding(config.max_position_embeddings, config.hidden_size)
            if config.block_position_encoding
            else None
        )

    def forward(self, position_ids: torch.Tensor, block_position_ids: torch.Tensor | None) -> torch.Tensor:
        embeddings = self.position_embeddings(position_ids)
        if self.block_position_embeddings is not None and block_position_ids is not None:
            embeddings = embeddings + self.block_position_embeddings(block_position_ids)
        return embeddings


class GLMAttention(nn.Module):
    """Multi-head self-attention with the original fused [3h, h] `query_key_value` projection (rows Q;K;V)."""

    def __init__(self, config: GLMConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.head_dim = config.head_dim
        self.scaling = self.head_dim**-0.5
        self.attention_dropout = config.attention_probs_dropout_prob
        self.is_causal = False  # the mixed mask is always passed explicitly
        self.query_key_value = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.dense = GLMResidualProjection(config.hidden_size, config.hidden_size)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None,
        past_key_values: Cache | None = None,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        attention_interface: Callable | None = None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`position_embeddings`: the rotary `(cos, sin)` of a rotary-position model (ChatGLM), else None.
        `attention_interface`: the attention function, resolved once per forward by `GLMModel` (reading the config
        in every layer costs host time at every decode step); looked up here when not given."""
        batch_size, query_length, _ = hidden_states.shape
        qkv_shape = (batch_size, query_length, 3, -1, self.head_dim)
        query_states, key_states, value_states = (
            self.query_key_value(hidden_states).view(qkv_shape).permute(2, 0, 3, 1, 4).unbind(0)
        )  # each [B, heads, T, head_dim]
        if position_embeddings is not None:  # keys are cached rotated, as the original caches them
            cos, sin = position_embeddings
            two_d = self.config.block_position_encoding
            query_states = apply_rotary(query_states, cos, sin, two_d)
            key_states = apply_rotary(key_states, cos, sin, two_d)

        if past_key_values is not None:
            key_states, value_states = past_key_values.update(key_states, value_states, self.layer_idx)

        if attention_interface is None:
            attention_interface = resolve_attention_interface(self.config._attn_implementation)
        # In training, activation checkpointing recomputes this call in the backward pass, outside the model's
        # `attention_backends`: choose them here too, so that the recomputation takes the forward's backend.
        backends = attention_backends(self.config._attn_implementation) if self.training else NO_CONTEXT
        with backends:
            attn_output, attn_weights = attention_interface(
                self,
                query_states,
                key_states,
                value_states,
                attention_mask,
                dropout=self.attention_dropout if self.training else 0.0,
                scaling=self.scaling,
                **kwargs,
            )
        return self.dense(attn_output.reshape(batch_size, query_length, -1)), attn_weights


class GLMMLP(nn.Module):
    """h -> 4h -> h with the tanh-approximated GELU."""

    def __init__(self, config: GLMConfig):
        super().__init__()
        self.dense_h_to_4h = nn.Linear(config.hidden_size, config.intermediate_size)
        self.dense_4h_to_h = GLMResidualProjection(config.intermediate_size, config.hidden_size)
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.dense_4h_to_h(self.act_fn(self.dense_h_to_4h(hidden_states)))


class GLMBlock(GradientCheckpointingLayer):
    """One transformer block: attention and MLP, each on a residual branch. GLM adds the branch to its input,
    `x + f(LN(x))`; ChatGLM's DeepNorm to the normalised input scaled up, `LN(x) * alpha + f(LN(x))`."""

    def __init__(self, config: GLMConfig, layer_idx: int):
        super().__init__()
        self.input_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attention = GLMAttention(config, layer_idx)
        self.post_attention_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = GLMMLP(config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.deepnorm_alpha = config.deepnorm_alpha

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        past_key_values: Cache | None = None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The branches inline (no helper calls, no dropout module call in eval, where it is the identity): this runs
        in every layer of every decode step."""
        alpha = self.deepnorm_alpha
        normed = self.input_layernorm(hidden_states)
        attn_output, attn_weights = self.attention(normed, attention_mask, past_key_values=past_key_values, **kwargs)
        if self.training:
            attn_output = self.dropout(attn_output)
        hidden_states = (hidden_states if alpha is None else normed * alpha) + attn_output

        normed = self.post_attention_layernorm(hidden_states)
        mlp_output = self.mlp(normed)
        if self.training:
            mlp_output = self.dropout(mlp_output)
        return (hidden_states if alpha is None else normed * alpha) + mlp_output, attn_weights


remember_calls(GLMBlock, GLMAttention, GLMMLP)  # DirectLayers reproduces these calls as they are defined here


class GLMPreTrainedModel(PreTrainedModel):
    config: GLMConfig
    config_class = GLMConfig
    base_model_prefix = "glm"
    supports_gradient_checkpointing = True
    _no_split_modules = ["GLMBlock"]
    _skip_keys_device_placement = ["past_key_values"]
    _supports_sdpa = True
    _supports_flash_attn = False  # flash-attention kernels drop GLM's custom mask
    _supports_flex_attn = False
    _supports_attention_backend = False

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """The original's init: N(0, 0.02) everywhere, output projections N(0, 0.02 / sqrt(2 layers)), zero biases."""
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            if isinstance(module, GLMResidualProjection):
                std = std / (2.0 * self.config.num_hidden_layers) ** 0.5
            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, ChatGLMRotaryEmbedding):  # a buffer outside the state dict: computed, never loaded
            init.copy_(module.inv_freq, module.frequencies())


class GenerationRunFlags:
    """What a `generate()` run tells the forward passes and decode steps it makes, for the thread running it
    (`thread`; runs of one model take turns, `GenerationLock`): a forward that another thread runs meanwhile reads
    `NO_RUN_FLAGS` instead (`for_this_thread`). A copy of the model starts with no run."""

    def __init__(self) -> None:
        self._set_defaults()

    def _set_defaults(self) -> None:
        self.thread: int | None = None  # the thread whose run set them; None between runs
        # Every position id the run can reach fits the tables (checked once up front): forwards on the run's cache
        # (`run_cache`) skip their per-call range check, a host-device sync. A forward of the caller's code in this
        # thread (a logits processor scoring with the model, a task head sharing the backbone) has other positions.
        # A run without a cache (use_cache=False) has None here: its forwards without a cache skip the check.
        self.positions_prechecked = False
        self.run_cache: Cache | None = None
        # Decode steps on a static cache of generate()'s own (the kept one: shapes fixed across steps and runs):
        # their attention may take cuDNN (`attention_backends`). A caller's cache, whose shapes change from call to
        # call (fill_blanks makes one per batch), keeps cuDNN out: its first plan for a new shape is slow.
        self.fixed_shape_decoding = False
        # No padding mask was given: no row is padded, so decode steps need no mask beyond GLM's own.
        self.padding_free = False
        # A 1-D ChatGLM's [B, 1] position of every new token (the index of the row's mask).
        self.held_positions: torch.Tensor | None = None
        # The run began inside another run on this thread (a logits processor, stopping criterion or streamer that
        # generates with the same model): the outer run may be decoding on the kept static cache.
        self.nested = False
        # The run decodes on a static cache generate() made for it (the kept one, or a nested run's own), not a
        # caller's: nothing outside the run reads it.
        self.own_static_cache = False
        # The caller passed the cache (`past_key_values` / `cache`): it outlives the run.
        self.caller_cache = False
        # The caller passed code that the loop calls with its tensors (`CALLBACK_ARGUMENTS`): it may keep them, or
        # need autograd.
        self.caller_callbacks = False
        # A forward hook was set when the run began (`forward_hooks_present`, looked at once per run): the run stays
        # out of inference mode and runs the blocks as modules, and its static-cache steps run eagerly, never from a
        # CUDA graph (a replay runs no Python, so the hook would not see it).
        self.forward_hooks = False
        # The run's forwards call the blocks' weights directly (`direct_layers`): set where that changes nothing.
        self.direct_layers: DirectLayers | None = None
        # The run keeps its forwards in step with other processes (`synced_gpus`, as transformers resolved it).
        self.synced_gpus = False
        # The run decodes in a caller's loop (`custom_generate`), not in GLM's or transformers' own.
        self.custom_decoding = False

    def for_this_thread(self) -> GenerationRunFlags:
        """These flags in the thread of their run, else `NO_RUN_FLAGS`; `NO_RUN_FLAGS` in compiled code too, where
        the forward's flags have no effect (its position check and SDPA backends are settled when a graph is traced):
        a compiled forward then neither checks the thread nor recompiles when a run begins or ends."""
        if not torch.compiler.is_compiling() and self.thread == threading.get_ident():
            return self
        return NO_RUN_FLAGS

    def begin(self) -> dict[str, Any]:
        """Take the flags, at their defaults, for a run in this thread; what they were, for `restore` when the run
        ends (a run nested in another on this thread gives the outer one its flags back)."""
        saved = dict(vars(self))
        self._set_defaults()
        self.thread = threading.get_ident()
        self.nested = saved["thread"] is not None  # the lock is this thread's: an open run is an outer one of ours
        return saved

    def restore(self, saved: dict[str, Any]) -> None:
        vars(self).update(saved)

    def __reduce__(self) -> tuple[type, tuple[()]]:
        return type(self), ()  # a copy of the model starts with no run


NO_RUN_FLAGS = GenerationRunFlags()  # what a forward outside any generate() run reads (never changed)


class GenerationLock:
    """Lets one `generate()` run of a model proceed at a time: runs share the model's kept static cache, captured
    decode steps and run flags. Re-entrant, so that a logits processor or streamer may generate with the same model
    (`GenerationRunFlags.nested`). A copy of the model gets a lock of its own."""

    def __init__(self) -> None:
        self._lock = threading.RLock()

    def __enter__(self) -> GenerationLock:
        self._lock.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._lock.release()

    def __reduce__(self) -> tuple[type, tuple[()]]:
        return type(self), ()  # a lock cannot be pickled; a copy's runs do not share this model's state


class GLMModel(GLMPreTrainedModel):
    """The GLM backbone: embeddings, blocks and the final LayerNorm; returns hidden states."""

    def __init__(self, config: GLMConfig):
        super().__init__(config)
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        rotary = config.position_embedding_type == "rotary"
        self.embed_positions = None if rotary else GLMPositionEmbeddings(config)
        self.rotary_emb = ChatGLMRotaryEmbedding(config.head_dim, config.block_position_encoding) if rotary else None
        self.embedding_dropout = nn.Dropout(config.embedding_dropout_prob)
        self.layers = nn.ModuleList([GLMBlock(config, layer_idx) for layer_idx in range(config.num_hidden_layers)])
        self.final_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.gradient_checkpointing = False
        # Set by `generate()` for its run, read by the forward; never model kwargs, so nothing leaks into generate().
        self.run_flags = GenerationRunFlags()
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.word_embeddings = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        block_position_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        prefix_length: int | torch.Tensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        cache_position: torch.LongTensor | None = None,
        cache: Cache | None = None,
        **kwargs: Any,
    ) -> BaseModelOutputWithPast | tuple:
        r"""
        position_ids / block_position_ids: [B, T]; `position_ids` may also be the original stacked [B, 2, T].
            Default: positions count the real tokens of a 2-D padding mask (so left padding does not shift them),
            else continue the cache (0..T-1 on a first pass); block positions 0. On a first pass they may be
            shorter than the input by n: n soft-prompt embeddings lead `inputs_embeds`, sit in Part A at positions
            0..n-1 (block 0), and the given ids and `prefix_length` (real tokens) move by n.
        attention_mask: [B, past + T] padding mask (1 = token), or an explicit [B, 1, T, past + T] mask, bool
            (True = attend) or additive float (0 = attend), that replaces GLM's mask.
        prefix_length: int or [B]: leading columns (Part A, left padding included) visible to every query, counted
            from the start of the cached sequence; later columns are causal. Default: the whole input on a first
            pass (bidirectional); with a cache, every cached column (new tokens are causal among themselves).
        cache: the same as `past_key_values` (the name `generate()` uses from transformers 5.24 on); pass one.
        """
        past_key_values = resolve_cache_argument(past_key_values, cache)
        run_flags = self.run_flags.for_this_thread()  # a generate() run's, when this forward is one of its own
        output_attentions = output_attentions if output_attentions is not None else self.config.output_attentions
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        use_cache = use_cache if use_cache is not None else self.config.use_cache
        if self.gradient_checkpointing and self.training and use_cache:
            logger.warning_once("use_cache=True is incompatible with gradient checkpointing; setting use_cache=False.")
            use_cache = False

        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids or inputs_embeds.")
        if inputs_embeds is None:
            inputs_embeds = self.word_embeddings(input_ids)
        batch_size, query_length = inputs_embeds.shape[:2]
        device = inputs_embeds.device

        if use_cache and past_key_values is None:
            past_key_values = GLMDynamicCache(config=self.config)
        if self.gradient_checkpointing and self.training and past_key_values is not None:
            raise ValueError(
                "Gradient checkpointing recomputes every layer without its KV cache (transformers drops it), so a "
                "given past_key_values (such as PEFT prefix tuning's prefix) cannot be trained through it. Disable "
                "gradient checkpointing, or use prompt tuning, P-Tuning or LoRA."
            )
        # A static cache's length is a 0-dim device tensor: added on the device (no host sync; compile traces it).
        past_length = past_key_values.get_seq_length() if past_key_values is not None else 0
        if self.config.positions_from_ids:
            position_ids, block_position_ids, prefix_length = self._prompt_positions(
                input_ids, position_ids, block_position_ids, attention_mask, prefix_length, past_length
            )
        position_ids, block_position_ids, prefix_length = align_positions_to_input(
            position_ids, block_position_ids, prefix_length, query_length, past_length
        )
        if cache_position is None and position_ids is None:  # made where read: a decode step reads none
            cache_position = new_cache_positions(query_length, past_length, device)
        position_ids, block_position_ids = self._resolve_positions(
            position_ids, block_position_ids, cache_position, batch_size, attention_mask
        )
        if self.embed_positions is not None:
            # On the run's cache; in a run without one (use_cache=False), a forward without one too.
            on_run_cache = past_key_values is run_flags.run_cache
            if not (on_run_cache and run_flags.positions_prechecked):
                self._check_position_range(position_ids, block_position_ids, past_length + query_length)
            hidden_states = inputs_embeds + self.embed_positions(position_ids, block_position_ids)
        else:  # rotary: the angles of these positions, applied to query and key in every layer
            hidden_states = inputs_embeds
            kwargs["position_embeddings"] = self.rotary_emb(position_ids, block_position_ids, inputs_embeds.dtype)
        if self.training:  # the identity in eval: no module call per decode step
            hidden_states = self.embedding_dropout(hidden_states)

        mask = self._build_mask(
            attention_mask,
            prefix_length,
            cache_position,
            past_key_values,
            batch_size,
            query_length,
            past_length,
            device,
        )
        attn_implementation = self.config._attn_implementation
        if mask is not None and attn_implementation == "sdpa" and device.type == "cuda":
            mask = additive_attention_mask(mask, inputs_embeds.dtype)  # once here, not in every layer
        fixed_shapes = run_flags.fixed_shape_decoding and query_length == 1
        if output_attentions and attn_implementation != "eager":
            logger.warning_once(
                f"output_attentions=True needs attn_implementation='eager'; {attn_implementation} "
                "returns None for the attention weights."
            )
        attention_interface = resolve_attention_interface(attn_implementation)  # once, not in every layer
        all_hidden_states: tuple[torch.Tensor, ...] | None = () if output_hidden_states else None
        all_attentions: tuple[torch.Tensor | None, ...] | None = () if output_attentions else None
        direct_layers = run_flags.direct_layers if not (output_hidden_states or output_attentions) else None
        with attention_backends(attn_implementation, fixed_shapes):
            if direct_layers is not None:  # the same ATen calls as the loop below, without the module machinery
                hidden_states = direct_layers(hidden_states, mask, past_key_values, attention_interface, kwargs)
            else:
                for layer in self.layers:
                    if all_hidden_states is not None:
                        all_hidden_states += (hidden_states,)
                    hidden_states, attn_weights = layer(
                        hidden_states,
                        attention_mask=mask,
                        past_key_values=past_key_values,  # a given cache is read and extended, use_cache or not
                        attention_interface=attention_interface,
                        **kwargs,
                    )
                    if all_attentions is not None:
                        all_attentions += (attn_weights,)
        hidden_states = self.final_layernorm(hidden_states)
        if all_hidden_states is not None:
            all_hidden_states += (hidden_states,)

        output = BaseModelOutputWithPast(
            last_hidden_state=hidden_states,
            hidden_states=all_hidden_states,
            attentions=all_attentions,
            **{CACHE_OUTPUT_FIELD: past_key_values if use_cache else None},
        )
        return output if return_dict else output.to_tuple()

    def _resolve_positions(
        self,
        position_ids: torch.Tensor | None,
        block_position_ids: torch.Tensor | None,
        cache_position: torch.Tensor,
        batch_size: int,
        attention_mask: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Split the original stacked [B, 2, T] form and fill in the defaults (positions count real tokens, so
        left padding does not shift them)."""
        position_ids, block_position_ids = split_stacked_positions(position_ids, block_position_ids)
        if position_ids is None:
            position_ids = default_position_ids(cache_position, batch_size, attention_mask)
        if not self.config.block_position_encoding:
            if block_position_ids is not None:
                raise ValueError("This model has no block positions (block_position_encoding=False).")
        elif block_position_ids is None:
            block_position_ids = torch.zeros_like(position_ids)
        return position_ids, block_position_ids

    def _prompt_positions(
        self,
        input_ids: torch.Tensor | None,
        position_ids: torch.Tensor | None,
        block_position_ids: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        prefix_length: int | torch.Tensor | None,
        past_length: int | torch.Tensor,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, int | torch.Tensor | None]:
        """What a ChatGLM prompt's ids say (`chatglm_prompt_positions`, which names rows without [sop]): positions
        when none are given, and, when no `prefix_length` is, the bidirectional prefix: every cached column (a
        P-Tuning v2 prefix) and the context (the columns before each row's [sop]), as the original's mask. Positions
        do not move with a cached prefix, as in the original. A decoding step (given positions, filled cache) and
        inputs_embeds with positions are left as they are."""
        given = position_ids is not None or block_position_ids is not None
        decoding = torch.is_tensor(past_length) or past_length > 0
        if given and (prefix_length is not None or decoding or input_ids is None):
            return position_ids, block_position_ids, prefix_length
        if input_ids is None:
            raise ValueError(
                "This model (positions_from_ids=True, ChatGLM) reads its positions from the prompt's ids: with "
                "inputs_embeds, pass position_ids (the original's stacked [B, 2, T] works)."
            )
        derived_positions, derived_blocks, context_lengths = chatglm_prompt_positions(
            input_ids, self.config, attention_mask
        )
        if not given:
            position_ids, block_position_ids = derived_positions, derived_blocks
        if prefix_length is None:
            prefix_length = context_lengths + past_length
        return position_ids, block_position_ids, prefix_length

    def _check_position_range(
        self, position_ids: torch.Tensor, block_position_ids: torch.Tensor | None, sequence_length: int
    ) -> None:
        """A clear error instead of an index error when an id is past the position tables (one host sync; generate()
        checks its whole run once up front instead, see `_generation_positions_fit`)."""
        if torch.compiler.is_compiling():
            return
        ids = position_ids if block_position_ids is None else torch.stack([position_ids, block_position_ids])
        largest = int(ids.max())
        if largest >= self.config.max_position_embeddings:
            raise ValueError(
                f"Position id {largest} is past the {self.config.max_position_embeddings} rows of the position "
                f"tables (max_position_embeddings={self.config.max_position_embeddings}); the input has "
                f"{int(sequence_length)} tokens (cached + new). Shorten it."
            )

    def _build_mask(
        self,
        attention_mask: torch.Tensor | None,
        prefix_length: int | torch.Tensor | None,
        cache_position: torch.Tensor | None,
        past_key_values: Cache | None,
        batch_size: int,
        query_length: int,
        past_length: int | torch.Tensor,
        device: torch.device,
    ) -> torch.Tensor | None:
        """The boolean [B, 1, T, S] mask every layer uses, or None where every query sees every column. The cache
        positions of the new columns are made here when not given (`new_cache_positions`) and a mask is needed.

        `past_length` is a 0-dim device tensor for a static cache, whose S is its fixed size: nothing here reads it
        back on the host, so decoding on a static cache has no host sync and compiles without graph breaks."""
        static = past_key_values is not None and past_key_values.is_compileable
        key_length = past_key_values.get_mask_sizes(query_length, 0)[0] if static else past_length + query_length
        if attention_mask is not None and attention_mask.dim() > 2:
            return explicit_mask_to_bool(attention_mask, query_length, past_length + query_length, key_length)

        if prefix_length is None:  # every cached column; on a first pass the whole input
            if torch.is_tensor(past_length):
                prefix_length = torch.where(past_length > 0, past_length, query_length)
            else:
                prefix_length = past_length if past_length > 0 else query_length
        if attention_mask is None and not static and query_length == 1:
            return None  # a single new token sees every cached column
        if attention_mask is None and not torch.is_tensor(prefix_length) and prefix_length >= key_length:
            return None  # fully bidirectional
        if cache_position is None:
            cache_position = new_cache_positions(query_length, past_length, device)
        if torch.is_tensor(prefix_length):
            prefix = prefix_length.to(cache_position.device).reshape(-1).expand(batch_size)
        else:  # filled on the device: a tensor made from a Python int would be a host-to-device copy (a sync)
            prefix = torch.full((batch_size,), prefix_length, device=cache_position.device)
        if attention_mask is not None and attention_mask.shape[-1] < key_length:
            # A static cache holds more columns than the padding mask covers; the causal rule hides them.
            attention_mask = nn.functional.pad(attention_mask, (0, key_length - attention_mask.shape[-1]), value=1)
        padding_mask = attention_mask[:, :key_length] if attention_mask is not None else None
        return build_glm_attention_mask(cache_position, key_length, prefix, padding_mask)


# generate() arguments whose code the loop calls with its tensors.
CALLBACK_ARGUMENTS = ("logits_processor", "stopping_criteria", "streamer", "prefix_allowed_tokens_fn")
# Streamers known to keep nothing they are handed (they read the tokens as Python lists).
TEXT_STREAMERS = (TextStreamer, TextIteratorStreamer)


def takes_loop_tensors(argument: str, value: Any) -> bool:
    """Whether a generate() argument (`CALLBACK_ARGUMENTS`) hands the loop's tensors to the caller's code: any
    processor, criterion or function given, any streamer but transformers' text streamers themselves."""
    if argument == "streamer":
        return value is not None and type(value) not in TEXT_STREAMERS
    return bool(value)


def forward_hooks_present(model: nn.Module) -> bool:
    """Whether a hook can see the activations of the model's forward: a global forward hook or pre-hook, one on any
    of its modules, or accelerate's (`_hf_hook`: offloading, device alignment)."""
    if module_hooks._global_forward_hooks or module_hooks._global_forward_pre_hooks:
        return True
    return any(
        module._forward_hooks or module._forward_pre_hooks or "_hf_hook" in vars(module) for module in model.modules()
    )


def tied_head_keys(config: GLMConfig) -> list[str] | None:
    """`_keys_to_ignore_on_save` of a model with the LM head: the head when it is the word embeddings (tied), so that
    `Trainer`, reloading a checkpoint, ties it again instead of reporting it missing; None for an untied head, which
    must be saved."""
    return ["lm_head.weight"] if config.tie_word_embeddings else None


def glm_generation_config(config: GLMConfig) -> GenerationConfig:
    """Generation defaults saved with a GLM: stop at eop or eos, pad with the family's pad id."""
    generation_config = GenerationConfig.from_model_config(config)
    end_ids = list(dict.fromkeys(i for i in (config.eop_token_id, config.eos_token_id) if i is not None))
    if end_ids:
        generation_config.eos_token_id = end_ids if len(end_ids) > 1 else end_ids[0]
    return generation_config


# `GLMForConditionalGeneration.kept_static_cache`: the key it was made for, then the cache.
KeptStaticCache = tuple[int, torch.dtype, torch.device, bool, tuple[torch.dtype | None, ...], StaticCache]


class GLMForConditionalGeneration(GLMPreTrainedModel, GenerationMixin):
    """GLM with its LM head (tied to the word embeddings): blank infilling, scoring and `generate()`."""

    _tied_weights_keys = {"lm_head.weight": "glm.word_embeddings.weight"}
    accepts_loss_kwargs = False  # the loss is a plain token mean, not shifted: Trainer must not rescale it

    def __init__(self, config: GLMConfig):
        super().__init__(config)
        self.glm = GLMModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self._keys_to_ignore_on_save = tied_head_keys(config)
        self.generation_lock = GenerationLock()
        # The static cache of generate()'s own static runs, kept for the next run that fits: (batch, dtype, device,
        # whether made in inference mode, `autocast_dtypes`, cache).
        self.kept_static_cache: KeptStaticCache | None = None
        self.decode_steps = DecodeSteps()  # captured decode steps, by cache (`captured_decoding`)
        self.post_init()
        self.generation_config = glm_generation_config(config)

    def __getstate__(self) -> dict[str, Any]:
        """The module's state without generate()'s kept static cache (run state, as large as a run's keys and values)
        and compiled steps (torch.compile's code is bound to this model and cannot be pickled): a copy makes its own
        when it generates."""
        state = {**super().__getstate__(), "kept_static_cache": None}
        for name in COMPILED_GENERATION_STATE:
            state.pop(name, None)
        return state

    def _apply(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> GLMForConditionalGeneration:
        """`nn.Module._apply` (under `.to()`, `.half()`, `.cuda()`, `.cpu()`, `to_empty()`, ...); where it moved or
        cast the weights, generate()'s kept static cache and the decode steps are let go: no step serves moved
        weights (`CapturedDecodeStep.takes`), and the cache, with the steps' buffers and captured graphs, would
        otherwise hold memory on the old device until a later static run replaced it (a run that takes no static
        cache, as the CPU's default, never does)."""
        weights = parameter_pointers(self)
        module = super()._apply(fn, *args, **kwargs)
        if parameter_pointers(self) != weights:
            self.kept_static_cache = None
            self.decode_steps = DecodeSteps()
        return module

    def get_input_embeddings(self) -> nn.Embedding:
        return self.glm.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.glm.word_embeddings = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, new_embeddings: nn.Linear) -> None:
        self.lm_head = new_embeddings

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        block_position_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        prefix_length: int | torch.Tensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        cache_position: torch.LongTensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        cache: Cache | None = None,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast | tuple:
        r"""
        See `GLMModel.forward` for the inputs. `labels` [B, T] are aligned with the inputs (not shifted: GLM's
        Part B targets are already the next tokens); -100 is ignored. The loss is the mean over the kept tokens.
        With `config.shifted_loss` (ChatGLM) column t is scored against `labels[:, t + 1]`, as causal LMs do.
        logits_to_keep: int n > 0: logits of the last n columns only (`generate()` passes 1, so a long prompt does
            not cost prompt x vocabulary logits); 0: every column; a 1-D tensor: these columns.
        """
        if labels is not None and not (isinstance(logits_to_keep, int) and logits_to_keep == 0):
            raise ValueError("labels score every column; leave logits_to_keep at 0 when passing labels.")
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        outputs = self.glm(
            input_ids=input_ids,
            position_ids=position_ids,
            block_position_ids=block_position_ids,
            attention_mask=attention_mask,
            prefix_length=prefix_length,
            past_key_values=resolve_cache_argument(past_key_values, cache),
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
            cache_position=cache_position,
            **kwargs,
        )
        logits = self.lm_head(keep_logit_columns(outputs.last_hidden_state, logits_to_keep))

        loss = None
        if labels is not None:
            scored, labels = logits, labels.to(logits.device)
            if self.config.shifted_loss:  # ChatGLM: column t predicts token t + 1
                scored, labels = scored[:, :-1], labels[:, 1:]
            loss = nn.functional.cross_entropy(
                scored.float().reshape(-1, scored.shape[-1]), labels.reshape(-1), ignore_index=-100
            )

        output = CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            **{CACHE_OUTPUT_FIELD: outputs[CACHE_OUTPUT_FIELD] if CACHE_OUTPUT_FIELD in outputs else None},
        )
        return output if return_dict else output.to_tuple()

    # ---- generation -------------------------------------------------------------------------------------------

    def generate(self, inputs: torch.Tensor | None = None, **kwargs: Any) -> Any:
        """`GenerationMixin.generate` with GLM's positions: the prompt is Part A unless `prefix_length` says otherwise.

        Pass the builder's `position_ids` / `block_position_ids` ([B, T] each, or stacked [B, 2, T]) for a prompt
        whose Part B was started with [sop]: each new token keeps the last position (the mask's index) and takes
        the next block position (without a block-position table, positions count up).

        Continuing from a cache that an earlier `generate()` returned (`past_key_values=out.past_key_values` with the
        whole sequence as input, as transformers does it): the cached run's positions and `prefix_length` carry on,
        so two calls give the tokens of one. Position ids shorter than the input with a filled cache describe its
        first columns; later columns follow the rule above.

        A greedy, sampling or beam-search run whose only output is its tokens decodes under
        `torch.inference_mode()` (`_decodes_in_inference_mode`) and hands them back as an ordinary tensor.

        Calls from several threads run one at a time: they share the model's kept static cache, captured decode
        steps and run flags. A logits processor, stopping criterion or streamer may call it on the same model in its
        own thread (not wait there for another thread's call, which waits for this run).
        """
        with self.generation_lock:
            flags = self.glm.run_flags
            outer_run = flags.begin()
            try:
                prompt = inputs if inputs is not None else kwargs.get("input_ids")
                embeds = kwargs.get("inputs_embeds")
                if prompt is None and embeds is None:
                    prompt = self._bos_prompt(kwargs)
                    if prompt is not None:
                        kwargs["input_ids"] = prompt
                columns = embeds if embeds is not None else prompt  # every column, cached ones included
                if columns is not None:
                    self._prepare_generation_positions(columns, prompt, kwargs)
                # No padding mask given: no row is padded, so the steps need no mask beyond GLM's own (a decode step
                # on the dynamic cache then runs with none); transformers keeps its all-ones mask for its bookkeeping.
                flags.padding_free = kwargs.get("attention_mask") is None
                flags.caller_callbacks = any(takes_loop_tensors(name, kwargs.get(name)) for name in CALLBACK_ARGUMENTS)
                flags.forward_hooks = forward_hooks_present(self)
                return super().generate(inputs, **kwargs)
            finally:
                flags.restore(outer_run)

    def _extract_generation_mode_kwargs(
        self,
        custom_generate: Any,
        kwargs: dict[str, Any],
        synced_gpus: bool | None,
        assistant_model: Any,
        streamer: Any,
    ) -> dict[str, Any]:
        """transformers' own, which also resolves `synced_gpus` (DeepSpeed ZeRO-3, FSDP): recorded in the run's flags
        for `_keeps_static_cache`, with whether a `custom_generate` loop decodes."""
        mode_kwargs = super()._extract_generation_mode_kwargs(
            custom_generate, kwargs, synced_gpus, assistant_model, streamer
        )
        self.glm.run_flags.synced_gpus = bool(mode_kwargs.get("synced_gpus"))
        self.glm.run_flags.custom_decoding = custom_generate is not None
        return mode_kwargs

    def _bos_prompt(self, kwargs: dict[str, Any]) -> torch.Tensor | None:
        """The one-token prompt `generate()` starts from when given no input: [bos] per row (rows as many as a
        given tensor has, else 1), so that it gets a prompt's positions; None without a bos id (transformers then
        says what is missing)."""
        generation_config = kwargs.get("generation_config") or self.generation_config
        bos_token_id = kwargs.get("bos_token_id", generation_config.bos_token_id)
        if bos_token_id is None:
            return None
        rows = next((value.shape[0] for value in kwargs.values() if torch.is_tensor(value) and value.dim()), 1)
        return torch.full((rows, 1), int(bos_token_id), dtype=torch.long, device=self.device)

    def _prepare_generation_positions(
        self, columns: torch.Tensor, prompt: torch.Tensor | None, kwargs: dict[str, Any]
    ) -> None:
        """Complete the caller's `position_ids` / `block_position_ids` / `prefix_length` (in `kwargs`) for every
        column of the input; the decoding steps extend them (`_update_model_kwargs_for_generation`)."""
        batch_size, length = columns.shape[:2]
        cache = resolve_cache_argument(kwargs.get("past_key_values"), kwargs.get("cache"))
        cached = cache.get_seq_length() if cache is not None else 0
        position_ids, block_position_ids = split_stacked_positions(
            kwargs.get("position_ids"), kwargs.get("block_position_ids")
        )
        prefix_length = kwargs.get("prefix_length")
        earlier: GLMGenerationRun | None = getattr(cache, "glm_generation_run", None) if cached else None
        earlier = earlier.for_batch(batch_size) if earlier is not None else None
        continues_earlier = position_ids is None and block_position_ids is None and earlier is not None
        if continues_earlier:
            position_ids, block_position_ids = earlier.position_ids, earlier.block_position_ids
            if prefix_length is None:
                prefix_length = earlier.prefix_length
            self.glm.run_flags.held_positions = earlier.held_positions  # a 1-D ChatGLM's new tokens keep them
        elif cached:  # ids of the first columns (an assistant model gets its positions extended by +1: cut them)
            position_ids, block_position_ids = columns_both_cover(position_ids, block_position_ids)
        elif self.config.positions_from_ids and position_ids is None and block_position_ids is None:
            if prompt is None or prompt.shape[1] != length:
                raise ValueError(
                    "This model (positions_from_ids=True, ChatGLM) reads its positions from the prompt's ids; with "
                    "inputs_embeds, pass position_ids (the original's stacked [B, 2, T] works)."
                )
            position_ids, block_position_ids, _ = chatglm_prompt_positions(
                prompt, self.config, kwargs.get("attention_mask")
            )
        else:  # a first pass: ids may be shorter by the soft-prompt columns leading inputs_embeds
            position_ids, block_position_ids, prefix_length = align_positions_to_input(
                position_ids, block_position_ids, prefix_length, query_length=length, past_length=0
            )
        one_d_chatglm = self.config.positions_from_ids and not self.config.block_position_encoding
        if one_d_chatglm and not continues_earlier:  # new tokens take the mask's index ([gMASK] rows too)
            if prompt is None or prompt.shape[1] != length:
                raise ValueError(
                    "A 1-D ChatGLM (block_position_encoding=False) gives every new token the index of the prompt's "
                    "[MASK]/[gMASK], which only its ids tell: pass input_ids (with inputs_embeds, both)."
                )
            mask = kwargs.get("attention_mask")
            self.glm.run_flags.held_positions = chatglm_mask_positions(prompt, self.config, mask)
        if position_ids is None:
            position_ids = default_position_ids(
                torch.arange(length, device=columns.device), batch_size, kwargs.get("attention_mask")
            )
        if block_position_ids is None and self.config.block_position_encoding:
            block_position_ids = torch.zeros_like(position_ids)
        if prefix_length is None and self.config.positions_from_ids and not cached and prompt is not None:
            # ChatGLM, positions derived or given: the context before [sop] is the bidirectional prefix
            prefix_length = chatglm_context_lengths(prompt, self.config.sop_token_id)
        if position_ids.shape[-1] < length:
            position_ids, block_position_ids = positions_of_columns(
                position_ids, block_position_ids, 0, length, self._held_positions(batch_size)
            )
        if prefix_length is None:
            prefix_length = length
        elif torch.is_tensor(prefix_length):  # [B], so that beam search can expand it per sequence
            prefix_length = prefix_length.reshape(-1).expand(batch_size).clone()
        kwargs["prefix_length"] = prefix_length
        kwargs["position_ids"] = position_ids
        kwargs["block_position_ids"] = block_position_ids

    def prepare_inputs_for_generation(
        self, input_ids: torch.LongTensor, inputs_embeds: torch.Tensor | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        """transformers' inputs for one step, with GLM's positions of the columns that step feeds.

        `position_ids` / `block_position_ids` cover the sequence so far; columns past them (draft tokens of
        assisted decoding) keep the last position and take the next block positions (`positions_of_columns`).
        Block positions are sliced like positions (a contiguous copy, so that a compiled decode step sees the same
        strides at every step and is not recompiled).
        """
        position_ids = kwargs.pop("position_ids", None)
        block_position_ids = kwargs.pop("block_position_ids", None)
        model_inputs = super().prepare_inputs_for_generation(input_ids, inputs_embeds=inputs_embeds, **kwargs)
        if "cache" in model_inputs:  # transformers >= 5.24; the forward takes both names, PEFT reads this one
            model_inputs["past_key_values"] = model_inputs.pop("cache")
        if self.glm.run_flags.padding_free and model_inputs.get("attention_mask") is not None:
            if model_inputs["attention_mask"].dim() == 2:
                model_inputs["attention_mask"] = None
        if position_ids is None:
            return model_inputs
        step = model_inputs.get("inputs_embeds")
        step_length = (step if step is not None else model_inputs["input_ids"]).shape[1]
        # Assisted decoding counts `position_ids` up for its draft tokens, which GLM's Part B does not do: keep the
        # columns both cover and extend them by GLM's rule below.
        position_ids, block_position_ids = columns_both_cover(position_ids, block_position_ids)
        missing = input_ids.shape[1] - position_ids.shape[-1] if step is None else 0
        if missing > 0:
            position_ids, block_position_ids = positions_of_columns(
                position_ids,
                block_position_ids,
                0,
                position_ids.shape[-1] + missing,
                self._held_positions(position_ids.shape[0]),
            )
        model_inputs["position_ids"] = position_ids[:, -step_length:].clone(memory_format=torch.contiguous_format)
        if block_position_ids is not None:
            model_inputs["block_position_ids"] = block_position_ids[:, -step_length:].clone(
                memory_format=torch.contiguous_format
            )
        return model_inputs

    def _prepare_attention_mask_for_generation(
        self, inputs_tensor: torch.Tensor, generation_config: GenerationConfig, model_kwargs: dict[str, Any]
    ) -> torch.LongTensor:
        """No mask given means no padding: GLM prompts hold [eos] (often the pad id) inside Part A, so a mask
        guessed from the pad id would hide it. Left-padded batches pass their `attention_mask`."""
        return torch.ones(inputs_tensor.shape[:2], dtype=torch.long, device=inputs_tensor.device)

    def create_masks_for_generate(self, attention_mask: torch.Tensor | None = None, **kwargs: Any) -> Any:
        """Keep the 2-D padding mask: the model builds GLM's mixed mask itself (also for static caches). On a
        static cache it is padded to the cache's size, so that every decode step has the same input shapes (one
        compiled graph instead of a recompilation per step); the causal rule hides the columns not yet filled."""
        cache = resolve_cache_argument(kwargs.get("past_key_values"), kwargs.get("cache"))
        if attention_mask is not None and attention_mask.dim() == 2 and cache is not None and cache.is_compileable:
            key_length = cache.get_mask_sizes(kwargs["inputs_embeds"].shape[1], 0)[0]
            if attention_mask.shape[-1] < key_length:
                attention_mask = nn.functional.pad(attention_mask, (0, key_length - attention_mask.shape[-1]), value=1)
        return attention_mask

    def _prepare_cache_for_generation(
        self,
        generation_config: GenerationConfig,
        model_kwargs: dict[str, Any],
        generation_mode: Any,
        batch_size: int,
        max_cache_length: int,
    ) -> None:
        """The cache as transformers prepares it (a `GLMDynamicCache` where it would make a default `DynamicCache`),
        and one up-front position check for the whole run (the one place generate() holds both the resolved length
        and the model inputs): when every id that `max_cache_length` columns can reach fits the position tables,
        the forward passes skip their per-call check (a host-device sync each); otherwise they keep it and raise
        the clear error when an id actually goes past.

        Prompt lookup decoding verifies up to `prompt_lookup_num_tokens` drafted tokens at once, also past
        `max_length` (transformers drops the extra ones afterwards): the cache and the check make room for them. A 1-D
        ChatGLM is refused drafts (transformers would number their positions up), and every model a chunked prefill
        (refused here, before any cache is touched; assisted decoding never prefills in chunks, so it goes on)."""
        chunked_prefill = generation_mode != GenerationMode.ASSISTED_GENERATION
        if chunked_prefill and generation_config.prefill_chunk_size is not None:
            raise ValueError(
                f"prefill_chunk_size={generation_config.prefill_chunk_size} is not supported by GLM: Part A (the "
                "prompt's first prefix_length columns) is bidirectional, so its first columns must see its last ones, "
                "which a chunk fed before them cannot. Prefill the prompt in one piece (prefill_chunk_size=None)."
            )
        drafts = 0
        if generation_mode == GenerationMode.ASSISTED_GENERATION:
            if self.glm.run_flags.held_positions is not None:
                raise ValueError(
                    "Assisted and prompt-lookup decoding are not supported for a 1-D ChatGLM "
                    "(block_position_encoding=False): transformers numbers the drafted tokens' positions up, while "
                    "every new token of this model takes the index of the prompt's mask. Decode without them."
                )
            drafts = generation_config.prompt_lookup_num_tokens or 0
            max_cache_length += drafts
        max_cache_length += self._prepended_virtual_tokens()
        self.glm.run_flags.positions_prechecked = self._generation_positions_fit(model_kwargs, max_cache_length)
        given = resolve_cache_argument(model_kwargs.get("past_key_values"), model_kwargs.get("cache"))
        if getattr(given, "filled_by_fill_blanks", False):
            # fill_blanks' own cache: a `cache_implementation` (the model's default, which transformers merges into
            # an unset option) has nothing to choose, and transformers refuses it beside a cache.
            generation_config.cache_implementation = None
        self.glm.run_flags.caller_cache = given is not None
        capacity = given.get_max_length() if given is not None and given.is_compileable else None
        if capacity is not None and capacity < max_cache_length:
            also = f" and {drafts} columns for prompt lookup's drafts" if drafts else ""
            raise ValueError(
                f"The static cache given to generate() holds {capacity} columns; this run writes {max_cache_length} "
                f"(the whole sequence but its last token{also}). Pass a StaticCache with max_cache_len >= "
                f"{max_cache_length}, or ask for fewer new tokens."
            )
        own_static = given is None and self._keeps_static_cache(generation_config, generation_mode)
        self.glm.run_flags.own_static_cache = own_static
        if own_static:  # whole multiples of STATIC_CACHE_COLUMNS: runs of other lengths fit the same cache and graph
            columns = max(max_cache_length, getattr(generation_config, "max_cache_len", None) or 0)
            columns = -(-columns // STATIC_CACHE_COLUMNS) * STATIC_CACHE_COLUMNS
            rows = batch_size * generation_config.num_return_sequences  # the batch the cache is filled with
            model_kwargs[GENERATE_CACHE_KWARG] = self._kept_static_cache(rows, columns)
        else:
            super()._prepare_cache_for_generation(
                generation_config, model_kwargs, generation_mode, batch_size, max_cache_length
            )
        cache_key = "cache" if "cache" in model_kwargs else "past_key_values"
        default_cache = (
            given is None
            and type(model_kwargs.get(cache_key)) is DynamicCache
            and generation_config.cache_implementation in (None, "dynamic")
            and not generation_config.is_assistant
        )
        if default_cache:
            model_kwargs[cache_key] = GLMDynamicCache(config=self.config)
        cache = model_kwargs.get(cache_key)
        self.glm.run_flags.run_cache = cache  # the cache of the forwards that `positions_prechecked` covers
        if cache is not None and model_kwargs.get("position_ids") is not None:
            # Kept with the cache, so that a later generate() from it continues this run's positions.
            cache.glm_generation_run = GLMGenerationRun(
                model_kwargs["position_ids"],
                model_kwargs.get("block_position_ids"),
                model_kwargs.get("prefix_length"),
                self.glm.run_flags.held_positions,
            )

    def _prepended_virtual_tokens(self) -> int:
        """The columns that PEFT's prompt tuning / P-Tuning prepends to this run's prompt (its
        `prepare_inputs_for_generation`, a method of the PEFT model, is set on this model for the run), which the
        cache holds besides the sequence's; 0 without them (prefix tuning's columns come in a cache of PEFT's)."""
        peft_model = getattr(vars(self).get("prepare_inputs_for_generation"), "__self__", None)
        peft_config = getattr(peft_model, "active_peft_config", None)
        if not getattr(peft_config, "is_prompt_learning", False):
            return 0
        if str(getattr(peft_config.peft_type, "value", peft_config.peft_type)) in ("PREFIX_TUNING", "CARTRIDGE"):
            return 0
        return int(peft_config.num_virtual_tokens)

    def _keeps_static_cache(self, generation_config: GenerationConfig, generation_mode: Any) -> bool:
        """Whether generate() runs on a static cache that it keeps for the next run (with its captured decode step):
        greedy or sampling runs that do not return their cache, on CUDA by default (no flag: the step is captured,
        not compiled) unless a forward hook is set (a replayed graph runs no Python: the hook would see only the
        steps before the capture), autocast is on (a graph would hold casts that autocast frees) or per-step
        attentions or hidden states or synced GPUs are asked for (transformers' loop runs then: on a static cache it
        would compile its forward) or a `custom_generate` loop decodes (no captured step: it gets the dynamic cache
        it gets without a GPU) or the run is nested in another (a logits processor's: a cache of its own per run, so
        a captured step would serve no other run), anywhere with `cache_implementation="static"` (compiled where
        transformers compiles)."""
        if generation_config.cache_implementation is None:
            flags = self.glm.run_flags  # `forward_hooks`: generate() looked for hooks once, as the run began
            if self.device.type != "cuda" or not graph_capture_supported(self) or flags.forward_hooks:
                return False
            if torch.is_autocast_enabled("cuda"):
                return False
            if generation_config.output_attentions or generation_config.output_hidden_states:
                return False
            if flags.synced_gpus:  # transformers' loop too, which would compile its forward
                return False
            if flags.custom_decoding:  # a loop of the caller's: no captured step, the cache it expects
                return False
            if flags.nested:  # its own cache, dropped after the run: a capture would serve no other
                return False
        elif generation_config.cache_implementation != "static":
            return False
        return (
            generation_config.use_cache is not False
            and generation_mode in (GenerationMode.GREEDY_SEARCH, GenerationMode.SAMPLE)
            and not generation_config.return_dict_in_generate
            and not generation_config.is_assistant
            and "prepare_inputs_for_generation" not in vars(self)  # PEFT's prompt learning: its own steps
        )

    def _kept_static_cache(self, batch_size: int, max_cache_length: int) -> StaticCache:
        """The kept static cache, emptied, when it fits this run (batch, dtype, device, inference mode, autocast's
        dtype: the keys' dtype there, at least `max_cache_length` columns); else a new one, kept in its place. A run
        nested in another (`GenerationRunFlags.nested`) gets a cache of its own: the outer run is still decoding on
        the kept one."""
        if self.glm.run_flags.nested:
            return StaticCache(config=self.config, max_cache_len=max_cache_length)
        key = (batch_size, self.dtype, self.device, torch.is_inference_mode_enabled(), autocast_dtypes(self.device))
        if self.kept_static_cache is not None:
            *kept_key, cache = self.kept_static_cache
            if tuple(kept_key) == key and cache.get_max_length() >= max_cache_length:
                cache.reset()
                return cache
        cache = StaticCache(config=self.config, max_cache_len=max_cache_length)
        self.kept_static_cache = (*key, cache)
        return cache

    def _sample(
        self,
        input_ids: torch.LongTensor,
        logits_processor: Any,
        stopping_criteria: Any,
        generation_config: GenerationConfig,
        synced_gpus: bool = False,
        streamer: Any = None,
        **model_kwargs: Any,
    ) -> Any:
        """transformers' greedy / sampling loop (`_transformers_loop`: in inference mode where only the tokens leave
        the run); on a static cache GLM's own (`captured_decoding`: the decode step is a CUDA graph replayed per
        token, the stop check does not wait for the device), which gives the same tokens. The step is compiled first
        where transformers would compile it (a static cache not chosen by default). Both loops' eager forwards run
        their blocks as `DirectLayers` where `_calls_blocks_directly` allows it."""
        cache = resolve_cache_argument(model_kwargs.get("past_key_values"), model_kwargs.get("cache"))
        if not static_cache_loop_applies(self, cache, generation_config, model_kwargs, synced_gpus):
            return self._transformers_loop(
                super()._sample,
                input_ids,
                logits_processor=logits_processor,
                stopping_criteria=stopping_criteria,
                generation_config=generation_config,
                synced_gpus=synced_gpus,
                streamer=streamer,
                **model_kwargs,
            )
        own = self.glm.run_flags.own_static_cache  # generate()'s own cache (the kept one, or a nested run's)
        # Its own cache without `cache_implementation`: the CUDA default, whose step is captured, not compiled.
        chosen_by_default = own and generation_config.cache_implementation is None
        compile_step = not chosen_by_default and self._valid_auto_compile_criteria(model_kwargs, generation_config)
        cache_outlives_call = generation_config.return_dict_in_generate or not own
        self.glm.run_flags.fixed_shape_decoding = not cache_outlives_call
        # An eager step (the CPU, a GPU without graph capture): its host work counts. A compiled or captured one has
        # none per layer.
        eager_step = not compile_step and not (self.device.type == "cuda" and graph_capture_supported(self))
        # The graph's capture stream, the stop flag's events and the replays belong to the current CUDA device: make
        # it the model's (a model on cuda:1 while cuda:0 is current would be captured on another device's stream).
        on_device = torch.cuda.device(self.device) if self.device.type == "cuda" else NO_CONTEXT
        with self._blocks_called_directly(eager_step), on_device:
            return decode_on_static_cache(
                self,
                input_ids,
                logits_processor,
                stopping_criteria,
                generation_config,
                streamer,
                model_kwargs,
                cache,
                compile_step=compile_step,
                cache_outlives_call=cache_outlives_call,
            )

    def _beam_search(
        self,
        input_ids: torch.LongTensor,
        logits_processor: Any,
        stopping_criteria: Any,
        generation_config: GenerationConfig,
        synced_gpus: bool = False,
        **model_kwargs: Any,
    ) -> Any:
        """transformers' beam search, in inference mode where nothing of the run but its tokens leaves it."""
        return self._transformers_loop(
            super()._beam_search,
            input_ids,
            logits_processor=logits_processor,
            stopping_criteria=stopping_criteria,
            generation_config=generation_config,
            synced_gpus=synced_gpus,
            **model_kwargs,
        )

    def _transformers_loop(
        self, loop: Callable[..., Any], input_ids: torch.LongTensor, generation_config: GenerationConfig, **kwargs: Any
    ) -> Any:
        """One of transformers' decoding loops, under `torch.inference_mode()` where `_decodes_in_inference_mode`
        allows it (the tokens are then handed back as a plain tensor: an inference tensor is read-only outside
        inference mode), and with the blocks as `DirectLayers` where `_calls_blocks_directly` allows it."""
        inference = self._decodes_in_inference_mode(generation_config)
        with self._blocks_called_directly(), torch.inference_mode() if inference else NO_CONTEXT:
            output = loop(input_ids, generation_config=generation_config, **kwargs)
        return output.clone() if inference else output

    @contextmanager
    def _blocks_called_directly(self, eligible: bool = True) -> Iterator[None]:
        """The run's forwards call the blocks as `DirectLayers` inside this context, where `eligible` (a loop whose
        step is eager) and `_calls_blocks_directly` allow it; nothing of it stays after the context, also on error."""
        flags = self.glm.run_flags
        if eligible and self._calls_blocks_directly():
            flags.direct_layers = DirectLayers(self.glm, apply_rotary)  # the rotation GLMAttention calls
        try:
            yield
        finally:
            flags.direct_layers = None

    def _calls_blocks_directly(self) -> bool:
        """Whether this run's forwards call the blocks' weights directly (`DirectLayers`: the modules' logits, bit
        for bit, with less host work): where the modules' calls would do nothing more. No hook on any module (it
        could see or change a block's work), no caller's code between steps (it could change the model: hooks,
        weights, modes): no callback of generate()'s, no call method of any module patched onto its instance or
        overridden in the model's classes since import (`calls_as_defined`; PEFT's prompt learning sets
        `prepare_inputs_for_generation` on the instance), GLM's own attention function (another is called in every
        layer). No quantizer, and blocks that `direct_layers_apply` accepts."""
        flags = self.glm.run_flags
        return (
            not flags.caller_callbacks
            and not flags.forward_hooks
            and self.config._attn_implementation in GLM_ATTENTION_FUNCTIONS
            and getattr(self, "hf_quantizer", None) is None
            and calls_as_defined(self, GLMForConditionalGeneration)
            and calls_as_defined(self.glm, GLMModel)
            and not any(map(patched_on_instance, self.modules()))
            and direct_layers_apply(self.glm)
        )

    def _decodes_in_inference_mode(self, generation_config: GenerationConfig) -> bool:
        """Whether transformers' greedy / sampling or beam-search loop runs under `torch.inference_mode()` (no
        version counters or view tracking: 1.22x less host time per eager decode step, benchmarks/RESULTS.md): only
        where nothing made in the run but its tokens, which are handed back as a plain tensor, can reach the caller,
        whose autograd would refuse inference tensors. So not with `return_dict_in_generate` (scores, logits,
        states, the cache), a caller's cache, or a forward hook (global, on any module, or accelerate's), which may
        keep activations; nor with a caller's logits processor, stopping criterion, streamer or allowed-tokens
        function (`takes_loop_tensors`), which may keep what the loop hands it, or need autograd; nor for a
        quantized model, whose layers may keep state made in their forward; nor on the static cache generate()
        keeps for later runs (its tensors, made in the run's first forward, must stay writable outside)."""
        flags = self.glm.run_flags
        return (
            not torch.is_inference_mode_enabled()
            and not generation_config.return_dict_in_generate
            and not flags.caller_cache
            and not flags.own_static_cache
            and not flags.caller_callbacks
            and getattr(self, "hf_quantizer", None) is None
            and not flags.forward_hooks
        )

    def _held_positions(self, batch_size: int) -> torch.Tensor | None:
        """The run's held positions (`GenerationRunFlags.held_positions`) for `batch_size` rows (repeated per row for
        beams and returned sequences)."""
        held = self.glm.run_flags.held_positions
        if held is None or held.shape[0] == batch_size:
            return held
        return held.repeat_interleave(batch_size // held.shape[0], dim=0)

    def _generation_positions_fit(self, model_kwargs: dict[str, Any], total_columns: int) -> bool:
        """Whether the given columns' ids and those of the new columns up to `total_columns` (as
        `positions_of_columns` extends them) all fit the position tables; one host sync."""
        position_ids = model_kwargs.get("position_ids")
        if self.config.position_embedding_type == "rotary":
            return True  # no table to index: any position is valid
        if position_ids is None or position_ids.dim() != 2:
            return False
        block_position_ids = model_kwargs.get("block_position_ids")
        growth = max(total_columns - position_ids.shape[-1], 0)
        last_positions, last_blocks = positions_of_columns(
            position_ids, block_position_ids, position_ids.shape[-1] - 1, 1 + growth
        )
        largest = [position_ids.max(), last_positions.max()]
        if block_position_ids is not None:
            largest += [block_position_ids.max(), last_blocks.max()]
        return int(torch.stack(largest).max()) < self.config.max_position_embeddings

    def _update_model_kwargs_for_generation(
        self,
        outputs: Any,
        model_kwargs: dict[str, Any],
        is_encoder_decoder: bool = False,
        num_new_tokens: int = 1,
    ) -> dict[str, Any]:
        """transformers' update, except for the positions: new tokens keep the last position and count block
        positions up (`positions_of_columns`), where transformers would count positions up."""
        position_ids = model_kwargs.pop("position_ids", None)
        block_position_ids = model_kwargs.pop("block_position_ids", None)
        model_kwargs = super()._update_model_kwargs_for_generation(
            outputs, model_kwargs, is_encoder_decoder=is_encoder_decoder, num_new_tokens=num_new_tokens
        )
        if position_ids is not None:
            model_kwargs["position_ids"], model_kwargs["block_position_ids"] = positions_of_columns(
                position_ids,
                block_position_ids,
                0,
                position_ids.shape[-1] + num_new_tokens,
                self._held_positions(position_ids.shape[0]),
            )
        elif block_position_ids is not None:
            model_kwargs["block_position_ids"] = block_position_ids
        return model_kwargs


remember_calls(GLMModel, GLMForConditionalGeneration)  # what a run calls, as defined here (`_calls_blocks_directly`)


class GLMGenerationRun:
    """The positions a `generate()` run gave its first columns, its `prefix_length` and a 1-D ChatGLM's held
    positions (`GenerationRunFlags.held_positions`), kept on its cache so that a later `generate()` from that cache
    continues them."""

    def __init__(
        self,
        position_ids: torch.Tensor,
        block_position_ids: torch.Tensor | None,
        prefix_length: int | torch.Tensor | None,
        held_positions: torch.Tensor | None = None,
    ) -> None:
        self.position_ids = position_ids
        self.block_position_ids = block_position_ids
        self.prefix_length = prefix_length
        self.held_positions = held_positions

    def for_batch(self, batch_size: int) -> GLMGenerationRun | None:
        """The run for `batch_size` rows: as it is, or repeated per row when the run returned several sequences per
        prompt (beams, `num_return_sequences`); None for a batch of other prompts."""
        rows = self.position_ids.shape[0]
        if batch_size % rows:
            return None
        repeat = batch_size // rows

        def expand(value: Any) -> Any:
            if repeat == 1 or not torch.is_tensor(value) or value.dim() == 0:
                return value
            return value.repeat_interleave(repeat, dim=0)

        return GLMGenerationRun(
            expand(self.position_ids),
            expand(self.block_position_ids),
            expand(self.prefix_length),
            expand(self.held_positions),
        )


def columns_both_cover(
    position_ids: torch.Tensor | None, block_position_ids: torch.Tensor | None
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Both id tensors cut to the columns both of them cover. transformers extends `position_ids` by +1 per new
    column (assisted decoding, an assistant's kwargs) but not `block_position_ids`; the extra positions are wrong for
    GLM's Part B, so they are dropped and `positions_of_columns` extends both by GLM's rule."""
    if position_ids is None or block_position_ids is None or position_ids.shape[-1] == block_position_ids.shape[-1]:
        return position_ids, block_position_ids
    given = min(position_ids.shape[-1], block_position_ids.shape[-1])
    return position_ids[:, :given], block_position_ids[:, :given]


def positions_of_columns(
    position_ids: torch.Tensor,
    block_position_ids: torch.Tensor | None,
    start: int,
    length: int,
    held_positions: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Positions of the sequence columns `start .. start + length - 1`, given those of its first P columns: a later
    column keeps the last position and takes block positions 1, 2, ... past the last one (GLM's Part B); without
    block positions, positions count up, or stay at `held_positions` `[B, 1]` when given (a 1-D ChatGLM's new
    tokens all take the mask's index)."""
    given = position_ids.shape[-1]
    end = start + length
    if end <= given:
        blocks = block_position_ids[:, start:end] if block_position_ids is not None else None
        return position_ids[:, start:end], blocks
    first_new = max(start, given)
    steps = torch.arange(first_new - given + 1, end - given + 1, device=position_ids.device)
    if block_position_ids is not None:
        new_positions = position_ids[:, -1:].expand(-1, steps.shape[0])
        new_blocks = block_position_ids[:, -1:] + steps
    elif held_positions is not None:
        new_positions = held_positions.to(position_ids.device).expand(-1, steps.shape[0])
        new_blocks = None
    else:
        new_positions = position_ids[:, -1:] + steps
        new_blocks = None
    if start >= given:
        return new_positions, new_blocks
    positions = torch.cat([position_ids[:, start:], new_positions], dim=-1)
    if block_position_ids is not None:
        new_blocks = torch.cat([block_position_ids[:, start:], new_blocks], dim=-1)
    return positions, new_blocks


# ---- task heads ---------------------------------------------------------------------------------------------------


def score_cloze_targets(
    states: torch.Tensor,
    target_ids: torch.Tensor,
    candidate_ids: torch.Tensor | None = None,
    num_candidates: int = 1,
    length_penalty: float = 0.0,
    project: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Summed log-probabilities of the target tokens of each candidate, `[N, num_candidates]` (float32).

    The original `GLMForMultiTokenCloze` score: at every column with a target (`target_ids != -100`), the
    log-softmax over the vocabulary at that target; summed per candidate and, with `length_penalty > 0`, divided by
    (number of targets) ** `length_penalty`. The softmax is only taken at the scored columns.

    Args:
        states: `[N, T, V]` logits, or `[N, T, H]` hidden states with `project` (the LM head), which is then only
            applied at the scored columns.
        target_ids: `[N, T]` aligned targets (not shifted), -100 where nothing is scored.
        candidate_ids: `[N, T]` index (< `num_candidates`) of the candidate each column scores, -1 for none
            (several candidates packed in one row); `None`: each row is one candidate.
        num_candidates: candidates per row (the width of the result).
        length_penalty: the original's `--length-penalty`.
        project: maps hidden states `[K, H]` to logits `[K, V]`.
    """
    scored = target_ids != -100
    if candidate_ids is None:
        candidate_ids = torch.zeros_like(target_ids)
    else:
        scored = scored & (candidate_ids >= 0)
        if not torch.compiler.is_compiling() and bool((candidate_ids[scored] >= num_candidates).any()):
            raise ValueError(
                f"choice_ids holds a candidate index >= {num_candidates}, the number of candidates (choice_mask "
                "width); every scored column needs an index below it."
            )
    rows, columns = scored.nonzero(as_tuple=True)
    logits = states[rows, columns]
    if project is not None:
        logits = project(logits)
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    token_scores = log_probs.gather(-1, target_ids[rows, columns].unsqueeze(-1)).squeeze(-1)
    slots = rows * num_candidates + candidate_ids[rows, columns]
    scores = token_scores.new_zeros(target_ids.shape[0] * num_candidates).index_add(0, slots, token_scores)
    if length_penalty > 0.0:
        counts = token_scores.new_zeros(scores.shape).index_add(0, slots, torch.ones_like(token_scores))
        scores = scores / counts.clamp(min=1.0) ** length_penalty
    return scores.view(target_ids.shape[0], num_candidates)


def _flatten_choices(value: Any, batch_size: int, num_choices: int) -> Any:
    """`[B, C, ...]` -> `[B * C, ...]`; a `[B]` or single prefix length is repeated per candidate."""
    if not torch.is_tensor(value) or value.dim() == 0:
        return value
    if value.shape[:2] == (batch_size, num_choices):
        return value.reshape(batch_size * num_choices, *value.shape[2:])
    if value.dim() == 1 and value.shape[0] in (1, batch_size):
        return value.expand(batch_size).repeat_interleave(num_choices)
    raise ValueError(
        f"A multi-token cloze input has shape {tuple(value.shape)}; expected [batch, choices, ...] = "
        f"[{batch_size}, {num_choices}, ...] like target_ids."
    )


class GLMForMultipleChoice(GLMPreTrainedModel):
    """Scores candidate answers through GLM's LM head, as the original's cloze heads fine-tune and evaluate them.

    Three input layouts (see `forward`): multi-token candidates one row each (`GLMForMultiTokenCloze`), multi-token
    candidates packed into one row per example behind a block-diagonal 4-D mask, and single-token verbalizers read
    at one column (`GLMForSingleTokenCloze`). `logits` are the candidate scores `[B, C]`; the loss is the
    cross-entropy over them, as the original fine-tuning. The head is the tied LM head, so an LM checkpoint loads
    with no missing or unexpected key.
    """

    _tied_weights_keys = {"lm_head.weight": "glm.word_embeddings.weight"}
    accepts_loss_kwargs = False  # the loss is a plain mean over examples

    def __init__(self, config: GLMConfig):
        super().__init__(config)
        self.glm = GLMModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self._keys_to_ignore_on_save = tied_head_keys(config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.glm.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.glm.word_embeddings = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, new_embeddings: nn.Linear) -> None:
        self.lm_head = new_embeddings

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        block_position_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        prefix_length: int | torch.Tensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        target_ids: torch.LongTensor | None = None,
        choice_ids: torch.LongTensor | None = None,
        choice_mask: torch.Tensor | None = None,
        mask_positions: int | torch.Tensor | None = None,
        verbalizer_ids: torch.LongTensor | None = None,
        labels: torch.LongTensor | None = None,
        length_penalty: float | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> MultipleChoiceModelOutput | tuple:
        r"""
        Multi-token cloze (one row per candidate, `glm_hf.build_cloze_inputs` rows stacked per example):
            input_ids / position_ids / block_position_ids / attention_mask `[B, C, T]`, prefix_length `[B, C]`
            (or `[B]`, or an int), target_ids `[B, C, T]` (the builder's `labels`: -100 where not scored).
            Score = summed log-probabilities of the targets / n_targets ** `length_penalty`.
        Packed (`glm_hf.cloze.pack_cloze_candidates`): one row per example, input_ids etc. `[B, T]`, a boolean
            block-diagonal attention_mask `[B, 1, T, T]`, target_ids `[B, T]`, choice_ids `[B, T]` (candidate of
            each scored column, -1 elsewhere). The same scores as the unpacked layout.
        Single-token cloze: input_ids etc. `[B, T]`, prefix_length `[B]`, mask_positions `[B]` (the column whose
            logits are read: the [sop] column at the Part A length in the original's inputs), verbalizer_ids
            `[B, C]` (or `[C]`). Score = raw logit of each verbalizer there (the original's take_softmax=False).
        choice_mask: `[B, C]`, 0 marks a padding candidate: its score is the most negative float, so it never wins
            and gets no probability. It also gives C for the packed layout (else `choice_ids.max() + 1`).
        labels: `[B]` index of the right candidate; the loss is the cross-entropy over the scores.
        length_penalty: overrides `config.cloze_length_penalty` (the original's `--length-penalty`).
        past_key_values: cached columns every row attends to, e.g. PEFT prefix tuning's prefix (then
            `prefix_length` counts them, as in `GLMModel`); one row per example, repeated in place for each
            candidate in the multi-token layout.

        Returns `MultipleChoiceModelOutput` with `logits` `[B, C]` (float32 scores); `hidden_states` and
        `attentions` are those of the rows the backbone ran (`B * C` rows in the multi-token layout).
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        penalty = self.config.cloze_length_penalty if length_penalty is None else float(length_penalty)
        backbone = {
            "input_ids": input_ids,
            "position_ids": position_ids,
            "block_position_ids": block_position_ids,
            "attention_mask": attention_mask,
            "prefix_length": prefix_length,
            "past_key_values": past_key_values,
            "inputs_embeds": inputs_embeds,
        }

        if verbalizer_ids is not None:  # single-token cloze
            if mask_positions is None or target_ids is not None or choice_ids is not None:
                raise ValueError(
                    "Single-token cloze (verbalizer_ids given) needs mask_positions and takes no target_ids / "
                    "choice_ids (those are for multi-token candidates)."
                )
            outputs = self._backbone(backbone, output_attentions, output_hidden_states, **kwargs)
            hidden_states = outputs.last_hidden_state
            batch_size = hidden_states.shape[0]
            columns = torch.as_tensor(mask_positions, device=hidden_states.device).reshape(-1).expand(batch_size)
            rows = torch.arange(batch_size, device=hidden_states.device)
            mask_logits = self.lm_head(hidden_states[rows, columns]).float()  # [B, V]
            verbalizer_ids = verbalizer_ids.to(mask_logits.device)
            if verbalizer_ids.dim() == 1:
                verbalizer_ids = verbalizer_ids.unsqueeze(0).expand(batch_size, -1)
            scores = mask_logits.gather(-1, verbalizer_ids)
        elif target_ids is None:
            raise ValueError(
                "GLMForMultipleChoice needs target_ids (multi-token candidates: [B, C, T] rows, or packed [B, T] "
                "rows with choice_ids) or mask_positions + verbalizer_ids (single-token cloze)."
            )
        elif choice_ids is not None:  # packed candidates
            if target_ids.dim() != 2 or choice_ids.shape != target_ids.shape:
                raise ValueError(
                    f"Packed candidates need target_ids and choice_ids of the same shape [B, T]; got "
                    f"{tuple(target_ids.shape)} and {tuple(choice_ids.shape)}."
                )
            num_choices = choice_mask.shape[-1] if choice_mask is not None else int(choice_ids.max()) + 1
            outputs = self._backbone(backbone, output_attentions, output_hidden_states, **kwargs)
            scores = score_cloze_targets(
                outputs.last_hidden_state,
                target_ids.to(outputs.last_hidden_state.device),
                choice_ids.to(outputs.last_hidden_state.device),
                num_choices,
                penalty,
                project=self.lm_head,
            )
        else:  # one row per candidate
            if target_ids.dim() != 3:
                raise ValueError(
                    f"Multi-token candidates need target_ids of shape [B, C, T] (one row per candidate), got "
                    f"{tuple(target_ids.shape)}; packed rows also need choice_ids."
                )
            batch_size, num_choices = target_ids.shape[:2]
            backbone = {key: _flatten_choices(value, batch_size, num_choices) for key, value in backbone.items()}
            if past_key_values is not None:
                past_key_values.batch_repeat_interleave(num_choices)  # [B] -> [B * C], as the rows
            outputs = self._backbone(backbone, output_attentions, output_hidden_states, **kwargs)
            hidden_states = outputs.last_hidden_state
            flat_targets = target_ids.reshape(batch_size * num_choices, -1).to(hidden_states.device)
            scores = score_cloze_targets(hidden_states, flat_targets, None, 1, penalty, project=self.lm_head)
            scores = scores.view(batch_size, num_choices)

        if choice_mask is not None:
            if choice_mask.shape != scores.shape:
                raise ValueError(
                    f"choice_mask has shape {tuple(choice_mask.shape)}, but there are {tuple(scores.shape)} "
                    "(batch, choices) scores."
                )
            scores = scores.masked_fill(~choice_mask.to(scores.device).bool(), torch.finfo(scores.dtype).min)
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(scores, labels.to(scores.device).reshape(-1))

        output = MultipleChoiceModelOutput(
            loss=loss, logits=scores, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )
        return output if return_dict else output.to_tuple()

    def _backbone(
        self,
        inputs: dict[str, Any],
        output_attentions: bool | None,
        output_hidden_states: bool | None,
        **kwargs: Any,
    ) -> BaseModelOutputWithPast:
        """One pass of the backbone; returns no cache (scoring needs none)."""
        return self.glm(
            **inputs,
            use_cache=False,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
            **kwargs,
        )


class GLMClassificationHead(nn.Module):
    """The original's classifier on a pooled token: Linear(h, h) -> tanh -> dropout -> Linear(h, num_labels).

    `dense` is the original's `pool_layer`, `out_proj` its `multichoice_head`. One module named `classifier` in the
    model, so that PEFT's sequence-classification task trains all of it (its `modules_to_save`).
    """

    def __init__(self, config: GLMConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        dropout = config.hidden_dropout_prob if config.classifier_dropout is None else config.classifier_dropout
        self.dropout = nn.Dropout(dropout)
        self.out_proj = nn.Linear(config.hidden_size, config.num_labels)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.out_proj(self.dropout(torch.tanh(self.dense(pooled))))


class GLMForSequenceClassification(GLMPreTrainedModel):
    """The original `GLMForSequenceClassification`: pool one token, then `GLMClassificationHead`.

    The pooled token is `config.classifier_pool` (the original's `--pool-token`): "cls" reads column 0; "start"
    reads column `prefix_length` and "pad" column `prefix_length - 1`, where the original reads columns `sep` and
    `sep - 1` of its `attention_mask` argument (the Part A length, which is also our `prefix_length`). Loss by
    `config.problem_type`, as transformers' other sequence classifiers (regression, single-label or multi-label).
    """

    accepts_loss_kwargs = False

    def __init__(self, config: GLMConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.glm = GLMModel(config)
        self.classifier = GLMClassificationHead(config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.glm.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.glm.word_embeddings = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        block_position_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        prefix_length: int | torch.Tensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> SequenceClassifierOutput | tuple:
        r"""
        Inputs `[B, T]` as `GLMModel.forward`. prefix_length (int or `[B]`, the original's `sep`) is required by
        the "start" and "pad" pools. With the original's classification inputs (`[CLS] A [SEP] B [eos]` padded,
        `sep` = their length), "start" reads the first padding column, which sees all of Part A: leave it
        unmasked (the original passes no padding mask; the causal rule already hides later padding).
        past_key_values: cached columns every row attends to, e.g. PEFT prefix tuning's prefix; `prefix_length`
            then counts them (as in `GLMModel`), and the pooled column is taken in the new input.
        labels: `[B]` class indices (single-label), `[B, num_labels]` floats (multi-label) or `[B]` floats
            (regression, `num_labels == 1`), as `config.problem_type` says or is inferred.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        past_length = past_key_values.get_seq_length() if past_key_values is not None else 0  # before it grows
        outputs = self.glm(
            input_ids=input_ids,
            position_ids=position_ids,
            block_position_ids=block_position_ids,
            attention_mask=attention_mask,
            prefix_length=prefix_length,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=False,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        rows = torch.arange(hidden_states.shape[0], device=hidden_states.device)
        pooled = hidden_states[rows, self._pool_columns(hidden_states, prefix_length, past_length)]
        logits = self.classifier(pooled)

        loss = None
        if labels is not None:
            loss = self.loss_function(labels, logits, self.config)

        output = SequenceClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )
        return output if return_dict else output.to_tuple()

    def _pool_columns(
        self, hidden_states: torch.Tensor, prefix_length: int | torch.Tensor | None, past_length: int = 0
    ) -> torch.Tensor:
        """The column of `hidden_states` each row pools, `[B]`; `prefix_length` counts `past_length` cached columns
        first (prefix tuning's prefix), which `hidden_states` does not hold."""
        batch_size, length = hidden_states.shape[:2]
        pool = self.config.classifier_pool
        if pool == "cls":
            return torch.zeros(batch_size, dtype=torch.long, device=hidden_states.device)
        if prefix_length is None:
            raise ValueError(
                f'classifier_pool="{pool}" reads the column at prefix_length{"" if pool == "start" else " - 1"}: '
                "pass prefix_length (the Part A length, the original's sep)."
            )
        prefix = torch.as_tensor(prefix_length, device=hidden_states.device).reshape(-1).expand(batch_size)
        prefix = prefix - past_length
        columns = prefix if pool == "start" else prefix - 1
        if not torch.compiler.is_compiling() and bool(((columns < 0) | (columns >= length)).any()):
            raise ValueError(
                f'classifier_pool="{pool}" reads column(s) {columns.tolist()}, outside the {length} input columns: '
                "pass prefix_length, the Part A length of each row (plus any cached columns)"
                + (", and pad the inputs so that a column follows Part A." if pool == "start" else ", at least 1.")
            )
        return columns


__all__ = [
    "GLMClassificationHead",
    "GLMForConditionalGeneration",
    "GLMForMultipleChoice",
    "GLMForSequenceClassification",
    "GLMModel",
    "GLMPreTrainedModel",
    "build_glm_attention_mask",
    "glm_generation_config",
    "score_cloze_targets",
]
