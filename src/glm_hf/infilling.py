"""Blank infilling as the original `generate_samples.py` does it, batched and on the KV cache.

A prompt is `[CLS] text [eos]` (no [eos] after a trailing [gMASK]); a text without a mask token gets ` [gMASK]`
(or ` [MASK]` for vocabularies without task masks) appended, with a warning. Every blank is filled left to right:
for blank k, [sop] takes the mask's position and block position 1, new tokens keep that position and count block
positions up, and everything filled before (context and earlier spans) is visible. The context is encoded once per
batch, into a static cache sized for every blank; each blank runs `generate()` on that cache, which keeps the chosen
span's columns for the later blanks (only a span as long as the generation needs one more forward, for its last
token). Beam search works on a copy of a dynamic cache and appends the chosen span with one forward.
"""

from __future__ import annotations

import copy
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import GenerationConfig, PreTrainedTokenizerBase
from transformers.cache_utils import Cache, StaticCache
from transformers.generation.streamers import BaseStreamer

from .modeling.configuration_glm import GLMConfig
from .modeling.modeling_glm import GENERATE_CACHE_KWARG, GLMDynamicCache, GLMForConditionalGeneration

MASK_TEXT = re.compile(r"\[(?:MASK|sMASK|gMASK)\]")
# Inputs fill_blanks builds for every blank; the KV cache it manages itself.
RESERVED_GENERATE_KWARGS = {
    "input_ids",
    "attention_mask",
    "position_ids",
    "block_position_ids",
    "prefix_length",
    "past_key_values",
    "use_cache",
    "cache_implementation",
}


@dataclass
class InfillingResult:
    """One input text with every blank filled, and the generated strings, one per blank, in order."""

    text: str
    spans: list[str]


def check_infilling_model(config: GLMConfig) -> None:
    """Refuse, saying why, a model that GLM's blank infilling cannot prompt: a ChatGLM (prompted as
    `text [gMASK] <sop>`, positions read from the ids) or a GLM without block positions (Part B columns are told
    apart by them here, as in every released GLM)."""
    if config.positions_from_ids:
        raise ValueError(
            "Blank infilling builds GLM's `[CLS] text [eos] [sop]` prompts; this model is a ChatGLM, prompted as "
            "`text [gMASK] <sop>` with positions read from the ids: call model.generate(**tokenizer(text)) instead."
        )
    if not config.block_position_encoding:
        raise ValueError(
            "Blank infilling gives each generated token its blank's position and block positions 1, 2, ...; this "
            "model has no block positions (block_position_encoding=False): generate from "
            "`[CLS] text [eos] [sop]` with model.generate, whose new tokens count positions up."
        )


def mask_token_ids(config: GLMConfig) -> list[int]:
    """The ids that mark a blank: [MASK], and [sMASK] / [gMASK] where the family has them."""
    ids = [config.mask_token_id, config.smask_token_id, config.gmask_token_id]
    return [token_id for token_id in dict.fromkeys(ids) if token_id is not None]


def prompt_text(text: str, config: GLMConfig) -> str:
    """The text as the original prompts it: unchanged with a mask, else with ` [gMASK]` (or ` [MASK]`) appended."""
    if not text.strip():
        raise ValueError("Cannot fill blanks in an empty text.")
    missing = {"[sMASK]": config.smask_token_id, "[gMASK]": config.gmask_token_id}
    for mask, token_id in missing.items():
        if token_id is None and mask in text:
            raise ValueError(f"This model's vocabulary has no {mask}; use [MASK] (or a model with task masks).")
    if MASK_TEXT.search(text):
        return text
    appended = "[gMASK]" if config.gmask_token_id is not None else "[MASK]"
    warnings.warn(
        f"The text has no [MASK], [sMASK] or [gMASK]; appending ' {appended}' as the original does.", stacklevel=3
    )
    return f"{text} {appended}"


def encode_prompt(tokenizer: PreTrainedTokenizerBase, config: GLMConfig, text: str) -> list[int]:
    """`[CLS] text [eos]` ids, without [eos] when the text ends with "[gMASK]" (the original tests the text, not
    the last id); raises when the prompt does not fit."""
    ids = [config.cls_token_id, *tokenizer.encode(text, add_special_tokens=False)]
    if not text.endswith("[gMASK]"):
        ids.append(config.eos_token_id)
    if len(ids) >= config.max_position_embeddings:
        raise ValueError(
            f"The prompt has {len(ids)} tokens; the model's position tables hold max_position_embeddings="
            f"{config.max_position_embeddings} positions, and the blank needs at least one more. Shorten the text."
        )
    return ids


