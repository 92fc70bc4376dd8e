"""Drawing one collated blank-infilling example as Figure 2 of the GLM paper does (`glm-hf show-batch`).

The PNG shows, column by column, the input tokens (Part A, then each span of Part B in its own colour, the same
colour as its mask in Part A), the targets, both position rows, and below them the mixed attention mask as a grid:
row = query token, column = key token, filled = attends. The grid is the model's own mask for that input
(`glm_hf.build_glm_attention_mask`), so what is drawn is what the model computes with. matplotlib draws off-screen
(the Agg canvas); the file is written to a temporary name and renamed into place.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from .blank_infilling import IGNORE_INDEX, DataCollatorForBlankInfilling, _optional_id, pack_documents, read_corpus
from .modeling import build_glm_attention_mask

MAX_DRAWN_TOKENS = 160  # beyond this the labels are unreadable: draw a shorter example
OBJECTIVES: dict[str, dict[str, float]] = {
    "span": {"bert_prob": 1.0, "gap_sentence_prob": 0.0},
    "sentence": {"bert_prob": 0.0, "gap_sentence_prob": 1.0},
    "document": {"bert_prob": 0.0, "gap_sentence_prob": 0.0},
}
DEFAULT_TEXT = (
    "GLM learns to fill blanks in text. Spans of words are cut out of a document and replaced by masks. "
    "The model reads the corrupted text and writes the missing spans back, one after another, left to right. "
    "Each span sees the whole text and the spans written before it."
)
SHORT_NAMES = {"<|startofpiece|>": "[sop]", "<|endofpiece|>": "[eop]", "<|endoftext|>": "[eos]"}
PART_A_COLOUR = "#dde6f3"
SPAN_COLOURS = ("#f6c28b", "#a8d5a2", "#f4a6a6", "#c9b3e6", "#f3e08a", "#9fd3e0", "#e6b8d2", "#c8c8c8")


@dataclass
class ExampleFigure:
    """What `draw_blank_infilling_example` drew."""

    path: Path
    tokens: list[str]  # the example's tokens, padding left out
    prefix_length: int
    attention_mask: np.ndarray  # bool [n, n] as drawn: row = query, column = key, True = attends


def example_attention_mask(batch: Mapping[str, torch.Tensor], index: int = 0) -> torch.Tensor:
    """The model's mixed mask of row `index` over its real tokens: bool [n, n] (True = the query attends)."""
    padding = batch["attention_mask"][index]
    length = int(padding.sum())
    if not bool(padding[:length].all()):
        raise ValueError("Only right-padded batches can be drawn (the collator's batches are).")
    prefix = batch["prefix_length"][index].reshape(1)
    width = padding.shape[-1]
    mask = build_glm_attention_mask(torch.arange(width), width, prefix, padding[None])
    return mask[0, 0, :length, :length]


def _display(token: str) -> str:
    """A short label: byte-level / SentencePiece space markers dropped, long tokens cut."""
    token = SHORT_NAMES.get(token, token)
    text = token.replace("\u0120", "").replace("\u2581", "").replace("\u010a", "\\n") or token
    return text if len(text) <= 10 else text[:9] + "\u2026"


def _span_colours(input_ids: list[int], position_ids: list[int], prefix: int, sop_id: int | None) -> list[str]:
    """A colour per column: Part A pale blue, each Part B span and the Part A token at its position alike."""
    colours = [PART_A_COLOUR] * len(input_ids)
    span_positions: dict[int, str] = {}
    span = -1
    for column in range(prefix, len(input_ids)):
        if input_ids[column] == sop_id or span < 0:
            span += 1
            span_positions[position_ids[column]] = SPAN_COLOURS[span % len(SPAN_COLOURS)]
        colours[column] = SPAN_COLOURS[span % len(SPAN_COLOURS)]
    for column in range(prefix):  # Part A positions are distinct: the one of a span is its mask's
        if position_ids[column] in span_positions:
            colours[column] = span_positions[position_ids[column]]
    return colours


