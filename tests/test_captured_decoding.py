"""generate()'s own loop on a static cache (`glm_hf.modeling.captured_decoding`): the same tokens, scores and cache
as transformers' loop, the kept cache and decode step reused across runs, and no host read in a step.

On the CPU the step runs eagerly; `tests/test_cuda.py` checks the captured CUDA graph where a GPU exists.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import gc
import weakref
from typing import Any

import pytest
import torch
from test_fast_decoding import HostReads, left_padded_prompts
from test_generation_mixin import TokenRecorder
from transformers import (
    CompileConfig,
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
)
from transformers.cache_utils import StaticCache

import glm_hf
from glm_hf.modeling import captured_decoding, modeling_glm
from glm_hf.modeling.modeling_glm import GENERATE_CACHE_KWARG

from conftest import TINY_TOKEN_IDS, blank_inputs, tiny_chatglm, tiny_model, tiny_word_tokenizer

GREEDY = {"max_new_tokens": 8, "do_sample": False}


@pytest.fixture
def loop_calls(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Records each run of the static-cache loop (with its options)."""
    calls: list[dict[str, Any]] = []
    original = captured_decoding.decode_on_static_cache

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(modeling_glm, "decode_on_static_cache", spy)
    return calls


def with_transformers_loop(monkeypatch: pytest.MonkeyPatch, run: Any) -> Any:
    """`run()` with transformers' `_sample` loop on the static cache instead of GLM's."""
    with monkeypatch.context() as patch:
        patch.setattr(modeling_glm, "static_cache_loop_applies", lambda *args, **kwargs: False)
        return run()


def eos_after(model: glm_hf.GLMForConditionalGeneration, inputs: dict, steps: int, row: int) -> int:
    """The token that `row` of a greedy run generates at step `steps` (0-based): used as eos to end it there."""
    tokens = model.generate(**inputs, max_new_tokens=steps + 1, min_new_tokens=steps + 1, do_sample=False)
    return int(tokens[row, -1])


@pytest.mark.parametrize("padded", [False, True])
def test_greedy_tokens_equal_transformers_loop_on_the_static_cache(monkeypatch, loop_calls, padded: bool) -> None:
    model = tiny_model()
    inputs = left_padded_prompts() if padded else blank_inputs(batch_size=2, part_b=1)
    ours = model.generate(**inputs, cache_implementation="static", min_new_tokens=8, **GREEDY)
    theirs = with_transformers_loop(
        monkeypatch, lambda: model.generate(**inputs, cache_implementation="static", min_new_tokens=8, **GREEDY)
    )
    dynamic = model.generate(**inputs, min_new_tokens=8, **GREEDY)
    assert len(loop_calls) == 1
    assert ours.tolist() == theirs.tolist() == dynamic.tolist()


def defer_the_stop_check_as_on_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """The loop reads its stop flag one step late here too, as it does on CUDA."""
    monkeypatch.setattr(
        captured_decoding,
        "stop_check_deferred",
        lambda device, streamer, cache_outlives_call: streamer is None and not cache_outlives_call,
    )


@pytest.mark.parametrize("stop_check", ["at every step", "deferred"])
@pytest.mark.parametrize("finish", ["one row", "every row"])
def test_rows_ending_at_eos_end_as_in_transformers_loop(monkeypatch, loop_calls, finish: str, stop_check: str) -> None:
    """One row ending early is padded; every row ending early ends the run there (the deferred stop check, CUDA's,
    undoes the step it ran too many)."""
    if stop_check == "deferred":
        defer_the_stop_check_as_on_cuda(monkeypatch)
    model = tiny_model()
    inputs = blank_inputs(batch_size=2, part_b=1)
    eos = eos_after(model, inputs, steps=2, row=0)
    options = {"eos_token_id": eos, "pad_token_id": TINY_TOKEN_IDS["pad_token_id"], "max_new_tokens": 12}
    if finish == "every row":
        inputs = {name: value[:1] for name, value in inputs.items()}
    options["cache_implementation"] = "static"
    ours = model.generate(**inputs, **options)
    theirs = with_transformers_loop(monkeypatch, lambda: model.generate(**inputs, **options))
    assert loop_calls and loop_calls[0]["cache_outlives_call"] is False  # the kept cache: nothing else sees it
    assert ours.tolist() == theirs.tolist()
    if finish == "every row":
        assert ours.shape[1] == inputs["input_ids"].shape[1] + 3


def test_sampling_draws_the_same_tokens_as_transformers_loop(monkeypatch, loop_calls) -> None:
    model = tiny_model()
    inputs = left_padded_prompts()
    options = {
        "do_sample": True,
        "top_k": 20,
        "temperature": 0.8,
        "max_new_tokens": 10,
        "cache_implementation": "static",
    }
    torch.manual_seed(7)
    ours = model.generate(**inputs, **options)
    torch.manual_seed(7)
    theirs = with_transformers_loop(monkeypatch, lambda: model.generate(**inputs, **options))
    assert len(loop_calls) == 1
    assert ours.tolist() == theirs.tolist()


class CountedProcessor(LogitsProcessor):
    """Leaves the scores as they are; counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self.calls += 1
        return scores


class CountedCriterion(StoppingCriteria):
    """Stops no row; counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        self.calls += 1
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


@pytest.mark.parametrize("stop_check", ["at every step", "deferred"])
def test_a_seeded_run_ending_on_eos_leaves_the_generator_as_transformers_loop(monkeypatch, stop_check: str) -> None:
    """Sampling runs that end on eos before max_new_tokens, one after another from one seed: every run draws the
    tokens of transformers' loop, also after a run whose deferred stop check sampled a step too many (its draw is
    undone). On the CPU the stop flag is read at every step, as transformers' loop reads it: processors and criteria
    see no step beyond the last (the deferred check, CUDA's, shows them one, as transformers' own does on MPS)."""
    if stop_check == "deferred":
        defer_the_stop_check_as_on_cuda(monkeypatch)
    model = tiny_model()
    inputs = blank_inputs(batch_size=1, part_b=1)
    options = {"do_sample": True, "eos_token_id": list(range(40)), "pad_token_id": 0, "max_new_tokens": 12}
    runs, calls = {}, {}
    for loop in ("ours", "transformers"):
        processor, criterion = CountedProcessor(), CountedCriterion()
        run_options = {
            **options,
            "cache_implementation": "static",
            "logits_processor": LogitsProcessorList([processor]),
            "stopping_criteria": StoppingCriteriaList([criterion]),
        }
        generate = functools.partial(model.generate, **inputs, **run_options)
        torch.manual_seed(5)
        if loop == "ours":
            runs[loop] = [generate().tolist() for _ in range(3)]
        else:
            runs[loop] = [with_transformers_loop(monkeypatch, generate).tolist() for _ in range(3)]
        calls[loop] = (processor.calls, criterion.calls)
    assert runs["ours"] == runs["transformers"]
    assert all(len(tokens[0]) < inputs["input_ids"].shape[1] + 12 for tokens in runs["ours"])  # each ended on eos
    extra_steps = 3 if stop_check == "deferred" else 0  # one per run
    assert calls["ours"] == tuple(count + extra_steps for count in calls["transformers"])


