"""GPU decoding against the memory-bandwidth bound: the targets of a short GPU lease, each on its own.

Random fp16 weights of the released shapes (std 0.02, the original's init: fp16-safe through 48 layers), greedy,
eos disabled so that every run makes exactly the tokens asked for, GLM blank-infilling prompts (Part A, then [sop]).
The decode rate is `(N - 1) / (t(N) - t(1))`; the bound is weight bytes / read bandwidth (summing a 1 GiB tensor in
the same run): fraction 1.0 means a decode step costs one read of the weights.

Targets (`--targets`, default all), each timed alone so that one failure does not stop the others:
- `default`: glm-2b, batch 1, `generate()` with no flags (on CUDA: the kept static cache and the decode step captured
  as a CUDA graph, not compiled), against the eager dynamic-cache loop (`cache_implementation="dynamic"`) in the same
  run, the graph's replays alone (the device-side speed of a step) and where fp16 tokens of both paths first differ;
- `captured`: glm-2b, batch 1, `cache_implementation="static"`: the step compiled (torch.compile, no cudagraphs of
  its own) and then captured; the first call's compile time is reported;
- `batch16`: glm-2b, batch 16, no flags (total tokens/s, and against batch 1);
- `glm10b`: glm-10b, batch 1, compiled and captured, then the default path;
- `infill`: `fill_blanks` of 32 texts x 2 blanks x 8 tokens at batch 16 against one text at a time (glm-large
  shape with the embedded model's tokenizer);
- `greedy-equal`: fp32 tokens of the default and compiled steps against the eager loop (glm-2b width, 4 layers);
- `chatglm`, `chatglm-captured`: ChatGLM-6B, batch 1, a `text [gMASK] <sop>` prompt whose positions the model reads
  from the ids, default path / compiled.

Not run unless named (`--targets captured-autotune`): glm-2b with the step compiled by
`CompileConfig(mode="max-autotune")` (Triton matrix-multiply templates tuned per shape instead of cuBLAS; minutes of
tuning on the first call), the candidate for the batch-1 projections that cuBLAS reads below the bandwidth.

Prints one `TARGET` line per target; `--output` writes the "(cuda)" section of RESULTS.md. `GLM_HF_GPU_SMOKE=1`
runs every target on tiny shapes on the CPU (to check the script itself before a lease; it writes no RESULTS.md).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import CompileConfig

sys.path.insert(0, str(Path(__file__).parent))
from _timing import parameter_bytes, read_bandwidth, synchronize, update_section  # noqa: E402

import glm_hf  # noqa: E402
from glm_hf.default_model import default_model_and_tokenizer  # noqa: E402

SMOKE = os.environ.get("GLM_HF_GPU_SMOKE") == "1"
TITLE = "GPU decoding (cuda)"
TARGET_SECONDS = 150  # a target still running then is stopped and reported, so that the lease's run ends
TARGETS = ("default", "captured", "batch16", "glm10b", "infill", "greedy-equal", "chatglm", "chatglm-captured")
OPTIONAL_TARGETS = ("captured-autotune",)  # longer than a lease's script can hold: run on their own
OPTIONAL_TARGET_SECONDS = 540


def build(preset: str, device: str, dtype: torch.dtype, **overrides) -> glm_hf.GLMForConditionalGeneration:
    """A random model of a released shape, initialised on the device (N(0, 0.02) as the original)."""
    if SMOKE:
        overrides = {"num_hidden_layers": 2, "hidden_size": 128, "num_attention_heads": 2, **overrides}
    config = glm_hf.GLMConfig.from_preset(preset, **overrides)
    torch.manual_seed(0)
    with torch.device(device):
        model = glm_hf.GLMForConditionalGeneration._from_config(config, dtype=dtype, attn_implementation="sdpa")
    return model.eval()


def blank_prompt(model: glm_hf.GLMForConditionalGeneration, batch: int, length: int) -> dict:
    """`[CLS] text [MASK] text [eos] [sop]`: Part A of `length - 1` tokens, [sop] at the mask's position."""
    config = model.config
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(1000, config.vocab_size - 1000, (batch, length), generator=generator)
    mask_column = length // 2
    ids[:, 0], ids[:, mask_column], ids[:, -2], ids[:, -1] = (
        config.cls_token_id,
        config.mask_token_id,
        config.eos_token_id,
        config.sop_token_id,
    )
    positions = torch.arange(length).expand(batch, -1).clone()
    positions[:, -1] = mask_column
    blocks = torch.zeros_like(positions)
    blocks[:, -1] = 1
    device = model.device
    return {
        "input_ids": ids.to(device),
        "position_ids": positions.to(device),
        "block_position_ids": blocks.to(device),
        "prefix_length": length - 1,
    }


