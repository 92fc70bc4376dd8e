"""The fast decoding path: no host reads in decode steps, static cache + torch.compile, `logits_to_keep`, and plain
runs decoded in inference mode (only where none of their tensors can reach the caller).

A host read (`int(t)`, `bool(t)`, `.item()`, `.tolist()`, ...) is a device-to-host sync on an accelerator: the
CPU waits for the GPU at every token. On this CPU-only machine two stand-ins show them: a `TorchFunctionMode` that
records the Python-level reads, and running the forward on the meta device, where any read of a value (including
the C++ ones, such as `torch.arange(tensor)`) raises.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch.overrides import TorchFunctionMode
from transformers import (
    CompileConfig,
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
    TextStreamer,
)
from transformers.cache_utils import DynamicCache, DynamicLayer, StaticCache
from transformers.generation.streamers import BaseStreamer

from glm_hf import fill_blanks
from glm_hf.modeling.modeling_glm import CACHE_OUTPUT_FIELD, GENERATE_CACHE_KWARG, GLMDynamicCache, GLMDynamicLayer

from conftest import TINY_TOKEN_IDS, blank_inputs, tiny_model, tiny_word_tokenizer

HOST_READS = {"item", "tolist", "numpy", "cpu", "__bool__", "__int__", "__float__", "__index__"}


class HostReads(TorchFunctionMode):
    """Records the tensor methods that copy a value to the host."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def __torch_function__(self, func: Callable, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        name = getattr(func, "__name__", "")
        if name in HOST_READS:
            self.calls.append(name)
        return func(*args, **(kwargs or {}))


def record_host_reads(model: torch.nn.Module, method: str, log: list[tuple[str, list[str]]]) -> None:
    """Replace `model.<method>` by a wrapper (same signature) that logs the host reads of each call."""
    original = getattr(model, method)

    @functools.wraps(original)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with HostReads() as reads:
            result = original(*args, **kwargs)
        log.append((method, reads.calls))
        return result

    setattr(model, method, wrapper)


def left_padded_prompts() -> dict[str, torch.Tensor]:
    """Two `[CLS] text [MASK] text [eos] [sop]` prompts of different lengths, the shorter one left-padded."""
    inputs = blank_inputs(batch_size=2, part_a=9, part_b=1)
    inputs["input_ids"][0, :3] = TINY_TOKEN_IDS["pad_token_id"]
    attention_mask = torch.ones_like(inputs["input_ids"])
    attention_mask[0, :3] = 0
    inputs["attention_mask"] = attention_mask
    return inputs


GREEDY = {"max_new_tokens": 6, "min_new_tokens": 6, "do_sample": False}


@pytest.mark.parametrize("cache_implementation", [None, "static"])
def test_decode_steps_read_nothing_back_to_the_host(cache_implementation: str | None) -> None:
    model = tiny_model()
    log: list[tuple[str, list[str]]] = []
    for method in ("forward", "prepare_inputs_for_generation", "_update_model_kwargs_for_generation"):
        record_host_reads(model, method, log)
    model.generate(**left_padded_prompts(), cache_implementation=cache_implementation, **GREEDY)

    forwards = [index for index, (method, _) in enumerate(log) if method == "forward"]
    assert len(forwards) == GREEDY["max_new_tokens"]
    decode_steps = log[forwards[0] + 1 :]  # everything after the prefill
    assert [calls for _, calls in decode_steps if calls] == []
    # The recorder sees the per-call position check that generate() now does once up front.
    with HostReads() as reads:
        model(**blank_inputs())
    assert "__int__" in reads.calls


