"""Where a decode step's device time goes (CUDA): kernels of one glm-2b decode step, eager and compiled, and each
projection and the attention on their own against the read bandwidth.

    PYTHONPATH=src python benchmarks/profile_gpu_step.py [--preset glm-2b] [--no-compile]

Prints, for the step the default path captures (eager) and the compiled one, the kernels by device time (torch
profiler, 3 steps run without the graph), then each linear layer of a block and the LM head at batch 1 (GB/s of
weight read; eight copies of the weight read in turn, so that the 50 MB L2 cache of an H200 does not hold it) as
`linear` with its bias, `linear` then the bias, and `mv`, and unless `--no-compile`, as a compiled product-and-sum
(one Triton reduction, coordinate-descent tuned) and as `linear` with inductor's autotuned templates: whether a
kernel other than cuBLAS's reads a batch-1 weight closer to the bandwidth.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).parent))
from bench_gpu import blank_prompt, build, graph_rate  # noqa: E402


def graph_seconds(body, replays: int = 100) -> float:
    """Seconds per call of `body` captured `replays` times in one CUDA graph and replayed."""
    body()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(replays):
            body()
    graph.replay()
    torch.cuda.synchronize()
    start = time.perf_counter()
    graph.replay()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / replays


def kernel_table(step, label: str) -> None:
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            step._run()
        torch.cuda.synchronize()
    events = [event for event in prof.key_averages() if event.device_type.name == "CUDA"]
    total = sum(event.self_device_time_total for event in events) / 3
    print(f"\n== {label}: {total:.0f} us of kernels per step")
    for event in sorted(events, key=lambda e: -e.self_device_time_total)[:18]:
        per_step = event.self_device_time_total / 3
        print(f"{per_step:9.1f} us {event.count // 3:6d}x  {event.key[:110]}")


def reduction_projection(row: torch.Tensor, weight: torch.Tensor, offset: torch.Tensor | None) -> torch.Tensor:
    """A batch-1 projection written as a product and a sum over the input width: compiled, inductor makes it one
    Triton reduction kernel (fp32 accumulation) instead of a cuBLAS call, the form that coordinate-descent tuning
    can fit to each shape."""
    product = (row.unsqueeze(-2) * weight).sum(-1)
    return product if offset is None else product + offset


def linear_variants(n_in: int, n_out: int, bias: bool, compiled: bool) -> list[str]:
    """Microseconds and GB/s of one batch-1 projection, computed three ways (five with `compiled`: the product-and-sum
    form as a tuned Triton reduction, and `linear` with inductor's autotuned matrix-multiply templates)."""
    weights = [torch.randn(n_out, n_in, device="cuda", dtype=torch.float16) * 0.02 for _ in range(8)]
    offset = torch.zeros(n_out, device="cuda", dtype=torch.float16) if bias else None
    row = torch.randn(1, 1, n_in, device="cuda", dtype=torch.float16)
    variants = {
        "linear+bias": lambda w: torch.nn.functional.linear(row, w, offset),
        "linear, add": lambda w: torch.nn.functional.linear(row, w) + (0 if offset is None else offset),
        "mv, add": lambda w: torch.mv(w, row.view(-1)) + (0 if offset is None else offset),
    }
    if compiled:
        # dynamic=False: each shape gets kernels of its own (not one compiled for any size after the second shape)
        tuned = torch.compile(reduction_projection, dynamic=False, options={"coordinate_descent_tuning": True})
        templates = torch.compile(torch.nn.functional.linear, dynamic=False, mode="max-autotune-no-cudagraphs")
        variants["triton sum"] = lambda w: tuned(row, w, offset)
        variants["autotuned mm"] = lambda w: templates(row, w, offset)
    report = []
    for label, variant in variants.items():
        seconds = graph_seconds(lambda variant=variant: [variant(w) for w in weights], replays=20) / len(weights)
        report.append(f"{label} {seconds * 1e6:6.1f} us ({n_in * n_out * 2 / seconds / 1e9:5.0f} GB/s)")
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="glm-2b")
    parser.add_argument("--no-compile", action="store_true")
    args = parser.parse_args()
    model = build(args.preset, "cuda", torch.float16)
    config = model.config
    inputs = blank_prompt(model, 1, 128)
    settings = {"do_sample": False, "eos_token_id": None, "max_new_tokens": 32, "min_new_tokens": 32}
    runs = [("default (eager step)", {})] + (
        [] if args.no_compile else [("static (compiled step)", {"cache_implementation": "static"})]
    )
    for label, options in runs:
        with torch.no_grad():
            model.generate(**inputs, **settings, **options)
            cache = model.kept_static_cache[-1]
            step = model.decode_steps[cache]
            flags = model.glm.run_flags
            outside = flags.begin()  # the flags of generate()'s run on its kept cache, given back afterwards
            flags.positions_prechecked = True  # generate() checks the positions once up front
            flags.run_cache = cache  # (for the forwards on the run's cache)
            flags.fixed_shape_decoding = True  # the kept cache's shapes never change: cuDNN attention, as captured
            try:
                kernel_table(step, label)
            finally:
                flags.restore(outside)

    hidden, inter = config.hidden_size, config.intermediate_size
    print("\n== linear layers at batch 1: 8 copies of each weight in turn (beyond the L2 cache), CUDA graph")
    for name, (n_in, n_out) in {
        "query_key_value": (hidden, 3 * hidden),
        "dense": (hidden, hidden),
        "dense_h_to_4h": (hidden, inter),
        "dense_4h_to_h": (inter, hidden),
        "lm_head": (hidden, config.vocab_size),
    }.items():
        variants = linear_variants(n_in, n_out, bias=name != "lm_head", compiled=not args.no_compile)
        print(f"{name:16s} " + "; ".join(variants))
    graph = graph_rate(model)
    print(f"\ncaptured step replays alone: {graph:.1f} steps/s")


if __name__ == "__main__":
    main()
