"""`glm-hf demo`: the whole pipeline on the embedded default model, offline.

1. load the packaged GLM (trained with `glm-hf pretrain`, see `glm_hf.default_model`) through the Auto classes;
2. write it in the ORIGINAL checkpoint layout (`mp_rank_00_model_states.pt`, as THUDM/GLM saves it);
3. convert that checkpoint back with the converter, as a user converts a released checkpoint;
4. check that the converted model's logits equal the packaged model's;
5. fill the blanks of a few sentences with the converted model, batched on the KV cache, and time it against
   filling them one text at a time.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

from .conversion import convert_checkpoint, export_original
from .default_model import default_model_folder
from .infilling import fill_blanks
from .progress import transformers_progress_bars

DEMO_TEXTS = (
    "to be, or not to be, that is the [MASK].",
    "good night, sweet [MASK], and flights of angels sing thee to thy rest!",
    "the [MASK] is out of joint: o cursed spite, that ever i was born to set it right!",
    "the game takes place during the second [MASK] war.",
)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
# Export and conversion copy the fp16 weights unchanged, so the logits agree exactly; a tolerance leaves room only
# for float32 rounding on other hardware.
LOGITS_TOLERANCE = 1e-4


@dataclass
class DemoReport:
    """What the demo did, for printing and for tests."""

    folder: Path
    original_files: list[str]
    converted_files: list[str]
    logits_max_abs_diff: float
    texts: list[str]
    filled: list[str]
    same_fills_one_by_one: bool
    seconds: dict[str, float] = field(default_factory=dict)


def _timed(seconds: dict[str, float], name: str, start: float) -> None:
    seconds[name] = time.perf_counter() - start


def run_demo(
    output: Path | None = None, texts: tuple[str, ...] | list[str] = DEMO_TEXTS, max_new_tokens: int = 8
) -> DemoReport:
    """Export, convert back, compare and fill blanks; `output` (new or empty) keeps the two model folders."""
    with transformers_progress_bars(False):  # a 9 MB model: every step takes milliseconds
        return _run_demo(output, texts, max_new_tokens)


def _run_demo(output: Path | None, texts: tuple[str, ...] | list[str], max_new_tokens: int) -> DemoReport:
    folder = Path(output) if output is not None else Path(tempfile.mkdtemp(prefix="glm-demo-"))
    if folder.exists() and any(folder.iterdir()):
        raise FileExistsError(f"{folder} exists and is not empty; pass an empty or new folder.")
    folder.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}

    start = time.perf_counter()
    packaged = default_model_folder()
    model = AutoModelForSeq2SeqLM.from_pretrained(packaged, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(packaged)
    _timed(seconds, "load", start)

    start = time.perf_counter()
    original = folder / "original"
    written = export_original(packaged, original)
    _timed(seconds, "export", start)

    start = time.perf_counter()
    converted = folder / "converted"
    convert_checkpoint(
        original,
        converted,
        num_attention_heads=model.config.num_attention_heads,  # the original layout does not record it
        tokenizer_family=getattr(tokenizer, "glm_family", None),
        show_progress=False,
        command="glm-hf demo",
    )
    for name in TOKENIZER_FILES:
        if (packaged / name).is_file():
            shutil.copy(packaged / name, converted / name)
    _timed(seconds, "convert", start)

    reloaded = AutoModelForSeq2SeqLM.from_pretrained(converted, dtype=torch.float32).eval()
    probe = tokenizer(list(texts), padding=True, return_tensors="pt")
    probe = {"input_ids": probe["input_ids"], "attention_mask": probe["attention_mask"]}
    with torch.no_grad():
        diff = (model(**probe).logits - reloaded(**probe).logits).abs().max().item()
    if not diff <= LOGITS_TOLERANCE:
        raise RuntimeError(
            f"The converted model's logits differ from the packaged model's by up to {diff:.3g} (tolerance "
            f"{LOGITS_TOLERANCE}): the export or the converter changed the weights; please report this as a bug."
        )

    greedy = {"max_new_tokens": max_new_tokens, "do_sample": False, "num_beams": 1}
    start = time.perf_counter()
    results = fill_blanks(reloaded, tokenizer, list(texts), **greedy)
    _timed(seconds, "fill (KV cache, batched)", start)
    start = time.perf_counter()
    one_by_one = [fill_blanks(reloaded, tokenizer, [text], **greedy)[0].text for text in texts]
    _timed(seconds, "fill (one by one)", start)

    return DemoReport(
        folder=folder,
        original_files=sorted(str(path.relative_to(original)) for path in written),
        converted_files=sorted(path.name for path in converted.iterdir()),
        logits_max_abs_diff=diff,
        texts=list(texts),
        filled=[result.text for result in results],
        # Padding changes the float rounding of a batch, so a near-tie may be broken differently on some machines.
        same_fills_one_by_one=one_by_one == [result.text for result in results],
        seconds=seconds,
    )


def print_report(report: DemoReport) -> None:
    """Say what the demo did, one step a line."""
    print(f"1. loaded the embedded default GLM ({report.seconds['load']:.2f} s)")
    print(
        f"2. wrote it in the original checkpoint layout: {report.folder / 'original'}: "
        f"{', '.join(report.original_files)} ({report.seconds['export']:.2f} s)"
    )
    print(
        f"3. converted it back with the converter: {report.folder / 'converted'}: "
        f"{', '.join(report.converted_files)} ({report.seconds['convert']:.2f} s)"
    )
    print(f"4. logits of the converted model vs the packaged one: max abs diff {report.logits_max_abs_diff:.2e}")
    print("5. blank infilling with the converted model (a toy trained for minutes on Hamlet: expect poor fills):")
    for text, filled in zip(report.texts, report.filled, strict=True):
        print(f"   {text}\n   -> {filled}")
    batched = report.seconds["fill (KV cache, batched)"]
    one_by_one = report.seconds["fill (one by one)"]
    print(
        f"   {len(report.texts)} texts: {batched * 1000:.0f} ms batched on the KV cache, {one_by_one * 1000:.0f} ms "
        f"one text at a time ({one_by_one / max(batched, 1e-9):.1f}x); "
        + ("both gave the same fills" if report.same_fills_one_by_one else "their fills differ (a near-tie)")
    )