@pytest.mark.parametrize("num_beams", [1, 2])
def test_steps_of_a_run_without_a_cache_read_nothing_back_to_the_host(num_beams: int) -> None:
    """A run with `use_cache=False` feeds the whole sequence at every step, with no cache: the position check
    done once up front covers those forwards too (before: only forwards on the run's cache skipped the per-call
    check, so every step of such a run did a host sync)."""
    model = tiny_model()
    log: list[tuple[str, list[str]]] = []
    record_host_reads(model, "forward", log)
    model.generate(**left_padded_prompts(), use_cache=False, num_beams=num_beams, **GREEDY)
    assert len(log) == GREEDY["max_new_tokens"]
    assert [calls for _, calls in log if calls] == []


@pytest.mark.parametrize("static", [False, True])
def test_a_decode_forward_runs_on_the_meta_device(static: bool) -> None:
    """Meta tensors have no values: a decode step that ran without reading one cannot have synced."""
    model = tiny_model().to("meta")
    inputs = {name: value.to("meta") for name, value in blank_inputs(batch_size=2, part_b=1).items()}
    length = inputs["input_ids"].shape[1]
    cache = StaticCache(config=model.config, max_cache_len=16) if static else DynamicCache(config=model.config)
    model.glm.run_flags.begin()  # a generate() run in this thread, which checks the positions once up front
    model.glm.run_flags.positions_prechecked = True
    model.glm.run_flags.run_cache = cache  # for its forwards on its cache
    model(**inputs, past_key_values=cache, use_cache=True)
    step = {
        "input_ids": torch.zeros(2, 1, dtype=torch.long, device="meta"),
        "position_ids": inputs["position_ids"][:, -1:],
        "block_position_ids": inputs["block_position_ids"][:, -1:] + 1,
        "attention_mask": torch.ones(2, 16 if static else length + 1, dtype=torch.long, device="meta"),
        "prefix_length": inputs["prefix_length"],
    }
    logits = model(**step, past_key_values=cache, use_cache=True, logits_to_keep=1).logits
    assert logits.shape == (2, 1, model.config.vocab_size)
    model.glm.run_flags.positions_prechecked = False
    with pytest.raises(RuntimeError, match="meta"):  # the per-call check reads a value: it cannot run here
        model(**step, past_key_values=cache, use_cache=True)


def count_graphs(counts: list[int]) -> Callable:
    """A torch.compile backend that runs the captured graph as is and counts the graphs it is given."""

    def backend(graph_module: torch.fx.GraphModule, example_inputs: list[Any]) -> Callable:
        counts.append(len(example_inputs))
        return graph_module.forward

    return backend


def test_static_cache_compiles_to_one_decode_graph_and_generates_like_the_dynamic_cache() -> None:
    """generate() compiles the decode steps (greedy and sampling; beam search runs eagerly). fullgraph=True fails
    on any graph break; one graph means no step recompiled (same shapes and strides at every step, also with a
    left-padded batch's growing padding mask)."""
    torch._dynamo.reset()
    model = tiny_model()
    prompts = left_padded_prompts()
    dynamic = model.generate(**prompts, **GREEDY)
    graphs: list[int] = []
    compile_config = CompileConfig(fullgraph=True, dynamic=False, backend=count_graphs(graphs), mode=None)
    compile_config._compile_all_devices = True  # transformers compiles on CPU only when asked to
    compiled = model.generate(**prompts, cache_implementation="static", compile_config=compile_config, **GREEDY)
    assert compiled.tolist() == dynamic.tolist()
    assert len(graphs) == 1


def test_compiled_forward_with_a_static_cache_generates_like_the_dynamic_cache() -> None:
    """The usual recipe, `model.forward = torch.compile(model.forward)`: prefill and decode steps both compiled."""
    torch._dynamo.reset()
    model = tiny_model()
    prompts = left_padded_prompts()
    dynamic = model.generate(**prompts, **GREEDY)
    graphs: list[int] = []
    model.forward = torch.compile(model.forward, fullgraph=True, backend=count_graphs(graphs))
    compiled = model.generate(**prompts, cache_implementation="static", **GREEDY)
    assert compiled.tolist() == dynamic.tolist()
    assert len(graphs) == 2  # the prefill and the decode step