def draw_blank_infilling_example(
    batch: Mapping[str, torch.Tensor],
    tokenizer: PreTrainedTokenizerBase,
    path: str | os.PathLike[str],
    index: int = 0,
    title: str | None = None,
) -> ExampleFigure:
    """Write row `index` of a `DataCollatorForBlankInfilling` batch to `path` (.png) as a figure; returns what was
    drawn. The file is replaced if it exists."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"{path}: the figure is written as PNG; give a path ending in .png.")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"The folder of {path} does not exist.")
    rows = batch["input_ids"].shape[0]
    if not -rows <= index < rows:
        raise ValueError(f"index {index} is outside the batch of {rows} rows.")
    mask = example_attention_mask(batch, index).numpy()
    length = mask.shape[0]
    if length > MAX_DRAWN_TOKENS:
        raise ValueError(
            f"The example has {length} tokens; at most {MAX_DRAWN_TOKENS} can be drawn legibly. Use a shorter text "
            "or a smaller max_length."
        )
    input_ids = batch["input_ids"][index, :length].tolist()
    labels = batch["labels"][index, :length].tolist()
    positions = batch["position_ids"][index, :length].tolist()
    blocks = batch["block_position_ids"][index, :length].tolist() if "block_position_ids" in batch else None
    prefix = int(batch["prefix_length"][index])
    tokens = tokenizer.convert_ids_to_tokens(input_ids)
    target_tokens = [
        "" if label == IGNORE_INDEX else _display(tokenizer.convert_ids_to_tokens(label)) for label in labels
    ]
    colours = _span_colours(input_ids, positions, prefix, _optional_id(tokenizer, "sop"))

    cell = 0.32
    table_rows = [("token", [_display(t) for t in tokens]), ("target", target_tokens), ("position", positions)]
    if blocks is not None:
        table_rows.append(("block position", blocks))
    width = max(6.0, cell * length + 1.6)
    table_height = cell * 1.6 * len(table_rows) + 0.6
    figure = Figure(figsize=(width, table_height + cell * length + 1.4), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    grid = figure.add_gridspec(2, 1, height_ratios=[table_height, cell * length + 0.6])

    table = figure.add_subplot(grid[0])
    table.set_xlim(0, length)
    table.set_ylim(len(table_rows), 0)
    for row, (name, values) in enumerate(table_rows):
        table.text(-0.2, row + 0.5, name, ha="right", va="center", fontsize=8)
        for column, value in enumerate(values):
            fill = colours[column] if name in ("token", "target") else "white"
            table.add_patch(Rectangle((column, row), 1, 1, facecolor=fill, edgecolor="#888888", linewidth=0.4))
            text = str(value)
            table.text(
                column + 0.5, row + 0.5, text, ha="center", va="center", fontsize=6.5,
                rotation=90 if len(text) > 3 and name in ("token", "target") else 0,
            )  # fmt: skip
    table.axvline(prefix, color="black", linewidth=1.6)
    table.text(prefix / 2, -0.15, f"Part A ({prefix} tokens)", ha="center", va="bottom", fontsize=9)
    table.text((prefix + length) / 2, -0.15, f"Part B ({length - prefix})", ha="center", va="bottom", fontsize=9)
    table.axis("off")

    grid_axes = figure.add_subplot(grid[1])
    image = grid_axes.imshow(
        mask.astype(np.uint8), cmap=ListedColormap(["white", "#4c72b0"]), vmin=0, vmax=1, interpolation="nearest"
    )
    labels_shown = [_display(t) for t in tokens]
    grid_axes.set_xticks(range(length), labels_shown, rotation=90, fontsize=6)
    grid_axes.set_yticks(range(length), labels_shown, fontsize=6)
    grid_axes.set_xticks(np.arange(length + 1) - 0.5, minor=True)
    grid_axes.set_yticks(np.arange(length + 1) - 0.5, minor=True)
    grid_axes.grid(which="minor", color="#cccccc", linewidth=0.3)
    grid_axes.tick_params(which="minor", length=0)
    grid_axes.axvline(prefix - 0.5, color="black", linewidth=1.2)
    grid_axes.axhline(prefix - 0.5, color="black", linewidth=1.2)
    grid_axes.set_xlabel("key (attended to)", fontsize=8)
    grid_axes.set_ylabel("query", fontsize=8)
    grid_axes.set_aspect("equal")
    figure.suptitle(title or "GLM blank infilling: inputs, targets, 2D positions and the mixed attention mask")

    drawn = np.asarray(image.get_array()).astype(bool)
    write_atomic(path, lambda file: figure.savefig(file, format="png", bbox_inches="tight"))
    return ExampleFigure(path=path, tokens=tokens, prefix_length=prefix, attention_mask=drawn)


def write_atomic(path: Path, write: Callable[[BinaryIO], Any]) -> None:
    """Write `path` whole or not at all: `write` fills a temporary file beside it, which is renamed over it."""
    handle, staging = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    try:
        with os.fdopen(handle, "wb") as file:
            os.fchmod(file.fileno(), 0o666 & ~umask)  # mkstemp makes it private; make it read like any new file
            write(file)
        os.replace(staging, path)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise


# ---- glm-hf show-batch ------------------------------------------------------------------------------------------


def default_tokenizer() -> PreTrainedTokenizerBase:
    """The tokenizer `show-batch` uses without `--vocab-dir`: the embedded default model's."""
    from .default_model import default_model_folder

    return AutoTokenizer.from_pretrained(default_model_folder())