def test_scores_logits_and_the_returned_cache_equal_transformers_loop(monkeypatch, loop_calls) -> None:
    """A run that returns its cache gets a fresh one (not the kept cache), checked at every step: it holds exactly
    the columns transformers' loop leaves."""
    model = tiny_model()
    inputs = blank_inputs(batch_size=2, part_b=1)
    eos = eos_after(model, inputs, steps=3, row=1)
    options = {
        "return_dict_in_generate": True,
        "output_scores": True,
        "output_logits": True,
        "repetition_penalty": 1.3,
        "eos_token_id": eos,
        "max_new_tokens": 9,
        "cache_implementation": "static",
    }
    ours = model.generate(**inputs, **options)
    theirs = with_transformers_loop(monkeypatch, lambda: model.generate(**inputs, **options))
    assert loop_calls[0]["cache_outlives_call"] is True
    assert ours.sequences.tolist() == theirs.sequences.tolist()
    pairs = [*zip(ours.scores, theirs.scores, strict=True), *zip(ours.logits, theirs.logits, strict=True)]
    for mine, reference in pairs:
        torch.testing.assert_close(mine, reference, rtol=0, atol=1e-6)
    assert int(ours.past_key_values.get_seq_length()) == int(theirs.past_key_values.get_seq_length())
    assert model.kept_static_cache is None


def test_a_given_static_cache_holds_the_columns_of_transformers_loop(monkeypatch, loop_calls) -> None:
    """A caller's cache outlives the call (fill_blanks goes on with it): the stop is checked at every step, so no
    extra column is left in it."""
    model = tiny_model()
    inputs = blank_inputs(batch_size=1, part_b=1)
    eos = eos_after(model, inputs, steps=2, row=0)

    def run() -> tuple[list[list[int]], int]:
        cache = StaticCache(config=model.config, max_cache_len=40)
        tokens = model.generate(**inputs, **{GENERATE_CACHE_KWARG: cache}, eos_token_id=eos, max_new_tokens=10)
        return tokens.tolist(), int(cache.get_seq_length())

    ours = run()
    theirs = with_transformers_loop(monkeypatch, run)
    assert loop_calls[0]["cache_outlives_call"] is True
    assert ours == theirs


def test_fill_blanks_on_a_static_cache_fills_like_transformers_loop(monkeypatch, loop_calls) -> None:
    model = tiny_model()
    tokenizer = tiny_word_tokenizer()
    texts = ["the king [MASK] the river and [MASK] .", "a bird [MASK] ."]
    settings = {"max_new_tokens": 4}
    ours = glm_hf.fill_blanks(model, tokenizer, texts, **settings)
    theirs = with_transformers_loop(monkeypatch, lambda: glm_hf.fill_blanks(model, tokenizer, texts, **settings))
    assert loop_calls
    assert [result.spans for result in ours] == [result.spans for result in theirs]


def test_the_kept_cache_and_step_serve_later_runs_of_other_lengths() -> None:
    """generate()'s own static cache (a whole multiple of 256 columns) and its decode step are kept for the next
    run that fits: another prompt length, the same batch. A run with another batch size gets its own."""
    model = tiny_model()
    reference = tiny_model()
    runs = [blank_inputs(batch_size=2, part_a=length, part_b=1, seed=length) for length in (9, 14, 7)]
    caches, steps = [], []
    for inputs in runs:
        tokens = model.generate(**inputs, cache_implementation="static", **GREEDY)
        assert tokens.tolist() == reference.generate(**inputs, **GREEDY).tolist()
        cache = model.kept_static_cache[-1]
        caches.append(cache)
        steps.append(model.decode_steps[cache])
    assert caches[0].get_max_length() == modeling_glm.STATIC_CACHE_COLUMNS
    assert all(cache is caches[0] for cache in caches) and all(step is steps[0] for step in steps)
    model.generate(**blank_inputs(batch_size=1, part_b=1), cache_implementation="static", **GREEDY)
    assert model.kept_static_cache[-1] is not caches[0]
    model.generate(**blank_inputs(batch_size=1, part_b=1), cache_implementation="static", max_cache_len=600, **GREEDY)
    assert model.kept_static_cache[-1].get_max_length() == 3 * modeling_glm.STATIC_CACHE_COLUMNS  # asked for 600


def test_several_sequences_per_prompt_fill_a_cache_of_their_own_batch() -> None:
    """num_return_sequences=3 fills the cache with 3 rows per prompt: the kept cache is keyed by that batch, so a
    later one-row run gets another."""
    model = tiny_model()
    inputs = blank_inputs(batch_size=1, part_b=1)
    torch.manual_seed(0)
    sampled = model.generate(
        **inputs, cache_implementation="static", do_sample=True, num_return_sequences=3, max_new_tokens=6
    )
    assert sampled.shape[0] == 3 and model.kept_static_cache[0] == 3
    greedy = model.generate(**inputs, cache_implementation="static", **GREEDY)
    assert greedy.tolist() == model.generate(**inputs, **GREEDY).tolist()
    assert model.kept_static_cache[0] == 1


def test_a_step_is_rebuilt_when_the_weights_move() -> None:
    """A captured graph reads the weights where they were: new weights (another dtype here) get a new step."""
    model = tiny_model()
    inputs = blank_inputs(batch_size=1, part_b=1)
    model.generate(**inputs, cache_implementation="static", **GREEDY)
    first = next(iter(model.decode_steps.values()))
    model.double()
    model.generate(**inputs, cache_implementation="static", **GREEDY)
    assert all(step is not first for step in model.decode_steps.values())
    assert copy.deepcopy(model).decode_steps.get(model.kept_static_cache[-1]) is None


