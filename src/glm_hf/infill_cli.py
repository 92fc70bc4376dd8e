"""`glm-hf infill`: read texts (arguments, .txt or .jsonl), fill their blanks in batches, print or write them."""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .blank_infilling import CORPUS_SUFFIXES, read_text_records
from .infilling import (
    InfillingResult,
    check_infilling_model,
    check_span_length,
    fill_blanks,
    length_sorted_batches,
    prepare_blanks,
)
from .progress import bytes_under, is_long_work, transformers_progress_bars

# What `--output` writes, by its extension.
OUTPUT_FORMATS = {
    ".jsonl": "JSON Lines: text, filled_text, spans",
    ".json": "JSON Lines: text, filled_text, spans",
    ".txt": "the filled texts, one per line",
}


def read_texts(path: Path) -> list[str]:
    """Texts of a .txt file (one per non-empty line; blank lines are skipped) or a .jsonl file (a "text" field per
    line)."""
    if not path.is_file():
        raise FileNotFoundError(f"--input {path} does not exist or is not a file.")
    if path.suffix.lower() not in CORPUS_SUFFIXES:
        raise ValueError(f"--input {path}: expected a .txt or .jsonl file.")
    texts = read_text_records(path)
    if not texts:
        raise ValueError(f"--input {path} holds no text.")
    return texts


def resolve_device(name: str) -> torch.device:
    """The device `--device` names: `auto` is the current GPU where CUDA is available, else the CPU; a GPU that
    this machine lacks is refused, naming what it has."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {name}: give cpu, cuda, cuda:N or auto.")
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"--device {name}: this machine has no CUDA device torch can use; pass --device cpu.")
        if device.index is not None and device.index >= count:
            raise ValueError(f"--device {name}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}.")
    return device


def model_dtype(name: str, device: torch.device) -> torch.dtype | str:
    """The dtype `--dtype` names: `auto` is float32 on the CPU (where half-precision matmuls are slow) and the
    checkpoint's own on a GPU."""
    if name != "auto":
        return getattr(torch, name)
    return torch.float32 if device.type == "cpu" else "auto"


def load_model(folder: Path | None, device: torch.device, dtype: torch.dtype | str) -> tuple[Any, Any]:
    """The model and tokenizer of a folder, or the embedded default, on `device` in `dtype`."""
    if folder is None:
        from .default_model import default_model_and_tokenizer

        model, tokenizer = default_model_and_tokenizer(dtype)
        return model.to(device), tokenizer
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    if not folder.is_dir():
        raise FileNotFoundError(f"--model {folder} is not a folder.")
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"--model {folder} has no config.json: not a model folder.")
    model_type = json.loads((folder / "config.json").read_text()).get("model_type")
    if model_type != "glm_blocklm":
        raise ValueError(f"--model {folder} holds model_type {model_type!r}, not a GLM ('glm_blocklm').")
    if not (folder / "tokenizer.json").is_file():
        raise FileNotFoundError(f"--model {folder} has no tokenizer.json (convert with --tokenizer and --vocab-dir).")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    with transformers_progress_bars(is_long_work(bytes_under(folder))):
        model = AutoModelForSeq2SeqLM.from_pretrained(folder, dtype=dtype)
    return model.to(device).eval(), tokenizer


def generation_options(args: argparse.Namespace) -> dict[str, Any]:
    options: dict[str, Any] = {"max_new_tokens": args.max_new_tokens, "num_beams": args.num_beams}
    options["do_sample"] = args.do_sample
    for name in ("top_k", "top_p", "temperature"):
        if getattr(args, name) is not None:
            options[name] = getattr(args, name)
    return options


