"""`glm-hf chat MODEL`: talk to a converted ChatGLM-6B in the terminal, the answer streamed as it is generated.

Each turn is the original `chat()` prompt (`[Round i]\\n问：...\\n答：...`, the tokenizer's chat template) over the
turns so far; the answer is streamed through transformers' `TextStreamer` and kept in the history after the
original's `process_response` clean-up (`chatglm_response`). Turns come from the terminal, or one per line from
stdin when it is not a terminal; an empty line or end of input ends the conversation, `/clear` forgets the history.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TextIO

import torch

CLEAR_COMMAND = "/clear"


def read_turns(stream: TextIO, interactive: bool, prompt: str = "user> ") -> Iterator[str]:
    """The user's turns: lines of `stream` (stripped), until an empty line or the end of input."""
    while True:
        if interactive:
            print(prompt, end="", flush=True)
        line = stream.readline()
        if not line or not line.strip():
            return
        yield line.strip()


def load_chat_model(folder: str | Path, adapter: str | Path | None = None, dtype: str = "auto") -> tuple[Any, Any]:
    """`(model, tokenizer)` of a converted ChatGLM folder (with its PEFT adapter, e.g. a converted P-Tuning v2
    prefix); refuses a folder without a chat template, which could not build the original's prompts."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            f"{folder}: the tokenizer has no chat template. `glm-hf chat` talks to a ChatGLM-6B converted with its "
            "ice_text.model (glm-hf convert CHATGLM_FOLDER OUTPUT); GLM checkpoints fill blanks: use `glm-hf infill`."
        )
    torch_dtype = "auto" if dtype == "auto" else getattr(torch, dtype)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch_dtype)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    if torch.cuda.is_available():
        model = model.to("cuda")
    return model.eval(), tokenizer


def chat_turns(
    model: Any,
    tokenizer: Any,
    turns: Iterable[str],
    output: TextIO = sys.stdout,
    **generate_kwargs: Any,
) -> list[tuple[str, str]]:
    """Answer each turn in order with the history so far, streaming each answer to `output`; returns the history
    of `(query, response)` pairs (responses cleaned up as the original's `chat()` does)."""
    from transformers import TextStreamer

    from .tokenization_chatglm import chatglm_response

    class _Streamer(TextStreamer):
        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            print(text, end="\n" if stream_end else "", file=output, flush=True)

    history: list[tuple[str, str]] = []
    for query in turns:
        if query == CLEAR_COMMAND:
            history = []
            print("(history cleared)", file=output)
            continue
        messages = []
        for old_query, response in history:
            messages += [{"role": "user", "content": old_query}, {"role": "assistant", "content": response}]
        messages.append({"role": "user", "content": query})
        inputs = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        ).to(model.device)
        streamer = _Streamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
        with torch.no_grad():
            sequences = model.generate(**inputs, streamer=streamer, **generate_kwargs)
        answer = tokenizer.decode(sequences[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        history.append((query, chatglm_response(answer)))
    return history


def run_chat(args: Any) -> None:
    """The `glm-hf chat` job."""
    model, tokenizer = load_chat_model(args.model, adapter=args.adapter, dtype=args.dtype)
    options: dict[str, Any] = {"max_new_tokens": args.max_new_tokens}
    if args.greedy:
        options["do_sample"] = False
    else:  # the original chat()'s sampling defaults
        options.update(do_sample=True, top_p=args.top_p, temperature=args.temperature)
        if args.seed is not None:
            torch.manual_seed(args.seed)
    interactive = sys.stdin.isatty()
    if interactive:
        print(f"Talking to {args.model}; an empty line ends, {CLEAR_COMMAND} forgets the history.")
    chat_turns(model, tokenizer, read_turns(sys.stdin, interactive), **options)