@pytest.mark.parametrize("move", ["dtype", "device"])
def test_moving_the_weights_frees_the_kept_cache_and_steps(move: str) -> None:
    """A cast or a move of the weights (`.double()`, `.to(device)`, `to_empty`) frees the kept static cache and the
    decode steps (their buffers and, on CUDA, the graph's memory): none can serve the moved weights, and a run that
    does not take the static cache (the CPU default after `model.cpu()`) would never replace them. Before, a model
    moved off a GPU kept its cache and captured graph there. A `.to()` that changes nothing keeps both."""
    model = tiny_model()
    inputs = blank_inputs(batch_size=1, part_b=1)
    expected = model.generate(**inputs, **GREEDY).tolist()
    model.generate(**inputs, cache_implementation="static", **GREEDY)
    cache = model.kept_static_cache[-1]
    step = weakref.ref(model.decode_steps[cache])
    model.to("cpu", torch.float32)
    assert model.kept_static_cache[-1] is cache and model.decode_steps[cache] is step()
    freed = weakref.ref(cache)
    del cache
    if move == "dtype":
        model.double()
    else:
        model.to("meta")
    gc.collect()
    assert freed() is None and step() is None and len(model.decode_steps) == 0
    model.to_empty(device="cpu") if move == "device" else model.float()
    model.load_state_dict(tiny_model().state_dict())
    assert model.generate(**inputs, cache_implementation="static", **GREEDY).tolist() == expected


def test_runs_that_need_transformers_loop_take_it(loop_calls) -> None:
    """Beams, per-step hidden states, no cache and the dynamic cache (the CPU default) keep transformers' loop."""
    model = tiny_model()
    inputs = blank_inputs(batch_size=1, part_b=1)
    model.generate(**inputs, **GREEDY)
    model.generate(**inputs, cache_implementation="static", use_cache=False, **GREEDY)
    assert model.kept_static_cache is None
    model.generate(**inputs, cache_implementation="static", num_beams=2, **GREEDY)
    model.generate(
        **inputs,
        cache_implementation="static",
        return_dict_in_generate=True,
        output_hidden_states=True,
        **GREEDY,
    )
    assert loop_calls == []


def test_the_kept_cache_stays_writable_after_a_run_in_transformers_loop(loop_calls) -> None:
    """A run on the kept static cache that takes transformers' loop (per-step attentions) fills it outside
    inference mode, so that the next run can empty it and decode on it."""
    model = tiny_model()
    inputs = blank_inputs(batch_size=1, part_b=1)
    expected = model.generate(**inputs, **GREEDY).tolist()
    assert (
        model.generate(**inputs, cache_implementation="static", output_attentions=True, **GREEDY).tolist() == expected
    )
    cache = model.kept_static_cache[-1]
    assert loop_calls == [] and not cache.layers[0].keys.is_inference()
    assert model.generate(**inputs, cache_implementation="static", **GREEDY).tolist() == expected
    assert model.kept_static_cache[-1] is cache and len(loop_calls) == 1


def test_a_step_reads_nothing_back_to_the_host() -> None:
    """What a CUDA graph needs: the step's forward reads no value on the host (see test_fast_decoding)."""
    model = tiny_model()
    inputs = left_padded_prompts()
    model.generate(**inputs, cache_implementation="static", **GREEDY)
    step = model.decode_steps[model.kept_static_cache[-1]]
    model.glm.run_flags.begin()  # a generate() run in this thread, which checks the positions once up front
    model.glm.run_flags.positions_prechecked = True
    model.glm.run_flags.run_cache = model.kept_static_cache[-1]  # for its forwards on its cache
    with HostReads() as reads:
        step(torch.tensor([7, 8]))
    assert reads.calls == []


@pytest.mark.parametrize("block_position_encoding", [True, False], ids=["2-D", "1-D"])
def test_chatglm_generates_like_transformers_loop(monkeypatch, loop_calls, block_position_encoding: bool) -> None:
    """Rotary positions read from the ids ([gMASK] ... [sop]), 2-D and 1-D (held positions)."""
    model = tiny_chatglm(block_position_encoding)
    ids = torch.tensor([[11, 12, 13, 90, 5], [21, 22, 23, 90, 5]])
    options = {"cache_implementation": "static", "min_new_tokens": 6, **GREEDY}
    ours = model.generate(ids, **options)
    theirs = with_transformers_loop(monkeypatch, lambda: model.generate(ids, **options))
    assert len(loop_calls) == 1
    assert ours.tolist() == theirs.tolist()


def test_prompt_embeddings_and_a_continued_cache_generate_like_the_dynamic_cache(loop_calls) -> None:
    """A prompt given as inputs_embeds (no ids before the new tokens: the step's columns come from the positions),
    and a second run continuing a caller's static cache from the first run's sequences."""
    model = tiny_model()
    inputs = blank_inputs(batch_size=2, part_b=1)
    embeds = model.get_input_embeddings()(inputs["input_ids"])
    positions = {name: value for name, value in inputs.items() if name != "input_ids"}
    options = {"max_new_tokens": 6, "min_new_tokens": 6, "do_sample": False}
    dynamic = model.generate(inputs_embeds=embeds, **positions, **options)
    static = model.generate(inputs_embeds=embeds, **positions, cache_implementation="static", **options)
    assert static.tolist() == dynamic.tolist()

    cache = StaticCache(config=model.config, max_cache_len=40)
    first = model.generate(**inputs, **{GENERATE_CACHE_KWARG: cache}, **options)
    continued = model.generate(first, **{GENERATE_CACHE_KWARG: cache}, **options)
    in_one_go = model.generate(**inputs, max_new_tokens=12, min_new_tokens=12, do_sample=False)
    assert continued.tolist() == in_one_go.tolist()
    assert len(loop_calls) == 3


def test_runs_in_and_out_of_inference_mode_keep_caches_of_their_own() -> None:
    """Tensors made under torch.inference_mode() cannot be written outside it: such a run's cache is not reused by
    a plain run (nor the other way round)."""
    model = tiny_model()
    inputs = blank_inputs(batch_size=1, part_b=1)
    expected = model.generate(**inputs, **GREEDY).tolist()
    with torch.inference_mode():
        assert model.generate(**inputs, cache_implementation="static", **GREEDY).tolist() == expected
    assert model.generate(**inputs, cache_implementation="static", **GREEDY).tolist() == expected
    assert model.kept_static_cache[3] is False


def test_streamed_tokens_are_those_of_transformers_loop(monkeypatch, loop_calls) -> None:
    """A streamer reads every token as it comes (the stop flag is then read at every step): the same tokens, once
    each, and one end."""

    model = tiny_model()
    inputs = blank_inputs(batch_size=1, part_b=1)
    eos = eos_after(model, inputs, steps=3, row=0)
    options = {"cache_implementation": "static", "eos_token_id": eos, "max_new_tokens": 10}
    ours, theirs = TokenRecorder(), TokenRecorder()
    tokens = model.generate(**inputs, streamer=ours, **options)
    with_transformers_loop(monkeypatch, lambda: model.generate(**inputs, streamer=theirs, **options))
    assert len(loop_calls) == 1
    assert ours.chunks == theirs.chunks and ours.ended == theirs.ended == 1
    assert sum(ours.chunks[1:], []) == tokens[0, inputs["input_ids"].shape[1] :].tolist()


