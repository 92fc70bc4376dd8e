"""Host work per decode step: the CPU proxy of GPU decoding overhead, against a baseline revision in the same run.

On a GPU, a glm-2b decode step reads 3.84 GB of weights in ~1 ms, so the Python and dispatcher work around the
kernels decides the speed. A model of glm-2b's depth (36 layers) at width 64 has almost no arithmetic: its eager
decode step on one CPU thread is that host work. Reported, for this checkout and for `--baseline` (a git revision,
run from `git archive`), each probed in fresh subprocesses that take turns for `--rounds` rounds:

- ATen operators dispatched per layer and per step outside the layers (counted with a `TorchDispatchMode`; exact,
  the same on every machine);
- the host time of one `generate()` decode step, `(t(N) - t(1)) / (N - 1)` over N new tokens, each t the fastest
  of the repeats (interleaved), then the fastest of the rounds: on a shared machine other processes only ever add
  time, so the minimum is the stablest estimate (a median of differences swung by 2x between runs there, and the
  machine's speed drifts by a quarter over minutes);
- the host time of the same step made of bare ATen calls over the same weights (no modules, cache object or
  generation loop), in inference mode as `generate()` decodes a plain run, taking its turn in each round (the
  fastest round): the floor that no eager model of these operators can go under.

Usage:
    PYTHONPATH=src python benchmarks/bench_host_overhead.py [--baseline d81a4e1] [--rounds 3] [--output]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

ROOT = Path(__file__).resolve().parents[1]
TITLE = "Host overhead per decode step (cpu)"


class OpCounter(TorchDispatchMode):
    """Counts the ATen operators dispatched while it is active."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001 (torch's signature)
        self.count += 1
        return func(*args, **(kwargs or {}))


