"""generate() on one model from several threads, and from inside its own run: every run gets the tokens it gets
alone. Runs share the model's kept static cache, captured decode steps and run flags, so they take turns; a forward
that another thread runs meanwhile sees no run's flags; a copy of the model (deepcopy, pickle) shares none of it.
"""

from __future__ import annotations

import copy
import io
import sys
import threading
from collections.abc import Callable, Iterator

import pytest
import torch
from test_fast_decoding import count_graphs, left_padded_prompts
from transformers import CompileConfig, LogitsProcessor, LogitsProcessorList
from transformers.utils import ModelOutput

import glm_hf

from conftest import blank_inputs, tiny_chatglm, tiny_model

GREEDY = {"max_new_tokens": 10, "min_new_tokens": 10, "do_sample": False}


@pytest.fixture
def frequent_thread_switches() -> Iterator[None]:
    """Python switches threads every 10 us instead of every 5 ms: two runs interleave within every decode step."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    yield
    sys.setswitchinterval(interval)


class CallDuringRun(LogitsProcessor):
    """Calls `action()` once, at the run's first decode step, and leaves the scores as they are."""

    def __init__(self, action: Callable[[], None]) -> None:
        self.action = action
        self.called = False

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if not self.called:
            self.called = True
            self.action()
        return scores


def in_a_thread(action: Callable[[], None]) -> None:
    """Run `action` in another thread and wait for it."""
    thread = threading.Thread(target=action)
    thread.start()
    thread.join()


