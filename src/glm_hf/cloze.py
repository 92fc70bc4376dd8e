"""Scoring the candidate answers of a cloze prompt, built as the original `tasks/data_utils.build_input_from_ids`.

Every candidate gets its own row: Part A is `[CLS] A ([SEP]) B [eos]` (cut as the original cuts it when it is too
long for `max_length`), then Part B is `[sop] answer[:-1]`, placed at the position of the LAST mask with block
positions `1..len(answer)`. The targets are the answer tokens, aligned with the inputs (the target of `[sop]` is the
answer's first token, the target of the last input is the answer's last token). Include eop in the answer if it
should be scored, as the original's multi-token cloze tasks do.

`pack_cloze_candidates` turns one example's rows into a single row (Part A once, then every candidate's Part B)
with a block-diagonal mask, for `GLMForMultipleChoice`. For a single-token cloze (the original's
`GLMForSingleTokenCloze` input), build one row with a one-token answer: it is Part A + [sop], and the logits to read
are at the [sop] column, `prefix_length`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .modeling.configuration_glm import GLMConfig
from .modeling.modeling_glm import score_cloze_targets

IGNORE_INDEX = -100
_FORWARD_KEYS = ("input_ids", "position_ids", "block_position_ids", "prefix_length", "attention_mask")


def _token_id(config: GLMConfig, name: str) -> int:
    """A special id of the config (the first one where a list is given); raises when the family lacks it."""
    value = getattr(config, f"{name}_token_id", None)
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
    if value is None:
        raise ValueError(f"config.{name}_token_id is not set; it is needed to build cloze inputs.")
    return int(value)


def _part_a(
    config: GLMConfig,
    text_a_ids: Sequence[int],
    text_b_ids: Sequence[int] | None,
    max_length: int | None,
    add_cls: bool,
    add_sep: bool,
    add_eos: bool,
) -> list[int]:
    """`[CLS] A ([SEP]) B [eos]`, cut to `max_length - 1` tokens before [eos] when too long (as the original)."""
    ids = [_token_id(config, "cls")] if add_cls else []
    ids.extend(int(token) for token in text_a_ids)
    if text_b_ids is not None:
        if add_sep:
            ids.append(_token_id(config, "sep"))
        ids.extend(int(token) for token in text_b_ids)
    # The original's rule: with N = max_length, keep N - 1 tokens once there are N - (1 if add_eos else 0) or more.
    if max_length is not None and len(ids) >= max_length - (1 if add_eos else 0):
        ids = ids[: max_length - 1]
    if add_eos:
        ids.append(_token_id(config, "eos"))
    return ids


def build_cloze_inputs(
    config: GLMConfig,
    text_a_ids: list[int],
    answers_ids: list[list[int]],
    text_b_ids: list[int] | None = None,
    max_length: int | None = None,
    add_cls: bool = True,
    add_sep: bool = False,
    add_eos: bool = True,
    mask_id: int | None = None,
    pad_to: int | None = None,
) -> dict[str, torch.Tensor]:
    """One row per candidate answer: the original's cloze input, batched and right-padded.

    Args:
        config: supplies the special ids (cls, sep, eos, mask, sop) and `max_position_embeddings`.
        text_a_ids / text_b_ids: token ids of the two texts (no special tokens); a mask must be in one of them.
        answers_ids: the candidates' token ids (eop included where it should be scored); none may be empty.
        max_length: the original's `max_seq_length`: Part A is cut to it as the original cuts it, and a row longer
            than it raises (the original would return it longer than `max_seq_length`, unpadded). `None`: no cut.
        add_cls / add_sep / add_eos: as the original (`[SEP]` is only added when there is a text B).
        mask_id: the blank to fill (default `config.mask_token_id`); the last one in Part A is used.
        pad_to: pad every row to this length (default: the longest row).

    Returns:
        `input_ids`, `position_ids`, `block_position_ids`, `labels`, `attention_mask` (each `[C, T]`) and
        `prefix_length` (`[C]`, the Part A length). Padding columns hold eos (as the original), position 0, block
        position 0, label -100 and attention 0.
    """
    if len(answers_ids) == 0:
        raise ValueError("answers_ids is empty: give at least one candidate answer.")
    if max_length is not None and max_length < 1:
        raise ValueError(f"max_length must be at least 1, got {max_length}.")
    mask_id = _token_id(config, "mask") if mask_id is None else int(mask_id)
    sop_id = _token_id(config, "sop")
    pad_id = _token_id(config, "eos")

    part_a = _part_a(config, text_a_ids, text_b_ids, max_length, add_cls, add_sep, add_eos)
    if mask_id not in part_a:
        where = "" if max_length is None else f" (after cutting Part A for max_length={max_length})"
        raise ValueError(f"No mask token (id {mask_id}) in the input ids{where}; the cloze needs a blank to fill.")
    mask_position = len(part_a) - 1 - part_a[::-1].index(mask_id)
    prefix_length = len(part_a)

    rows: list[tuple[list[int], list[int], list[int], list[int]]] = []
    for index, answer in enumerate(answers_ids):
        answer = [int(token) for token in answer]
        if not answer:
            raise ValueError(f"Candidate answer {index} is empty: every answer needs at least one token.")
        length = prefix_length + len(answer)
        if max_length is not None and length > max_length:
            raise ValueError(
                f"Candidate answer {index}: the row has {length} tokens (Part A {prefix_length} + [sop] and answer "
                f"{len(answer)}), longer than max_length={max_length}; shorten the texts or the answer."
            )
        if length > config.max_position_embeddings:
            raise ValueError(
                f"Candidate answer {index}: the row has {length} tokens (Part A {prefix_length} + [sop] and answer "
                f"{len(answer)}), longer than config.max_position_embeddings={config.max_position_embeddings}."
            )
        input_ids = part_a + [sop_id] + answer[:-1]
        position_ids = list(range(prefix_length)) + [mask_position] * len(answer)
        block_position_ids = [0] * prefix_length + list(range(1, len(answer) + 1))
        labels = [IGNORE_INDEX] * prefix_length + answer
        rows.append((input_ids, position_ids, block_position_ids, labels))

    longest = max(len(row[0]) for row in rows)
    width = longest if pad_to is None else pad_to
    if width < longest:
        raise ValueError(f"pad_to={pad_to} is shorter than the longest candidate row ({longest} tokens).")

    def padded(values: list[int], fill: int) -> list[int]:
        return values + [fill] * (width - len(values))

    return {
        "input_ids": torch.tensor([padded(row[0], pad_id) for row in rows], dtype=torch.long),
        "position_ids": torch.tensor([padded(row[1], 0) for row in rows], dtype=torch.long),
        "block_position_ids": torch.tensor([padded(row[2], 0) for row in rows], dtype=torch.long),
        "prefix_length": torch.full((len(rows),), prefix_length, dtype=torch.long),
        "labels": torch.tensor([padded(row[3], IGNORE_INDEX) for row in rows], dtype=torch.long),
        "attention_mask": torch.tensor([padded([1] * len(row[0]), 0) for row in rows], dtype=torch.long),
    }


@torch.no_grad()
def score_candidates(
    model: torch.nn.Module, inputs: dict[str, torch.Tensor], length_normalize: bool = False
) -> torch.Tensor:
    """Log-probability of each candidate's targets (`labels != -100`) from one batched forward, shape `[C]`.

    With `length_normalize`, each sum is divided by its number of target tokens (the original's
    `--length-penalty 1`, used for WSC). The model should be in eval mode; no gradients are kept.
    """
    device = next(model.parameters()).device
    forward_inputs = {key: inputs[key].to(device) for key in _FORWARD_KEYS if key in inputs}
    logits = model(**forward_inputs).logits
    labels = inputs["labels"].to(logits.device)
    return score_cloze_targets(logits, labels, length_penalty=1.0 if length_normalize else 0.0)[:, 0]


def pack_cloze_candidates(
    rows: dict[str, torch.Tensor], pad_to: int | None = None, num_choices: int | None = None, pad_id: int = 0
) -> dict[str, torch.Tensor]:
    """One example's candidate rows (`build_cloze_inputs`) packed into one row for `GLMForMultipleChoice`.

    The row holds Part A once, then each candidate's Part B ([sop] + answer[:-1], with its own positions and block
    positions). The boolean mask `[1, L, L]` lets Part A see Part A (both ways) and each candidate's tokens see
    Part A and their own earlier tokens only, so the scores equal those of the separate rows, from one shorter
    forward. Padding columns (`pad_id`, position 0) are seen by nothing.

    Args:
        rows: `build_cloze_inputs`' output for ONE example (every row has the same Part A).
        pad_to: pad the row to this length (default: no padding), e.g. to stack examples into a batch.
        num_choices: width of `choice_mask` (default: the number of candidates), to stack examples with fewer.
        pad_id: the token of padding columns (no column sees them, so any id gives the same scores).

    Returns:
        `input_ids`, `position_ids`, `block_position_ids`, `target_ids` (-100 where nothing is scored),
        `choice_ids` (the candidate of each scored column, -1 elsewhere), each `[L]`; `attention_mask` `[1, L, L]`
        bool; `choice_mask` `[num_choices]` (1 for a real candidate). Stack them per batch; pad `attention_mask`
        with False, `target_ids` with -100, `choice_ids` with -1 and `choice_mask` with 0.
    """
    needed = ("input_ids", "position_ids", "block_position_ids", "prefix_length", "labels")
    missing = [key for key in needed if key not in rows]
    if missing:
        raise ValueError(f"rows lacks {', '.join(missing)}: pass the dict build_cloze_inputs returns.")
    input_ids, labels, prefix = rows["input_ids"], rows["labels"], rows["prefix_length"]
    if input_ids.dim() != 2 or labels.shape != input_ids.shape:
        raise ValueError(
            f"rows must hold one example: input_ids and labels of shape [candidates, T], got "
            f"{tuple(input_ids.shape)} and {tuple(labels.shape)}."
        )
    num_candidates = input_ids.shape[0]
    part_a = int(prefix.reshape(-1)[0])
    same_part_a = all(
        bool((rows[key][:, :part_a] == rows[key][:1, :part_a]).all())
        for key in ("input_ids", "position_ids", "block_position_ids")
    )
    if not bool((prefix.reshape(-1) == part_a).all()) or not same_part_a:
        raise ValueError("The candidate rows do not share one Part A: pack the rows of one example at a time.")
    if "attention_mask" in rows:
        lengths = rows["attention_mask"].long().sum(-1)
    else:  # every Part B column has a target
        lengths = part_a + (labels != IGNORE_INDEX).long().sum(-1)
    num_choices = num_candidates if num_choices is None else num_choices
    if num_choices < num_candidates:
        raise ValueError(f"num_choices={num_choices} is smaller than the {num_candidates} candidates.")

    spans: list[tuple[int, int]] = []  # each candidate's (start, end) in the packed row
    end = part_a
    for length in lengths.tolist():
        spans.append((end, end + length - part_a))
        end += length - part_a
    width = end if pad_to is None else pad_to
    if width < end:
        raise ValueError(f"pad_to={pad_to} is shorter than the packed row ({end} tokens).")

    packed = {
        "input_ids": torch.full((width,), pad_id, dtype=torch.long),
        "position_ids": torch.zeros(width, dtype=torch.long),
        "block_position_ids": torch.zeros(width, dtype=torch.long),
        "target_ids": torch.full((width,), IGNORE_INDEX, dtype=torch.long),
        "choice_ids": torch.full((width,), -1, dtype=torch.long),
    }
    for key in ("input_ids", "position_ids", "block_position_ids"):
        packed[key][:part_a] = rows[key][0, :part_a]
    packed["target_ids"][:part_a] = labels[0, :part_a]
    attention_mask = torch.zeros(width, width, dtype=torch.bool)
    attention_mask[:end, :part_a] = True  # every token sees Part A
    for candidate, (start, stop) in enumerate(spans):
        source = slice(part_a, part_a + stop - start)
        for key in ("input_ids", "position_ids", "block_position_ids"):
            packed[key][start:stop] = rows[key][candidate, source]
        packed["target_ids"][start:stop] = labels[candidate, source]
        packed["choice_ids"][start:stop] = torch.where(labels[candidate, source] != IGNORE_INDEX, candidate, -1)
        attention_mask[start:stop, start:stop] = torch.ones(stop - start, stop - start, dtype=torch.bool).tril()
    packed["attention_mask"] = attention_mask[None]
    packed["choice_mask"] = (torch.arange(num_choices) < num_candidates).long()
    return packed


__all__ = ["build_cloze_inputs", "pack_cloze_candidates", "score_candidates"]
