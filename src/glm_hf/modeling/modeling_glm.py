"""The original GLM (THUDM/GLM) as a transformers model: 2D positions, the mixed attention mask and a KV cache.

Architecture, as in the original `model/modeling_glm.py` + `mpu/transformer.py`:
embedding = word[input_ids] + position[position_ids] + block_position[block_position_ids]; pre-LayerNorm blocks
with a fused `query_key_value` projection (rows Q;K;V) and a tanh-GELU MLP; a final LayerNorm; logits through the
word embedding (tied head). Part A (the first `prefix_length` columns) is seen by every query in both directions,
every later column is causal. The loss is not shifted: Part B targets are already the next tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache
from transformers.generation import GenerationConfig, GenerationMixin
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, PreTrainedModel
from transformers.utils import logging

from .configuration_glm import GLMConfig

logger = logging.get_logger(__name__)


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


class GLMResidualProjection(nn.Linear):
    """A projection that writes into the residual stream (attention `dense`, MLP `dense_4h_to_h`).

    Identical to `nn.Linear`; the type only tells `_init_weights` to use the original's scaled std.
    """


def default_position_ids(
    cache_position: torch.Tensor, batch_size: int, attention_mask: torch.Tensor | None
) -> torch.Tensor:
    """Positions 0, 1, ... of the real tokens: from a 2-D padding mask when there is one, else the cache positions."""
    if attention_mask is None or attention_mask.dim() != 2:
        return cache_position.unsqueeze(0).expand(batch_size, -1)
    counted = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    return counted[:, -cache_position.shape[0] :]  # the mask covers cached + new columns; keep the new ones


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
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch_size, query_length, _ = hidden_states.shape
        qkv_shape = (batch_size, query_length, 3, -1, self.head_dim)
        query_states, key_states, value_states = (
            self.query_key_value(hidden_states).view(qkv_shape).permute(2, 0, 3, 1, 4).unbind(0)
        )  # each [B, heads, T, head_dim]

        if past_key_values is not None:
            key_states, value_states = past_key_values.update(key_states, value_states, self.layer_idx)

        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
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
        attn_output = attn_output.reshape(batch_size, query_length, -1).contiguous()
        return self.dense(attn_output), attn_weights


class GLMMLP(nn.Module):
    """h -> 4h -> h with the tanh-approximated GELU."""

    def __init__(self, config: GLMConfig):
        super().__init__()
        self.dense_h_to_4h = nn.Linear(config.hidden_size, config.intermediate_size)
        self.dense_4h_to_h = GLMResidualProjection(config.intermediate_size, config.hidden_size)
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.dense_4h_to_h(self.act_fn(self.dense_h_to_4h(hidden_states)))


def pre_layer_norm_residual(
    residual: torch.Tensor, normed: torch.Tensor, sublayer_output: torch.Tensor
) -> torch.Tensor:
    """GLM's residual form: x + f(LN(x)). (ChatGLM's DeepNorm would use `normed` scaled instead of `residual`.)"""
    return residual + sublayer_output


class GLMBlock(GradientCheckpointingLayer):
    """One pre-LayerNorm transformer block: attention and MLP, each on a residual branch."""

    def __init__(self, config: GLMConfig, layer_idx: int):
        super().__init__()
        self.input_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attention = GLMAttention(config, layer_idx)
        self.post_attention_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = GLMMLP(config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.residual = pre_layer_norm_residual

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        past_key_values: Cache | None = None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        normed = self.input_layernorm(hidden_states)
        attn_output, attn_weights = self.attention(normed, attention_mask, past_key_values=past_key_values, **kwargs)
        hidden_states = self.residual(hidden_states, normed, self.dropout(attn_output))

        normed = self.post_attention_layernorm(hidden_states)
        hidden_states = self.residual(hidden_states, normed, self.dropout(self.mlp(normed)))
        return hidden_states, attn_weights


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


class GLMModel(GLMPreTrainedModel):
    """The GLM backbone: embeddings, blocks and the final LayerNorm; returns hidden states."""

    def __init__(self, config: GLMConfig):
        super().__init__(config)
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.embed_positions = GLMPositionEmbeddings(config)
        self.embedding_dropout = nn.Dropout(config.embedding_dropout_prob)
        self.layers = nn.ModuleList([GLMBlock(config, layer_idx) for layer_idx in range(config.num_hidden_layers)])
        self.final_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.gradient_checkpointing = False
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
        **kwargs: Any,
    ) -> BaseModelOutputWithPast | tuple:
        r"""
        position_ids / block_position_ids: [B, T]; `position_ids` may also be the original stacked [B, 2, T].
            Default: positions count the real tokens of a 2-D padding mask (so left padding does not shift them),
            else continue the cache (0..T-1 on a first pass); block positions 0.
        attention_mask: [B, past + T] padding mask (1 = token), or an explicit [B, 1, T, past + T] mask, bool
            (True = attend) or additive float (0 = attend), that replaces GLM's mask.
        prefix_length: int or [B]: leading columns (Part A, left padding included) visible to every query, counted
            from the start of the cached sequence; later columns are causal. Default: the whole input on a first
            pass (bidirectional); with a cache, every cached column (new tokens are causal among themselves).
        """
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
            past_key_values = DynamicCache(config=self.config)
        past_length = past_key_values.get_seq_length() if past_key_values is not None else 0
        if cache_position is None:
            cache_position = torch.arange(past_length, past_length + query_length, device=device)
        position_ids, block_position_ids = self._resolve_positions(
            position_ids, block_position_ids, cache_position, batch_size, attention_mask
        )
        self._check_position_range(position_ids, block_position_ids, past_length + query_length)
        hidden_states = inputs_embeds + self.embed_positions(position_ids, block_position_ids)
        hidden_states = self.embedding_dropout(hidden_states)

        mask = self._build_mask(
            attention_mask, prefix_length, cache_position, past_key_values, batch_size, query_length, past_length
        )

        if output_attentions and self.config._attn_implementation != "eager":
            logger.warning_once(
                f"output_attentions=True needs attn_implementation='eager'; {self.config._attn_implementation} "
                "returns None for the attention weights."
            )
        all_hidden_states: tuple[torch.Tensor, ...] | None = () if output_hidden_states else None
        all_attentions: tuple[torch.Tensor | None, ...] | None = () if output_attentions else None
        for layer in self.layers:
            if all_hidden_states is not None:
                all_hidden_states += (hidden_states,)
            hidden_states, attn_weights = layer(
                hidden_states,
                attention_mask=mask,
                past_key_values=past_key_values if use_cache else None,
                **kwargs,
            )
            if all_attentions is not None:
                all_attentions += (attn_weights,)
        hidden_states = self.final_layernorm(hidden_states)
        if all_hidden_states is not None:
            all_hidden_states += (hidden_states,)

        output = BaseModelOutputWithPast(
            last_hidden_state=hidden_states,
            past_key_values=past_key_values if use_cache else None,
            hidden_states=all_hidden_states,
            attentions=all_attentions,
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
        if position_ids is not None and position_ids.dim() == 3:
            if block_position_ids is not None:
                raise ValueError("Pass block_position_ids either inside a [B, 2, T] position_ids or alone, not both.")
            position_ids, block_position_ids = position_ids[:, 0], position_ids[:, 1]
        if position_ids is None:
            position_ids = default_position_ids(cache_position, batch_size, attention_mask)
        if self.embed_positions.block_position_embeddings is None:
            if block_position_ids is not None:
                raise ValueError("This model has no block-position table (block_position_encoding=False).")
        elif block_position_ids is None:
            block_position_ids = torch.zeros_like(position_ids)
        return position_ids, block_position_ids

    def _check_position_range(
        self, position_ids: torch.Tensor, block_position_ids: torch.Tensor | None, sequence_length: int
    ) -> None:
        """A clear error instead of an index error when an id is past the position tables (one host sync)."""
        if torch.compiler.is_compiling():
            return
        ids = position_ids if block_position_ids is None else torch.stack([position_ids, block_position_ids])
        largest = int(ids.max())
        if largest >= self.config.max_position_embeddings:
            raise ValueError(
                f"Position id {largest} is past the {self.config.max_position_embeddings} rows of the position "
                f"tables (max_position_embeddings={self.config.max_position_embeddings}); the input has "
                f"{sequence_length} tokens (cached + new). Shorten it."
            )

    def _build_mask(
        self,
        attention_mask: torch.Tensor | None,
        prefix_length: int | torch.Tensor | None,
        cache_position: torch.Tensor,
        past_key_values: Cache | None,
        batch_size: int,
        query_length: int,
        past_length: int,
    ) -> torch.Tensor | None:
        """The boolean [B, 1, T, S] mask every layer uses, or None where every query sees every column."""
        key_length = past_length + query_length
        if past_key_values is not None and past_key_values.is_compileable:
            key_length = past_key_values.get_mask_sizes(query_length, 0)[0]
        if attention_mask is not None and attention_mask.dim() > 2:
            return explicit_mask_to_bool(attention_mask, query_length, past_length + query_length, key_length)

        if prefix_length is None:
            prefix_length = past_length if past_length > 0 else query_length
        if attention_mask is None and query_length == 1 and key_length == past_length + 1:
            return None  # a single new token sees every cached column
        if attention_mask is None and not torch.is_tensor(prefix_length) and prefix_length >= key_length:
            return None  # fully bidirectional
        prefix = torch.as_tensor(prefix_length, device=cache_position.device).reshape(-1).expand(batch_size)
        if attention_mask is not None and attention_mask.shape[-1] < key_length:
            # A static cache holds more columns than the padding mask covers; the causal rule hides them.
            attention_mask = nn.functional.pad(attention_mask, (0, key_length - attention_mask.shape[-1]), value=1)
        padding_mask = attention_mask[:, :key_length] if attention_mask is not None else None
        return build_glm_attention_mask(cache_position, key_length, prefix, padding_mask)


def glm_generation_config(config: GLMConfig) -> GenerationConfig:
    """Generation defaults saved with a GLM: stop at eop or eos, pad with the family's pad id."""
    generation_config = GenerationConfig.from_model_config(config)
    end_ids = list(dict.fromkeys(i for i in (config.eop_token_id, config.eos_token_id) if i is not None))
    if end_ids:
        generation_config.eos_token_id = end_ids if len(end_ids) > 1 else end_ids[0]
    return generation_config