class StopOnceStreamed(StoppingCriteria):
    """Stops every row once `streamer` has been handed `tokens` new tokens: a criterion that reads what was shown
    (a chat UI that stops on the streamed text, a cancel button)."""

    def __init__(self, streamer: TokenRecorder, tokens: int) -> None:
        self.streamer, self.tokens = streamer, tokens

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        streamed = len(self.streamer.chunks) - 1  # the prompt comes first
        return torch.full((input_ids.shape[0],), streamed >= self.tokens, dtype=torch.bool, device=input_ids.device)


def test_stopping_criteria_see_the_streamer_as_in_transformers_loop(monkeypatch, loop_calls) -> None:
    """transformers' loop asks the stopping criteria before it streams the new token: a criterion that reads what
    the streamer was handed sees the tokens before this one, and the run ends one token later than a loop that
    streams first would end it."""
    model = tiny_model()
    inputs = blank_inputs(batch_size=1, part_b=1)
    ours, theirs = TokenRecorder(), TokenRecorder()
    options = {"cache_implementation": "static", "max_new_tokens": 10, "do_sample": False}
    tokens = model.generate(
        **inputs, streamer=ours, stopping_criteria=StoppingCriteriaList([StopOnceStreamed(ours, 3)]), **options
    )
    expected = with_transformers_loop(
        monkeypatch,
        lambda: model.generate(
            **inputs, streamer=theirs, stopping_criteria=StoppingCriteriaList([StopOnceStreamed(theirs, 3)]), **options
        ),
    )
    assert len(loop_calls) == 1
    assert tokens.tolist() == expected.tolist()
    assert ours.chunks == theirs.chunks


def test_quantized_or_offloaded_models_are_not_captured() -> None:
    """Quantized weights (kernels that may not be capturable) and weights a device map offloads (moved in at every
    forward) keep the step eager, and keep the CUDA default on the dynamic cache."""
    model = tiny_model()
    assert captured_decoding.graph_capture_supported(model)
    model.hf_device_map = {"glm.layers.0": 0, "glm.layers.1": "cpu"}
    assert not captured_decoding.graph_capture_supported(model)
    model.hf_device_map = {"": 0}
    assert captured_decoding.graph_capture_supported(model)
    model.hf_quantizer = object()
    assert not captured_decoding.graph_capture_supported(model)


def test_a_model_offloaded_by_accelerates_hooks_decodes_on_a_static_cache_as_in_memory() -> None:
    """Weights that accelerate's `cpu_offload` keeps on `meta` (moved in at each forward) leave no device for the
    step's fixed buffers nor for autocast's state: a static-cache run takes transformers' loop, with the tokens of
    the same model in memory (it crashed reading autocast's state for `meta`, then copying out of meta buffers)."""
    from accelerate import cpu_offload

    inputs = blank_inputs(batch_size=2, part_b=1)
    options = {"cache_implementation": "static", **GREEDY}
    expected = tiny_model().generate(**inputs, **options).tolist()
    offloaded = cpu_offload(tiny_model(), execution_device=torch.device("cpu"))
    assert offloaded.device.type == "meta"
    assert offloaded.generate(**inputs, **options).tolist() == expected
    assert len(offloaded.decode_steps) == 0


def test_a_step_that_cannot_be_captured_runs_eagerly_with_a_warning(monkeypatch, caplog) -> None:
    """Capture refused (as CUDA refuses a host read during capture): the run goes on eagerly, same tokens, and says
    why once."""
    model = tiny_model()
    inputs = blank_inputs(batch_size=1, part_b=1)
    options = {"cache_implementation": "static", "min_new_tokens": 8, **GREEDY}
    expected = model.generate(**inputs, **options).tolist()
    step = model.decode_steps[model.kept_static_cache[-1]]
    step.capture, step.warmup_left = True, 0  # what a CUDA step is after its warm-up

    def refusing_capture(graph: object) -> Any:
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(torch.cuda, "CUDAGraph", object)
    monkeypatch.setattr(torch.cuda, "graph", refusing_capture)
    assert model.generate(**inputs, **options).tolist() == expected
    assert step.graph is None and step.capture is False
    assert "could not be captured as a CUDA graph (operation not permitted" in caplog.text


class RecordedGraph:
    """A CUDA graph on the CPU: its capture ran the step (`torch.cuda.graph` patched to run it); a replay counts."""

    def __init__(self) -> None:
        self.replays = 0

    def replay(self) -> None:
        self.replays += 1


