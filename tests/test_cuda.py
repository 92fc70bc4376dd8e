"""GPU paths (run where CUDA exists; skipped elsewhere): generation on the device, the captured decode step, and
the SDPA backends actually dispatched."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from glm_hf.modeling import captured_decoding, modeling_glm

from conftest import blank_inputs, tiny_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

GREEDY = {"max_new_tokens": 12, "min_new_tokens": 12, "do_sample": False}


def prompt_of(length: int) -> dict:
    inputs = blank_inputs(batch_size=1, part_a=length, part_b=1)
    return {key: value.cuda() if torch.is_tensor(value) else value for key, value in inputs.items()}


def test_generation_on_cuda_equals_generation_on_the_cpu():
    model = tiny_model()
    inputs = blank_inputs(batch_size=1, part_b=1)
    on_cpu = model.generate(**inputs, **GREEDY)
    on_gpu = model.cuda().generate(**{k: v.cuda() if torch.is_tensor(v) else v for k, v in inputs.items()}, **GREEDY)
    assert on_gpu.cpu().tolist() == on_cpu.tolist()


@pytest.mark.parametrize("length", [9, 17])
def test_the_captured_decode_step_gives_the_default_paths_tokens(length):
    model = tiny_model().cuda()
    inputs = prompt_of(length)
    default = model.generate(**inputs, **GREEDY)
    captured = model.generate(**inputs, cache_implementation="static", **GREEDY)
    assert captured.tolist() == default.tolist()


class AttentionCalls(TorchDispatchMode):
    """The attention ops dispatched, with their query lengths."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, int]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if "attention" in str(func):
            self.calls.append((str(func), args[0].shape[-2]))
        return func(*args, **(kwargs or {}))


def test_cudnn_attention_runs_only_where_shapes_stay_fixed():
    """cuDNN re-plans for every new key length: never on the dynamic cache, nor for a prefill; the kept static cache's
    decode steps (the default on CUDA) have one shape for the whole run and may use it."""
    model = tiny_model().cuda().half()
    inputs = prompt_of(9)
    with AttentionCalls() as dynamic:
        model.generate(**inputs, cache_implementation="dynamic", max_new_tokens=3)
    assert dynamic.calls and not any("cudnn" in name for name, _ in dynamic.calls), dynamic.calls
    with AttentionCalls() as static:
        model.generate(**inputs, max_new_tokens=6)
    assert static.calls and all(length == 1 for name, length in static.calls if "cudnn" in name), static.calls