def build(layers: int, width: int):
    import glm_hf

    no_tokens = dict.fromkeys(("pad", "eos", "bos", "sop", "eop", "mask", "cls", "sep", "unk"), None)
    config = glm_hf.GLMConfig(
        vocab_size=1024,
        hidden_size=width,
        num_hidden_layers=layers,
        num_attention_heads=max(1, width // 64),
        max_position_embeddings=1025,
        **{f"{name}_token_id": value for name, value in no_tokens.items()},
    )
    torch.manual_seed(0)
    return glm_hf.GLMForConditionalGeneration._from_config(config, attn_implementation="sdpa").eval()


def prompt(length: int) -> dict[str, torch.Tensor]:
    """A blank-infilling prompt: Part A, then [sop] at the mask's position (block position 1)."""
    input_ids = torch.randint(0, 1024, (1, length))
    position_ids = torch.arange(length).unsqueeze(0)
    position_ids[0, -1] = length // 2
    block_position_ids = torch.zeros_like(position_ids)
    block_position_ids[0, -1] = 1
    return {
        "input_ids": input_ids,
        "position_ids": position_ids,
        "block_position_ids": block_position_ids,
        "prefix_length": length - 1,
    }


def ops_of_one_step(layers: int, width: int) -> int:
    """Operators dispatched by one decode-step forward (a cached prompt, one new token) of a `layers`-deep model."""
    model = build(layers, width)
    inputs = prompt(64)
    with torch.no_grad():
        cache = model(**inputs, use_cache=True)[1]  # the cache (its field's name changed in transformers 5.24)
        step = {
            "input_ids": torch.tensor([[5]]),
            "position_ids": inputs["position_ids"][:, -1:],
            "block_position_ids": inputs["block_position_ids"][:, -1:] + 1,
            "prefix_length": inputs["prefix_length"],
            "logits_to_keep": 1,
        }
        # As in a generate() run, which checks the positions once up front (older revisions: a flag on the model).
        flags = getattr(model.glm, "run_flags", model.glm)
        if hasattr(flags, "begin"):
            flags.begin()
        flags.positions_prechecked = True
        flags.run_cache = cache  # the forwards it covers: those on the run's cache (since a1a5dec)
        with OpCounter() as counter:
            model(**step, past_key_values=cache, use_cache=True)
    return counter.count


def step_seconds(layers: int, width: int, prompt_length: int, new_tokens: int, repeats: int) -> float:
    """Host seconds of one `generate()` decode step (1 thread, eager, greedy), from the fastest of `repeats` runs."""
    model = build(layers, width)
    inputs = prompt(prompt_length)
    settings = {"do_sample": False}

    def run(tokens: int) -> float:
        start = time.perf_counter()
        with torch.no_grad():
            model.generate(**inputs, max_new_tokens=tokens, min_new_tokens=tokens, **settings)
        return time.perf_counter() - start

    run(new_tokens)  # warm-up
    long_runs, short_runs = [], []
    for _ in range(repeats):
        long_runs.append(run(new_tokens))
        short_runs.append(run(1))
    return (min(long_runs) - min(short_runs)) / (new_tokens - 1)


def measure(layers: int, width: int, prompt_length: int, new_tokens: int, repeats: int) -> dict[str, float]:
    torch.set_num_threads(1)
    one, two = ops_of_one_step(layers, width), ops_of_one_step(2 * layers, width)
    per_layer = (two - one) / layers
    return {
        "ops_per_layer": per_layer,
        "ops_outside_layers": one - per_layer * layers,
        "ops_per_step": one,
        "step_ms": 1000 * step_seconds(layers, width, prompt_length, new_tokens, repeats),
    }


def bare_step_seconds(layers: int, width: int, prompt_length: int, new_tokens: int, repeats: int) -> float:
    """Host seconds of one greedy decode step made of the same ATen calls as the model's, over its weights, with no
    module, cache object or generation loop around them: what eager PyTorch costs at the least for this step (the
    floor under any Python the model keeps)."""
    model = build(layers, width)
    glm, heads = model.glm, model.config.num_attention_heads
    blocks = [
        (
            block.input_layernorm,
            block.attention.query_key_value,
            block.attention.dense,
            block.post_attention_layernorm,
            block.mlp.dense_h_to_4h,
            block.mlp.dense_4h_to_h,
        )
        for block in glm.layers
    ]
    columns = prompt_length + new_tokens
    keys = [torch.randn(1, heads, columns, width // heads) for _ in blocks]
    values = [torch.randn(1, heads, columns, width // heads) for _ in blocks]
    position = torch.tensor([[prompt_length // 2]])
    functional = torch.nn.functional

    def norm(layer: torch.nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
        return functional.layer_norm(x, layer.normalized_shape, layer.weight, layer.bias, layer.eps)

    def step(token: torch.Tensor, column: int) -> torch.Tensor:
        block_position = torch.tensor([[column - prompt_length + 2]])
        hidden = (
            glm.word_embeddings.weight[token]
            + glm.embed_positions.position_embeddings.weight[position]
            + glm.embed_positions.block_position_embeddings.weight[block_position]
        )
        for (ln1, qkv, dense, ln2, up, down), key, value in zip(blocks, keys, values, strict=True):
            query, new_key, new_value = (
                functional.linear(norm(ln1, hidden), qkv.weight, qkv.bias)
                .view(1, 1, 3, heads, -1)
                .permute(2, 0, 3, 1, 4)
                .unbind(0)
            )
            key.narrow(-2, column, 1).copy_(new_key)
            value.narrow(-2, column, 1).copy_(new_value)
            attended = functional.scaled_dot_product_attention(
                query, key.narrow(-2, 0, column + 1), value.narrow(-2, 0, column + 1)
            )
            hidden = hidden + functional.linear(attended.transpose(1, 2).reshape(1, 1, -1), dense.weight, dense.bias)
            inner = functional.gelu(functional.linear(norm(ln2, hidden), up.weight, up.bias), approximate="tanh")
            hidden = hidden + functional.linear(inner, down.weight, down.bias)
        return functional.linear(norm(glm.final_layernorm, hidden), model.lm_head.weight).argmax(-1)

    def run(tokens: int) -> float:
        start = time.perf_counter()
        token = torch.tensor([[5]])
        for column in range(prompt_length, prompt_length + tokens):
            token = step(token, column)
        return time.perf_counter() - start

    with torch.inference_mode():
        run(new_tokens)  # warm-up
        return min(run(new_tokens) for _ in range(repeats)) / new_tokens


@contextmanager
def revision_source(revision: str) -> Iterator[Path]:
    """The `src/` folder of a git revision, extracted with `git archive` into a temporary folder."""
    with tempfile.TemporaryDirectory() as folder:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", revision, "src"], capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", folder], input=archive.stdout, check=True)
        yield Path(folder) / "src"


def probe(source: Path) -> dict[str, float]:
    """`measure` run on the package in `source`, in a fresh subprocess."""
    env = {**os.environ, "PYTHONPATH": str(source)}
    command = [sys.executable, __file__, "--probe", *sys.argv[1:]]
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=36, help="depth (glm-2b's: 36)")
    parser.add_argument("--width", type=int, default=64, help="hidden size: 64 leaves only the host work")
    parser.add_argument("--prompt", type=int, default=128, help="prompt tokens")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per probe")
    parser.add_argument("--rounds", type=int, default=3, help="probes per revision, the revisions taking turns")
    parser.add_argument("--baseline", default="d81a4e1", help="git revision to compare with ('' to skip)")
    parser.add_argument("--output", type=Path, nargs="?", const=ROOT / "benchmarks" / "RESULTS.md")
    parser.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)  # internal: print this tree's JSON
    args = parser.parse_args()
    if args.probe:
        print(json.dumps(measure(args.layers, args.width, args.prompt, args.new_tokens, args.repeats)))
        return
    with ExitStack() as stack:
        sources = {"this checkout": ROOT / "src"}
        if args.baseline:
            sources = {f"baseline `{args.baseline}`": stack.enter_context(revision_source(args.baseline)), **sources}
        # The machine's speed drifts (other jobs on a shared host): the revisions take turns, round after round,
        # and each keeps its fastest round.
        probes: dict[str, list[dict[str, float]]] = {name: [] for name in sources}
        bare_runs: list[float] = []  # the bare calls take their turn in each round too
        for _ in range(args.rounds):
            for name, source in sources.items():
                probes[name].append(probe(source))
            bare_runs.append(bare_step_seconds(args.layers, args.width, args.prompt, args.new_tokens, args.repeats))
    rows = [(name, min(runs, key=lambda run: run["step_ms"])) for name, runs in probes.items()]
    bare_ms = 1000 * min(bare_runs)
    lines = [
        f"{args.layers} layers, width {args.width}, prompt {args.prompt} + {args.new_tokens} new tokens, greedy, "
        "eager SDPA, 1 thread, fp32; ops counted on one decode-step forward (a `TorchDispatchMode`).",
        "",
        "| code | ATen ops per layer | ops outside the layers | ops per step | host ms per decode step |",
        "|---|---|---|---|---|",
    ]
    for name, values in rows:
        lines.append(
            f"| {name} | {values['ops_per_layer']:.0f} | {values['ops_outside_layers']:.0f} | "
            f"{values['ops_per_step']:.0f} | {values['step_ms']:.2f} |"
        )
    lines.append(f"| the same ATen calls bare (no modules, cache object or generation loop) | | | | {bare_ms:.2f} |")
    if len(rows) == 2:
        ratio = rows[0][1]["step_ms"] / rows[1][1]["step_ms"]
        floor = rows[0][1]["step_ms"] / bare_ms
        baseline_runs, checkout_runs = probes.values()
        per_round = [old["step_ms"] / new["step_ms"] for old, new in zip(baseline_runs, checkout_runs, strict=True)]
        lines += [
            "",
            f"Host time per step: **{ratio:.2f}x** less than the baseline (target: 2x; fastest round of each, "
            f"{args.rounds} rounds taking turns; round by round {min(per_round):.2f}-{max(per_round):.2f}x); the "
            f"bare calls, {floor:.2f}x less: the most an eager step of these operators could gain.",
        ]
    body = "\n".join(lines)
    print(body)
    if args.output is not None:
        sys.path.insert(0, str(Path(__file__).parent))
        from _timing import update_section

        update_section(args.output, TITLE, body)


if __name__ == "__main__":
    main()
