"""`glm-hf infill`: read texts (arguments, .txt or .jsonl), fill their blanks in batches, print or write .jsonl."""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .infilling import fill_blanks


def read_texts(path: Path) -> list[str]:
    """Texts of a .txt file (one per non-empty line) or a .jsonl file (a "text" field per line)."""
    if not path.is_file():
        raise FileNotFoundError(f"--input {path} does not exist.")
    texts = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            if path.suffix == ".jsonl":
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as error:
                    raise ValueError(f"{path}:{number}: not valid JSON ({error.msg}).") from None
                if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                    raise ValueError(f'{path}:{number}: expected an object with a string "text" field.')
                texts.append(record["text"])
            else:
                texts.append(line.rstrip("\n"))
    if not texts:
        raise ValueError(f"--input {path} holds no text.")
    return texts


def load_model(folder: Path | None) -> tuple[Any, Any]:
    """The model and tokenizer of a folder, or the embedded default."""
    if folder is None:
        from .demo import default_model_and_tokenizer

        return default_model_and_tokenizer()
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"--model {folder} has no config.json: not a model folder.")
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError) as error:
        raise FileNotFoundError(f"--model {folder} has no usable tokenizer files ({error}).") from None
    return AutoModelForSeq2SeqLM.from_pretrained(folder).eval(), tokenizer


def generation_options(args: argparse.Namespace) -> dict[str, Any]:
    options: dict[str, Any] = {"max_new_tokens": args.max_new_tokens, "num_beams": args.num_beams}
    options["do_sample"] = args.do_sample
    for name in ("top_k", "top_p", "temperature"):
        if getattr(args, name) is not None:
            options[name] = getattr(args, name)
    return options


def batches(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def run_infill(args: argparse.Namespace) -> None:
    if bool(args.texts) == (args.input is not None):
        raise ValueError("Give texts as arguments or one --input file, not both or neither.")
    if args.batch_size < 1:
        raise ValueError("--batch-size must be at least 1.")
    if args.output is not None and args.output.exists() and not args.overwrite:
        raise FileExistsError(f"--output {args.output} already exists; pass --overwrite to replace it.")
    texts = read_texts(args.input) if args.input is not None else args.texts
    model, tokenizer = load_model(args.model)
    if args.seed is not None:
        torch.manual_seed(args.seed)
    options = generation_options(args)

    records = []
    progress = tqdm(total=len(texts), desc="Filling", unit="text", disable=args.input is None)
    for batch in batches(texts, args.batch_size):
        for text, result in zip(batch, fill_blanks(model, tokenizer, batch, **options), strict=True):
            records.append({"text": text, "filled_text": result.text, "spans": result.spans})
        progress.update(len(batch))
    progress.close()

    if args.output is None:
        for record in records:
            print(record["filled_text"])
        return
    args.output.parent.mkdir(parents=True, exist_ok=True)
    descriptor, staging = tempfile.mkstemp(prefix=f".{args.output.name}.", dir=args.output.parent)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            for record in records:
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        os.replace(staging, args.output)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise
    print(f"wrote {len(records)} filled texts to {args.output}")
