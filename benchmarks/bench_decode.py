"""Decoding speed and memory of GLM against what users would run instead, all ratios measured in the same run.

Every figure comes from `model.generate()` on a random-weight model of a released shape (`GLMConfig.from_preset`),
greedy, forced to produce exactly the requested number of tokens (eos disabled, min = max new tokens), from GLM
blank-infilling prompts `[CLS] text [MASK] [eos] [sop]` (Part A with positions 0..n-1 and block position 0; [sop]
and the new tokens at the [MASK]'s position with block positions 1, 2, ...). Batches hold prompts of equal length.

Sections (`--sections`, default all):
- `throughput`: per shape, batch size, prompt length and new-token count: the prefill (`generate(max_new_tokens=1)`,
  timed separately), the decode rate `(N - 1) / (t(N) - t(1))`, and for batch 1 the fraction of the memory-bandwidth
  bound, parameter bytes x decode tokens/s / read bandwidth (summing a 1 GiB tensor, measured in the same run):
  1.0 means a decode step costs one read of the weights.
- `fast-paths`: the same measurements for eager vs SDPA attention, generate()'s default cache (`GLMDynamicCache`) vs
  transformers' `DynamicCache` vs the static cache, and the static cache with `torch.compile` (generate() compiles
  the decode step; `--compile-backend`).
- `recompute`: the KV cache against recomputing the whole sequence at every step (`use_cache=False`, what the
  original sampling code and THUDM's Hub code do; ours still computes only the last column's logits, so the ratio
  is a lower bound of the one against their code).
- `memory`: peak memory above the weights during the prefill and during decoding against the KV-cache arithmetic
  2 x layers x hidden x tokens x batch x bytes, each workload in a fresh process (CPU: peak RSS, with glibc
  returning freed blocks of 64 KiB and more to the system at once; CUDA: the allocator's peak).

Usage:
    PYTHONPATH=src python benchmarks/bench_decode.py --quick                    # smoke run, tiny shape
    PYTHONPATH=src python benchmarks/bench_decode.py --output benchmarks/RESULTS.md
    PYTHONPATH=src python benchmarks/bench_decode.py --device cuda --dtype float16 --output benchmarks/RESULTS.md

The default workloads depend on the device (`WORKLOADS`); `--presets`, `--batch-sizes`, `--prompts` and
`--new-tokens` replace the throughput matrix. Prompts longer than a shape's position table are skipped (and said).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from _timing import (
    DTYPES,
    RESULTS,
    current_memory,
    machine_lines,
    markdown_table,
    median_seconds,
    parameter_bytes,
    peak_memory,
    read_bandwidth,
    reset_peak_memory,
    setup,
    update_section,
)
from transformers import CompileConfig
from transformers.cache_utils import DynamicCache

from glm_hf import PRESETS, GLMConfig, GLMForConditionalGeneration
from glm_hf.modeling.configuration_glm import SWITCH_PRESETS
from glm_hf.modeling.modeling_glm import CACHE_OUTPUT_FIELD, GENERATE_CACHE_KWARG

SECTIONS = ("throughput", "fast-paths", "recompute", "memory")

# Default workloads per device: the matrix on a GPU; on a CPU a subset that runs in about an hour on one
# thread (batch 16 with 256 new tokens and the glm-2b runs take minutes each there). --presets, --batch-sizes,
# --prompts and --new-tokens replace the throughput matrix.
WORKLOADS: dict[str, dict[str, Any]] = {
    "cpu": {
        "throughput": [
            ("glm-large", [1], [128, 512], [64, 256]),
            ("glm-large", [16], [128, 512], [64]),
            ("glm-2b", [1], [128, 1024], [64]),
        ],
        "fast-paths": [("glm-large", [1, 16], 128, 64), ("glm-large", [1], 512, 256)],
        "recompute": [("glm-large", 512, 256)],
        "memory": [("glm-large", 1, 512, 256), ("glm-large", 16, 512, 256), ("glm-2b", 1, 1024, 64)],
    },
    "cuda": {
        "throughput": [
            ("glm-large", [1, 16], [128, 512], [64, 256]),
            ("glm-2b", [1, 16], [128, 512, 1024], [64, 256]),
            ("glm-10b", [1, 16], [128, 512, 1024], [64, 256]),
        ],
        "fast-paths": [("glm-large", [1, 16], 128, 256), ("glm-2b", [1, 16], 128, 256), ("glm-10b", [1], 128, 256)],
        "recompute": [("glm-large", 512, 256), ("glm-2b", 512, 256)],
        "memory": [("glm-large", 16, 512, 256), ("glm-2b", 1, 1024, 256), ("glm-2b", 16, 1024, 256)],
    },
}
QUICK: dict[str, Any] = {
    "throughput": [("glm-large", [1, 2], [32], [8])],
    "fast-paths": [("glm-large", [1, 2], 32, 8)],
    "recompute": [("glm-large", 32, 8)],
    "memory": [("glm-large", 2, 32, 8)],
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument(
        "--dtype", default=None, choices=sorted(DTYPES), help="default: float32 on cpu, float16 on cuda"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1: stablest ratios)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per figure; the median is reported")
    parser.add_argument("--recompute-repeats", type=int, default=1, help="timed runs of the (slow) recompute mode")
    parser.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=SECTIONS)
    parser.add_argument(
        "--presets",
        nargs="+",
        choices=sorted([*PRESETS, *SWITCH_PRESETS]),
        help="throughput shapes (default: per device)",
    )
    parser.add_argument("--batch-sizes", nargs="+", type=int, help="throughput batch sizes")
    parser.add_argument("--prompts", nargs="+", type=int, help="throughput prompt lengths in tokens, [sop] included")
    parser.add_argument("--new-tokens", nargs="+", type=int, help="throughput new-token counts")
    parser.add_argument("--layers", type=int, default=0, help="override every shape's layer count (0: the preset's)")
    parser.add_argument("--hidden", type=int, default=0, help="override the width, head size 64 (0: the preset's)")
    parser.add_argument("--compile-backend", default="inductor", help="torch.compile backend, or 'none' to skip")
    parser.add_argument("--bandwidth-gib", type=float, default=1.0, help="size of the summed tensor (default 1 GiB)")
    parser.add_argument(
        "--init-std",
        type=float,
        default=0.2,
        help="std of the random init (default 0.2, wider than GLM's 0.02, so that greedy tokens vary and token "
        "comparisons between modes mean something; decoding speed does not depend on it, the prefill's CPU "
        "tanh-GELU a little)",
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 layers of width 128, tiny workloads")
    parser.add_argument(
        "--output", type=Path, nargs="?", const=RESULTS, help=f"update these sections of {RESULTS.name}"
    )
    parser.add_argument("--memory-probe", help=argparse.SUPPRESS)  # internal: one memory workload, JSON
    args = parser.parse_args(argv)
    args.dtype = args.dtype or ("float16" if args.device == "cuda" else "float32")
    if args.quick:
        args.layers, args.hidden = args.layers or 2, args.hidden or 128
        args.repeats, args.recompute_repeats, args.bandwidth_gib = 1, 1, min(args.bandwidth_gib, 0.125)
    return args


def workloads(args: argparse.Namespace) -> dict[str, Any]:
    """The device's default workloads, or the quick ones, with the throughput matrix replaced by the flags."""
    chosen = dict(QUICK if args.quick else WORKLOADS[args.device])
    if any(value is not None for value in (args.presets, args.batch_sizes, args.prompts, args.new_tokens)):
        defaults = chosen["throughput"][0]
        chosen["throughput"] = [
            (
                preset,
                args.batch_sizes or defaults[1],
                args.prompts or defaults[2],
                args.new_tokens or defaults[3],
            )
            for preset in (args.presets or [row[0] for row in chosen["throughput"]])
        ]
    return chosen