class GLMForConditionalGeneration(GLMPreTrainedModel, GenerationMixin):
    """GLM with its LM head (tied to the word embeddings): blank infilling, scoring and `generate()`."""

    _tied_weights_keys = {"lm_head.weight": "glm.word_embeddings.weight"}
    accepts_loss_kwargs = False  # the loss is a plain token mean, not shifted: Trainer must not rescale it

    def __init__(self, config: GLMConfig):
        super().__init__(config)
        self.glm = GLMModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()
        self.generation_config = glm_generation_config(config)

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
        **kwargs: Any,
    ) -> CausalLMOutputWithPast | tuple:
        r"""
        See `GLMModel.forward` for the inputs. `labels` [B, T] are aligned with the inputs (not shifted: GLM's
        Part B targets are already the next tokens); -100 is ignored. The loss is the mean over the kept tokens.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        outputs = self.glm(
            input_ids=input_ids,
            position_ids=position_ids,
            block_position_ids=block_position_ids,
            attention_mask=attention_mask,
            prefix_length=prefix_length,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
            cache_position=cache_position,
            **kwargs,
        )
        logits = self.lm_head(outputs.last_hidden_state)

        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(
                logits.float().reshape(-1, logits.shape[-1]), labels.to(logits.device).reshape(-1), ignore_index=-100
            )

        output = CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            past_key_values=outputs.past_key_values,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )
        return output if return_dict else output.to_tuple()

    # ---- generation -------------------------------------------------------------------------------------------

    def generate(self, inputs: torch.Tensor | None = None, **kwargs: Any) -> Any:
        """`GenerationMixin.generate` with GLM's defaults: the prompt is Part A unless `prefix_length` says otherwise.

        Pass the builder's `position_ids` / `block_position_ids` ([B, T] each, or stacked [B, 2, T]) for a prompt
        whose Part B was started with [sop]: each new token keeps the last position (the mask's index) and takes
        the next block position.
        """
        prompt = inputs if inputs is not None else kwargs.get("input_ids")
        if prompt is None:
            prompt = kwargs.get("inputs_embeds")
        if prompt is not None:
            batch_size, prompt_length = prompt.shape[:2]
            position_ids = kwargs.get("position_ids")
            if position_ids is not None and position_ids.dim() == 3:
                kwargs["position_ids"], kwargs["block_position_ids"] = position_ids[:, 0], position_ids[:, 1]
            if kwargs.get("position_ids") is None:
                prompt_columns = torch.arange(prompt_length, device=prompt.device)
                kwargs["position_ids"] = default_position_ids(prompt_columns, batch_size, kwargs.get("attention_mask"))
            if kwargs.get("block_position_ids") is None and self.config.block_position_encoding:
                kwargs["block_position_ids"] = torch.zeros_like(kwargs["position_ids"])
            prefix_length = kwargs.get("prefix_length")
            if prefix_length is None:
                kwargs["prefix_length"] = prompt_length
            elif torch.is_tensor(prefix_length):  # [B], so that beam search can expand it per sequence
                kwargs["prefix_length"] = prefix_length.reshape(-1).expand(batch_size).clone()
        return super().generate(inputs, **kwargs)

    def prepare_inputs_for_generation(
        self, input_ids: torch.LongTensor, inputs_embeds: torch.Tensor | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        """Slice the block positions like transformers slices `position_ids`."""
        model_inputs = super().prepare_inputs_for_generation(input_ids, inputs_embeds=inputs_embeds, **kwargs)
        block_position_ids = model_inputs.get("block_position_ids")
        position_ids = model_inputs.get("position_ids")
        if block_position_ids is not None and position_ids is not None:
            model_inputs["block_position_ids"] = block_position_ids[:, -position_ids.shape[-1] :]
        return model_inputs

    def _prepare_attention_mask_for_generation(
        self, inputs_tensor: torch.Tensor, generation_config: GenerationConfig, model_kwargs: dict[str, Any]
    ) -> torch.LongTensor:
        """No mask given means no padding: GLM prompts hold [eos] (often the pad id) inside Part A, so a mask
        guessed from the pad id would hide it. Left-padded batches pass their `attention_mask`."""
        return torch.ones(inputs_tensor.shape[:2], dtype=torch.long, device=inputs_tensor.device)

    def create_masks_for_generate(self, attention_mask: torch.Tensor | None = None, **kwargs: Any) -> Any:
        """Keep the 2-D padding mask: the model builds GLM's mixed mask itself (also for static caches)."""
        return attention_mask

    def _update_model_kwargs_for_generation(
        self,
        outputs: Any,
        model_kwargs: dict[str, Any],
        is_encoder_decoder: bool = False,
        num_new_tokens: int = 1,
    ) -> dict[str, Any]:
        """New Part B tokens keep the last position and count block positions up (positions count up without
        block positions)."""
        position_ids = model_kwargs.pop("position_ids", None)
        block_position_ids = model_kwargs.pop("block_position_ids", None)
        model_kwargs = super()._update_model_kwargs_for_generation(
            outputs, model_kwargs, is_encoder_decoder=is_encoder_decoder, num_new_tokens=num_new_tokens
        )
        steps = torch.arange(1, num_new_tokens + 1, device=position_ids.device if position_ids is not None else None)
        if position_ids is not None:
            if block_position_ids is not None:
                new_positions = position_ids[:, -1:].expand(-1, num_new_tokens)
                new_blocks = block_position_ids[:, -1:] + steps
                model_kwargs["block_position_ids"] = torch.cat([block_position_ids, new_blocks], dim=-1)
            else:
                new_positions = position_ids[:, -1:] + steps
            model_kwargs["position_ids"] = torch.cat([position_ids, new_positions], dim=-1)
        return model_kwargs


__all__ = [
    "GLMForConditionalGeneration",
    "GLMModel",
    "GLMPreTrainedModel",
    "build_glm_attention_mask",
    "glm_generation_config",
]