def prepare_blanks(
    tokenizer: PreTrainedTokenizerBase, config: GLMConfig, text: str
) -> tuple[str, list[int], list[int]]:
    """The prompt of `text`, its ids and the columns of its blanks; ValueError when the model cannot fill it (a mask
    its vocabulary lacks, a tokenizer that does not belong to it)."""
    prompt = prompt_text(text, config)
    context = encode_prompt(tokenizer, config, prompt)
    if max(context) >= config.vocab_size:
        raise ValueError(
            f"The tokenizer produced id {max(context)}, but the model has {config.vocab_size} embedding rows: "
            "the tokenizer does not belong to this model."
        )
    masks = set(mask_token_ids(config))
    positions = [index for index, token in enumerate(context) if token in masks]
    if len(positions) != len(MASK_TEXT.findall(prompt)):
        raise ValueError(
            f"The tokenizer turned the {len(MASK_TEXT.findall(prompt))} mask string(s) of {prompt!r} into "
            f"{len(positions)} mask token(s); does it know [MASK]/[sMASK]/[gMASK] as special tokens?"
        )
    return prompt, context, positions


def left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ids [B, L] and the padding mask (1 = token)."""
    width = max(len(row) for row in rows)
    ids = torch.tensor([[pad_id] * (width - len(row)) + list(row) for row in rows])
    mask = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in rows])
    return ids, mask


def build_generation_inputs(
    tokenizer: PreTrainedTokenizerBase, config: GLMConfig, texts: str | Sequence[str]
) -> dict[str, torch.Tensor]:
    """A left-padded batch of `[CLS] text [eos] [sop]` prompts (one text, or several) that `model.generate(**inputs)`
    fills (first blank).

    Part A (the prompt, pads included) is `prefix_length`; [sop] takes the first mask's position and block
    position 1, so `generate()` continues that blank.
    """
    check_infilling_model(config)
    texts = [texts] if isinstance(texts, str) else list(texts)
    contexts = [encode_prompt(tokenizer, config, prompt_text(text, config)) for text in texts]
    masks = set(mask_token_ids(config))
    first_masks = [next(index for index, token in enumerate(ids) if token in masks) for ids in contexts]
    input_ids, attention_mask = left_pad([[*ids, config.sop_token_id] for ids in contexts], config.pad_token_id)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    position_ids[:, -1] = torch.tensor(first_masks)
    block_position_ids = torch.zeros_like(position_ids)
    block_position_ids[:, -1] = 1
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "position_ids": position_ids,
        "block_position_ids": block_position_ids,
        "prefix_length": torch.full((len(texts),), input_ids.shape[1] - 1),
    }


def _first_span(tokens: list[int], end_ids: set[int]) -> list[int]:
    """Generated tokens up to (not including) the first end token."""
    for index, token in enumerate(tokens):
        if token in end_ids:
            return tokens[:index]
    return tokens


def blank_generation_config(model: GLMForConditionalGeneration, generate_kwargs: dict[str, Any]) -> GenerationConfig:
    """The model's generation config with the caller's options: one sequence per text, `max_new_tokens` per blank
    (32 unless set), and no inputs that fill_blanks builds itself."""
    reserved = sorted(set(generate_kwargs) & RESERVED_GENERATE_KWARGS)
    if reserved:
        raise ValueError(f"fill_blanks builds {', '.join(reserved)} itself; leave them out of the generate options.")
    if "max_length" in generate_kwargs:
        raise ValueError("max_length counts the whole growing sequence; give max_new_tokens (per blank) instead.")
    options = dict(generate_kwargs)
    generation_config = copy.deepcopy(options.pop("generation_config", None) or model.generation_config)
    unused = generation_config.update(**options)
    if unused:
        raise ValueError(f"Unknown generation options: {', '.join(sorted(unused))}.")
    if generation_config.num_return_sequences not in (None, 1):
        raise ValueError("fill_blanks returns one filling per text; num_return_sequences must be 1.")
    if generation_config.return_dict_in_generate:
        raise ValueError("fill_blanks returns InfillingResult objects; return_dict_in_generate is not supported.")
    if generation_config.max_new_tokens is None:
        generation_config.max_new_tokens = 32
    check_span_length(model.config, generation_config.max_new_tokens)
    generation_config.use_cache = True
    return generation_config


def check_span_length(config: GLMConfig, max_new_tokens: int) -> None:
    """Refuse, before anything is allocated (the cache is sized by it), a span longer than the position tables hold:
    a span's [sop] and tokens take block positions 1 .. max_new_tokens + 1."""
    rows = config.max_position_embeddings
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens!r}: give a whole number of tokens per blank, at least 1.")
    if config.block_position_encoding and max_new_tokens + 1 >= rows:
        raise ValueError(
            f"max_new_tokens={max_new_tokens}: a blank's span takes block positions 1..{max_new_tokens + 1}, but "
            f"this model's position tables have {rows} rows (max_position_embeddings): give at most {rows - 2}."
        )


