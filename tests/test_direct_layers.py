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
from transformers import LogitsProcessorList

from glm_hf import fill_blanks
from glm_hf.modeling import direct_layers, modeling_glm
from glm_hf.modeling.modeling_glm import GLMBlock

from conftest import blank_inputs, tiny_chatglm, tiny_model, tiny_word_tokenizer

GREEDY = {"max_new_tokens": 5, "min_new_tokens": 5, "do_sample": False}


def recording_steps(model: torch.nn.Module, job: Callable[[], Any]) -> dict[str, list]:
    """`job()`'s result, each forward's logits and whether it ran with the run's `DirectLayers` (recorded by a wrapper
    of the model's `forward`: neither a hook nor a callback, which would change the run)."""
    record: dict[str, list] = {"logits": [], "direct": []}
    forward = model.forward

    @functools.wraps(forward)  # its signature: generate() checks its arguments against it
    def recording_forward(*args: Any, **kwargs: Any) -> Any:
        record["direct"].append(model.glm.run_flags.direct_layers is not None)
        output = forward(*args, **kwargs)
        record["logits"].append(output.logits.clone())
        return output

    model.forward = recording_forward
    try:
        record["result"] = job()
    finally:
        del model.forward
    return record


def generate_recording_steps(model: torch.nn.Module, inputs: dict[str, Any], **options: Any) -> dict[str, list]:
    """`recording_steps` of generate() with `options` (under `torch.inference_mode()` with `inference_mode=True`);
    its tokens as lists."""
    inference_mode = options.pop("inference_mode", False)

    def job() -> list[list[int]]:
        with torch.inference_mode(inference_mode):
            output = model.generate(**inputs, **options)
        return getattr(output, "sequences", output).tolist()

    return recording_steps(model, job)