def captured_step(
    model: Any, monkeypatch: pytest.MonkeyPatch, cache: StaticCache | None = None, **run: Any
) -> captured_decoding.CapturedDecodeStep:
    """The step of `model.generate(**run)` (a run on the kept static cache, or on `cache`, emptied before each run;
    `model` may be a PEFT model) as a CUDA run leaves it: captured as a graph."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if cache is not None:
        run[GENERATE_CACHE_KWARG] = cache
    model.generate(**run)
    step = base.decode_steps[cache if cache is not None else base.kept_static_cache[-1]]
    step.capture, step.warmup_left = True, 0  # what a CUDA step is after its warm-up
    monkeypatch.setattr(torch.cuda, "CUDAGraph", RecordedGraph)
    monkeypatch.setattr(torch.cuda, "graph", lambda graph: contextlib.nullcontext())
    if cache is not None:
        cache.reset()
    model.generate(**run)
    assert isinstance(step.graph, RecordedGraph) and step.graph.replays > 1
    return step


def capture_everything(monkeypatch: pytest.MonkeyPatch) -> list[captured_decoding.CapturedDecodeStep]:
    """Every step built from now on is captured after its first step, as on CUDA (`RecordedGraph`); the steps
    captured, in order."""
    captured: list[captured_decoding.CapturedDecodeStep] = []
    build, capture = captured_decoding.CapturedDecodeStep.__init__, captured_decoding.CapturedDecodeStep._capture

    def building(step: captured_decoding.CapturedDecodeStep, *args: Any, **kwargs: Any) -> None:
        build(step, *args, **kwargs)
        step.capture, step.warmup_left = True, 0

    def capturing(step: captured_decoding.CapturedDecodeStep) -> None:
        captured.append(step)
        capture(step)

    monkeypatch.setattr(captured_decoding.CapturedDecodeStep, "__init__", building)
    monkeypatch.setattr(captured_decoding.CapturedDecodeStep, "_capture", capturing)
    monkeypatch.setattr(torch.cuda, "CUDAGraph", RecordedGraph)
    monkeypatch.setattr(torch.cuda, "graph", lambda graph: contextlib.nullcontext())
    return captured


def serves(step: captured_decoding.CapturedDecodeStep, model: Any) -> bool:
    """Whether a later run like the one that captured `step` would replay it."""
    kinds = (step.tokens.shape[0], step.block_positions is not None, step.attention_mask is not None, step.forward)
    weights, pointers = captured_decoding.parameter_pointers(model), captured_decoding.cache_pointers(step.cache())
    settings = captured_decoding.module_settings(model)
    return step.takes(*kinds, weights) and (step.graph is None or step.captured_over(settings, pointers))


def test_a_captured_step_is_not_replayed_once_a_module_is_set_otherwise(monkeypatch) -> None:
    """A replayed graph runs no Python: a block put in training mode, a forward set on a module, a class's forward
    patched, another attention implementation each get a new step; set back, the graph serves again."""
    model = tiny_model()
    step = captured_step(
        model, monkeypatch, **blank_inputs(batch_size=1, part_b=1), cache_implementation="static", **GREEDY
    )
    assert serves(step, model)
    block = model.glm.layers[1]
    block.train()
    assert not serves(step, model)
    block.eval()
    assert serves(step, model)
    block.mlp.forward = functools.partial(type(block.mlp).forward, block.mlp)
    assert not serves(step, model)
    del block.mlp.forward
    assert serves(step, model)
    with monkeypatch.context() as patch:
        patch.setattr(type(block.mlp), "forward", lambda self, hidden: hidden)
        assert not serves(step, model)
    assert serves(step, model)
    model.config._attn_implementation = "eager"
    assert not serves(step, model)
    model.config._attn_implementation = "sdpa"
    assert serves(step, model)


def test_a_captured_step_is_not_replayed_over_cache_tensors_replaced_by_a_beam_search(monkeypatch) -> None:
    """A graph writes and reads the cache tensors it was captured over: after a beam search on the caller's cache
    (which reorders its keys and values into new tensors), the next run gets a new step, with the tokens of a run
    on a fresh cache; emptying the cache in place (`reset()`) keeps the graph serving."""
    model = tiny_model()
    inputs = blank_inputs(batch_size=2, part_b=1)
    cache = StaticCache(config=model.config, max_cache_len=40)
    step = captured_step(model, monkeypatch, cache=cache, **inputs, **GREEDY)
    cache.reset()
    assert serves(step, model)
    one_row = blank_inputs(batch_size=1, part_b=1)  # two beams: the cache's two rows
    model.generate(**one_row, num_beams=2, **GREEDY, **{GENERATE_CACHE_KWARG: cache})
    assert not serves(step, model)
    cache.reset()
    replays = step.graph.replays
    tokens = model.generate(**inputs, **GREEDY, **{GENERATE_CACHE_KWARG: cache})
    assert model.decode_steps[cache] is not step and step.graph.replays == replays
    fresh = StaticCache(config=model.config, max_cache_len=40)
    assert tokens.tolist() == model.generate(**inputs, **GREEDY, **{GENERATE_CACHE_KWARG: fresh}).tolist()


def test_an_offloading_static_cache_takes_transformers_loop() -> None:
    """An offloading static cache moves each layer off the device and back in every forward (new tensors each
    time): no fixed buffers for a graph, so its runs take transformers' loop (it offloads through CUDA streams,
    which torch before 2.7 makes when the cache is built: the choice is checked here on a cache marked so)."""
    model = tiny_model()
    kwargs = {"position_ids": torch.zeros(1, 3, dtype=torch.long)}
    config = model.generation_config
    cache = StaticCache(config=model.config, max_cache_len=40)
    assert captured_decoding.static_cache_loop_applies(model, cache, config, kwargs, False)
    cache.offloading = True
    assert not captured_decoding.static_cache_loop_applies(model, cache, config, kwargs, False)


def test_a_run_under_autocast_neither_replays_nor_captures_its_step(monkeypatch) -> None:
    """Under autocast a graph would hold the weights' casts (freed when autocast's context ends), and one captured
    without it would not cast: such a run's steps run eagerly, with the tokens of transformers' loop under it, on
    a kept cache of autocast's dtype (the float32 one of the run before would refuse its keys)."""
    model = tiny_model()
    inputs = blank_inputs(batch_size=1, part_b=1)
    options = {"cache_implementation": "static", **GREEDY}
    step = captured_step(model, monkeypatch, **inputs, **options)
    replays = step.graph.replays
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = with_transformers_loop(monkeypatch, lambda: model.generate(**inputs, **options)).tolist()
        assert model.generate(**inputs, **options).tolist() == expected
        assert step.graph.replays == replays
        assert model.kept_static_cache[4] == (torch.bfloat16,)  # autocast_dtypes
        cache = model.kept_static_cache[-1]
        assert cache.layers[0].keys.dtype == torch.bfloat16
        autocast_step = model.decode_steps[cache]
        autocast_step.capture, autocast_step.warmup_left = True, 0  # due for its capture, as on CUDA

        def no_capture(graph: object) -> Any:
            raise AssertionError("a run under autocast captured its step")

        monkeypatch.setattr(torch.cuda, "graph", no_capture)
        assert model.generate(**inputs, **options).tolist() == expected
        assert model.decode_steps[cache] is autocast_step
        # As a capture leaves it: a run under autocast does not replay it either.
        autocast_step.graph = RecordedGraph()
        autocast_step.settings_at_capture = captured_decoding.module_settings(model)
        autocast_step.cache_pointers_at_capture = captured_decoding.cache_pointers(cache)
        assert model.generate(**inputs, **options).tolist() == expected
        assert model.decode_steps[cache] is autocast_step and autocast_step.graph.replays == 0


def test_autocast_keeps_the_cuda_default_off_the_captured_step(monkeypatch) -> None:
    """On CUDA the default run under autocast takes transformers' loop on the dynamic cache."""
    model = tiny_model()
    monkeypatch.setattr(type(model), "device", property(lambda self: torch.device("cuda")))
    greedy = modeling_glm.GenerationMode.GREEDY_SEARCH
    assert model._keeps_static_cache(model.generation_config, greedy)
    monkeypatch.setattr(torch, "is_autocast_enabled", lambda device_type=None: device_type == "cuda")
    assert not model._keeps_static_cache(model.generation_config, greedy)