def check_arguments(args: argparse.Namespace) -> None:
    """Refuse bad options before any model is loaded."""
    if bool(args.texts) == (args.input is not None):
        raise ValueError("Give texts as arguments or one --input file, not both or neither.")
    if args.batch_size < 1 or args.num_beams < 1 or args.max_new_tokens < 1:
        raise ValueError("--batch-size, --num-beams and --max-new-tokens must be at least 1.")
    if args.top_k is not None and args.top_k < 1:
        raise ValueError("--top-k must be at least 1.")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        raise ValueError("--top-p must be in (0, 1].")
    if args.temperature is not None and args.temperature <= 0:
        raise ValueError("--temperature must be positive.")
    resolve_device(args.device)
    if args.output is not None:
        if args.output.is_dir():
            raise ValueError(f"--output {args.output} is a folder; give a .jsonl or .txt file path.")
        if args.output.suffix.lower() not in OUTPUT_FORMATS:
            raise ValueError(
                f"--output {args.output}: give a .jsonl path (a JSON record per text: text, filled_text, spans) or "
                "a .txt path (the filled texts, one per line)."
            )
        if args.output.exists() and not args.overwrite:
            raise FileExistsError(f"--output {args.output} already exists; pass --overwrite to replace it.")


def check_texts(tokenizer: Any, config: Any, texts: list[str], source: Path | None) -> None:
    """Refuse, before any blank is filled, the texts this model cannot fill, naming each (number and start) and why:
    one bad text must not cost the work done on the others, nor be found only when its batch comes."""
    problems = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no mask: appending one" is said again when the text is filled
        for number, text in enumerate(texts, start=1):
            try:
                prepare_blanks(tokenizer, config, text)
            except ValueError as error:
                start = text if len(text) <= 40 else text[:37] + "..."
                problems.append(f"text {number} ({start!r}): {error}")
    if problems:
        where = f" of {source}" if source is not None else ""
        shown = "\n  ".join(problems[:10]) + (f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else "")
        raise ValueError(
            f"{len(problems)} of the {len(texts)} texts{where} cannot be filled by this model; nothing was filled. "
            f"Fix or remove them:\n  {shown}"
        )


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    """Write all records, a JSON object per line, or nothing (`write_text_lines`)."""
    write_text_lines(path, (json.dumps(record, ensure_ascii=False) for record in records))


def write_text_lines(path: Path, lines: Iterable[str]) -> None:
    """Write all lines or nothing: a temporary file beside `path`, renamed over it when complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, staging = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.fchmod(descriptor, 0o666 & ~umask)  # mkstemp makes it private; the result should read like any new file
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            for line in lines:
                handle.write(line + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(staging, path)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise


def run_infill(args: argparse.Namespace) -> None:
    check_arguments(args)
    texts = read_texts(args.input) if args.input is not None else args.texts
    device = resolve_device(args.device)
    model, tokenizer = load_model(args.model, device, model_dtype(args.dtype, device))
    check_infilling_model(model.config)
    check_span_length(model.config, args.max_new_tokens)
    check_texts(tokenizer, model.config, texts, args.input)
    if args.seed is not None:
        torch.manual_seed(args.seed)
    options = generation_options(args)

    results: dict[int, InfillingResult] = {}
    progress = tqdm(total=len(texts), desc="Filling", unit="text", disable=len(texts) <= args.batch_size)
    # Texts of similar length share a batch (less padding); the output keeps the input order.
    for group in length_sorted_batches([len(text) for text in texts], args.batch_size):
        filled = fill_blanks(model, tokenizer, [texts[index] for index in group], **options)
        results.update(zip(group, filled, strict=True))
        progress.update(len(group))
    progress.close()
    records = [
        {"text": text, "filled_text": results[index].text, "spans": results[index].spans}
        for index, text in enumerate(texts)
    ]

    if args.output is None:
        for record in records:
            print(record["filled_text"])
        return
    if args.output.suffix.lower() == ".txt":
        write_text_lines(args.output, [record["filled_text"] for record in records])
    else:
        write_jsonl(args.output, records)
    print(f"wrote {len(records)} filled texts to {args.output} ({OUTPUT_FORMATS[args.output.suffix.lower()]})")