def test_logits_to_keep_gives_the_last_columns_of_the_full_logits() -> None:
    model = tiny_model()
    inputs = blank_inputs()
    with torch.no_grad():
        full = model(**inputs).logits
        assert model(**inputs, logits_to_keep=1).logits.shape[1] == 1
        # fp32 rounding only: the head's matrix product over fewer rows may be blocked otherwise by the CPU's BLAS
        # (2e-6 apart on an AMD EPYC); a wrong column would be off by the logits' own scale.
        rounding = {"rtol": 1e-6, "atol": 1e-5}
        torch.testing.assert_close(model(**inputs, logits_to_keep=3).logits, full[:, -3:], **rounding)
        columns = torch.tensor([0, 5])
        torch.testing.assert_close(model(**inputs, logits_to_keep=columns).logits, full[:, columns], **rounding)
    with pytest.raises(ValueError, match="logits_to_keep"):
        model(**inputs, labels=inputs["input_ids"], logits_to_keep=1)


def test_generation_that_runs_past_the_position_table_still_names_the_limit() -> None:
    """The up-front check only lifts the per-step check when the whole run fits; past the table the step that
    gets there raises the clear error (here: positions count up without a block-position table)."""
    model = tiny_model(block_position_encoding=False, max_position_embeddings=16)
    input_ids = torch.randint(7, 96, (1, 12))
    model.generate(input_ids, max_new_tokens=4, min_new_tokens=4, do_sample=False)  # positions up to 15
    with pytest.raises(ValueError, match="max_position_embeddings=16"):
        model.generate(input_ids, max_new_tokens=6, min_new_tokens=6, do_sample=False)


def test_fill_blanks_keeps_the_generated_columns_instead_of_recomputing_the_spans() -> None:
    """After the context, every forward is one column wide: [sop] and the decode steps of each blank, plus the last
    token of a span as long as the generation (generate() never feeds its last token back). No forward re-reads
    a span, and nothing is appended after the last blank."""
    model = tiny_model(max_position_embeddings=129, initializer_range=0.5)
    widths: list[int] = []
    model.register_forward_pre_hook(
        lambda module, args, kwargs: widths.append(kwargs["input_ids"].shape[1]), with_kwargs=True
    )
    texts = ["the king [MASK] the queen and the [MASK] of the house .", "a bird [MASK] [MASK] ."]
    results = fill_blanks(model, tiny_word_tokenizer(), texts, max_new_tokens=4, do_sample=False)
    assert [len(result.spans) for result in results] == [2, 2]
    assert widths[0] > 1 and set(widths[1:]) == {1}
    assert len(widths) - 1 <= 2 * 4 + 1  # two blanks of at most 4 steps, one completion between them


def updates_of_both_layers(steps: list[int], seed: int = 0) -> tuple[GLMDynamicLayer, DynamicLayer, list[int]]:
    """Feed the same states (widths `steps`) to a GLMDynamicLayer and transformers' DynamicLayer, comparing what
    each update returns; also the storage address of the GLM layer's key buffer after each update."""
    generator = torch.Generator().manual_seed(seed)
    ours, theirs, addresses = GLMDynamicLayer(), DynamicLayer(), []
    for width in steps:
        keys, values = (torch.randn(2, 3, width, 4, generator=generator) for _ in range(2))
        got, expected = ours.update(keys, values), theirs.update(keys, values)
        for tensor, reference in zip(got, expected, strict=True):
            assert torch.equal(tensor, reference)
        assert ours.get_seq_length() == theirs.get_seq_length()
        addresses.append(ours.key_buffer.data_ptr())
    return ours, theirs, addresses