# ---- model and prompts --------------------------------------------------------------------------------------------


def build_model(args: argparse.Namespace, preset: str) -> GLMForConditionalGeneration:
    """A random-weight GLM of the preset's shape (with the --layers / --hidden overrides), on the device, in eval."""
    overrides: dict[str, Any] = {"initializer_range": args.init_std}
    if args.layers:
        overrides["num_hidden_layers"] = args.layers
    if args.hidden:
        overrides.update(hidden_size=args.hidden, num_attention_heads=max(1, args.hidden // 64))
    config = GLMConfig.from_preset(preset, **overrides)
    torch.manual_seed(0)
    with torch.device(args.device):
        model = GLMForConditionalGeneration._from_config(config, attn_implementation="sdpa", dtype=DTYPES[args.dtype])
    return model.eval()


def fits(config: GLMConfig, prompt: int) -> bool:
    """Whether a prompt of `prompt` tokens ([sop] included) fits the position tables (rotary positions have none)."""
    return config.position_embedding_type == "rotary" or prompt - 1 <= config.max_position_embeddings


def build_prompts(config: GLMConfig, batch_size: int, length: int, device: str, seed: int = 0) -> dict[str, Any]:
    """`batch_size` prompts `[CLS] text [MASK] [eos] [sop]` of `length` tokens, as generate() keyword arguments;
    for ChatGLM (`positions_from_ids`) `text [gMASK] <sop>`, whose positions the model reads from the ids."""
    if length < 5:
        raise SystemExit("Prompts need at least 5 tokens ([CLS] text [MASK] [eos] [sop]).")
    generator = torch.Generator().manual_seed(seed)
    # Ids 1000..29999 are ordinary tokens in every GLM vocabulary (the special tokens sit below or above).
    text = torch.randint(1000, min(config.vocab_size, 30000), (batch_size, length - 4), generator=generator)
    column = torch.full((batch_size, 1), 0)
    if config.positions_from_ids:
        text = torch.randint(1000, 30000, (batch_size, length - 2), generator=generator)
        prompt = torch.cat([text, column + config.gmask_token_id, column + config.sop_token_id], 1)
        return {"input_ids": prompt.to(device)}
    part_a = torch.cat(
        [column + config.cls_token_id, text, column + config.mask_token_id, column + config.eos_token_id], 1
    )
    n = part_a.shape[1]
    return {
        "input_ids": torch.cat([part_a, column + config.sop_token_id], 1).to(device),
        "position_ids": torch.tensor([[*range(n), n - 2]] * batch_size, device=device),
        "block_position_ids": torch.tensor([[0] * n + [1]] * batch_size, device=device),
        "prefix_length": n,
    }


def kv_cache_bytes(config: GLMConfig, batch_size: int, tokens: int, element_size: int) -> int:
    """2 (keys and values) x layers x hidden x tokens x batch x bytes."""
    return 2 * config.num_hidden_layers * config.hidden_size * tokens * batch_size * element_size


# ---- one decode measurement ---------------------------------------------------------------------------------------


@dataclass
class Decode:
    prefill_s: float  # generate(max_new_tokens=1): the prompt's forward and the first token
    total_s: float  # generate(max_new_tokens=N)
    new_tokens: int
    batch_size: int
    tokens: torch.Tensor  # the N new tokens of the last run, [B, N]

    @property
    def decode_rate(self) -> float:
        """Decode steps per second (tokens/s of one sequence)."""
        return (self.new_tokens - 1) / max(self.total_s - self.prefill_s, 1e-9)


CACHE_LABELS = {
    "dynamic": "GLMDynamicCache (default)",
    "transformers": "transformers DynamicCache",
    "static": "static cache",
    "compiled": "static + compile",
}


def generate_kwargs(mode: str, args: argparse.Namespace) -> dict[str, Any]:
    """generate() options of a decoding mode: dynamic (generate()'s default, GLMDynamicCache) | transformers (a
    fresh transformers `DynamicCache` per call) | static | compiled (static cache + torch.compile)."""
    if mode == "dynamic":
        return {}
    if mode == "transformers":
        return {"cache_factory": DynamicCache}
    if mode == "static":
        return {"cache_implementation": "static"}
    compile_config = CompileConfig(
        fullgraph=True,
        dynamic=False,
        backend=args.compile_backend,
        mode=("reduce-overhead" if args.device == "cuda" else None) if args.compile_backend == "inductor" else None,
    )
    compile_config._compile_all_devices = True  # transformers compiles on CPU only when asked to
    return {"cache_implementation": "static", "compile_config": compile_config}


def measure_decode(
    model: GLMForConditionalGeneration,
    prompts: dict[str, Any],
    new_tokens: int,
    args: argparse.Namespace,
    prefill_s: float | None = None,
    **options: Any,
) -> Decode:
    """Median full-generation time and (unless `prefill_s` is known) median prefill time, and the new tokens.

    The warm-up before them generates 4 tokens, or all of them where the decode step is compiled: a compiled step
    is specialised to the static cache's size, which depends on the count."""
    output: dict[str, torch.Tensor] = {}
    cache_factory = options.pop("cache_factory", None)

    def run(count: int) -> None:
        cache = {GENERATE_CACHE_KWARG: cache_factory(config=model.config)} if cache_factory else {}
        with torch.inference_mode():
            output["ids"] = model.generate(
                **prompts,
                do_sample=False,
                num_beams=1,
                min_new_tokens=count,
                max_new_tokens=count,
                eos_token_id=None,
                **cache,
                **options,
            )

    run(new_tokens if "compile_config" in options else min(new_tokens, 4))
    total, _ = median_seconds(lambda: run(new_tokens), args.device, args.repeats, warmup=0)
    tokens = output["ids"][:, prompts["input_ids"].shape[1] :].cpu()
    if tokens.shape[1] != new_tokens:
        raise RuntimeError(f"generate() produced {tokens.shape[1]} tokens, expected {new_tokens}.")
    if prefill_s is None:
        prefill_s, _ = median_seconds(lambda: run(1), args.device, args.repeats, warmup=0)
    return Decode(prefill_s, total, new_tokens, prompts["input_ids"].shape[0], tokens)


def say(line: str) -> None:
    print(line, flush=True)


def describe(model: GLMForConditionalGeneration, preset: str, args: argparse.Namespace) -> str:
    config = model.config
    return (
        f"{preset} shape: {config.num_hidden_layers} layers, hidden {config.hidden_size}, "
        f"{config.num_attention_heads} heads, vocab {config.vocab_size}, "
        f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters "
        f"({parameter_bytes(model) / 1e9:.3f} GB {args.dtype}), random weights"
    )


# ---- sections -----------------------------------------------------------------------------------------------------


def throughput(args: argparse.Namespace, plan: list, bandwidth: float) -> str:
    rows = []
    shapes = []
    for preset, batch_sizes, prompts, new_token_counts in plan:
        model = build_model(args, preset)
        say(describe(model, preset, args))
        shapes += [describe(model, preset, args)] if describe(model, preset, args) not in shapes else []
        bound = bandwidth / parameter_bytes(model)  # decode steps/s if a step cost one read of the weights
        for prompt in prompts:
            if not fits(model.config, prompt):
                say(f"  skipped: a {prompt}-token prompt does not fit {preset}'s position table")
                continue
            for batch_size in batch_sizes:
                inputs = build_prompts(model.config, batch_size, prompt, args.device)
                prefill_s: float | None = None  # the same for every new-token count: measured once
                for new_tokens in new_token_counts:
                    result = measure_decode(model, inputs, new_tokens, args, prefill_s)
                    prefill_s = result.prefill_s
                    fraction = result.decode_rate / bound if batch_size == 1 else None
                    say(
                        f"  batch {batch_size}, prompt {prompt}, {new_tokens} new: prefill {result.prefill_s:.3f} s, "
                        f"decode {result.decode_rate:.2f} tok/s per sequence "
                        f"({result.decode_rate * batch_size:.1f} tok/s in all)"
                        + (f", {fraction:.2f} of the bandwidth bound ({bound:.2f} tok/s)" if fraction else "")
                    )
                    rows.append(
                        [
                            preset,
                            batch_size,
                            prompt,
                            new_tokens,
                            f"{result.prefill_s:.3f}",
                            f"{1000 / result.decode_rate:.1f}",
                            f"{result.decode_rate:.2f}",
                            f"{result.decode_rate * batch_size:.1f}",
                            f"**{fraction:.2f}**" if fraction else "",
                        ]
                    )
        del model
    header = [
        "shape",
        "batch",
        "prompt",
        "new tokens",
        "prefill s",
        "ms / step",
        "tok/s per seq",
        "tok/s total",
        "of bandwidth bound",
    ]
    return "\n".join(shapes) + "\n\n" + markdown_table(header, rows)


def fast_paths(args: argparse.Namespace, plan: list, bandwidth: float) -> str:
    modes = [("sdpa", "dynamic"), ("sdpa", "transformers"), ("eager", "dynamic"), ("sdpa", "static")]  # 1st: default
    if args.compile_backend != "none":
        modes.append(("sdpa", "compiled"))
    rows = []
    shapes = []
    for preset, batch_sizes, prompt, new_tokens in plan:
        model = build_model(args, preset)
        say(describe(model, preset, args))
        shapes += [describe(model, preset, args)] if describe(model, preset, args) not in shapes else []
        bound = bandwidth / parameter_bytes(model)
        for batch_size in batch_sizes:
            inputs = build_prompts(model.config, batch_size, prompt, args.device)
            reference: torch.Tensor | None = None
            for attention, cache in modes:
                model.set_attn_implementation(attention)
                result = measure_decode(model, inputs, new_tokens, args, **generate_kwargs(cache, args))
                reference = result.tokens if reference is None else reference
                same = torch.equal(result.tokens, reference)
                fraction = result.decode_rate / bound if batch_size == 1 else None
                label = CACHE_LABELS[cache]
                say(
                    f"  batch {batch_size}, prompt {prompt}, {new_tokens} new, {attention}, {label}: "
                    f"prefill {result.prefill_s:.3f} s, decode {result.decode_rate:.2f} tok/s per sequence"
                    + (f", {fraction:.2f} of the bound" if fraction else "")
                    + ("" if same else ", tokens DIFFER from the default mode's (near-ties round differently)")
                )
                rows.append(
                    [
                        preset,
                        batch_size,
                        prompt,
                        new_tokens,
                        attention,
                        label,
                        f"{result.prefill_s:.3f}",
                        f"{result.decode_rate:.2f}",
                        f"{result.decode_rate * batch_size:.1f}",
                        f"{fraction:.2f}" if fraction else "",
                        "same" if same else "differ",
                    ]
                )
            model.set_attn_implementation("sdpa")
        del model
    header = ["shape", "batch", "prompt", "new", "attention", "cache", "prefill s", "tok/s per seq", "tok/s total"]
    header += ["of bound", "tokens"]
    compile_line = (
        f"Compiled: `CompileConfig(fullgraph=True, dynamic=False, backend={args.compile_backend!r})`, the decode step "
        "only (generate() runs the prefill eagerly); the compilation happens in the warm-up run."
    )
    same_line = (
        "Tokens: the same as the default mode's (SDPA, GLMDynamicCache), or not (the kernels round differently, so "
        "near-ties of the random model can flip)."
    )
    return "\n".join(shapes) + f"\n\n{compile_line} {same_line}\n\n" + markdown_table(header, rows)


def recompute(args: argparse.Namespace, plan: list) -> str:
    rows = []
    for preset, prompt, new_tokens in plan:
        model = build_model(args, preset)
        say(describe(model, preset, args))
        inputs = build_prompts(model.config, 1, prompt, args.device)
        cached = measure_decode(model, inputs, new_tokens, args)
        repeats = args.repeats
        args.repeats = args.recompute_repeats
        try:
            slow = measure_decode(model, inputs, new_tokens, args, cached.prefill_s, use_cache=False)
        finally:
            args.repeats = repeats
        speedup = slow.total_s / cached.total_s
        same = torch.equal(cached.tokens, slow.tokens)
        say(
            f"  prompt {prompt}, {new_tokens} new: cached {cached.total_s:.2f} s, recompute {slow.total_s:.2f} s: "
            f"speedup {speedup:.1f} x, tokens {'identical' if same else 'DIFFER (near-ties round differently)'}"
        )
        rows.append(
            [
                preset,
                prompt,
                new_tokens,
                f"{cached.total_s:.2f}",
                f"{new_tokens / cached.total_s:.2f}",
                f"{slow.total_s:.1f}",
                f"{new_tokens / slow.total_s:.3f}",
                f"**{speedup:.1f}x**",
                "identical" if same else "differ",
            ]
        )
        del model
    header = ["shape", "prompt", "new tokens", "cached s", "cached tok/s", "recompute s", "recompute tok/s"]
    header += ["speedup", "tokens"]
    note = (
        f"Batch 1, whole `generate()` calls (prefill included): cached = median of {args.repeats}, recompute = median "
        f"of {args.recompute_repeats} (`use_cache=False`)."
    )
    return note + "\n\n" + markdown_table(header, rows)


def memory(args: argparse.Namespace, plan: list) -> str:
    rows = []
    for preset, batch_size, prompt, new_tokens in plan:
        probe = json.dumps({"preset": preset, "batch_size": batch_size, "prompt": prompt, "new_tokens": new_tokens})
        command = [sys.executable, str(Path(__file__).resolve()), *forwarded_flags(args), "--memory-probe", probe]
        # glibc returns freed blocks of 64 KiB and more to the system at once, so RSS follows the live tensors.
        environment = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
        result = subprocess.run(command, check=True, capture_output=True, text=True, env=environment)
        figures = json.loads(result.stdout.strip().splitlines()[-1])
        prefill_kv, decode_kv = figures["prefill_kv"], figures["decode_kv"]
        weights, prefill_peak, decode_peak = figures["weights"], figures["prefill_peak"], figures["decode_peak"]
        say(f"  {preset}, batch {batch_size}, prompt {prompt}, {new_tokens} new: weights {weights / 1e9:.3f} GB")
        say(f"    prefill peak {prefill_peak / 1e6:.1f} MB above the weights, KV cache {prefill_kv / 1e6:.1f} MB")
        say(f"    decoding peak {decode_peak / 1e6:.1f} MB, KV cache {decode_kv / 1e6:.1f} MB")
        say(f"    the cache holds {figures['cache_bytes'] / 1e6:.1f} MB at the end (spare columns included)")
        rows.append(
            [
                preset,
                batch_size,
                prompt,
                new_tokens,
                f"{figures['weights'] / 1e9:.3f}",
                f"{prefill_kv / 1e6:.1f}",
                f"{figures['prefill_peak'] / 1e6:.1f}",
                f"{figures['prefill_peak'] / prefill_kv:.2f}",
                f"{decode_kv / 1e6:.1f}",
                f"{figures['decode_peak'] / 1e6:.1f}",
                f"{figures['decode_peak'] / decode_kv:.2f}",
                f"{figures['cache_bytes'] / 1e6:.1f}",
            ]
        )
    what = "peak RSS" if args.device == "cpu" else "torch.cuda.max_memory_allocated"
    note = (
        f"Peak memory ({what}) above the weights, each workload in a fresh process. KV arithmetic: 2 x layers x "
        "hidden x tokens x batch x bytes, over the prompt (prefill) and prompt + new tokens (decoding). The "
        "prefill peak adds the activations of the whole prompt (the MLP's 4h-wide intermediate, the attention "
        "scores); the decoding peak is the cache plus one step's activations. The last column is the storage behind "
        "the cache after decoding: `GLMDynamicCache` keeps up to a quarter (at least 64 columns) spare."
    )
    header = ["shape", "batch", "prompt", "new", "weights GB", "prefill KV MB", "prefill peak MB", "peak / KV"]
    header += ["decode KV MB", "decode peak MB", "peak / KV", "cache storage at the end MB"]
    return note + "\n\n" + markdown_table(header, rows)


def forwarded_flags(args: argparse.Namespace) -> list[str]:
    flags = ["--device", args.device, "--dtype", args.dtype, "--threads", str(args.threads)]
    flags += ["--layers", str(args.layers), "--hidden", str(args.hidden), "--init-std", str(args.init_std)]
    return flags


def memory_probe(args: argparse.Namespace) -> None:
    """In a fresh process: the peak above the weights of the prefill and of the decoding that follows it."""
    workload = json.loads(args.memory_probe)
    model = build_model(args, workload["preset"])
    config = model.config
    inputs = build_prompts(config, workload["batch_size"], workload["prompt"], args.device)
    warmup = build_prompts(config, 1, 8, args.device)
    with torch.inference_mode():  # warm the kernels up on a short prompt: their one-off buffers are not counted
        model.generate(**warmup, max_new_tokens=2, min_new_tokens=2, eos_token_id=None)
        baseline = current_memory(args.device)
        reset_peak_memory(args.device)
        context = {name: value[:, :-1] if torch.is_tensor(value) else value for name, value in inputs.items()}
        cache = getattr(model(**context, use_cache=True, logits_to_keep=1), CACHE_OUTPUT_FIELD)
        prefill_peak = peak_memory(args.device) - baseline
        reset_peak_memory(args.device)
        new_tokens = workload["new_tokens"]
        model.generate(
            **inputs,
            **{GENERATE_CACHE_KWARG: cache},
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            eos_token_id=None,
        )
        decode_peak = peak_memory(args.device) - baseline
        # The storage behind keys and values: GLMDynamicCache's spare columns included.
        storages = [tensor.untyped_storage() for layer in cache.layers for tensor in (layer.keys, layer.values)]
        cache_bytes = sum(storage.nbytes() for storage in storages)
    element = DTYPES[args.dtype].itemsize
    batch_size, prompt = workload["batch_size"], workload["prompt"]
    figures = {
        "weights": parameter_bytes(model),
        "prefill_peak": prefill_peak,
        "decode_peak": decode_peak,
        "cache_bytes": cache_bytes,
        "prefill_kv": kv_cache_bytes(config, batch_size, prompt - 1, element),
        "decode_kv": kv_cache_bytes(config, batch_size, prompt + new_tokens - 1, element),
    }
    print(json.dumps(figures))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    setup(args.device, args.threads)
    if args.memory_probe:
        memory_probe(args)
        return
    plan = workloads(args)
    command = "python benchmarks/bench_decode.py " + " ".join(sys.argv[1:] if argv is None else argv)
    header = machine_lines(args.device)
    bandwidth = read_bandwidth(args.device, args.bandwidth_gib)
    size = f"{args.bandwidth_gib:g} GiB"
    header.append(f"read bandwidth: {bandwidth / 1e9:.2f} GB/s (median time to sum a {size} float32 tensor)")
    header.append(f"dtype: {args.dtype}, device: {args.device}, median of {args.repeats} timed runs after a warm-up")
    for line in header:
        say(line)
    run_line = f"`{command.strip()}`\n\n" + "\n".join(f"- {line}" for line in header)
    titles = {
        "throughput": "Decoding throughput and the memory-bandwidth bound",
        "fast-paths": "Decoding fast paths: attention, static cache, torch.compile",
        "recompute": "Cached decoding vs recomputing the sequence",
        "memory": "Decoding memory vs the KV cache",
    }
    for section in SECTIONS:
        if section not in args.sections:
            continue
        say(f"== {titles[section]}")
        if section == "throughput":
            body = throughput(args, plan[section], bandwidth)
        elif section == "fast-paths":
            body = fast_paths(args, plan[section], bandwidth)
        elif section == "recompute":
            body = recompute(args, plan[section])
        else:
            body = memory(args, plan[section])
        if args.output:
            update_section(args.output, f"{titles[section]} ({args.device})", run_line + "\n\n" + body)
    if args.output:
        say(f"results written to {args.output}")


if __name__ == "__main__":
    main()