def length_sorted_batches(lengths: Sequence[int], batch_size: int | None) -> list[list[int]]:
    """Indices grouped `batch_size` at a time in order of length, so that a batch's rows need little padding
    (a batch costs its longest row times its size); one group of all when `batch_size` is None."""
    if batch_size is None:
        return [list(range(len(lengths)))] if lengths else []
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


@torch.no_grad()
def fill_blanks(
    model: GLMForConditionalGeneration,
    tokenizer: PreTrainedTokenizerBase,
    texts: str | Sequence[str],
    batch_size: int | None = None,
    streamer: BaseStreamer | None = None,
    **generate_kwargs: Any,
) -> list[InfillingResult]:
    """Fill every blank of each text, left to right; greedy, sampling or beam search via `generate_kwargs`.

    Texts of different lengths are batched (left padding): all at once, or `batch_size` at a time with texts of
    similar length together (less padding, bounded memory). Returns one `InfillingResult` per text, in input order.
    `streamer` (a transformers streamer, e.g. `TextStreamer(tokenizer, skip_special_tokens=True)`) receives the
    generated tokens of every blank in turn, and `end()` once after the last; like transformers' streamers it takes
    one text at a time.
    """
    check_infilling_model(model.config)
    texts = [texts] if isinstance(texts, str) else list(texts)
    if not texts:
        return []
    if streamer is not None and len(texts) > 1:
        raise ValueError(
            f"A streamer shows one sequence, so fill_blanks streams one text at a time; got {len(texts)} texts. "
            "Call fill_blanks once per text, or leave the streamer out."
        )
    generation_config = blank_generation_config(model, generate_kwargs)
    config = model.config
    prepared = [prepare_blanks(tokenizer, config, text) for text in texts]
    prompts = [prompt for prompt, _, _ in prepared]
    contexts = [context for _, context, _ in prepared]
    blanks = [positions for _, _, positions in prepared]

    spans: list[list[list[int]]] = [[] for _ in texts]
    for group in length_sorted_batches([len(ids) for ids in contexts], batch_size):
        group_spans = _fill_batch(
            model,
            [contexts[index] for index in group],
            [blanks[index] for index in group],
            generation_config,
            BlankStreamer(streamer) if streamer is not None else None,
        )
        for index, text_spans in zip(group, group_spans, strict=True):
            spans[index] = text_spans
    if streamer is not None:
        streamer.end()
    return [_fill_text(tokenizer, prompt, text_spans) for prompt, text_spans in zip(prompts, spans, strict=True)]


class BlankStreamer(BaseStreamer):
    """Passes the tokens that `generate()` produces for each blank on to the caller's streamer: not the prompt each
    `generate()` call streams first, and not the `end()` of each call (the caller's streamer ends once, after the
    last blank)."""

    def __init__(self, streamer: BaseStreamer) -> None:
        self.streamer = streamer
        self.prompt_pending = True

    def put(self, value: torch.Tensor) -> None:
        if self.prompt_pending:
            self.prompt_pending = False
            return
        self.streamer.put(value)

    def end(self) -> None:
        self.prompt_pending = True


