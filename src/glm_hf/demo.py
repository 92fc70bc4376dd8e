"""`glm-hf demo`: build a tiny GLM, save it as safetensors, reload it through the Auto classes and fill a blank.

Everything is made locally (no download): a small word-level vocabulary with the BERT family's command tokens,
and a randomly initialised model, so the filled words are random until a trained default model ships.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, PreTrainedTokenizerFast

from .modeling import GLMConfig, GLMForConditionalGeneration

SPECIAL_TOKENS = ["[PAD]", "[CLS]", "[SEP]", "[MASK]", "[UNK]", "<|startofpiece|>", "<|endofpiece|>"]
DEMO_WORDS = (
    "the a an of and to in is was it that he she they we you i his her their my on with for as at by from "
    "king queen prince ghost castle night sword king's father mother son daughter friend time day world life "
    "death love heart mind soul word words speak tell know think see come go make give take say said "
    "good great old young dark cold still long true fair strange , . ! ?"
).split()
DEMO_TEXT = "the ghost of the king [MASK] in the castle at night ."


@dataclass
class DemoReport:
    """What the demo did, for printing and for tests."""

    folder: Path
    prompt: str
    filled_text: str
    span: str
    cached_seconds: float
    recompute_seconds: float
    reload_max_abs_diff: float


def build_demo_tokenizer() -> PreTrainedTokenizerFast:
    """A whitespace word-level tokenizer whose command tokens sit at fixed small ids (pad=eos=0, as in BERT GLM)."""
    vocab = {token: index for index, token in enumerate(SPECIAL_TOKENS + DEMO_WORDS)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="[PAD]",
        eos_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        unk_token="[UNK]",
        additional_special_tokens=["<|startofpiece|>", "<|endofpiece|>"],
    )
    return tokenizer


def build_demo_config(tokenizer: PreTrainedTokenizerFast) -> GLMConfig:
    """A two-layer GLM sized for the demo vocabulary."""
    ids = tokenizer.convert_tokens_to_ids
    return GLMConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=129,
        initializer_range=0.2,
        pad_token_id=ids("[PAD]"),
        eos_token_id=ids("[PAD]"),
        bos_token_id=ids("[CLS]"),
        cls_token_id=ids("[CLS]"),
        sep_token_id=ids("[SEP]"),
        mask_token_id=ids("[MASK]"),
        unk_token_id=ids("[UNK]"),
        sop_token_id=ids("<|startofpiece|>"),
        eop_token_id=ids("<|endofpiece|>"),
    )


def default_model_and_tokenizer(seed: int = 0) -> tuple[GLMForConditionalGeneration, PreTrainedTokenizerFast]:
    """The embedded default of `glm-hf demo` / `glm-hf infill`: the demo vocabulary and a seeded random GLM."""
    tokenizer = build_demo_tokenizer()
    torch.manual_seed(seed)
    return GLMForConditionalGeneration(build_demo_config(tokenizer)).eval(), tokenizer


def single_blank_inputs(token_ids: list[int], config: GLMConfig) -> dict[str, torch.Tensor | int]:
    """GLM's inputs for filling the one [MASK] of `[CLS] text [eos]`: Part A, then [sop] at the mask's position."""
    if config.mask_token_id not in token_ids:
        raise ValueError("The demo text needs a [MASK] to fill.")
    part_a = [config.cls_token_id, *token_ids, config.eos_token_id]
    mask_index = part_a.index(config.mask_token_id)
    input_ids = torch.tensor([[*part_a, config.sop_token_id]])
    position_ids = torch.tensor([[*range(len(part_a)), mask_index]])
    block_position_ids = torch.tensor([[0] * len(part_a) + [1]])
    return {
        "input_ids": input_ids,
        "position_ids": position_ids,
        "block_position_ids": block_position_ids,
        "prefix_length": len(part_a),
    }


def run_demo(output: Path | None = None, seed: int = 0, max_new_tokens: int = 8) -> DemoReport:
    """Build, save, reload and fill one blank; returns what happened."""
    model, tokenizer = default_model_and_tokenizer(seed)

    folder = Path(output) if output is not None else Path(tempfile.mkdtemp(prefix="glm-demo-"))
    if folder.exists() and any(folder.iterdir()):
        raise FileExistsError(f"{folder} exists and is not empty; pass an empty or new folder.")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)

    reloaded = AutoModelForSeq2SeqLM.from_pretrained(folder).eval()
    reloaded_tokenizer = AutoTokenizer.from_pretrained(folder)
    inputs = single_blank_inputs(reloaded_tokenizer.encode(DEMO_TEXT, add_special_tokens=False), reloaded.config)
    with torch.no_grad():
        reload_diff = (model(**inputs).logits - reloaded(**inputs).logits).abs().max().item()

    timings = {}
    outputs = {}
    for use_cache in (True, False):
        start = time.perf_counter()
        outputs[use_cache] = reloaded.generate(
            **inputs, max_new_tokens=max_new_tokens, do_sample=False, use_cache=use_cache
        )
        timings[use_cache] = time.perf_counter() - start
    if not torch.equal(outputs[True], outputs[False]):
        raise RuntimeError("Cached and recomputed decoding disagree; please report this as a bug.")

    new_tokens = outputs[True][0, inputs["input_ids"].shape[1] :].tolist()
    end_ids = {reloaded.config.eop_token_id, reloaded.config.eos_token_id}
    span_ids = [token for token in new_tokens if token not in end_ids]
    span = reloaded_tokenizer.decode(span_ids)
    return DemoReport(
        folder=folder,
        prompt=DEMO_TEXT,
        filled_text=DEMO_TEXT.replace("[MASK]", span, 1),
        span=span,
        cached_seconds=timings[True],
        recompute_seconds=timings[False],
        reload_max_abs_diff=reload_diff,
    )


def print_report(report: DemoReport) -> None:
    """Say what the demo did, one step a line."""
    files = ", ".join(sorted(path.name for path in report.folder.iterdir()))
    print(f"1. built a random 2-layer GLM and saved it to {report.folder}: {files}")
    print(
        "2. reloaded it with AutoModelForSeq2SeqLM; logits max abs diff vs the original: "
        f"{report.reload_max_abs_diff:.2e}"
    )
    print(f"3. prompt:  {report.prompt}")
    print(f"   span:    {report.span!r} (random weights: the words are random)")
    print(f"   filled:  {report.filled_text}")
    print(
        f"4. greedy decoding with the KV cache {report.cached_seconds * 1000:.1f} ms, recomputing every step "
        f"{report.recompute_seconds * 1000:.1f} ms; both gave the same tokens"
    )