@pytest.mark.parametrize("cache_implementation", [None, "static"], ids=["dynamic cache", "kept static cache"])
def test_runs_from_two_threads_get_the_tokens_each_gets_alone(frequent_thread_switches, cache_implementation) -> None:
    """A left-padded batch (its padding mask needed at every step) and an unpadded one (its steps run with none),
    generated over and over from two threads at once."""
    model = tiny_model()
    prompts = {"padded": left_padded_prompts(), "unpadded": blank_inputs(batch_size=2, part_b=1)}
    options = {"cache_implementation": cache_implementation, **GREEDY}
    alone = {name: model.generate(**inputs, **options).tolist() for name, inputs in prompts.items()}
    runs: dict[str, list[list[list[int]]]] = {name: [] for name in prompts}

    def generate_repeatedly(name: str) -> None:
        for _ in range(6):
            runs[name].append(model.generate(**prompts[name], **options).tolist())

    threads = [threading.Thread(target=generate_repeatedly, args=(name,)) for name in prompts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert runs == {name: [tokens] * 6 for name, tokens in alone.items()}


def test_a_forward_in_another_thread_during_a_run_checks_its_own_positions() -> None:
    """generate() checks its positions once up front and its forwards skip the check; a forward that another thread
    runs meanwhile still gets the clear error for a position past the tables."""
    model = tiny_model()
    too_far = torch.tensor([[model.config.max_position_embeddings]])
    seen: dict[str, object] = {}

    def forward_elsewhere() -> None:
        seen["flag in the other thread"] = model.glm.run_flags.for_this_thread().positions_prechecked
        with pytest.raises(ValueError, match="past the 65 rows of the position tables") as error:
            model(input_ids=torch.tensor([[7]]), position_ids=too_far)
        seen["error"] = error.value

    def during_run() -> None:
        seen["flag in the run"] = model.glm.run_flags.for_this_thread().positions_prechecked
        in_a_thread(forward_elsewhere)

    model.generate(
        **blank_inputs(batch_size=1, part_b=1),
        logits_processor=LogitsProcessorList([CallDuringRun(during_run)]),
        max_new_tokens=2,
    )
    assert seen["flag in the run"] is True and seen["flag in the other thread"] is False
    assert "error" in seen
    assert model.glm.run_flags.thread is None and model.glm.run_flags.positions_prechecked is False  # none after it


@pytest.mark.parametrize("cache_implementation", [None, "static"])
def test_a_forward_of_the_callers_code_during_a_run_checks_its_own_positions(cache_implementation: str | None) -> None:
    """The run's up-front position check covers its own columns, not those of a forward that the caller's code
    (a logits processor scoring with the same model, or a task head sharing its backbone) runs in the run's thread:
    that forward still gets the clear error for a position past the tables (before: it skipped the check, an
    `IndexError` from the table on the CPU, a device-side assert on CUDA)."""
    model = tiny_model()
    too_far = torch.tensor([[model.config.max_position_embeddings]])
    errors: list[Exception] = []

    def forward_in_the_run() -> None:
        for use_cache in (True, False):
            with pytest.raises(ValueError, match="past the 65 rows of the position tables") as error:
                model(input_ids=torch.tensor([[7]]), position_ids=too_far, use_cache=use_cache)
            errors.append(error.value)

    model.generate(
        **blank_inputs(batch_size=1, part_b=1),
        logits_processor=LogitsProcessorList([CallDuringRun(forward_in_the_run)]),
        cache_implementation=cache_implementation,
        max_new_tokens=2,
    )
    assert len(errors) == 2


def test_a_compiled_forward_is_not_recompiled_when_a_run_begins_or_ends() -> None:
    """Compiled code reads no run flags (they have no effect there): the forward compiled outside a run serves the
    run's decode-shaped calls and those after it with the same graph."""
    torch._dynamo.reset()
    model = tiny_model()
    graphs: list[int] = []
    forward = torch.compile(model.glm.forward, fullgraph=True, backend=count_graphs(graphs))
    step = {"input_ids": torch.tensor([[7]]), "position_ids": torch.tensor([[3]]), "use_cache": False}
    expected = model.glm(**step).last_hidden_state
    forward(**step)
    flags = model.glm.run_flags
    outer_run = flags.begin()
    flags.positions_prechecked = flags.fixed_shape_decoding = True
    torch.testing.assert_close(forward(**step).last_hidden_state, expected, rtol=0, atol=0)
    flags.restore(outer_run)
    forward(**step)
    assert len(graphs) == 1


@pytest.mark.parametrize("outer", ["kept static cache", "1-D ChatGLM"])
def test_a_run_inside_a_run_on_the_same_model_leaves_the_outer_run_its_tokens(outer: str) -> None:
    """A logits processor that generates with the same model, a batch of the same size: the inner run takes a static
    cache of its own (the outer one decodes on the kept cache, which stays) and the outer run gets its flags back
    (its padding mask, and the held positions of a 1-D ChatGLM, compared by their logits: the tiny ChatGLM's tokens
    do not depend on its positions)."""
    if outer == "kept static cache":
        model = tiny_model()
        outer_inputs = left_padded_prompts()
        options = {"cache_implementation": "static", **GREEDY}
    else:
        model = tiny_chatglm(block_position_encoding=False)
        outer_inputs = {"input_ids": torch.tensor([[11, 12, 89, 13, 5], [21, 22, 23, 90, 5]])}
        options = {"return_dict_in_generate": True, "output_logits": True, **GREEDY}

    def outputs(result: torch.Tensor | ModelOutput) -> list[list[int]] | list[torch.Tensor]:
        return result.tolist() if torch.is_tensor(result) else list(result.logits)

    inner_inputs = {"input_ids": outer_inputs["input_ids"][:, -3:]}
    outer_alone = outputs(model.generate(**outer_inputs, **options))
    kept = model.kept_static_cache
    inner_alone = outputs(model.generate(**inner_inputs, **options))
    inner_runs: list = []
    nested = CallDuringRun(lambda: inner_runs.append(outputs(model.generate(**inner_inputs, **options))))

    outer_nesting = outputs(model.generate(**outer_inputs, logits_processor=LogitsProcessorList([nested]), **options))
    torch.testing.assert_close(inner_runs, [inner_alone], rtol=0, atol=0)
    torch.testing.assert_close(outer_nesting, outer_alone, rtol=0, atol=0)
    assert model.kept_static_cache is kept  # the outer run's: the inner one took a cache of its own
    assert model.glm.run_flags.thread is None and not model.glm.run_flags.nested


def test_copies_of_a_model_share_no_run_state_and_generate_alike(tmp_path) -> None:
    """deepcopy and a pickled whole model (`torch.save(model)`) after compiled static runs, GLM's loop and
    transformers' (which per-step hidden states take): no kept cache, captured or compiled steps, lock or flags of
    the original; the same tokens."""
    torch._dynamo.reset()
    model = tiny_model()
    inputs = blank_inputs(batch_size=2, part_b=1)
    compile_config = CompileConfig(backend="eager")
    compile_config._compile_all_devices = True  # transformers compiles on CPU only when asked to
    options = {"cache_implementation": "static", "compile_config": compile_config, **GREEDY}
    tokens = model.generate(**inputs, **options).tolist()
    hidden = model.generate(**inputs, output_hidden_states=True, return_dict_in_generate=True, **options)
    assert hidden.sequences.tolist() == tokens
    compiled_state = {"_compiled_decode_step", "_compiled_call", "_last_compile_config"}
    assert compiled_state <= set(vars(model))
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    for copied in (copy.deepcopy(model), torch.load(buffer, weights_only=False)):
        assert isinstance(copied, glm_hf.GLMForConditionalGeneration)
        assert copied.kept_static_cache is None and len(copied.decode_steps) == 0
        assert not compiled_state & set(vars(copied))
        assert copied.generation_lock is not model.generation_lock
        assert copied.glm.run_flags is not model.glm.run_flags
        assert copied.generate(**inputs, **options).tolist() == tokens
    assert model.kept_static_cache is not None  # the original keeps its own
