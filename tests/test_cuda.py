"""GPU paths (run where CUDA exists; skipped elsewhere): generation on the device, the captured decode step, and
the SDPA backends actually dispatched."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

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


class OpNames(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.names: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.add(str(func))
        return func(*args, **(kwargs or {}))


def test_no_cudnn_attention_is_dispatched_on_cuda():
    model = tiny_model().cuda().half()
    inputs = prompt_of(9)
    with OpNames() as ops:
        model.generate(**inputs, max_new_tokens=3)
    attention = {name for name in ops.names if "attention" in name}
    assert attention and not any("cudnn" in name for name in attention), attention