def test_glm_dynamic_layer_writes_in_place_and_grows_rarely() -> None:
    """300 single-token steps after a 40-column prefill: the same states as DynamicLayer (which copies the whole
    cache at every step), from a handful of buffers (growth by a quarter, at least 64 columns)."""
    ours, _, addresses = updates_of_both_layers([40] + [1] * 300)
    regrowths = sum(before != after for before, after in zip(addresses, addresses[1:], strict=False))
    assert regrowths == 5  # 40 columns exactly, then room for 105, 170, 235, 300 and 376 (300 + 300 // 4)
    assert ours.key_buffer.shape[-2] == 376 and ours.keys.shape[-2] == 340
    assert ours.keys.data_ptr() == ours.key_buffer.data_ptr()


def test_glm_dynamic_layer_follows_crop_reorder_and_batch_changes() -> None:
    ours, theirs, _ = updates_of_both_layers([5, 1, 1])
    for layer in (ours, theirs):
        layer.crop(-2)  # a view: our buffer stays and the next token overwrites the cropped columns
        layer.reorder_cache(torch.tensor([1, 0]))
    assert torch.equal(ours.keys, theirs.keys) and torch.equal(ours.values, theirs.values)
    buffer = ours.key_buffer.data_ptr()
    step = torch.randn(2, 3, 1, 4), torch.randn(2, 3, 1, 4)
    for got, expected in zip(ours.update(*step), theirs.update(*step), strict=True):
        assert torch.equal(got, expected)
    assert ours.key_buffer.data_ptr() == buffer  # reordered in place: still room, no regrowth
    for layer in (ours, theirs):
        layer.batch_repeat_interleave(2)  # replaces keys: adopted at the next update
    step = torch.randn(4, 3, 2, 4), torch.randn(4, 3, 2, 4)
    for got, expected in zip(ours.update(*step), theirs.update(*step), strict=True):
        assert torch.equal(got, expected)


def test_glm_dynamic_layer_keeps_gradients_of_earlier_steps() -> None:
    """Three updates with states that require grad, then one backward: the third would be written in place into
    the buffer whose view the second step's square() saved, so such states are concatenated instead."""
    gradients, inputs = [], [torch.randn(1, 2, width, 4) for width in (3, 3, 1, 1, 1, 1)]
    for layer in (GLMDynamicLayer(), DynamicLayer()):
        states = [state.clone().requires_grad_() for state in inputs]
        loss = torch.zeros(())
        for keys, values in zip(states[::2], states[1::2], strict=True):
            loss = loss + sum(cached.square().sum() for cached in layer.update(keys, values))
        loss.backward()
        gradients.append([state.grad for state in states])
    for ours, theirs in zip(*gradients, strict=True):
        assert torch.equal(ours, theirs)