def load_tokenizer(
    family: str | None = None, vocab_dir: str | os.PathLike[str] | None = None
) -> PreTrainedTokenizerBase:
    """`vocab_dir` with `family`: `build_tokenizer(family, vocab_dir)`; `vocab_dir` alone: a saved tokenizer folder
    (tokenizer.json) or else the BERT uncased vocabulary file; neither: `default_tokenizer()`."""
    from .tokenization_glm import build_tokenizer

    if vocab_dir is None:
        if family is not None:
            raise ValueError(f"--tokenizer {family} needs --vocab-dir, the folder with the family's vocabulary files.")
        return default_tokenizer()
    folder = Path(vocab_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"--vocab-dir {folder} is not a folder.")
    if family is None and (folder / "tokenizer.json").is_file():
        return AutoTokenizer.from_pretrained(folder)
    return build_tokenizer(family or "bert-base-uncased", folder)


def show_batch(
    texts: Sequence[str] | None,
    output: str | os.PathLike[str],
    tokenizer: PreTrainedTokenizerBase | None = None,
    input_path: str | os.PathLike[str] | None = None,
    objective: str = "span",
    seed: int = 0,
    max_length: int = 64,
    task_mask: bool = False,
    overwrite: bool = False,
) -> ExampleFigure:
    """Collate the first sample of `texts` (and of the corpus file `input_path`; `DEFAULT_TEXT` when neither is
    given) with the `objective` ("span", "sentence" or "document") and draw it to `output` (.png)."""
    if objective not in OBJECTIVES:
        raise ValueError(f"objective {objective!r} is not one of {', '.join(OBJECTIVES)}.")
    output = Path(output)
    if output.exists() and not overwrite:
        raise FileExistsError(f"{output} already exists; pass --overwrite to replace it.")
    documents = list(texts or [])
    if input_path is not None:
        documents += read_corpus(input_path)
    if not documents:
        documents = [DEFAULT_TEXT]
    tokenizer = tokenizer if tokenizer is not None else default_tokenizer()
    collator = DataCollatorForBlankInfilling(
        tokenizer, max_length=max_length, task_mask=task_mask, seed=seed, **OBJECTIVES[objective]
    )
    samples = pack_documents(documents, tokenizer, max_length)
    batch = collator(samples[:1])
    title = f"GLM blank infilling, {collator.last_objective} objective (seed {seed})"
    return draw_blank_infilling_example(batch, tokenizer, output, index=0, title=title)


__all__ = [
    "DEFAULT_TEXT",
    "ExampleFigure",
    "OBJECTIVES",
    "default_tokenizer",
    "draw_blank_infilling_example",
    "example_attention_mask",
    "load_tokenizer",
    "show_batch",
]
