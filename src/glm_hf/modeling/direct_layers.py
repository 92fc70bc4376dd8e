"""The blocks of a `generate()` run's eager forwards as direct calls on their weights, where that changes nothing.

A decode step of a deep model with a small batch is bound by host work: glm-2b's 36 layers on a GPU, where the
kernels of a step take about 1 ms, and any model on a CPU. About a third of that work is the module machinery
around the ATen calls, not the calls: per block ten `Module.__call__`s and some twenty parameter and submodule
look-ups through `Module.__getattr__`. `DirectLayers` makes the same ATen calls, in the same order and with the same
arguments, on the weights taken from the blocks once per run: the logits are bitwise those of the modules
(`tests/test_direct_layers.py`).

Only where the module machinery provably does nothing (`GLMForConditionalGeneration._calls_blocks_directly`): no
hook on any module, no caller's code called between steps (which could change the model), no quantizer, eval mode,
no per-layer outputs, and blocks made of GLM's own classes with `nn.Linear` and `nn.LayerNorm` leaves, none patched,
parametrized or compiled on its own (`direct_layers_apply`); in transformers' loop and, where its step is eager (the
CPU), in the static-cache loop. Any other model (PEFT adapters, quantized or offloaded layers, hooks, training) runs
its modules, as before. The weights are taken when the run starts: nothing the run calls can replace them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.nn.utils import parametrize
from transformers.cache_utils import Cache

from .chatglm_rotary import apply_rotary

if TYPE_CHECKING:
    from .modeling_glm import GLMBlock, GLMModel

# A LayerNorm's arguments after the input: (normalized_shape, weight, bias, eps).
LayerNormArguments = tuple[tuple[int, ...], torch.Tensor | None, torch.Tensor | None, float]


def call_machinery(cls: type) -> tuple[Any, Any, Any]:
    """What calling an instance of `cls` runs: its class's `forward`, `__call__` and `_call_impl`."""
    return cls.forward, cls.__call__, cls._call_impl


# What calling each kind of module ran when glm_hf was imported (`remember_calls`): a class patched since (a kernel
# library's forward, steering code's) runs as modules. Any module class, for the activation: its own forward is called.
ORIGINAL_CALLS: dict[type, tuple[Any, Any, Any]] = {
    cls: call_machinery(cls) for cls in (nn.Module, nn.Linear, nn.LayerNorm)
}


def remember_calls(*classes: type) -> None:
    """Record what calling each of `classes` runs now: called where they are defined, before anyone can patch them."""
    ORIGINAL_CALLS.update((cls, call_machinery(cls)) for cls in classes)


def runs_as_defined(module: Any, kind: type, exact: bool = True) -> bool:
    """Whether calling `module` runs what calling a `kind` ran at import, and nothing else: of that class (`exact`)
    or a subclass that changes none of it; in eval mode; no forward or call patched onto the instance, no
    `Module.compile()` (which replaces the call), no parametrization (a weight computed at every access). Hooks are
    the caller's check (`forward_hooks_present`), once per run."""
    if not isinstance(module, kind) or (exact and type(module) is not kind):
        return False
    machinery = call_machinery(type(module))
    if kind is nn.Module:  # any module class: its own forward, the standard call around it
        machinery, expected = machinery[1:], ORIGINAL_CALLS[nn.Module][1:]
    else:
        expected = ORIGINAL_CALLS[kind]
    return (
        machinery == expected
        and not module.training
        and not {"forward", "_call_impl"} & vars(module).keys()
        and module._compiled_call_impl is None
        and not parametrize.is_parametrized(module)
    )


def direct_layers_apply(model: GLMModel) -> bool:
    """Whether `DirectLayers` makes exactly the calls of every block's modules (`runs_as_defined`): GLM's own block,
    attention and MLP classes, leaves whose calls are `nn.Linear`'s and `nn.LayerNorm`'s (not PEFT's, bitsandbytes'
    or any other layer's), all in eval mode (no dropout anywhere), none patched, compiled or parametrized. The
    activation may be any module or function: its forward, or the function, is called."""
    from .modeling_glm import GLMMLP, GLMAttention, GLMBlock  # the module that uses this one

    for block in model.layers:
        attention, mlp = getattr(block, "attention", None), getattr(block, "mlp", None)
        if not all(runs_as_defined(*pair) for pair in ((block, GLMBlock), (attention, GLMAttention), (mlp, GLMMLP))):
            return False
        linears = (attention.query_key_value, attention.dense, mlp.dense_h_to_4h, mlp.dense_4h_to_h)
        norms = (block.input_layernorm, block.post_attention_layernorm)
        activation = mlp.act_fn
        if not (
            all(runs_as_defined(linear, nn.Linear, exact=False) for linear in linears)
            and all(runs_as_defined(norm, nn.LayerNorm, exact=False) for norm in norms)
            and (runs_as_defined(activation, nn.Module, exact=False) or not isinstance(activation, nn.Module))
        ):
            return False
    return True


