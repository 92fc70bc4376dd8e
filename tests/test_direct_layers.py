"""`DirectLayers`: a plain `generate()` run calls the blocks' weights directly, with the modules' logits to the bit,
and only where the module machinery does nothing."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch.nn.utils import parametrize
from transformers import AttentionInterface, LogitsProcessorList

from glm_hf import fill_blanks
from glm_hf.modeling import modeling_glm
from glm_hf.modeling.direct_layers import DirectLayers
from glm_hf.modeling.modeling_glm import GLMMLP, GLMForConditionalGeneration

from conftest import blank_inputs, tiny_chatglm, tiny_model, tiny_word_tokenizer

GREEDY = {"max_new_tokens": 5, "min_new_tokens": 5, "do_sample": False}


@pytest.fixture
def direct_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many forwards ran their blocks through `DirectLayers` (counted in its class, which the checks of
    `direct_layers_apply` do not look at)."""
    calls = [0]
    run = DirectLayers.__call__

    def counting_call(self: DirectLayers, *args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return run(self, *args, **kwargs)

    monkeypatch.setattr(DirectLayers, "__call__", counting_call)
    return calls


def generate_with_logits(model: torch.nn.Module, inputs: dict[str, Any], **options: Any) -> tuple[list, list]:
    """generate() with `options` (under `torch.inference_mode()` with `inference_mode=True`): its tokens and each
    forward's last-column logits (`output_logits`)."""
    inference_mode = options.pop("inference_mode", False)
    with torch.inference_mode(inference_mode):
        output = model.generate(**inputs, **options, return_dict_in_generate=True, output_logits=True)
    return output.sequences.tolist(), [logits.clone() for logits in output.logits]


def use_the_modules(monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs call the blocks as modules from now on (the code before `DirectLayers`)."""
    monkeypatch.setattr(modeling_glm, "direct_layers_apply", lambda model: False)


def chatglm_prompts() -> dict[str, torch.Tensor]:
    """Two ChatGLM prompts: random ids, then [gMASK] and [sop]."""
    ids = torch.randint(7, 85, (2, 8), generator=torch.Generator().manual_seed(2))
    return {"input_ids": torch.cat([ids, torch.tensor([[90, 5], [90, 5]])], dim=1)}


def left_padded(inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`inputs` with the first row left-padded by two columns (pad id 0, block and position 0, mask 0)."""
    padded = {name: torch.nn.functional.pad(value, (2, 0)) for name, value in inputs.items() if value.dim() == 2}
    padded["input_ids"][1, :2] = padded["input_ids"][1, 2]  # the second row is not padded: it starts two earlier
    padded["attention_mask"] = torch.ones_like(padded["input_ids"])
    padded["attention_mask"][0, :2] = 0
    padded["prefix_length"] = inputs["prefix_length"] + 2
    return padded


CASES: dict[str, tuple[Callable[[], torch.nn.Module], Callable[[], dict[str, Any]], dict[str, Any]]] = {
    "greedy": (tiny_model, blank_inputs, {}),
    "static-cache": (tiny_model, blank_inputs, {"cache_implementation": "static"}),
    "scores": (tiny_model, blank_inputs, {"output_scores": True}),
    "inside-inference-mode": (tiny_model, blank_inputs, {"inference_mode": True}),
    "eager-attention": (functools.partial(tiny_model, "eager"), blank_inputs, {}),
    "sampling": (tiny_model, blank_inputs, {"do_sample": True, "top_k": 5}),
    "beams": (tiny_model, blank_inputs, {"num_beams": 3}),
    "left-padded": (tiny_model, lambda: left_padded(blank_inputs()), {}),
    "bf16": (lambda: tiny_model().to(torch.bfloat16), blank_inputs, {}),
    "no-cache": (tiny_model, blank_inputs, {"use_cache": False}),
    "chatglm-2d": (tiny_chatglm, chatglm_prompts, {}),
    "chatglm-1d": (functools.partial(tiny_chatglm, False), chatglm_prompts, {}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_direct_layers_give_the_modules_logits_to_the_bit(
    case: str, direct_calls: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every forward of a run (transformers' loop and the static-cache loop, inside the caller's inference mode or
    not; greedy, sampling, beams, padding, eager attention, bf16, no cache, ChatGLM's rotary 2-D and 1-D positions
    and DeepNorm) runs its blocks through `DirectLayers`, with the tokens and logits of the modules' calls, bit for
    bit."""
    make_model, make_inputs, options = CASES[case]
    model = make_model()
    torch.manual_seed(7)
    tokens, logits = generate_with_logits(model, make_inputs(), **{**GREEDY, **options})
    assert direct_calls[0] == len(logits) == GREEDY["max_new_tokens"]  # the prefill and every decode step
    assert model.glm.run_flags.direct_layers is None  # nothing of the run stays on the model
    use_the_modules(monkeypatch)
    torch.manual_seed(7)
    reference_tokens, reference_logits = generate_with_logits(model, make_inputs(), **{**GREEDY, **options})
    assert tokens == reference_tokens
    for step, (mine, reference) in enumerate(zip(logits, reference_logits, strict=True)):
        assert torch.equal(mine, reference), f"step {step}"


def test_a_run_handing_back_only_tokens_calls_the_blocks_directly_too(direct_calls: list[int]) -> None:
    """A plain run (in inference mode, tokens only) takes `DirectLayers` in each forward too."""
    model = tiny_model()
    tokens = model.generate(**blank_inputs(), **GREEDY).tolist()
    assert direct_calls[0] == GREEDY["max_new_tokens"]
    assert tokens == generate_with_logits(model, blank_inputs(), **GREEDY)[0]


def test_fill_blanks_decodes_with_direct_layers(direct_calls: list[int], monkeypatch: pytest.MonkeyPatch) -> None:
    """fill_blanks' runs (a caller's static cache per batch, eager on the CPU) take `DirectLayers`, with the spans of
    the modules."""
    model = tiny_model(max_position_embeddings=129, initializer_range=0.5)
    texts = ["the king [MASK] the queen and the [MASK] of the house .", "a bird [MASK] [MASK] ."]

    def spans() -> list[list[list[int]]]:
        results = fill_blanks(model, tiny_word_tokenizer(), texts, max_new_tokens=4, do_sample=False)
        return [result.spans for result in results]

    direct = spans()
    assert direct_calls[0] > 0
    use_the_modules(monkeypatch)
    assert spans() == direct


def patch_one_projection(model: torch.nn.Module) -> None:
    """A forward patched onto one instance (steering a layer's output, as interpretability code does)."""
    projection = model.glm.layers[1].mlp.dense_4h_to_h
    projection.forward = lambda hidden: torch.nn.functional.linear(hidden, projection.weight, projection.bias) * -4.0


class Scaled(torch.nn.Module):
    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * 2.0


def patch_a_class(monkeypatch: pytest.MonkeyPatch, cls: type) -> None:
    """A forward patched onto a class after import (a kernel library's, or steering code's)."""
    forward = cls.forward
    monkeypatch.setattr(cls, "forward", lambda self, hidden, *args, **kwargs: forward(self, hidden) * -4.0)


def steer_once_the_prompt_is_cached(model: torch.nn.Module, columns: int) -> None:
    """Caller code that changes the model between steps: a steering hook on block 1 from the first decode step on
    (a forward of `columns` == 1 new column)."""
    if columns == 1 and not model.glm.layers[1]._forward_hooks:
        model.glm.layers[1].register_forward_hook(lambda module, args, output: (output[0] * -4.0, output[1]))


def steer_from_a_forward_wrapper(model: torch.nn.Module) -> None:
    """The steering code in a wrapper of the model's forward, set on the instance."""
    forward = model.forward

    @functools.wraps(forward)  # its signature: generate() checks its arguments against it
    def steering_forward(*args: Any, **kwargs: Any) -> Any:
        steer_once_the_prompt_is_cached(model, kwargs["input_ids"].shape[1])
        return forward(*args, **kwargs)

    model.forward = steering_forward


class SteeringGLM(GLMForConditionalGeneration):
    """The steering code in a subclass's forward."""

    @functools.wraps(GLMForConditionalGeneration.forward)  # its signature: generate() checks its arguments against it
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        steer_once_the_prompt_is_cached(self, kwargs["input_ids"].shape[1])
        return super().forward(*args, **kwargs)


class ScaledMLP(GLMMLP):
    """A subclass of GLM's MLP given to one block (its class is not GLM's own, nor patched: only the check of each
    block's classes sees it), scaling the MLP's output."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return super().forward(hidden_states) * -4.0


def steer_from_the_head(model: torch.nn.Module) -> None:
    """The steering code in a wrapper of the LM head's forward (a module outside the blocks)."""
    forward = model.lm_head.forward

    def steering_head(hidden: torch.Tensor) -> torch.Tensor:
        steer_once_the_prompt_is_cached(model, hidden.shape[1])
        return forward(hidden)

    model.lm_head.forward = steering_head


def steer_from_an_attention_function(model: torch.nn.Module) -> None:
    """The steering code in an attention function of the caller's (transformers' `AttentionInterface`), called in
    every layer."""

    def steering_attention(module: torch.nn.Module, query: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        steer_once_the_prompt_is_cached(model, query.shape[2])
        return modeling_glm.sdpa_attention_forward(module, query, *args, **kwargs)

    AttentionInterface.register("glm_steering_test", steering_attention)
    model.set_attn_implementation("glm_steering_test")


def dropout_in_one_block(model: torch.nn.Module) -> None:
    """Monte-Carlo dropout in one block of a model in eval mode."""
    model.glm.layers[0].hidden_dropout_prob = 0.5
    model.glm.layers[0].dropout.p = 0.5
    model.glm.layers[0].train()


MODULE_CASES: dict[str, Callable[[torch.nn.Module, pytest.MonkeyPatch], Any]] = {
    "forward-hook": lambda model, patch: model.glm.layers[0].register_forward_hook(lambda *args: None),
    "training": lambda model, patch: model.train(),
    "dropout-in-one-block": lambda model, patch: dropout_in_one_block(model),
    "patched-instance-forward": lambda model, patch: patch_one_projection(model),
    "patched-mlp-class": lambda model, patch: patch_a_class(patch, GLMMLP),
    "mlp-subclass-in-one-block": lambda model, patch: setattr(model.glm.layers[1].mlp, "__class__", ScaledMLP),
    "patched-layer-norm-class": lambda model, patch: patch_a_class(patch, torch.nn.LayerNorm),
    "parametrized-weight": lambda model, patch: parametrize.register_parametrization(
        model.glm.layers[0].attention.query_key_value, "weight", Scaled()
    ),
    "output-hidden-states": lambda model, patch: model.generation_config.update(output_hidden_states=True),
    "logits-processor": lambda model, patch: None,
    "steering-forward-wrapper": lambda model, patch: steer_from_a_forward_wrapper(model),
    "steering-subclass": lambda model, patch: setattr(model, "__class__", SteeringGLM),
    "steering-head-wrapper": lambda model, patch: steer_from_the_head(model),
    "steering-attention-function": lambda model, patch: steer_from_an_attention_function(model),
    "compiled-block": lambda model, patch: model.glm.layers[1].compile(backend="eager"),
    "function-activation": lambda model, patch: replace_the_activation_by_a_function(model),
    "steering-activation-module": lambda model, patch: use_a_steering_activation(model),
    "steering-activation-function": lambda model, patch: steer_from_the_activation_function(model),
    "steering-activation-submodule": lambda model, patch: steer_from_an_activation_submodule(model),
    "hooked-blocks-in-a-list": lambda model, patch: hook_blocks_held_in_a_list(model),
}
CHANGED_TOKENS = {
    "patched-instance-forward",
    "patched-mlp-class",
    "mlp-subclass-in-one-block",
    "patched-layer-norm-class",
    "parametrized-weight",
    "steering-forward-wrapper",
    "steering-subclass",
    "steering-head-wrapper",
    "steering-attention-function",
    "steering-activation-module",
    "steering-activation-function",
    "steering-activation-submodule",
    "hooked-blocks-in-a-list",
}


@pytest.mark.parametrize("case", list(MODULE_CASES))
def test_runs_the_modules_would_change_keep_the_modules(
    case: str, direct_calls: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hook, training mode (the model's or one block's), a forward patched onto a module or its class, a
    subclass of GLM's MLP in one block, a parametrized weight, a block compiled on its own, per-layer outputs, or a
    caller's code called during the run (a logits processor; a wrapper of the model's or the head's forward, a
    subclass's forward, an attention function that steer the model between steps; an activation of one's own,
    module or function; blocks held in a plain list, where a hook on them is not among the model's modules): the
    blocks run as modules, with what those change."""
    model = tiny_model(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, embedding_dropout_prob=0.0)
    reference = model.generate(**blank_inputs(), **GREEDY).tolist()
    direct_calls[0] = 0
    MODULE_CASES[case](model, monkeypatch)
    options: dict[str, Any] = {}
    if case == "logits-processor":
        options["logits_processor"] = LogitsProcessorList([lambda input_ids, scores: scores])
    torch.manual_seed(0)
    tokens = model.generate(**blank_inputs(), **GREEDY, **options).tolist()
    assert direct_calls[0] == 0
    if case in CHANGED_TOKENS:
        assert tokens != reference  # what the change does is in the tokens
    elif case == "dropout-in-one-block":
        torch.manual_seed(0)
        use_the_modules(monkeypatch)
        assert tokens == model.generate(**blank_inputs(), **GREEDY, **options).tolist()  # the same dropout draws
    elif case != "training":
        assert tokens == reference


class SteeringActivation(torch.nn.Module):
    """An activation module of the caller's own: code the run calls in every layer, here steering from the second
    call on."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.calls, self.model = 0, [model]  # in a list: not a submodule

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        steer_once_the_prompt_is_cached(self.model[0], 1 if self.calls > 1 else 2)
        return torch.nn.functional.gelu(hidden, approximate="tanh")


def use_a_steering_activation(model: torch.nn.Module) -> None:
    model.glm.layers[0].mlp.act_fn = SteeringActivation(model).eval()


def steer_from_the_activation_function(model: torch.nn.Module) -> None:
    """The steering code in the function that transformers' activation module calls (`GELUTanh.act`, set on the
    instance): the module's class is transformers' own, the code it runs in every layer is the caller's, here
    steering from the second call on."""
    activation = model.glm.layers[0].mlp.act_fn
    gelu, calls = activation.act, [0]

    def steering_gelu(hidden: torch.Tensor) -> torch.Tensor:
        calls[0] += 1
        steer_once_the_prompt_is_cached(model, 1 if calls[0] > 1 else 2)
        return gelu(hidden)

    activation.act = steering_gelu


def steer_from_an_activation_submodule(model: torch.nn.Module) -> None:
    """The steering activation as the submodule that transformers' activation module calls (`GELUTanh.act`, a
    module assigned on the instance, kept among its submodules)."""
    model.glm.layers[0].mlp.act_fn.act = SteeringActivation(model).eval()


def hook_blocks_held_in_a_list(model: torch.nn.Module) -> None:
    """Blocks in a plain list (not a `nn.ModuleList`), one of them hooked."""
    layers = list(model.glm.layers)
    del model.glm.layers
    model.glm.layers = layers
    layers[0].mlp.register_forward_hook(lambda module, args, output: output * -4.0)


def replace_the_activation_by_a_function(model: torch.nn.Module) -> None:
    """The activation module of every MLP replaced by a plain function of the same values."""
    for block in model.glm.layers:
        del block.mlp.act_fn
        block.mlp.act_fn = functools.partial(torch.nn.functional.gelu, approximate="tanh")


def test_a_rotation_replaced_in_the_modeling_module_is_called(
    direct_calls: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kernel library replaces module-level functions such as `modeling_glm.apply_rotary`: `DirectLayers` calls
    the replacement too, as `GLMAttention` does."""
    calls: list[int] = []
    rotate = modeling_glm.apply_rotary

    def fused_rotary(states: torch.Tensor, *args: Any) -> torch.Tensor:
        calls.append(1)
        return rotate(states, *args).flip(-1)

    model = tiny_chatglm()
    reference = generate_with_logits(model, chatglm_prompts(), **GREEDY)[1]
    monkeypatch.setattr(modeling_glm, "apply_rotary", fused_rotary)
    tokens, logits = generate_with_logits(model, chatglm_prompts(), **GREEDY)
    assert direct_calls[0] == 2 * GREEDY["max_new_tokens"] and calls
    assert not torch.equal(logits[0], reference[0])  # the replacement's rotation is in the logits
    use_the_modules(monkeypatch)
    module_tokens, module_logits = generate_with_logits(model, chatglm_prompts(), **GREEDY)
    assert module_tokens == tokens
    assert all(torch.equal(mine, theirs) for mine, theirs in zip(logits, module_logits, strict=True))


def test_peft_adapters_keep_the_modules(direct_calls: list[int]) -> None:
    """PEFT's LoRA layers replace the plain `nn.Linear`s: the blocks run as modules; merged into the weights, they
    are plain again."""
    lora = get_peft_model(tiny_model(), LoraConfig(task_type="CAUSAL_LM", r=4)).eval()
    tokens = lora.generate(**blank_inputs(), **GREEDY).tolist()
    assert direct_calls[0] == 0
    merged = lora.merge_and_unload()
    assert merged.generate(**blank_inputs(), **GREEDY).tolist() == tokens
    assert direct_calls[0] == GREEDY["max_new_tokens"]


def test_a_failed_run_leaves_no_direct_layers_behind() -> None:
    """The run's `DirectLayers` go with the run, also when it fails."""
    model = tiny_model()

    def fail(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError, match="stop"):
        model._transformers_loop(fail, blank_inputs()["input_ids"], generation_config=model.generation_config)
    assert model.glm.run_flags.direct_layers is None
