"""Fill blanks with a GLM: the building blocks behind `glm_hf.fill_blanks`, step by step.

    python examples/generate_blank.py                      # the embedded default model (random weights)
    python examples/generate_blank.py --model FOLDER       # a converted checkpoint (see `glm-hf convert`)

1. `tokenizer.build_inputs_for_generation(texts, config)` makes left-padded `[CLS] text [eos] [sop]` prompts:
   Part A is `prefix_length` columns, [sop] sits at the first mask's position with block position 1.
2. `model.generate(**inputs)` continues that blank on the KV cache (greedy here, beam search below).
3. `glm_hf.fill_blanks` does the same for every blank of every text, left to right.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

import glm_hf
from glm_hf.demo import default_model_and_tokenizer

TEXTS = ["the ghost of the king [MASK] in the castle .", "a [MASK] night ."]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None)
    args = parser.parse_args()
    if args.model is None:
        model, tokenizer = default_model_and_tokenizer()
    else:
        model = AutoModelForSeq2SeqLM.from_pretrained(args.model).eval()
        tokenizer = AutoTokenizer.from_pretrained(args.model)

    inputs = glm_hf.build_generation_inputs(tokenizer, model.config, TEXTS)
    for name, tensor in inputs.items():
        print(f"{name:>18}: {tensor.tolist()}")
    with torch.no_grad():
        for label, options in {"greedy": {"do_sample": False}, "beam x4": {"num_beams": 4}}.items():
            output = model.generate(**inputs, max_new_tokens=6, **options)
            spans = tokenizer.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
            print(f"{label}: {spans}")

    for result in glm_hf.fill_blanks(model, tokenizer, [*TEXTS, "the [MASK] and the [MASK] ."], max_new_tokens=6):
        print(f"{result.text!r} <- {result.spans}")


if __name__ == "__main__":
    main()
