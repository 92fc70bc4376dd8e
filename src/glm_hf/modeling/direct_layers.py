"""The blocks of a `generate()` run's eager forwards as direct calls on their weights, where that changes nothing.

A decode step of a deep model with a small batch is bound by host work: glm-2b's 36 layers on a GPU, where the
kernels of a step take about 1 ms, and any model on a CPU. About a third of that work is the module machinery
around the ATen calls, not the calls: per block ten `Module.__call__`s and some twenty parameter and submodule
look-ups through `Module.__getattr__`. `DirectLayers` makes the same ATen calls, in the same order and with the same
arguments, on the weights taken from the blocks once per run: the logits are bitwise those of the modules
(`tests/test_direct_layers.py`).

Only where the module machinery provably does nothing (`GLMForConditionalGeneration._calls_blocks_directly`): no
hook on any module; no code of the caller's that the run calls (which could change the blocks between steps): no
callback of generate()'s, no call method patched onto any module or overridden in a class, GLM's own attention
function, an activation of torch's or transformers' own code; no quantizer; no per-layer outputs; blocks in a
`nn.ModuleList`, of GLM's own classes, with `nn.Linear` and `nn.LayerNorm` leaves calling torch's own code, in eval
mode, none parametrized or compiled on its own (`direct_layers_apply`). A kernel library's replacement of
`modeling_glm.apply_rotary` is called, as `GLMAttention` calls it. In transformers' loop and, where its step is eager
(the CPU, a GPU without graph capture), in the static-cache loop. Any other model (PEFT adapters, quantized or
offloaded layers, hooks, training) runs its modules, as before. The weights are taken when the run starts; a change to
the model made meanwhile from another thread is not seen.
"""

from __future__ import annotations

import functools
import os
import types
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import transformers
from torch import nn
from transformers.cache_utils import Cache

if TYPE_CHECKING:
    from .modeling_glm import GLMBlock, GLMModel

# A LayerNorm's arguments after the input: (normalized_shape, weight, bias, eps).
LayerNormArguments = tuple[tuple[int, ...], torch.Tensor | None, torch.Tensor | None, float]


# What a call of a module, or a step of a generate() run, runs of its class: patched onto an instance or overridden,
# it is code of the caller's that the run calls (and that could change the blocks between steps).
CALL_METHODS = (
    "forward",
    "__call__",
    "_call_impl",
    "prepare_inputs_for_generation",
    "_update_model_kwargs_for_generation",
)
CALL_METHOD_NAMES = frozenset(CALL_METHODS)
# Where the code that a block's call may run lives: torch's, transformers' and GLM's own files (this folder, which
# also holds the flat files of an exported remote-code model).
OWN_CODE_FOLDERS = tuple(
    str(Path(folder).resolve()) + os.sep
    for folder in (Path(torch.__file__).parent, Path(transformers.__file__).parent, Path(__file__).parent)
)


def calls_of(cls: type) -> tuple[Any, ...]:
    """The functions that `CALL_METHODS` name on `cls` (None where it has no such method)."""
    return tuple(getattr(cls, name, None) for name in CALL_METHODS)


@functools.cache
def own_file(filename: str) -> bool:
    """Whether the source file `filename` is in `OWN_CODE_FOLDERS`."""
    return str(Path(filename).resolve()).startswith(OWN_CODE_FOLDERS)


def own_code(cls: type) -> bool:
    """Whether every call method of `cls` is torch's, transformers' or GLM's own code (not a kernel library's or a
    caller's patch, made before or after glm_hf was imported)."""
    functions = [function for function in calls_of(cls) if function is not None]
    return all(hasattr(function, "__code__") and own_file(function.__code__.co_filename) for function in functions)


def own_callable(value: Any) -> bool:
    """Whether `value`, a callable held on a module's instance (`GELUTanh.act`), runs torch's, transformers' or GLM's
    own code: a builtin (torch's C functions), a function or method defined in `OWN_CODE_FOLDERS`, or a
    `functools.partial` of one."""
    while isinstance(value, functools.partial):
        value = value.func
    if isinstance(value, types.MethodType):
        value = value.__func__
    if isinstance(value, types.BuiltinFunctionType):
        return True
    code = getattr(value, "__code__", None)
    return code is not None and own_file(code.co_filename)


def own_activation_part(module: nn.Module) -> bool:
    """Whether `module`, the activation or a submodule of it, is of torch's, transformers' or GLM's own class and
    holds no function of anyone else's (`own_callable`): what the activation's forward calls."""
    return own_code(type(module)) and all(own_callable(value) for value in vars(module).values() if callable(value))


# The calls of GLM's own classes where they are defined (`remember_calls`): one patched or overridden since, even with
# GLM's own code, runs as modules.
ORIGINAL_CALLS: dict[type, tuple[Any, ...]] = {}


def remember_calls(*classes: type) -> None:
    """Record the calls of `classes` as they are now: called where they are defined, before anyone can patch them."""
    ORIGINAL_CALLS.update((cls, calls_of(cls)) for cls in classes)