@pytest.mark.parametrize("prefix", ["cached keys", "soft prompt"])
def test_decode_steps_after_a_trainable_prefix_get_transformers_gradients(prefix: str) -> None:
    """A frozen model after a prefix that requires grad (prefix tuning's cached keys, or a soft prompt's embeddings),
    three decode steps, one backward: the new states of the first layer need no grad, but the cache holds some, so
    they are concatenated as transformers does (written in place, they would overwrite what backward reads)."""
    model = tiny_model().requires_grad_(False)
    inputs = blank_inputs(batch_size=2, part_a=9, part_b=4)
    head_size = model.config.hidden_size // model.config.num_attention_heads
    torch.manual_seed(0)
    prefix_states = [
        [torch.randn(2, model.config.num_attention_heads, 3, head_size) for _ in range(2)]
        for _ in range(model.config.num_hidden_layers)
    ]
    gradients = []
    for cache in (GLMDynamicCache(config=model.config), DynamicCache(config=model.config)):
        if prefix == "cached keys":
            leaves = [state.clone().requires_grad_() for states in prefix_states for state in states]
            for layer_idx in range(model.config.num_hidden_layers):
                cache.update(leaves[2 * layer_idx], leaves[2 * layer_idx + 1], layer_idx)
            first_column, loss = 0, torch.zeros(())
        else:
            leaves = [model.get_input_embeddings()(inputs["input_ids"][:, :9]).detach().requires_grad_()]
            positions = {name: inputs[name][:, :9] for name in ("position_ids", "block_position_ids")}
            output = model(inputs_embeds=leaves[0], **positions, prefix_length=9, past_key_values=cache)
            first_column, loss = 9, output.logits.sum()
        for column in range(first_column, first_column + 3):
            step = {name: value[:, column : column + 1] for name, value in inputs.items() if name != "prefix_length"}
            loss = loss + model(**step, prefix_length=9, past_key_values=cache, use_cache=True).logits.sum()
        loss.backward()
        gradients.append([leaf.grad for leaf in leaves])
    for ours, theirs in zip(*gradients, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_a_cache_filled_in_inference_mode_continues_outside_it() -> None:
    """generate() under `torch.inference_mode()` (as pipelines run it) returning its cache, then continued outside
    it: the buffers, inference tensors that cannot be written there, are copied to new ones, and the two runs give
    the tokens of one."""
    model = tiny_model()
    inputs = blank_inputs(batch_size=2, part_b=1)
    one_run = model.generate(**inputs, max_new_tokens=8, min_new_tokens=8, do_sample=False)
    with torch.inference_mode():
        first = model.generate(**inputs, **GREEDY, return_dict_in_generate=True)
    cache = first[CACHE_OUTPUT_FIELD]
    assert type(cache) is GLMDynamicCache and cache.layers[0].key_buffer.is_inference()
    continued = model.generate(
        first.sequences, **{GENERATE_CACHE_KWARG: cache}, max_new_tokens=2, min_new_tokens=2, do_sample=False
    )
    assert continued.tolist() == one_run.tolist()
    assert not cache.layers[0].key_buffer.is_inference()


@pytest.mark.parametrize("num_beams", [1, 3], ids=["greedy", "beam"])
def test_generate_decodes_on_the_glm_dynamic_cache_like_on_transformers_cache(num_beams: int) -> None:
    model = tiny_model()
    prompts = left_padded_prompts()
    options = {**GREEDY, "num_beams": num_beams, "return_dict_in_generate": True}
    default = model.generate(**prompts, **options)
    assert type(default.past_key_values) is GLMDynamicCache
    given = model.generate(**prompts, past_key_values=DynamicCache(config=model.config), **options)
    assert type(given.past_key_values) is DynamicCache  # a cache the caller passes is kept
    assert default.sequences.tolist() == given.sequences.tolist()
    static = model.generate(**prompts, cache_implementation="static", **options)
    assert type(static.past_key_values) is StaticCache  # only the default dynamic cache is replaced
    with torch.no_grad():
        assert type(model(**blank_inputs(), use_cache=True).past_key_values) is GLMDynamicCache


def generate_recording_modes(model: torch.nn.Module, batch_size: int = 2, **options: Any) -> tuple[Any, list[bool]]:
    """generate() on `blank_inputs` (`GREEDY`, with `options` over it), and whether each forward of the run was in
    inference mode (recorded by a wrapper of the model's `forward`: neither a hook nor a callback, which keep a run
    out of inference mode)."""
    modes: list[bool] = []
    forward = model.forward

    @functools.wraps(forward)  # its signature: generate() checks its arguments against it
    def recording_forward(*args: Any, **kwargs: Any) -> Any:
        modes.append(torch.is_inference_mode_enabled())
        return forward(*args, **kwargs)

    model.forward = recording_forward
    try:
        output = model.generate(**blank_inputs(batch_size), **{**GREEDY, **options})
    finally:
        del model.forward
    return output, modes


@pytest.mark.parametrize(
    "options", [{}, {"do_sample": True, "top_k": 5}, {"num_beams": 3}], ids=["greedy", "sampling", "beams"]
)
def test_a_plain_run_decodes_in_inference_mode_and_hands_back_plain_tokens(options: dict[str, Any]) -> None:
    """Only the tokens leave a plain run (greedy, sampling or beam search): it decodes in inference mode (less host
    work per step), with the tokens of a run outside it, and hands them back as an ordinary tensor, writable and fit
    for autograd (an embedding keeps its ids for backward); the weights stay ordinary tensors."""
    model = tiny_model()
    torch.manual_seed(3)
    tokens, modes = generate_recording_modes(model, **options)
    assert len(modes) == GREEDY["max_new_tokens"] and all(modes)
    assert not tokens.is_inference()
    handle = model.glm.layers[0].register_forward_hook(lambda *args: None)  # keeps the run out of inference mode
    torch.manual_seed(3)
    outside, modes = generate_recording_modes(model, **options)
    handle.remove()
    assert not any(modes) and outside.tolist() == tokens.tolist()
    model.train()
    model(input_ids=tokens).logits.sum().backward()
    assert model.glm.word_embeddings.weight.grad is not None
    assert not any(parameter.is_inference() for parameter in model.parameters())
    tokens[:, 0] = TINY_TOKEN_IDS["pad_token_id"]


def keep_activations_of_the_first_layer(model: torch.nn.Module, kept: list[torch.Tensor]) -> Callable[[], None]:
    handle = model.glm.layers[0].register_forward_hook(lambda module, args, output: kept.append(output[0]))
    return handle.remove


def keep_activations_of_every_module(model: torch.nn.Module, kept: list[torch.Tensor]) -> Callable[[], None]:
    def hook(module: torch.nn.Module, args: Any, output: Any) -> None:
        if module is model.glm.final_layernorm:
            kept.append(output)

    return torch.nn.modules.module.register_module_forward_hook(hook).remove


def keep_activations_through_accelerate(model: torch.nn.Module, kept: list[torch.Tensor]) -> Callable[[], None]:
    """accelerate's hooks (offloading, device alignment) wrap a module's forward and mark it with `_hf_hook`."""
    from accelerate.hooks import ModelHook, add_hook_to_module, remove_hook_from_module

    class Keep(ModelHook):
        def post_forward(self, module: torch.nn.Module, output: Any) -> Any:
            kept.append(output)
            return output

    add_hook_to_module(model.glm.final_layernorm, Keep())
    return lambda: remove_hook_from_module(model.glm.final_layernorm)


@pytest.mark.parametrize(
    "keep",
    [keep_activations_of_the_first_layer, keep_activations_of_every_module, keep_activations_through_accelerate],
    ids=["module-hook", "global-hook", "accelerate-hook"],
)
def test_a_forward_hook_keeps_the_run_out_of_inference_mode(keep: Callable) -> None:
    """A hook may keep activations (a probe trained on them later): the run stays out of inference mode, so that
    autograd takes what it kept."""
    model = tiny_model()
    kept: list[torch.Tensor] = []
    remove = keep(model, kept)
    try:
        _, modes = generate_recording_modes(model)
    finally:
        remove()
    assert not any(modes)
    probe = torch.nn.Linear(kept[0].shape[-1], 1)
    probe(torch.cat([states[:, -1] for states in kept])).sum().backward()
    assert probe.weight.grad is not None


@pytest.mark.parametrize("case", ["return_dict", "return_dict_beams", "caller_cache"])
def test_runs_whose_tensors_outlive_them_stay_out_of_inference_mode(case: str) -> None:
    """Scores and caches outlive the run (training on returned scores, continuing a caller's cache): those runs
    decode as transformers does, outside inference mode."""
    model = tiny_model()
    options: dict[str, Any] = {
        "return_dict": {"return_dict_in_generate": True, "output_scores": True},
        "return_dict_beams": {"return_dict_in_generate": True, "output_scores": True, "num_beams": 2},
        "caller_cache": {GENERATE_CACHE_KWARG: GLMDynamicCache(config=model.config)},
    }[case]
    output, modes = generate_recording_modes(model, **options)
    assert modes and not any(modes)
    if case.startswith("return_dict"):
        student = torch.zeros_like(output.scores[0], requires_grad=True)
        teacher = output.scores[0].softmax(-1)
        torch.nn.functional.kl_div(student.log_softmax(-1), teacher, reduction="batchmean").backward()
    if case == "caller_cache":
        assert not options[GENERATE_CACHE_KWARG].layers[0].keys.is_inference()


def test_a_run_inside_the_callers_inference_mode_hands_back_its_inference_tensor() -> None:
    """Under the caller's own `torch.inference_mode()` (pipelines), nothing changes: the tokens are inference
    tensors, as that mode makes them."""
    model = tiny_model()
    with torch.inference_mode():
        tokens, modes = generate_recording_modes(model)
    assert all(modes) and tokens.is_inference()


class SteerByGradient(LogitsProcessor):
    """Steers the scores along a gradient, as PPLM-style processors do: needs autograd inside the loop."""

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            probe = scores.detach().clone().requires_grad_(True)
            probe.softmax(-1)[:, 0].sum().backward()
        return scores + probe.grad


class KeepsItsCounts(LogitsProcessor):
    """State made at the first call and updated in place at the next ones, across runs."""

    counts: torch.Tensor | None = None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.counts is None:
            self.counts = torch.zeros_like(scores)
        self.counts += scores.softmax(-1)
        return scores


class KeepsTheTokens(StoppingCriteria):
    def __init__(self) -> None:
        self.seen: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        self.seen.append(input_ids)
        return torch.zeros(input_ids.shape[0], dtype=torch.bool)


class KeepingStreamer(BaseStreamer):
    def __init__(self) -> None:
        self.values: list[torch.Tensor] = []

    def put(self, value: torch.Tensor) -> None:
        self.values.append(value)

    def end(self) -> None:
        pass


@pytest.mark.parametrize("callback", ["autograd", "state", "criterion", "streamer", "nested"])
def test_a_callers_callbacks_keep_the_run_out_of_inference_mode(callback: str) -> None:
    """A logits processor, stopping criterion or streamer of the caller's may need autograd, or keep the tensors it
    is handed (and update them later, in place); a nested generate() in a processor returns a plain tensor: each
    works as in transformers' own loop, which runs outside inference mode."""
    model = tiny_model()
    nested: list[torch.Tensor] = []

    def generate_nested(input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        nested.append(model.generate(**blank_inputs(), max_new_tokens=2, do_sample=False))
        return scores

    counts, criterion, streamer = KeepsItsCounts(), KeepsTheTokens(), KeepingStreamer()
    options = {
        "autograd": {"logits_processor": LogitsProcessorList([SteerByGradient()])},
        "state": {"logits_processor": LogitsProcessorList([counts])},
        "criterion": {"stopping_criteria": StoppingCriteriaList([criterion])},
        "streamer": {"streamer": streamer},
        "nested": {"logits_processor": LogitsProcessorList([generate_nested])},
    }[callback]
    _, modes = generate_recording_modes(model, **options)
    if callback == "nested":  # each forward of the outer run is followed by the nested run's two
        modes = modes[::3]
    assert modes and not any(modes)
    kept = {"state": [counts.counts], "criterion": criterion.seen, "streamer": streamer.values, "nested": nested}
    for tensor in kept.get(callback, []):
        tensor.add_(0)  # in place, outside any inference mode
    if callback == "state":  # the same processor in a run that returns its scores
        model.generate(
            **blank_inputs(), **GREEDY, logits_processor=LogitsProcessorList([counts]), return_dict_in_generate=True
        )


def test_transformers_text_streamers_keep_the_run_in_inference_mode() -> None:
    """transformers' text streamers read the tokens as lists and keep no tensor: a streamed run still decodes in
    inference mode."""
    model = tiny_model()
    streamer = TextStreamer(tiny_word_tokenizer())
    _, modes = generate_recording_modes(model, batch_size=1, streamer=streamer)
    assert modes and all(modes)
