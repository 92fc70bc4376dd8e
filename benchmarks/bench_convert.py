"""Peak memory of `glm-hf convert` against the size of the checkpoint it converts.

Writes a synthetic fp16 checkpoint in the released layout (`latest_checkpointed_iteration.txt` + `<iter>/mp_rank_XX_
model_states.pt`, with the numpy RNG state GLM saves beside `module`) of about `--size-gb` GB (glm-2b's width, as many
layers as fit), then converts it twice, each in a fresh subprocess whose peak RSS is read from `getrusage`:

- glm-hf: `convert_checkpoint` (memory-mapped shards, one tensor at a time, streaming safetensors writer);
- baseline: the obvious script, `torch.load` everything into RAM, rename, `safetensors.torch.save_file`.

With `--chatglm`, the checkpoint is a ChatGLM-6B folder instead (config.json, `pytorch_model-0000N-of-00008.bin`
shards and their index, fp16, ChatGLM-6B's width, vocabulary and per-head `query_key_value` rows, as many layers as
fit), converted by glm-hf only (the baseline would need ChatGLM's names).

Usage:
    PYTHONPATH=src python benchmarks/bench_convert.py --size-gb 0.5 2 [--mp 1] [--workdir /tmp/glm-bench] [--output]
    PYTHONPATH=src python benchmarks/bench_convert.py --chatglm --size-gb 4 [--output]

Prints each peak RSS (as the job itself reads it: VmHWM in /proc/self/status), its ratio to the checkpoint size,
the same above the RSS of an interpreter that only imports torch, transformers and glm_hf, and baseline / glm-hf.
The default checkpoint has 2 model-parallel shards, so that merging (which the baseline does in memory) counts.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from _timing import RESULTS, machine_lines, markdown_table, update_section

from glm_hf.conversion.merge import split_partitions

HIDDEN = 2048
VOCAB = 50304
POSITIONS = 1025


def synthetic_backbone(num_layers: int) -> OrderedDict[str, torch.Tensor]:
    """Random fp16 tensors with the original GLM names and glm-2b's widths."""
    generator = torch.Generator().manual_seed(0)

    def tensor(*shape: int) -> torch.Tensor:
        return (torch.randn(*shape, generator=generator) * 0.02).to(torch.float16)

    module: OrderedDict[str, torch.Tensor] = OrderedDict()
    module["word_embeddings.weight"] = tensor(VOCAB, HIDDEN)
    module["transformer.position_embeddings.weight"] = tensor(POSITIONS, HIDDEN)
    module["transformer.block_position_embeddings.weight"] = tensor(POSITIONS, HIDDEN)
    for layer in range(num_layers):
        prefix = f"transformer.layers.{layer}."
        shapes = {
            "input_layernorm": (HIDDEN,),
            "attention.query_key_value": (3 * HIDDEN, HIDDEN),
            "attention.dense": (HIDDEN, HIDDEN),
            "post_attention_layernorm": (HIDDEN,),
            "mlp.dense_h_to_4h": (4 * HIDDEN, HIDDEN),
            "mlp.dense_4h_to_h": (HIDDEN, 4 * HIDDEN),
        }
        for name, shape in shapes.items():
            module[f"{prefix}{name}.weight"] = tensor(*shape)
            module[f"{prefix}{name}.bias"] = tensor(shape[0])
    module["transformer.final_layernorm.weight"] = tensor(HIDDEN)
    module["transformer.final_layernorm.bias"] = tensor(HIDDEN)
    return module


def write_checkpoint(folder: Path, size_gb: float, mp: int) -> int:
    """A released-layout checkpoint of about `size_gb` GB; returns its size in bytes."""
    per_layer = 2 * (12 * HIDDEN * HIDDEN + 13 * HIDDEN)
    fixed = 2 * (VOCAB + 2 * POSITIONS) * HIDDEN
    num_layers = max(1, round((size_gb * 1e9 - fixed) / per_layer))
    module = synthetic_backbone(num_layers)
    (folder / "1000").mkdir(parents=True)
    (folder / "latest_checkpointed_iteration.txt").write_text("1000")
    shards: list[OrderedDict[str, torch.Tensor]] = [OrderedDict() for _ in range(mp)]
    for name in list(module):
        for rank, part in enumerate(split_partitions(name, module.pop(name), mp)):
            shards[rank][name] = part
    for rank, shard in enumerate(shards):
        contents = {"module": shard, "mp_world_size": mp, "iteration": 1000, "np_rng_state": np.random.get_state()}
        torch.save(contents, folder / "1000" / f"mp_rank_{rank:02d}_model_states.pt")
    return sum(file.stat().st_size for file in (folder / "1000").iterdir())