def calls_as_defined(module: Any, cls: type) -> bool:
    """Whether `module` is a `cls` (one of GLM's classes, `remember_calls`) whose class calls what `cls` called where
    it was defined (`cls` itself, or a subclass that overrides none of `CALL_METHODS`)."""
    return isinstance(module, cls) and calls_of(type(module)) == ORIGINAL_CALLS[cls]


def patched_on_instance(module: nn.Module) -> bool:
    """Whether a call method (`CALL_METHODS`) is set on the instance, or the module is compiled on its own
    (`Module.compile()` replaces its call)."""
    return not CALL_METHOD_NAMES.isdisjoint(vars(module)) or module._compiled_call_impl is not None


def plain_leaf(module: Any, cls: type, leaf_classes: dict[type, bool]) -> bool:
    """A `nn.Linear` / `nn.LayerNorm` (`cls`) that calls what `cls` calls (a subclass that overrides none of it), in
    eval mode, without a parametrization (a weight computed at every access; `torch.nn.utils.parametrize` keeps them
    in the submodule `parametrizations`). `leaf_classes`: the classes met so far in this check, and whether they call
    what `cls` calls (looked up once per class, not per layer)."""
    kind = type(module)
    if kind not in leaf_classes:
        leaf_classes[kind] = issubclass(kind, cls) and calls_of(kind) == calls_of(cls)
    return leaf_classes[kind] and not module.training and "parametrizations" not in module._modules


def direct_layers_apply(model: GLMModel) -> bool:
    """Whether `DirectLayers` makes exactly the calls of every block's modules: blocks in a `nn.ModuleList` (where
    the model-wide checks of hooks and patches see them); GLM's own block, attention and MLP classes, calling as
    defined; leaves of `nn.Linear` and `nn.LayerNorm` (not PEFT's, bitsandbytes' or any other layer's) and an
    activation module of torch's or transformers' own code, holding no function or submodule of anyone else's
    (`own_activation_part`); all in eval mode (no dropout anywhere), none parametrized. Patches on instances and
    hooks are the caller's checks (`patched_on_instance`, `forward_hooks_present`), over the whole model once
    per run."""
    from .modeling_glm import GLMMLP, GLMAttention, GLMBlock  # the module that uses this one

    if not (isinstance(model.layers, nn.ModuleList) and own_code(nn.Linear) and own_code(nn.LayerNorm)):
        return False
    if not all(calls_of(cls) == ORIGINAL_CALLS[cls] for cls in (GLMBlock, GLMAttention, GLMMLP)):
        return False  # a class patched since it was defined
    linear_classes: dict[type, bool] = {}
    norm_classes: dict[type, bool] = {}
    for block in model.layers:
        attention, mlp = getattr(block, "attention", None), getattr(block, "mlp", None)
        containers = ((block, GLMBlock), (attention, GLMAttention), (mlp, GLMMLP))
        if not all(type(module) is cls for module, cls in containers):
            return False
        linears = (attention.query_key_value, attention.dense, mlp.dense_h_to_4h, mlp.dense_4h_to_h)
        norms = (block.input_layernorm, block.post_attention_layernorm)
        activation = mlp.act_fn
        if not (
            all(plain_leaf(linear, nn.Linear, linear_classes) for linear in linears)
            and all(plain_leaf(norm, nn.LayerNorm, norm_classes) for norm in norms)
            and isinstance(activation, nn.Module)
            and all(map(own_activation_part, activation.modules()))
            and not any(module.training for module in (block, attention, mlp, activation))
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
        "apply_rotary",
        "input_layernorm",
        "query_key_value",
        "dense",
        "post_attention_layernorm",
        "dense_h_to_4h",
        "activation",
        "dense_4h_to_h",
    )

    def __init__(self, block: GLMBlock, apply_rotary: Callable) -> None:
        attention, mlp = block.attention, block.mlp
        self.attention = attention  # handed to the attention function, as the module path hands it
        self.layer_idx = attention.layer_idx
        self.head_dim = attention.head_dim
        self.scaling = attention.scaling
        self.two_d = attention.config.block_position_encoding
        self.deepnorm_alpha = block.deepnorm_alpha
        self.apply_rotary = apply_rotary
        self.input_layernorm = layer_norm_arguments(block.input_layernorm)
        self.query_key_value = (attention.query_key_value.weight, attention.query_key_value.bias)
        self.dense = (attention.dense.weight, attention.dense.bias)
        self.post_attention_layernorm = layer_norm_arguments(block.post_attention_layernorm)
        self.dense_h_to_4h = (mlp.dense_h_to_4h.weight, mlp.dense_h_to_4h.bias)
        self.activation: Callable[[torch.Tensor], torch.Tensor] = mlp.act_fn.forward
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
            query_states = self.apply_rotary(query_states, cos, sin, self.two_d)
            key_states = self.apply_rotary(key_states, cos, sin, self.two_d)
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
    """`GLMModel`'s blocks as `DirectBlock`s, taken once per `generate()` run (`direct_layers_apply` must hold).
    `apply_rotary`: the rotation that `GLMAttention` calls (`modeling_glm.apply_rotary`, or what replaced it there,
    as kernel libraries replace such functions)."""

    def __init__(self, model: GLMModel, apply_rotary: Callable) -> None:
        self.blocks = [DirectBlock(block, apply_rotary) for block in model.layers]

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