def chatglm_prompt(model: glm_hf.GLMForConditionalGeneration, batch: int, length: int) -> dict:
    """`text [gMASK] <sop>` of `length` tokens: ChatGLM reads positions and context from these ids."""
    config = model.config
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(1000, min(config.vocab_size - 1000, 30000), (batch, length), generator=generator)
    ids[:, -2], ids[:, -1] = config.gmask_token_id, config.sop_token_id
    return {"input_ids": ids.to(model.device)}


def graph_rate(model, replays: int = 64) -> float:
    """Decode steps per second of the kept captured step's graph replayed back to back (no host work between):
    the device-side speed of a step. Each replay writes the column after the step's last one (its `column` counter,
    where the last run that decoded left it), so the replays stop at the cache's capacity."""
    if model.kept_static_cache is None:  # the CPU default: the dynamic cache
        return float("nan")
    cache = model.kept_static_cache[-1]
    step = model.decode_steps.get(cache)
    if step is None or step.graph is None:
        return float("nan")
    replays = min(replays, cache.get_max_length() - int(step.column))
    synchronize(str(model.device.type))
    start = time.perf_counter()
    for _ in range(replays):
        step.graph.replay()
    synchronize(str(model.device.type))
    return replays / (time.perf_counter() - start)


def first_difference(model, inputs: dict, new_tokens: int, options: dict, baseline: dict) -> str:
    """Where greedy tokens of two paths first differ ("equal" when they never do), with the baseline's top-2 logit
    margin at that step (a near-tie when small)."""
    settings = {"do_sample": False, "eos_token_id": None, "max_new_tokens": new_tokens, "min_new_tokens": new_tokens}
    with torch.no_grad():
        tokens = model.generate(**inputs, **settings, **options)
        reference = model.generate(**inputs, **settings, **baseline, return_dict_in_generate=True, output_logits=True)
    start = inputs["input_ids"].shape[1]
    differ = (tokens[0, start:] != reference.sequences[0, start:]).nonzero()
    if not len(differ):
        return f"equal over {new_tokens} tokens"
    index = int(differ[0])
    top = reference.logits[index][0].topk(2).values
    return f"first differ at new token {index} (top-2 logit margin there {float(top[0] - top[1]):.3g})"


def generate_seconds(model, inputs: dict, new_tokens: int, **options) -> float:
    settings = {"do_sample": False, "eos_token_id": None, "max_new_tokens": new_tokens, "min_new_tokens": new_tokens}
    synchronize(str(model.device.type))
    start = time.perf_counter()
    with torch.no_grad():
        model.generate(**inputs, **settings, **options)
    synchronize(str(model.device.type))
    return time.perf_counter() - start