def test_runs_of_other_kinds_in_between_leave_a_captured_step_serving(monkeypatch) -> None:
    """What other runs record on the model (transformers' largest static cache, its compiled forward) is not a
    setting of the step: beams, per-step outputs, sampling and a returned cache in between leave the graph serving
    (a new capture per run would cost more than the run)."""
    model = tiny_model()
    inputs = blank_inputs(batch_size=1, part_b=1)
    step = captured_step(model, monkeypatch, **inputs, cache_implementation="static", **GREEDY)
    model.generate(**inputs, cache_implementation="static", num_beams=2, **GREEDY)
    model.generate(**inputs, cache_implementation="static", output_hidden_states=True, **GREEDY)
    model.generate(**inputs, do_sample=True, max_new_tokens=4)
    model.generate(**inputs, cache_implementation="static", return_dict_in_generate=True, output_scores=True, **GREEDY)
    assert serves(step, model)
    compile_config = CompileConfig(backend="eager")
    compile_config._compile_all_devices = True  # transformers compiles its forward on the CPU only when asked to
    options = {"cache_implementation": "static", "compile_config": compile_config, "output_hidden_states": True}
    model.generate(**inputs, return_dict_in_generate=True, **options, **GREEDY)
    assert "_compiled_call" in vars(model) and serves(step, model)


