"""Decoding speed of GLM: the KV cache against recomputing the whole sequence every step.

`generate(use_cache=True)` runs the prompt once and then one token per step on the cache.
`generate(use_cache=False)` runs the whole sequence (prompt + every token so far) again at each step, which is what
the original THUDM/GLM sampling code and THUDM's Hub code do. Both decode greedily, batch 1, from a random-weight
model, and are forced to produce exactly `--new-tokens` tokens (eos disabled, min = max new tokens).

The prompt is a blank-infilling prompt as GLM builds it: `[CLS] text... [MASK] [eos] [sop]`, `--context` tokens in
all, Part A with positions 0..n-1 and block position 0, [sop] and the new tokens at the [MASK]'s position with
block positions 1, 2, ...

Usage:
    PYTHONPATH=src python benchmarks/bench_decode.py --threads 2
    PYTHONPATH=src python benchmarks/bench_decode.py --preset glm-large --layers 24 --repeats 5
    PYTHONPATH=src python benchmarks/bench_decode.py --device cuda --dtype bfloat16 --layers 24

Prints `cached: X tok/s`, `recompute: Y tok/s` and `speedup: Z x` (medians over `--repeats` timed runs, after one
warm-up run of each mode), and whether the two modes produced the same tokens.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch
import transformers

from glm_hf import PRESETS, GLMConfig, GLMForConditionalGeneration

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="glm-large", choices=sorted(PRESETS), help="shape (default glm-large)")
    parser.add_argument("--layers", type=int, default=4, help="override num_hidden_layers (default 4; 0 = preset's)")
    parser.add_argument("--context", type=int, default=512, help="prompt tokens, [sop] included (default 512)")
    parser.add_argument("--new-tokens", type=int, default=64, help="tokens to generate (default 64)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per mode; the median is reported")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    parser.add_argument(
        "--init-std",
        type=float,
        default=0.2,
        help="std of the random init (default 0.2: wider than GLM's 0.02, so that greedy tokens vary and the "
        "cached / recompute token comparison means something; speed does not depend on it)",
    )
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def build_model(args: argparse.Namespace) -> GLMForConditionalGeneration:
    """A random-weight GLM of the preset's shape (with `--layers` blocks) on the requested device and dtype."""
    overrides: dict[str, int | float] = {}
    if args.layers:
        overrides["num_hidden_layers"] = args.layers
    config = GLMConfig.from_preset(args.preset, initializer_range=args.init_std, **overrides)
    torch.manual_seed(args.seed)
    model = GLMForConditionalGeneration(config)
    return model.to(device=args.device, dtype=DTYPES[args.dtype]).eval()


def build_prompt(config: GLMConfig, context: int, device: str, seed: int) -> dict[str, torch.Tensor | int]:
    """`[CLS] text [MASK] [eos] [sop]` with `context` tokens, as generate() keyword arguments."""
    if context < 5:
        raise ValueError("--context must be at least 5 ([CLS] text [MASK] [eos] [sop]).")
    if context - 1 > config.max_position_embeddings:
        raise ValueError(f"--context {context} does not fit the preset's position table.")
    # Ids 1000..29999 are ordinary tokens in every GLM vocabulary (the special tokens sit below or above).
    generator = torch.Generator().manual_seed(seed)
    text = torch.randint(1000, min(config.vocab_size, 30000), (context - 4,), generator=generator).tolist()
    part_a = [config.cls_token_id, *text, config.mask_token_id, config.eos_token_id]
    n = len(part_a)
    mask_position = n - 2
    input_ids = torch.tensor([[*part_a, config.sop_token_id]], device=device)
    return {
        "input_ids": input_ids,
        "position_ids": torch.tensor([[*range(n), mask_position]], device=device),
        "block_position_ids": torch.tensor([[0] * n + [1]], device=device),
        "prefix_length": n,
    }


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


@torch.inference_mode()
def run(
    model: GLMForConditionalGeneration, prompt: dict[str, torch.Tensor | int], new_tokens: int, use_cache: bool
) -> tuple[float, torch.Tensor]:
    """One greedy generate() of exactly `new_tokens` tokens: (seconds, new token ids)."""
    device = prompt["input_ids"].device.type
    synchronize(device)
    start = time.perf_counter()
    output = model.generate(
        **prompt,
        do_sample=False,
        num_beams=1,
        min_new_tokens=new_tokens,
        max_new_tokens=new_tokens,
        eos_token_id=None,
        use_cache=use_cache,
    )
    synchronize(device)
    seconds = time.perf_counter() - start
    new = output[0, prompt["input_ids"].shape[1] :].cpu()
    if new.numel() != new_tokens:
        raise RuntimeError(f"generate() produced {new.numel()} tokens, expected {new_tokens}.")
    return seconds, new


def main() -> None:
    args = parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available.")
    transformers.logging.set_verbosity_error()

    print(f"machine: {platform.platform()}, {platform.machine()}, {os.cpu_count()} logical CPUs")
    if args.device == "cuda":
        print(f"gpu: {torch.cuda.get_device_name()}")
    print(f"python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}")
    print(f"torch threads: {torch.get_num_threads()}")

    model = build_model(args)
    config = model.config
    print(
        f"model: {args.preset} shape, {config.num_hidden_layers} layers, hidden {config.hidden_size}, "
        f"{config.num_attention_heads} heads, {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, "
        f"random weights, {args.device} {args.dtype}, attention {config._attn_implementation}"
    )
    print(f"decode: greedy, batch 1, context {args.context} tokens, {args.new_tokens} new tokens, {args.repeats} runs")
    prompt = build_prompt(config, args.context, args.device, args.seed)

    tokens: dict[str, torch.Tensor] = {}
    rates: dict[str, float] = {}
    for name, use_cache in (("cached", True), ("recompute", False)):
        run(model, prompt, min(args.new_tokens, 4), use_cache)  # warm-up
        times = []
        for _ in range(args.repeats):
            seconds, new = run(model, prompt, args.new_tokens, use_cache)
            times.append(seconds)
        tokens[name] = new
        rates[name] = args.new_tokens / statistics.median(times)
        print(f"{name}: {rates[name]:.2f} tok/s (median of {', '.join(f'{t:.2f}' for t in times)} s)")
    print(f"speedup: {rates['cached'] / rates['recompute']:.2f} x")

    if torch.equal(tokens["cached"], tokens["recompute"]):
        distinct = len(set(tokens["cached"].tolist()))
        print(f"tokens: identical ({args.new_tokens} tokens, {distinct} distinct)")
    else:
        first = int((tokens["cached"] != tokens["recompute"]).nonzero()[0])
        print(f"tokens: DIFFER from new token {first} on (the two computations round differently; near-ties flip)")


if __name__ == "__main__":
    main()