def _fill_batch(
    model: GLMForConditionalGeneration,
    contexts: list[list[int]],
    blanks: list[list[int]],
    generation_config: GenerationConfig,
    streamer: BaseStreamer | None = None,
) -> list[list[list[int]]]:
    """The generated ids of every blank of every context (prompt ids with the blanks at `blanks`), as one batch."""
    config = model.config
    device = model.device
    end_ids = {config.eop_token_id, config.eos_token_id} - {None}
    input_ids, attention_mask = left_pad(contexts, config.pad_token_id)
    context_length = input_ids.shape[1]
    sequence = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "position_ids": (attention_mask.cumsum(-1) - 1).clamp(min=0),
        "block_position_ids": torch.zeros_like(input_ids),
    }
    sequence = {name: tensor.to(device) for name, tensor in sequence.items()}
    num_beams = generation_config.num_beams or 1
    num_blanks = max(len(positions) for positions in blanks)
    cache = _blank_cache(
        model, generation_config, context_length + num_blanks * (generation_config.max_new_tokens + 1)
    )
    model(**sequence, prefix_length=context_length, past_key_values=cache, use_cache=True, logits_to_keep=1)

    spans: list[list[list[int]]] = [[] for _ in contexts]
    for blank in range(num_blanks):
        active = [blank < len(positions) for positions in blanks]
        mask_positions = torch.tensor(
            [positions[blank] if blank < len(positions) else 0 for positions in blanks], device=device
        )
        sop = _part_b_columns([[config.sop_token_id]] * len(contexts), mask_positions, config.pad_token_id)
        generation_cache = cache
        if num_beams > 1:  # beam search reorders and grows its cache: give it an expanded copy
            generation_cache = copy.deepcopy(cache)
            generation_cache.batch_repeat_interleave(num_beams)
        output = model.generate(
            **_append(sequence, sop),
            prefix_length=context_length,
            generation_config=generation_config,
            streamer=streamer,
            **{GENERATE_CACHE_KWARG: generation_cache},
        )
        length = sequence["input_ids"].shape[1]
        new_tokens = output[:, length + 1 :].tolist()
        chosen = [_first_span(tokens, end_ids) if active[row] else [] for row, tokens in enumerate(new_tokens)]
        for row, tokens in enumerate(chosen):
            if active[row]:
                spans[row].append(tokens)
        if blank == num_blanks - 1:
            break  # no later blank reads this one
        # [sop] + span of every text joins the cache and the sequence: later blanks see it. generate() left [sop]
        # and every token it fed back (all but the last) in the cache, at these positions: they stay (the columns
        # past a row's span are masked out), and only a span as long as the generation needs a forward, for its
        # last token. Beam search worked on a copy: its spans are all computed here.
        reused = int(cache.get_seq_length()) - length if generation_cache is cache else 0
        rows = [[config.sop_token_id, *tokens] for tokens in chosen]
        part_b = _part_b_columns(rows, mask_positions, config.pad_token_id, width=max(reused, *map(len, rows)))
        sequence = _append(sequence, part_b)
        if reused < part_b["input_ids"].shape[1]:
            model(
                **{name: tensor[:, reused:] for name, tensor in part_b.items() if name != "attention_mask"},
                attention_mask=sequence["attention_mask"],
                prefix_length=context_length,
                past_key_values=cache,
                use_cache=True,
            )
    return spans


def _fill_text(tokenizer: PreTrainedTokenizerBase, prompt: str, spans: list[list[int]]) -> InfillingResult:
    """The prompt with its mask strings replaced, in order, by the decoded spans."""
    decoded = [tokenizer.decode(tokens, skip_special_tokens=True).strip() for tokens in spans]
    pieces = iter(decoded)
    return InfillingResult(text=MASK_TEXT.sub(lambda _: next(pieces), prompt), spans=decoded)


def _blank_cache(model: GLMForConditionalGeneration, generation_config: GenerationConfig, length: int) -> Cache:
    """The cache the blanks are filled on: a static cache of `length` columns (decode steps write into it instead
    of copying the whole growing cache at every token), not compiled (each call has its own size); beam search,
    which reorders and copies its cache, gets a dynamic one."""
    if (generation_config.num_beams or 1) > 1:
        cache: Cache = GLMDynamicCache(config=model.config)
    else:
        if generation_config.compile_config is None:
            generation_config.disable_compile = True
        cache = StaticCache(config=model.config, max_cache_len=length)
    cache.filled_by_fill_blanks = True  # generate() drops the model's default cache_implementation for it
    return cache


def _part_b_columns(
    rows: list[list[int]], mask_positions: torch.Tensor, pad_id: int, width: int | None = None
) -> dict[str, torch.Tensor]:
    """One Part B block per row: its tokens right-padded to `width` (default: the longest row) and masked out, at
    its mask's position, block positions 1..width. Rows without this blank have no later blank either, so what
    they add is never read."""
    device = mask_positions.device
    width = width or max(len(row) for row in rows)
    real = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in rows], device=device)
    return {
        "input_ids": torch.tensor([row + [pad_id] * (width - len(row)) for row in rows], device=device),
        "attention_mask": real,
        "position_ids": mask_positions[:, None].expand(-1, width),
        "block_position_ids": torch.arange(1, width + 1, device=device).expand(len(rows), -1),
    }


def _append(sequence: dict[str, torch.Tensor], columns: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: torch.cat([tensor, columns[name]], dim=-1) for name, tensor in sequence.items()}