def test_a_function_set_on_a_module_is_told_from_the_one_captured_with(monkeypatch) -> None:
    """A function set on a module is held by the captured settings, so that a later function cannot take its
    freed address and pass for it."""

    def captured_forward(module: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        return type(module).forward(module, hidden)

    def other_forward(module: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        return hidden

    model = tiny_model()
    mlp = model.glm.layers[1].mlp
    mlp.forward = functools.partial(captured_forward, mlp)
    step = captured_step(
        model, monkeypatch, **blank_inputs(batch_size=1, part_b=1), cache_implementation="static", **GREEDY
    )
    for _ in range(10):
        mlp.forward = functools.partial(other_forward, mlp)  # the one before is freed: its address is free
        assert not serves(step, model)


def test_backend_choices_made_after_a_capture_are_told_apart(monkeypatch) -> None:
    """A graph keeps the kernels picked at capture: another SDPA backend choice (`sdpa_kernel`) or matmul precision
    gets a new step."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    model = tiny_model()
    step = captured_step(
        model, monkeypatch, **blank_inputs(batch_size=1, part_b=1), cache_implementation="static", **GREEDY
    )
    with sdpa_kernel(SDPBackend.MATH):
        assert not serves(step, model)
    assert serves(step, model)
    precision = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("medium" if precision != "medium" else "high")
        assert not serves(step, model)
    finally:
        torch.set_float32_matmul_precision(precision)
    assert serves(step, model)


def test_runs_alternating_between_settings_replay_a_graph_each(monkeypatch) -> None:
    """The model keeps a few steps per cache: runs alternating between two settings (the attention
    implementation here) capture once per setting, not once per run; a step over weights that are gone is dropped."""
    captured = capture_everything(monkeypatch)
    model = tiny_model(**{"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0})
    inputs = blank_inputs(batch_size=1, part_b=1)
    options = {"cache_implementation": "static", **GREEDY}
    for eager_attention in (False, True) * 3:
        model.config._attn_implementation = "eager" if eager_attention else "sdpa"
        model.generate(**inputs, **options)
    assert len(captured) == 2
    cache = model.kept_static_cache[-1]
    assert len(model.decode_steps.by_cache[cache]) == 2
    model.load_state_dict(copy.deepcopy(model.state_dict()), assign=True)  # new weights, same cache
    model.generate(**inputs, **options)
    assert len(captured) == 3 and model.decode_steps.by_cache[cache] == [captured[-1]]


def test_a_graph_captured_under_a_runs_settings_is_chosen_over_a_step_not_captured_yet(monkeypatch) -> None:
    """Runs in training mode (never captured: dropout draws per step) between runs in eval mode: each eval run
    replays the eval graph instead of capturing the training run's step again."""
    captured = capture_everything(monkeypatch)
    model = tiny_model(**{"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0})
    inputs = blank_inputs(batch_size=1, part_b=1)
    options = {"cache_implementation": "static", **GREEDY}
    for training in (False, True) * 3:
        model.train(training)
        model.generate(**inputs, **options)
    assert len(captured) == 1
    steps = model.decode_steps.by_cache[model.kept_static_cache[-1]]
    assert len(steps) == 2 and steps[0] is captured[0] and steps[1].graph is None


def test_a_steps_captured_settings_keep_no_cache_alive(monkeypatch) -> None:
    """A captured step's settings hold the functions set on modules weakly: a caller's cache whose method was set
    on a module is freed with its steps once the caller lets it go."""
    model = tiny_model()
    cache = StaticCache(config=model.config, max_cache_len=40)
    model.glm.layers[0].on_reset = cache.reset
    captured_step(model, monkeypatch, cache=cache, **blank_inputs(batch_size=1, part_b=1), **GREEDY)
    del model.glm.layers[0].on_reset
    freed = weakref.ref(cache)
    del cache
    gc.collect()
    assert freed() is None and len(model.decode_steps) == 0


@pytest.mark.parametrize("step", ["eager", "compiled", "captured"])
def test_a_model_that_decoded_on_a_static_cache_is_freed_when_let_go(monkeypatch, step: str) -> None:
    """`del model` frees it (its weights, kept cache and steps: on CUDA their GPU memory) at once, without waiting
    for the garbage collector: its decode steps, which it keeps, hold it only weakly (a strong reference made a
    cycle, so `del model; torch.cuda.empty_cache()` gave no memory back)."""
    model = tiny_model()
    options: dict[str, Any] = {"cache_implementation": "static", **blank_inputs(batch_size=1, part_b=1), **GREEDY}
    if step == "compiled":
        options["compile_config"] = CompileConfig(fullgraph=True, dynamic=False, backend="eager")
        options["compile_config"]._compile_all_devices = True
    if step == "captured":
        captured_step(model, monkeypatch, **options)
    else:
        model.generate(**options)
    assert len(model.decode_steps) == 1
    freed = weakref.ref(model)
    gc.disable()
    try:
        del model
        assert freed() is None
    finally:
        gc.enable()


def test_a_run_after_a_change_builds_a_new_step_and_replays_no_graph(monkeypatch) -> None:
    """The run after such a change decodes on a step of its own (eager on the CPU), with the tokens of the model as
    it is now; the captured graph is not replayed."""
    model = tiny_model()
    inputs = blank_inputs(batch_size=1, part_b=1)
    step = captured_step(model, monkeypatch, **inputs, cache_implementation="static", **GREEDY)
    replays = step.graph.replays
    model.config._attn_implementation = "eager"
    tokens = model.generate(**inputs, cache_implementation="static", **GREEDY)
    assert model.decode_steps[model.kept_static_cache[-1]] is not step and step.graph.replays == replays
    assert tokens.tolist() == model.generate(**inputs, **GREEDY).tolist()


class NoReplay:
    """A captured graph that must not be replayed."""

    def replay(self) -> None:
        raise AssertionError("a run with a forward hook replayed the captured step")


def test_a_run_with_a_forward_hook_runs_every_static_step_eagerly(monkeypatch) -> None:
    """A replayed graph runs no Python: with a forward hook set, every step of a static-cache run runs eagerly (none
    captured, none replayed), so the hook sees each one; the tokens are the same."""
    model = tiny_model()
    inputs = blank_inputs(batch_size=1, part_b=1)
    options = {"cache_implementation": "static", "min_new_tokens": 8, **GREEDY}
    expected = model.generate(**inputs, **options).tolist()
    step = model.decode_steps[model.kept_static_cache[-1]]
    step.capture, step.warmup_left, step.graph = True, 0, NoReplay()  # a CUDA step captured by the first run
    calls: list[int] = []
    handle = model.glm.layers[1].register_forward_hook(lambda module, args, output: calls.append(1))

    def no_capture(graph: object) -> Any:
        raise AssertionError("a run with a forward hook captured its step")

    monkeypatch.setattr(torch.cuda, "graph", no_capture)
    assert model.generate(**inputs, **options).tolist() == expected
    assert len(calls) == GREEDY["max_new_tokens"]  # the prefill and every decode step
    handle.remove()


def test_a_run_whose_positions_may_pass_the_tables_checks_them_instead_of_replaying(monkeypatch) -> None:
    """A captured step reads its positions without the per-step range check (a host sync), so a run whose ids may
    pass the position tables (not checked up front) runs its steps eagerly even where a graph was captured: the
    clear error at the step whose block position passes the table, not a replay indexing past it (on CUDA an
    out-of-range embedding index is a device-side assert that leaves the process's CUDA context unusable)."""
    model = tiny_model()
    inputs = blank_inputs(batch_size=1, part_b=1)
    cache = StaticCache(config=model.config, max_cache_len=40)
    step = captured_step(model, monkeypatch, cache=cache, **inputs, **GREEDY)
    replays = step.graph.replays
    late = dict(inputs, block_position_ids=inputs["block_position_ids"].clone())
    late["block_position_ids"][:, -1] = model.config.max_position_embeddings - 4  # passes the table at step 4
    cache.reset()
    with pytest.raises(ValueError, match="is past the 65 rows"):
        model.generate(**late, **GREEDY, **{GENERATE_CACHE_KWARG: cache})
    assert model.decode_steps[cache] is step and step.graph.replays == replays
    cache.reset()
    model.generate(**inputs, **GREEDY, **{GENERATE_CACHE_KWARG: cache})  # fits: the graph serves again
    assert step.graph.replays == replays + GREEDY["max_new_tokens"] - 1


def test_a_forward_hook_keeps_the_cuda_default_off_the_captured_step(monkeypatch) -> None:
    """On CUDA the default run keeps a static cache with its captured step, except with a forward hook set: then it
    takes transformers' loop, whose eager steps the hook sees."""
    model = tiny_model()
    monkeypatch.setattr(type(model), "device", property(lambda self: torch.device("cuda")))
    greedy = modeling_glm.GenerationMode.GREEDY_SEARCH
    flags = model.glm.run_flags

    def keeps() -> bool:
        """The decision of a generate() run begun now (which looks for hooks as it begins)."""
        outer = flags.begin()
        try:
            flags.forward_hooks = modeling_glm.forward_hooks_present(model)
            return model._keeps_static_cache(model.generation_config, greedy)
        finally:
            flags.restore(outer)

    assert keeps()
    handle = model.glm.final_layernorm.register_forward_hook(lambda *args: None)
    assert not keeps()
    handle.remove()
    assert keeps()


@pytest.mark.parametrize("output", ["output_attentions", "output_hidden_states"])
def test_per_step_outputs_keep_the_cuda_default_on_the_dynamic_cache(monkeypatch, output: str) -> None:
    """Per-step attentions or hidden states need transformers' loop, which would compile its forward on a static
    cache: the CUDA default then runs on the dynamic cache, as without a GPU."""
    model = tiny_model()
    monkeypatch.setattr(type(model), "device", property(lambda self: torch.device("cuda")))
    greedy = modeling_glm.GenerationMode.GREEDY_SEARCH
    config = copy.deepcopy(model.generation_config)
    setattr(config, output, True)
    assert not model._keeps_static_cache(config, greedy)
    config.cache_implementation = "static"  # asked for: transformers' loop on it, as transformers runs it
    assert model._keeps_static_cache(config, greedy)


@pytest.mark.parametrize("kind", ["synced_gpus", "custom_generate"])
def test_runs_in_transformers_or_a_callers_loop_keep_the_cuda_default_on_the_dynamic_cache(
    monkeypatch, kind: str
) -> None:
    """Runs that never use GLM's captured step get, on CUDA by default, the dynamic cache they get without a GPU:
    with `synced_gpus` (given, or set by transformers under DeepSpeed ZeRO-3 / FSDP) transformers' loop runs, which
    on the kept static cache would compile the model's forward; a `custom_generate` loop (a callable, or a Hub
    repository's) expects the dynamic cache's methods, and one copying transformers' `_sample` would compile the
    forward on a static one. Before, both decided for the kept cache. `cache_implementation="static"` still gets it."""
    model = tiny_model()
    monkeypatch.setattr(type(model), "device", property(lambda self: torch.device("cuda")))
    greedy = modeling_glm.GenerationMode.GREEDY_SEARCH
    config = copy.deepcopy(model.generation_config)
    flags = model.glm.run_flags
    outer = flags.begin()  # a generate() run, which resolves these before it prepares the cache
    plain: tuple[Any, ...] = (None, {}, False, None, None)  # custom_generate, kwargs, synced_gpus, assistant, streamer
    if kind == "synced_gpus":
        asked: tuple[Any, ...] = (None, {}, True, None, None)
    else:
        asked = (lambda model, input_ids, **kwargs: input_ids, {}, False, None, None)
    try:
        model._extract_generation_mode_kwargs(*plain)
        assert model._keeps_static_cache(config, greedy)
        model._extract_generation_mode_kwargs(*asked)
        assert not model._keeps_static_cache(config, greedy)
        config.cache_implementation = "static"  # asked for: as transformers runs it
        assert model._keeps_static_cache(config, greedy)
    finally:
        flags.restore(outer)


def test_a_nested_run_keeps_the_cuda_default_on_the_dynamic_cache(monkeypatch) -> None:
    """A run nested in another (a logits processor or stopping criterion generating with the same model) cannot
    take the kept cache, on which the outer run decodes: on CUDA the default runs it on the dynamic cache, as
    without a GPU (before, each nested run made a static cache of its own, dropped after the run, and captured a
    decode step on it: a capture per outer step, about 0.5 s each for glm-2b)."""
    model = tiny_model()
    monkeypatch.setattr(type(model), "device", property(lambda self: torch.device("cuda")))
    greedy = modeling_glm.GenerationMode.GREEDY_SEARCH
    config = copy.deepcopy(model.generation_config)
    flags = model.glm.run_flags
    outer = flags.begin()
    try:
        assert model._keeps_static_cache(config, greedy)
        nested = flags.begin()
        try:
            assert flags.nested and not model._keeps_static_cache(config, greedy)
            config.cache_implementation = "static"  # asked for: a static cache of its own, as before
            assert model._keeps_static_cache(config, greedy)
        finally:
            flags.restore(nested)
    finally:
        flags.restore(outer)


@pytest.mark.parametrize("do_sample", [False, True], ids=["greedy", "sampling"])
def test_a_deferred_stop_check_ends_at_max_length_like_transformers_loop(
    monkeypatch, loop_calls, do_sample: bool
) -> None:
    """CUDA's deferred stop check, with no row ending on eos: at the last token the flag it reads is the previous
    step's (not finished), so the run ends on its length instead, undoing nothing. The tokens, the processor's calls,
    the columns the kept cache holds and the generator's state are those of transformers' loop."""
    defer_the_stop_check_as_on_cuda(monkeypatch)
    model = tiny_model()
    inputs = blank_inputs(batch_size=2, part_b=1)
    dynamic = model.generate(**inputs, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    unused = next(token for token in range(7, 96) if token not in dynamic.tolist()[0] + dynamic.tolist()[1])
    options = {"eos_token_id": unused, "max_new_tokens": 6, "do_sample": do_sample, "cache_implementation": "static"}

    def run() -> tuple[list[list[int]], int, int, torch.Tensor]:
        processor = CountedProcessor()
        torch.manual_seed(3)
        tokens = model.generate(**inputs, logits_processor=LogitsProcessorList([processor]), **options)
        return tokens.tolist(), processor.calls, model.kept_static_cache[-1].get_seq_length(), torch.get_rng_state()

    ours = run()
    theirs = with_transformers_loop(monkeypatch, run)
    assert len(loop_calls) == 1 and loop_calls[0]["cache_outlives_call"] is False  # the stop check was deferred
    assert len(ours[0][0]) == inputs["input_ids"].shape[1] + 6
    assert ours[:3] == theirs[:3]
    assert torch.equal(ours[3], theirs[3])


@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_a_1d_chatglm_returning_several_sequences_holds_each_prompts_position(cache: str) -> None:
    """A 1-D ChatGLM's new tokens keep the index of their prompt's [gMASK] (held per prompt); with
    `num_return_sequences` each prompt's rows are repeated, and so must its held position be (`_held_positions`):
    the sampled rows and their scores are those of the prompts given twice each, in transformers' loop and on a
    static cache."""
    model = tiny_chatglm(block_position_encoding=False)
    ids = torch.tensor([[11, 12, 13, 90, 5], [21, 90, 23, 24, 5]])  # [gMASK] at 3 and at 1: held rows differ
    options: dict[str, Any] = {"do_sample": True, "max_new_tokens": 5, "min_new_tokens": 5, "output_scores": True}
    options["return_dict_in_generate"] = True
    if cache == "static":
        options["cache_implementation"] = "static"
    torch.manual_seed(5)
    returned = model.generate(ids, num_return_sequences=2, **options)
    torch.manual_seed(5)
    repeated = model.generate(ids.repeat_interleave(2, dim=0), **options)
    assert returned.sequences.tolist() == repeated.sequences.tolist()
    assert len(returned.scores) == 5
    for ours, expected in zip(returned.scores, repeated.scores, strict=True):
        torch.testing.assert_close(ours, expected, rtol=0, atol=0)


def test_the_compiled_step_is_kept_per_compile_options() -> None:
    """The compiled step (`cache_implementation="static"`) is compiled once per set of options and kept on the
    model, so later runs reuse it; torch.compile's own CUDA graphs are left out (a max-autotune mode becomes its
    no-cudagraphs twin), and inductor options go without a mode (torch.compile refuses both at once: a
    CompileConfig's default mode is set)."""
    model = tiny_model()
    config = copy.deepcopy(model.generation_config)
    config.compile_config = CompileConfig(backend="eager")
    first = captured_decoding.compiled_last_column_logits(model, config)
    assert captured_decoding.compiled_last_column_logits(model, config) is first
    assert dict(model._compiled_decode_step[0])["mode"] == "'default'"
    config.compile_config = CompileConfig(backend="eager", mode="max-autotune")
    assert captured_decoding.compiled_last_column_logits(model, config) is not first
    assert dict(model._compiled_decode_step[0])["mode"] == "'max-autotune-no-cudagraphs'"
    config.compile_config = CompileConfig(backend="eager", options={"trace.enabled": False})
    captured_decoding.compiled_last_column_logits(model, config)  # no mode beside the options
    assert "mode" not in dict(model._compiled_decode_step[0])


def test_a_run_without_eos_or_pad_decodes_like_transformers_loop(monkeypatch, loop_calls) -> None:
    """A model whose generation config has neither eos nor pad id (transformers fills a run's unset ids from it):
    no eos criterion, so the static-cache loop leaves its tokens unpadded (there is no pad id to mix in) and runs to
    the length, as transformers' loop does."""
    model = tiny_model()
    inputs = blank_inputs(batch_size=2, part_b=1)
    model.generation_config.eos_token_id, model.generation_config.pad_token_id = None, None
    options = {"cache_implementation": "static", "max_new_tokens": 6, "do_sample": False}
    ours = model.generate(**inputs, **options)
    theirs = with_transformers_loop(monkeypatch, lambda: model.generate(**inputs, **options))
    assert len(loop_calls) == 1
    assert ours.shape[1] == inputs["input_ids"].shape[1] + 6
    assert ours.tolist() == theirs.tolist()