def decode_rate(model, inputs: dict, new_tokens: int, repeats: int = 2, **options) -> tuple[float, float]:
    """(decode tokens/s for the whole batch, seconds of the first call: warm-up and compilation)."""
    first = generate_seconds(model, inputs, new_tokens, **options)
    generate_seconds(model, inputs, new_tokens, **options)
    rates = []
    for _ in range(repeats):
        long, short = (
            generate_seconds(model, inputs, new_tokens, **options),
            generate_seconds(model, inputs, 1, **options),
        )
        rates.append((new_tokens - 1) * inputs["input_ids"].shape[0] / max(long - short, 1e-9))
    return sorted(rates)[len(rates) // 2], first


class Run:
    """Collects target lines and table rows; each target runs inside `target()` so that one failure is reported
    and the others still run."""

    def __init__(self, device: str, dtype: torch.dtype, bandwidth: float) -> None:
        self.device, self.dtype, self.bandwidth = device, dtype, bandwidth
        self.rows: list[str] = []
        self.lines: list[str] = []

    def target(self, name: str, body: Callable[[], str], limit: int = TARGET_SECONDS) -> None:
        start = time.perf_counter()

        def too_long(signum: int, frame: object) -> None:
            raise TimeoutError(f"still running after {limit} s")

        signal.signal(signal.SIGALRM, too_long)
        signal.alarm(limit)
        try:
            line = f"TARGET {name}: {body()} ({time.perf_counter() - start:.0f} s)"
        except Exception as error:  # noqa: BLE001 (report and go on with the next target)
            traceback.print_exc()
            line = f"TARGET {name}: FAILED {type(error).__name__}: {str(error)[:300]}"
        finally:
            signal.alarm(0)
        print(line, flush=True)
        self.lines.append(line)
        # Whatever of the target's is left in a reference cycle (torch.compile's caches, a traceback) is collected only
        # by the cyclic GC, which must run before the allocator can give its memory back.
        gc.collect()
        torch.cuda.empty_cache() if self.device == "cuda" else None

    def fraction(self, model, rate: float) -> float:
        return parameter_bytes(model) * rate / self.bandwidth


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", nargs="+", default=list(TARGETS), choices=TARGETS + OPTIONAL_TARGETS)
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--output", type=Path, nargs="?", const=Path(__file__).parent / "RESULTS.md")
    args = parser.parse_args()
    device = "cpu" if SMOKE else "cuda"
    dtype = torch.float32 if SMOKE else torch.float16
    new_tokens = 8 if SMOKE else args.new_tokens
    prompt = 16 if SMOKE else args.prompt
    bandwidth = read_bandwidth(device, gib=0.125 if SMOKE else 1.0)
    run = Run(device, dtype, bandwidth)
    print(
        f"torch {torch.__version__}, transformers {__import__('transformers').__version__}, device {device}",
        flush=True,
    )
    if device == "cuda":
        print(f"GPU {torch.cuda.get_device_name()}, read bandwidth {bandwidth / 1e12:.2f} TB/s", flush=True)
    results: dict[str, float] = {}

    def default() -> str:
        """glm-2b batch 1 with no flags (on CUDA: the kept static cache and the captured step), against the eager
        dynamic-cache loop (`cache_implementation="dynamic"`) in the same run; fp16 tokens of both compared."""
        model = build("glm-2b", device, dtype)
        inputs = blank_prompt(model, 1, prompt)
        rate, first = decode_rate(model, inputs, new_tokens)
        eager, _ = decode_rate(model, inputs, new_tokens, repeats=1, cache_implementation="dynamic")
        results["b1"] = rate
        graph = graph_rate(model)
        divergence = first_difference(model, inputs, new_tokens, {}, {"cache_implementation": "dynamic"})
        fraction = run.fraction(model, rate)
        run.rows.append(f"| glm-2b, default `generate()` | 1 | {rate:.1f} | {fraction:.2f} | first call {first:.1f} "
                        f"s; {rate / eager:.1f}x the eager dynamic-cache loop ({eager:.1f} tok/s, "
                        f"{run.fraction(model, eager):.2f}); graph replays alone {run.fraction(model, graph):.2f}; "
                        f"fp16 tokens vs eager: {divergence} |")  # fmt: skip
        return (f"glm-2b default {rate:.1f} tok/s = {fraction:.2f} of the bound (target 0.3); {rate / eager:.1f}x "
                f"eager dynamic {eager:.1f}; graph alone {run.fraction(model, graph):.2f}; first call {first:.1f} s; "
                f"fp16 vs eager: {divergence}")  # fmt: skip

    def captured_target(preset: str, target: float, with_default: bool = False, mode: str | None = None) -> str:
        """Batch-1 decoding with the compiled, captured step: `cache_implementation="static"`, compiled in torch
        compile's `mode` (and the default path, captured without compiling, when `with_default`)."""
        model = build(preset, device, dtype)
        inputs = blank_prompt(model, 1, prompt)
        options: dict = {"cache_implementation": "static"}
        if mode is not None:
            options["compile_config"] = CompileConfig(fullgraph=True, dynamic=False, mode=mode)
        rate, first = decode_rate(model, inputs, new_tokens, **options)
        graph = graph_rate(model)
        fraction = run.fraction(model, rate)
        compiled = "compiled" if mode is None else f"compiled in mode {mode!r}"
        run.rows.append(f"| {preset}, `cache_implementation=\"static\"` ({compiled}, captured) | 1 | {rate:.1f} | "
                        f"{fraction:.2f} | first call {first:.1f} s; graph replays alone "
                        f"{run.fraction(model, graph):.2f} |")  # fmt: skip
        label = "static" if mode is None else f"static {mode}"
        summary = f"{preset} {label} {rate:.1f} tok/s = {fraction:.2f} of the bound (target {target})"
        summary += f"; graph alone {run.fraction(model, graph):.2f}; first call {first:.1f} s"
        if with_default:
            plain, plain_first = decode_rate(model, inputs, new_tokens)
            run.rows.append(f"| {preset}, default `generate()` | 1 | {plain:.1f} | {run.fraction(model, plain):.2f} | "
                            f"first call {plain_first:.1f} s |")  # fmt: skip
            summary += f"; default {plain:.1f} tok/s = {run.fraction(model, plain):.2f}"
        return summary

    def captured() -> str:
        return captured_target("glm-2b", 0.6)

    def batch16() -> str:
        model = build("glm-2b", device, dtype)
        rate, _ = decode_rate(model, blank_prompt(model, 16, prompt), new_tokens)
        ratio = rate / results["b1"] if "b1" in results else float("nan")
        run.rows.append(f"| glm-2b, default, batch 16 (total) | 16 | {rate:.1f} | | {ratio:.1f}x batch 1 |")
        return f"glm-2b batch 16 {rate:.1f} tok/s in all = {ratio:.1f}x batch 1 (target 10x)"

    def glm10b() -> str:
        return captured_target("glm-10b", 0.8, with_default=True)

    def captured_autotune() -> str:
        return captured_target("glm-2b", 0.6, mode="max-autotune")

    def infill() -> str:
        tokenizer = default_model_and_tokenizer()[1]
        model = build("glm-large", device, dtype, vocab_size=len(tokenizer), **token_ids(tokenizer))
        words = [word for word in tokenizer.get_vocab() if word.isalpha() and len(word) > 3][:500]
        torch.manual_seed(2)

        def text() -> str:
            chosen = [words[int(i)] for i in torch.randint(len(words), (int(torch.randint(12, 40, (1,))),))]
            for position in sorted(torch.randint(1, len(chosen), (2,)).tolist(), reverse=True):
                chosen.insert(position, "[MASK]")
            return " ".join(chosen)

        texts = [text() for _ in range(4 if SMOKE else 32)]
        options = {"max_new_tokens": 8, "do_sample": False}
        glm_hf.fill_blanks(model, tokenizer, texts[:2], batch_size=2, **options)  # warm-up
        synchronize(device)
        start = time.perf_counter()
        glm_hf.fill_blanks(model, tokenizer, texts, batch_size=16, **options)
        synchronize(device)
        batched = time.perf_counter() - start
        start = time.perf_counter()
        for single in texts:
            glm_hf.fill_blanks(model, tokenizer, single, **options)
        synchronize(device)
        one_by_one = time.perf_counter() - start
        ratio = one_by_one / batched
        run.rows.append(f"| `fill_blanks`, {len(texts)} texts x 2 blanks x 8 tokens, glm-large | 16 | | | "
                        f"{batched:.2f} s batched vs {one_by_one:.2f} s one by one: **{ratio:.1f}x** |")  # fmt: skip
        return f"fill_blanks batch 16 {ratio:.1f}x one by one (target 5x)"

    def greedy_equal() -> str:
        """fp32 greedy tokens of the default (captured) step and the compiled one against the eager dynamic loop."""
        model = build("glm-2b", device, torch.float32, num_hidden_layers=4)
        inputs = blank_prompt(model, 1, prompt)
        settings = {"do_sample": False, "eos_token_id": None, "max_new_tokens": 32, "min_new_tokens": 32}
        with torch.no_grad():
            eager = model.generate(**inputs, cache_implementation="dynamic", **settings)
            default = model.generate(**inputs, **settings)
            static = model.generate(**inputs, cache_implementation="static", **settings)
        same = bool(torch.equal(eager, default)) and bool(torch.equal(eager, static))
        run.rows.append(f"| greedy tokens, default and compiled captured steps vs the eager loop, fp32 | 1 | | | "
                        f"{'equal' if same else 'DIFFER'} |")  # fmt: skip
        return f"greedy fp32 default == static == eager dynamic: {same}"

    def chatglm_target(captured_step: bool) -> str:
        """ChatGLM-6B batch 1: the default path (captured), or the compiled step (`cache_implementation="static"`)."""
        model = build("chatglm-6b", device, dtype)
        options = {"cache_implementation": "static"} if captured_step else {}
        rate, first = decode_rate(model, chatglm_prompt(model, 1, prompt), new_tokens, **options)
        fraction = run.fraction(model, rate)
        path = '`cache_implementation="static"` (compiled, captured)' if captured_step else "default `generate()`"
        run.rows.append(f"| chatglm-6b, {path} | 1 | {rate:.1f} | {fraction:.2f} | first call {first:.1f} s |")
        label = "captured" if captured_step else "default"
        return f"chatglm-6b {label} {rate:.1f} tok/s = {fraction:.2f} of the bound"

    bodies = {"default": default, "captured": captured, "batch16": batch16, "glm10b": glm10b, "infill": infill,
              "greedy-equal": greedy_equal, "chatglm": lambda: chatglm_target(False),
              "chatglm-captured": lambda: chatglm_target(True), "captured-autotune": captured_autotune}  # fmt: skip
    for name in args.targets:
        run.target(name, bodies[name], limit=OPTIONAL_TARGET_SECONDS if name in OPTIONAL_TARGETS else TARGET_SECONDS)

    body = "\n".join(
        [
            f"{'CPU smoke run (tiny shapes)' if SMOKE else torch.cuda.get_device_name()}; torch {torch.__version__}, "
            f"transformers {__import__('transformers').__version__}; {dtype}, prompt {prompt} tokens (Part A + "
            f"[sop]), {new_tokens} new tokens, greedy; read bandwidth {bandwidth / 1e9:.0f} GB/s (1 GiB summed).",
            "",
            "| workload | batch | decode tok/s | fraction of the bound | notes |",
            "|---|---|---|---|---|",
            *run.rows,
            "",
            "Target lines of the run (`benchmarks/run_gpu.sh`):",
            "",
            *[f"- {line}" for line in run.lines],
        ]
    )
    print(body)
    if args.output is not None and SMOKE:
        print(f"(smoke run: {args.output} left as it is)")
    elif args.output is not None:
        update_section(args.output, TITLE, body)
    out = os.environ.get("OUT")
    if out:
        Path(out, "gpu_results.json").write_text(json.dumps({"lines": run.lines, "rows": run.rows}, indent=1))


def token_ids(tokenizer) -> dict[str, int | None]:
    """The special token ids of a GLM tokenizer, as config fields."""
    names = ("pad", "eos", "cls", "sep", "mask", "unk", "sop", "eop", "bos")
    return {f"{name}_token_id": getattr(tokenizer, f"{name}_token_id", None) for name in names}


if __name__ == "__main__":
    main()