def layer_norm_arguments(module: nn.LayerNorm) -> LayerNormArguments:
    """What `nn.LayerNorm.forward` hands `F.layer_norm` after the input."""
    return tuple(module.normalized_shape), module.weight, module.bias, module.eps


class DirectBlock:
    """One `GLMBlock` in eval mode as direct calls: what its forward, its attention's and its MLP's make."""

    __slots__ = (
        "attention",
        "layer_idx",
        "head_dim",
        "scaling",
        "two_d",
        "deepnorm_alpha",
        "input_layernorm",
        "query_key_value",
        "dense",
        "post_attention_layernorm",
        "dense_h_to_4h",
        "activation",
        "dense_4h_to_h",
    )

    def __init__(self, block: GLMBlock) -> None:
        attention, mlp = block.attention, block.mlp
        self.attention = attention  # handed to the attention function, as the module path hands it
        self.layer_idx = attention.layer_idx
        self.head_dim = attention.head_dim
        self.scaling = attention.scaling
        self.two_d = attention.config.block_position_encoding
        self.deepnorm_alpha = block.deepnorm_alpha
        self.input_layernorm = layer_norm_arguments(block.input_layernorm)
        self.query_key_value = (attention.query_key_value.weight, attention.query_key_value.bias)
        self.dense = (attention.dense.weight, attention.dense.bias)
        self.post_attention_layernorm = layer_norm_arguments(block.post_attention_layernorm)
        self.dense_h_to_4h = (mlp.dense_h_to_4h.weight, mlp.dense_h_to_4h.bias)
        activation = mlp.act_fn  # a module (its forward), or a plain function set in its place
        self.activation: Callable[[torch.Tensor], torch.Tensor] = (
            activation.forward if isinstance(activation, nn.Module) else activation
        )
        self.dense_4h_to_h = (mlp.dense_4h_to_h.weight, mlp.dense_4h_to_h.bias)

    def __call__(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None,
        past_key_values: Cache | None,
        attention_interface: Callable,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None,
        kwargs: dict[str, Any],
    ) -> torch.Tensor:
        linear, layer_norm = nn.functional.linear, nn.functional.layer_norm
        alpha = self.deepnorm_alpha
        normed = layer_norm(hidden_states, *self.input_layernorm)

        # GLMAttention.forward
        batch_size, query_length, _ = normed.shape
        query_states, key_states, value_states = (
            linear(normed, *self.query_key_value)
            .view(batch_size, query_length, 3, -1, self.head_dim)
            .permute(2, 0, 3, 1, 4)
            .unbind(0)
        )
        if position_embeddings is not None:
            cos, sin = position_embeddings
            query_states = apply_rotary(query_states, cos, sin, self.two_d)
            key_states = apply_rotary(key_states, cos, sin, self.two_d)
        if past_key_values is not None:
            key_states, value_states = past_key_values.update(key_states, value_states, self.layer_idx)
        attn_output, _ = attention_interface(
            self.attention,
            query_states,
            key_states,
            value_states,
            attention_mask,
            dropout=0.0,
            scaling=self.scaling,
            **kwargs,
        )
        attn_output = linear(attn_output.reshape(batch_size, query_length, -1), *self.dense)

        hidden_states = (hidden_states if alpha is None else normed * alpha) + attn_output
        normed = layer_norm(hidden_states, *self.post_attention_layernorm)
        mlp_output = linear(self.activation(linear(normed, *self.dense_h_to_4h)), *self.dense_4h_to_h)
        return (hidden_states if alpha is None else normed * alpha) + mlp_output


class DirectLayers:
    """`GLMModel`'s blocks as `DirectBlock`s, taken once per `generate()` run (`direct_layers_apply` must hold)."""

    def __init__(self, model: GLMModel) -> None:
        self.blocks = [DirectBlock(block) for block in model.layers]

    def __call__(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None,
        past_key_values: Cache | None,
        attention_interface: Callable,
        kwargs: dict[str, Any],
    ) -> torch.Tensor:
        """The blocks' output for `hidden_states`, as `GLMModel.forward`'s loop over its layers gives it; `kwargs`
        are the forward's extra keyword arguments (`position_embeddings`: a rotary model's angles)."""
        kwargs = dict(kwargs)
        position_embeddings = kwargs.pop("position_embeddings", None)
        for block in self.blocks:
            hidden_states = block(
                hidden_states, attention_mask, past_key_values, attention_interface, position_embeddings, kwargs
            )
        return hidden_states