def capture_count(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the CUDA graphs that the static-cache loop records."""
    counts: list[int] = []
    original = captured_decoding.CapturedDecodeStep._capture

    def counting(self: captured_decoding.CapturedDecodeStep) -> None:
        counts.append(1)
        original(self)

    monkeypatch.setattr(captured_decoding.CapturedDecodeStep, "_capture", counting)
    return counts


def test_default_generate_replays_one_captured_step_across_runs(monkeypatch):
    """No flags on CUDA: a kept static cache, the step captured once and replayed by later runs of other prompt
    lengths; tokens as the eager dynamic-cache loop's (fp32)."""
    counts = capture_count(monkeypatch)
    model = tiny_model().cuda()
    for length in (9, 17, 12):
        inputs = prompt_of(length)
        tokens = model.generate(**inputs, **GREEDY)
        eager = model.generate(**inputs, cache_implementation="dynamic", **GREEDY)
        assert tokens.tolist() == eager.tolist()
        step = model.decode_steps[model.kept_static_cache[-1]]
        assert step.graph is not None
    assert counts == [1]


def test_compiled_captured_step_gives_the_eager_tokens(monkeypatch):
    counts = capture_count(monkeypatch)
    model = tiny_model().cuda()
    inputs = prompt_of(9)
    eager = model.generate(**inputs, cache_implementation="dynamic", **GREEDY)
    for _ in range(2):
        assert model.generate(**inputs, cache_implementation="static", **GREEDY).tolist() == eager.tolist()
    assert counts == [1]
    assert model.decode_steps[model.kept_static_cache[-1]].forward is not captured_decoding.last_column_logits


def test_rows_ending_at_eos_on_cuda_end_as_on_the_cpu():
    """The deferred stop check (a device flag read one step late) ends a run where the CPU's loop does."""
    model = tiny_model()
    inputs = blank_inputs(batch_size=2, part_b=1)
    first = model.generate(**inputs, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    options = {"eos_token_id": int(first[0, -1]), "max_new_tokens": 12, "do_sample": False}
    on_cpu = model.generate(**inputs, **options)
    single_cpu = model.generate(**{k: v[:1] for k, v in inputs.items()}, **options)
    model.cuda()
    gpu_inputs = {k: v.cuda() for k, v in inputs.items()}
    assert model.generate(**gpu_inputs, **options).cpu().tolist() == on_cpu.tolist()
    single = model.generate(**{k: v[:1] for k, v in gpu_inputs.items()}, **options)
    assert single.cpu().tolist() == single_cpu.tolist()


def test_seeded_sampling_runs_ending_on_eos_draw_what_transformers_loop_draws(monkeypatch):
    """The deferred stop check samples one step too many before it reads that every row has ended, and gives the
    generator that draw back: runs one after another from one seed draw the tokens of transformers' loop (which
    checks at every step) on the same cache."""
    model = tiny_model().cuda()
    inputs = prompt_of(9)
    options = {"do_sample": True, "eos_token_id": list(range(40)), "pad_token_id": 0, "max_new_tokens": 12}
    runs = {}
    for loop in ("ours", "transformers"):
        with monkeypatch.context() as patch:
            if loop == "transformers":
                patch.setattr(modeling_glm, "static_cache_loop_applies", lambda *args, **kwargs: False)
            torch.manual_seed(5)
            runs[loop] = [model.generate(**inputs, **options).cpu().tolist() for _ in range(4)]
    assert runs["ours"] == runs["transformers"]
    assert any(len(tokens[0]) < inputs["input_ids"].shape[1] + 12 for tokens in runs["ours"])  # some ended on eos


def test_fill_blanks_on_cuda_fills_as_on_the_cpu():
    from glm_hf import fill_blanks

    from conftest import tiny_word_tokenizer

    model = tiny_model()
    tokenizer = tiny_word_tokenizer()
    texts = ["the king [MASK] the river and [MASK] .", "a bird [MASK] .", "[MASK] the old ship ."]
    on_cpu = fill_blanks(model, tokenizer, texts, max_new_tokens=5, batch_size=3)
    on_gpu = fill_blanks(model.cuda(), tokenizer, texts, max_new_tokens=5, batch_size=3)
    assert [result.spans for result in on_gpu] == [result.spans for result in on_cpu]


def test_a_forward_hook_sees_every_step_of_the_default_run():
    """A replayed CUDA graph runs no Python: with a forward hook set, the default run decodes eagerly (transformers'
    loop), and the hook sees the prefill and every decode step, in a first run and after a run that captured."""
    model = tiny_model().cuda()
    inputs = prompt_of(9)
    model.generate(**inputs, **GREEDY)  # captures the step on the kept cache
    calls: list[int] = []
    handle = model.glm.layers[1].register_forward_hook(lambda module, args, output: calls.append(1))
    tokens = model.generate(**inputs, **GREEDY)
    assert len(calls) == GREEDY["max_new_tokens"]
    calls.clear()
    static = model.generate(**inputs, cache_implementation="static", **GREEDY)
    assert len(calls) == GREEDY["max_new_tokens"] and static.tolist() == tokens.tolist()
    handle.remove()


def test_generate_under_autocast_after_a_captured_run_gives_transformers_loop_tokens(monkeypatch):
    """A float32 model under autocast after a run that captured its step (before: the kept float32 cache refused
    the half-precision keys): the default run takes transformers' loop on the dynamic cache, replaying and
    capturing nothing; the plain run after it replays its graph on the kept cache again."""
    counts = capture_count(monkeypatch)
    model = tiny_model().cuda()
    inputs = prompt_of(9)
    plain = model.generate(**inputs, **GREEDY)
    kept = model.kept_static_cache[-1]
    with torch.autocast("cuda", dtype=torch.float16):
        expected = model.generate(**inputs, cache_implementation="dynamic", **GREEDY)
        assert model.generate(**inputs, **GREEDY).tolist() == expected.tolist()
    assert model.generate(**inputs, **GREEDY).tolist() == plain.tolist()
    assert counts == [1] and model.kept_static_cache[-1] is kept


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_a_model_on_another_device_than_the_current_one_decodes_as_on_the_cpu():
    """The capture stream, the stop flag's events and the replays are those of the model's device, not of the
    current one."""
    model = tiny_model()
    inputs = blank_inputs(batch_size=2, part_b=1)
    on_cpu = model.generate(**inputs, **GREEDY)
    model.to("cuda:1")
    on_second = {k: v.to("cuda:1") for k, v in inputs.items()}
    with torch.cuda.device(0):
        for _ in range(2):  # captured, then replayed
            assert model.generate(**on_second, **GREEDY).cpu().tolist() == on_cpu.tolist()
    assert model.decode_steps[model.kept_static_cache[-1]].graph is not None


def test_cli_infill_fills_on_the_gpu_as_on_the_cpu(capsys):
    """`glm-hf infill` runs on the GPU by default where one is available: in float32, the CPU's spans."""
    from glm_hf.cli import main

    text = "the king [MASK] the river and [MASK] ."
    main(["infill", text, "--max-new-tokens", "4", "--device", "cpu"])
    on_cpu = capsys.readouterr().out
    main(["infill", text, "--max-new-tokens", "4", "--dtype", "float32"])
    assert capsys.readouterr().out == on_cpu