CHATGLM_HIDDEN, CHATGLM_INNER, CHATGLM_VOCAB, CHATGLM_SHARDS = 4096, 16384, 130528, 8


def write_chatglm_folder(folder: Path, size_gb: float) -> int:
    """A ChatGLM-6B folder of about `size_gb` GB (fp16, 8 shards + index, release config keys); returns its bytes."""
    hidden, inner = CHATGLM_HIDDEN, CHATGLM_INNER
    per_layer = 2 * (4 * hidden * hidden + 2 * hidden * inner + 9 * hidden + inner)
    fixed = 2 * 2 * CHATGLM_VOCAB * hidden  # word embeddings and lm_head
    num_layers = max(1, round((size_gb * 1e9 - fixed) / per_layer))
    generator = torch.Generator().manual_seed(0)

    def tensor(*shape: int) -> torch.Tensor:
        return (torch.randn(*shape, generator=generator) * 0.02).to(torch.float16)

    shapes = {"transformer.word_embeddings.weight": (CHATGLM_VOCAB, hidden)}
    for layer in range(num_layers):
        prefix = f"transformer.layers.{layer}."
        for name, rows, columns in (
            ("input_layernorm", hidden, 0),
            ("attention.query_key_value", 3 * hidden, hidden),
            ("attention.dense", hidden, hidden),
            ("post_attention_layernorm", hidden, 0),
            ("mlp.dense_h_to_4h", inner, hidden),
            ("mlp.dense_4h_to_h", hidden, inner),
        ):
            shapes[f"{prefix}{name}.weight"] = (rows, columns) if columns else (rows,)
            shapes[f"{prefix}{name}.bias"] = (rows,)
    shapes |= {"transformer.final_layernorm.weight": (hidden,), "transformer.final_layernorm.bias": (hidden,)}
    shapes["lm_head.weight"] = (CHATGLM_VOCAB, hidden)
    folder.mkdir(parents=True)
    config = {
        "model_type": "chatglm",
        "vocab_size": CHATGLM_VOCAB,
        "hidden_size": hidden,
        "num_layers": num_layers,
        "num_attention_heads": 32,
        "inner_hidden_size": inner,
        "layernorm_epsilon": 1e-5,
        "max_sequence_length": 2048,
        "position_encoding_2d": True,
        "bos_token_id": 130004,
        "eos_token_id": 130005,
        "mask_token_id": 130000,
        "gmask_token_id": 130001,
        "pad_token_id": 3,
        "torch_dtype": "float16",
    }
    (folder / "config.json").write_text(json.dumps(config))
    names = list(shapes)
    weight_map = {}
    for index in range(CHATGLM_SHARDS):  # contiguous runs of keys per shard, as save_pretrained splits them
        part = names[index * len(names) // CHATGLM_SHARDS : (index + 1) * len(names) // CHATGLM_SHARDS]
        file = f"pytorch_model-{index + 1:05d}-of-{CHATGLM_SHARDS:05d}.bin"
        torch.save({name: tensor(*shapes[name]) for name in part}, folder / file)
        weight_map |= dict.fromkeys(part, file)
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return sum(file.stat().st_size for file in folder.glob("*.bin"))


# VmHWM is this address space's own peak (getrusage's ru_maxrss is inherited from the parent across fork + exec).
REPORT_PEAK = """
import re
print(int(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) * 1024)
"""

IMPORT_ONLY_JOB = (
    """
import glm_hf.conversion, safetensors.torch
"""
    + REPORT_PEAK
)

GLM_HF_JOB = (
    """
import sys
from glm_hf.conversion import convert_checkpoint
convert_checkpoint(sys.argv[1], sys.argv[2], show_progress=False, num_attention_heads=int(sys.argv[3]))
"""
    + REPORT_PEAK
)

BASELINE_JOB = (
    """
import sys, pathlib, numpy as np, torch
from safetensors.torch import save_file
from glm_hf.conversion import original_to_hf_state_dict
from glm_hf.conversion.merge import merge_partitions
folder = pathlib.Path(sys.argv[1]) / "1000"
shards = [torch.load(f, map_location="cpu", weights_only=False)["module"] for f in sorted(folder.glob("mp_rank_*"))]
merged = {name: merge_partitions(name, [shard[name] for shard in shards]).contiguous() for name in shards[0]}
pathlib.Path(sys.argv[2]).mkdir()
save_file(original_to_hf_state_dict(merged), str(pathlib.Path(sys.argv[2]) / "model.safetensors"))
"""
    + REPORT_PEAK
)


def peak_rss_of(job: str, source: Path, output: Path) -> tuple[int, float]:
    """Run `job` in a fresh interpreter, which prints its own peak RSS; that figure in bytes and the wall time."""
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-c", job, str(source), str(output), str(HIDDEN // 64)],  # heads: the original's 64-wide
        check=True,
        capture_output=True,
        text=True,
    )
    return int(result.stdout.split()[-1]), time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-gb", type=float, nargs="+", default=[2.0], help="checkpoint size(s) to convert")
    parser.add_argument("--mp", type=int, default=2, help="model-parallel shards of the synthetic checkpoint")
    parser.add_argument("--workdir", type=Path, default=None, help="where to write (default: a temporary folder)")
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--chatglm", action="store_true", help="a ChatGLM-6B folder (glm-hf only)")
    parser.add_argument("--output", type=Path, nargs="?", const=RESULTS, help=f"update this section of {RESULTS.name}")
    args = parser.parse_args(argv)

    header = machine_lines("cpu")[:2]
    for line in header:
        print(line)
    rows = []
    skip_baseline = args.skip_baseline or args.chatglm
    jobs = {"glm-hf": GLM_HF_JOB} if skip_baseline else {"glm-hf": GLM_HF_JOB, "baseline": BASELINE_JOB}
    for size_gb in args.size_gb:
        workdir = Path(tempfile.mkdtemp(prefix="glm-bench-convert-", dir=args.workdir))
        try:
            if args.chatglm:
                size = write_chatglm_folder(workdir / "original", size_gb)
                print(f"checkpoint: {size / 1e9:.2f} GB fp16 ChatGLM-6B folder in {CHATGLM_SHARDS} shards")
            else:
                size = write_checkpoint(workdir / "original", size_gb, args.mp)
                print(f"checkpoint: {size / 1e9:.2f} GB fp16 in {args.mp} shard(s) (glm-2b width)")
            interpreter, _ = peak_rss_of(IMPORT_ONLY_JOB, workdir / "original", workdir / "unused")
            print(f"interpreter with torch + transformers + glm_hf imported: {interpreter / 1e9:.2f} GB")
            results = {}
            for name, job in jobs.items():
                peak, seconds = peak_rss_of(job, workdir / "original", workdir / name)
                results[name] = peak
                print(
                    f"{name}: peak RSS {peak / 1e9:.2f} GB = {peak / size:.2f} x checkpoint size "
                    f"({(peak - interpreter) / size:.2f} x above the interpreter), {seconds:.1f} s"
                )
                shutil.rmtree(workdir / name)
                label = "`glm-hf convert`" if name == "glm-hf" else "baseline: `torch.load` all, merge, `save_file`"
                label += " (ChatGLM-6B folder)" if args.chatglm else ""
                rows.append(
                    [
                        f"{size / 1e9:.2f}",
                        label,
                        f"{peak / 1e9:.2f}",
                        f"**{peak / size:.2f}x**" if name == "glm-hf" else f"{peak / size:.2f}x",
                        f"{(peak - interpreter) / size:.2f}x",
                        f"{seconds:.1f}",
                    ]
                )
            if "baseline" in results:
                print(f"baseline / glm-hf peak RSS: {results['baseline'] / results['glm-hf']:.2f} x")
            print(json.dumps({name: round(peak / size, 3) for name, peak in results.items()}))
        finally:
            shutil.rmtree(workdir, ignore_errors=True)

    if args.output:
        command = "python benchmarks/bench_convert.py " + " ".join(sys.argv[1:] if argv is None else argv)
        checkpoints = (
            f"Synthetic fp16 ChatGLM-6B folders (width {CHATGLM_HIDDEN}, vocabulary {CHATGLM_VOCAB}, "
            f"{CHATGLM_SHARDS} shards and their index)"
            if args.chatglm
            else f"Synthetic fp16 checkpoints of glm-2b's width in the released layout, {args.mp} model-parallel "
            "shard(s) with the numpy RNG state"
        )
        body = (
            f"`{command.strip()}`\n\n"
            + "\n".join(f"- {line}" for line in header)
            + f"\n\n{checkpoints}, each converted in a fresh process; peak RSS is the process's VmHWM. "
            f"The last column subtracts the peak of an interpreter that only imports torch, transformers and glm_hf "
            f"({interpreter / 1e9:.2f} GB).\n\n"
            + markdown_table(
                ["checkpoint GB", "converter", "peak RSS GB", "/ checkpoint size", "above the interpreter", "seconds"],
                rows,
            )
        )
        title = "Converter peak memory (ChatGLM-6B)" if args.chatglm else "Converter peak memory"
        update_section(args.output, title, body)
        print(f"results written to {args.output}")


if __name__ == "__main__":
    main()