def assert_same_steps(direct: dict[str, list], modules: dict[str, list]) -> None:
    """The direct run took `DirectLayers` in every forward, the other never, and both gave the same results and
    logits, bit for bit."""
    assert all(direct["direct"]) and not any(modules["direct"])
    assert direct["result"] == modules["result"]
    assert len(direct["logits"]) == len(modules["logits"]) > 1
    for step, (mine, reference) in enumerate(zip(direct["logits"], modules["logits"], strict=True)):
        assert torch.equal(mine, reference), f"step {step}"


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
    "scores": (tiny_model, blank_inputs, {"return_dict_in_generate": True, "output_scores": True}),
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
def test_direct_layers_give_the_modules_logits_to_the_bit(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each forward of a run (prefill and decode steps; transformers' loop and the static-cache loop, scores returned,
    inside the caller's inference mode; greedy, sampling, beams, padding, eager attention, bf16, no cache, ChatGLM's
    rotary 2-D and 1-D positions and DeepNorm) gives the same logits, bit for bit, with `DirectLayers` as with the
    modules' calls."""
    make_model, make_inputs, options = CASES[case]
    model = make_model()
    torch.manual_seed(7)
    direct = generate_recording_steps(model, make_inputs(), **{**GREEDY, **options})
    monkeypatch.setattr(modeling_glm, "direct_layers_apply", lambda model: False)
    torch.manual_seed(7)
    modules = generate_recording_steps(model, make_inputs(), **{**GREEDY, **options})
    assert_same_steps(direct, modules)
    assert model.glm.run_flags.direct_layers is None  # nothing of the run stays on the model


def test_fill_blanks_decodes_with_direct_layers_to_the_bit(monkeypatch: pytest.MonkeyPatch) -> None:
    """fill_blanks' runs (a caller's static cache per batch, eager on the CPU) take `DirectLayers` in their decode
    steps, with the spans and logits of the modules."""
    model = tiny_model(max_position_embeddings=129, initializer_range=0.5)
    texts = ["the king [MASK] the queen and the [MASK] of the house .", "a bird [MASK] [MASK] ."]

    def job() -> list[list[list[int]]]:
        results = fill_blanks(model, tiny_word_tokenizer(), texts, max_new_tokens=4, do_sample=False)
        return [result.spans for result in results]

    direct = recording_steps(model, job)
    monkeypatch.setattr(modeling_glm, "direct_layers_apply", lambda model: False)
    modules = recording_steps(model, job)
    assert direct["result"] == modules["result"]
    assert any(direct["direct"]) and not any(modules["direct"])
    assert not direct["direct"][0]  # the context's forward is fill_blanks' own, not a generate() run's
    assert len(direct["logits"]) == len(modules["logits"])
    for step, (mine, reference) in enumerate(zip(direct["logits"], modules["logits"], strict=True)):
        assert torch.equal(mine, reference), f"forward {step}"


def count_block_forwards(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts calls of `GLMBlock.forward` (the class's, so that an instance still calls its class's forward)."""
    calls = [0]
    forward = GLMBlock.forward

    def counting_forward(self: GLMBlock, *args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(GLMBlock, "forward", counting_forward)
    return calls


def patch_one_projection(model: torch.nn.Module) -> None:
    """A forward patched onto one instance (steering a layer's output, as interpretability code does)."""
    projection = model.glm.layers[1].mlp.dense_4h_to_h
    projection.forward = lambda hidden: torch.nn.functional.linear(hidden, projection.weight, projection.bias) * -4.0


class Scaled(torch.nn.Module):
    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * 2.0


MODULE_CASES: dict[str, Callable[[torch.nn.Module], Any]] = {
    "forward-hook": lambda model: model.glm.layers[0].register_forward_hook(lambda *args: None),
    "training": lambda model: model.train(),
    "patched-forward": patch_one_projection,
    "parametrized-weight": lambda model: parametrize.register_parametrization(
        model.glm.layers[0].attention.query_key_value, "weight", Scaled()
    ),
    "output-hidden-states": lambda model: model.generation_config.update(output_hidden_states=True),
    "logits-processor": lambda model: None,
}


@pytest.mark.parametrize("case", list(MODULE_CASES))
def test_runs_the_modules_would_change_keep_the_modules(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A hook, training mode (dropout), a forward patched onto a module, a parametrized weight, per-layer outputs, or
    a caller's code between steps (which may change the model): the blocks run as modules, with what those change."""
    model = tiny_model(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, embedding_dropout_prob=0.0)
    reference = model.generate(**blank_inputs(), **GREEDY).tolist()
    MODULE_CASES[case](model)
    options: dict[str, Any] = {}
    if case == "logits-processor":
        options["logits_processor"] = LogitsProcessorList([lambda input_ids, scores: scores])
    calls = count_block_forwards(monkeypatch)
    tokens = model.generate(**blank_inputs(), **GREEDY, **options).tolist()
    assert calls[0] == 2 * GREEDY["max_new_tokens"]  # every block of every forward
    if case in ("patched-forward", "parametrized-weight"):
        assert tokens != reference  # what the module changes is in the tokens
    elif case != "training":
        assert tokens == reference


def test_peft_adapters_and_compiled_blocks_keep_the_modules(monkeypatch: pytest.MonkeyPatch) -> None:
    """PEFT's LoRA layers replace the plain `nn.Linear`s, `Module.compile()` replaces a block's call: both run as
    modules."""
    lora = get_peft_model(tiny_model(), LoraConfig(task_type="CAUSAL_LM", r=4)).eval()
    calls = count_block_forwards(monkeypatch)
    lora.generate(**blank_inputs(), **GREEDY)
    assert calls[0] == 2 * GREEDY["max_new_tokens"]
    model = tiny_model()
    assert direct_layers.direct_layers_apply(model.glm)
    model.glm.layers[1].compile(backend="eager")
    assert not direct_layers.direct_layers_apply(model.glm)


def test_a_failed_run_leaves_no_direct_layers_behind() -> None:
    """The run's `DirectLayers` go with the run, also when it fails."""
    model = tiny_model()

    def fail(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError, match="stop"):
        model._transformers_loop(fail, blank_inputs()["input_ids"], generation_config=model.generation_config)
    assert model.glm.run_flags.direct_layers is None
