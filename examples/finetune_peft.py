"""Parameter-efficient fine-tuning of GLM on a SuperGLUE task with `Trainer`: LoRA or P-Tuning, adapter only.

    python examples/finetune_peft.py --method lora --task rte --data-dir DATA/RTE --model FOLDER --output-dir OUT
    python examples/finetune_peft.py --method p-tuning --num-virtual-tokens 3 --task rte ...

The task runs as `glm_hf.superglue.finetune` runs it (the original patterns and verbalizers, `GLMForMultipleChoice`
scoring the candidates through the LM head, evaluation every epoch, the best epoch kept), on a PEFT-wrapped model:

- `--method lora`: LoRA on every linear layer of the blocks (the default targets `import glm_hf` registers) with rank
  `--lora-r`; learning rate 5e-4 unless `--learning_rate` is given.
- `--method p-tuning`: PEFT's prompt encoder (`--prompt-encoder lstm|mlp`, the original's `--prompt-func`) makes
  `--num-virtual-tokens` embeddings that sit in Part A in front of each input; the model stays frozen; learning rate
  1e-3 unless given. Single-token tasks only (BoolQ, CB, MultiRC, RTE, WiC): multi-token candidates are one row
  each, which PEFT's prompt learning cannot prepend to.

OUT/model holds only the adapter (`adapter_config.json`, `adapter_model.safetensors`) and the tokenizer; load it with
`PeftModel.from_pretrained(AutoModelForMultipleChoice.from_pretrained(FOLDER), OUT / "model")`. OUT/metrics.json and
OUT/predictions/{val,test}/<Task>.jsonl are as `run_superglue.py` writes them. Every other option is a
`TrainingArguments` field (`--num_train_epochs`, `--per_device_train_batch_size`, `--bf16 True`, ...); unset ones take
the task's released recipe. See docs/peft_and_scale.md for reproducing the original's `--continuous-prompt`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

import torch
from peft import LoraConfig, PromptEncoderConfig, get_peft_model
from transformers import AutoModelForMultipleChoice, AutoTokenizer

import glm_hf  # noqa: F401  (registers GLM with the Auto classes and its defaults with PEFT)
from glm_hf.superglue import TASK_SETTINGS, finetune, get_pvp, parse_arguments
from glm_hf.superglue.training import build_argument_parser

DEFAULT_LEARNING_RATES = {"lora": 5e-4, "p-tuning": 1e-3}


def peft_argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="finetune_peft.py", add_help=False, description="PEFT options (the task and training options follow)."
    )
    parser.add_argument("--method", choices=("lora", "p-tuning"), required=True)
    parser.add_argument("--lora-r", type=int, default=8, help="LoRA rank (alpha = 2 * rank)")
    parser.add_argument("--lora-dropout", type=float, default=0.05)
    parser.add_argument("--num-virtual-tokens", type=int, default=3, help="P-Tuning: the original used 3")
    parser.add_argument("--prompt-encoder", choices=("lstm", "mlp"), default="lstm", help="P-Tuning's encoder")
    return parser


def peft_config(options: argparse.Namespace, hidden_size: int) -> LoraConfig | PromptEncoderConfig:
    """The PEFT config of `--method`. SEQ_CLS: labels are candidate indices, not tokens to shift in."""
    if options.method == "lora":
        return LoraConfig(
            task_type="SEQ_CLS", r=options.lora_r, lora_alpha=2 * options.lora_r, lora_dropout=options.lora_dropout
        )
    return PromptEncoderConfig(
        task_type="SEQ_CLS",
        num_virtual_tokens=options.num_virtual_tokens,
        encoder_reparameterization_type=options.prompt_encoder.upper(),
        encoder_hidden_size=hidden_size,  # as the original PromptSpell: an LSTM as wide as the model
        encoder_num_layers=2,
    )


def check_single_token(options: argparse.Namespace, task_options: argparse.Namespace) -> None:
    """P-Tuning prepends embeddings to `[B, T]` rows; multi-token candidates come as `[B, C, T]`."""
    if options.method != "p-tuning":
        return
    settings = TASK_SETTINGS[task_options.task]
    pattern_id = settings.pattern_id if task_options.pattern_id is None else task_options.pattern_id
    multi_token = task_options.multi_token
    if multi_token is None:
        multi_token = get_pvp(task_options.task, pattern_id).multi_token
    if multi_token:
        raise SystemExit(
            f"finetune_peft.py: error: --method p-tuning needs a single-token cloze, but {task_options.task} "
            f"(pattern {pattern_id}) scores multi-token candidates. Use --method lora, or --no-multi-token where "
            "the task's verbalizers are single tokens."
        )


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:  # both parsers' help (parsing first would stop at the missing --method)
        peft_argument_parser().print_help()
        build_argument_parser("finetune_peft.py").print_help()
        raise SystemExit(0)
    options, rest = peft_argument_parser().parse_known_args(argv)
    if not any(arg.split("=")[0] in ("--learning_rate", "--learning-rate") for arg in rest):
        rest += ["--learning_rate", str(DEFAULT_LEARNING_RATES[options.method])]
    task_options, training_args = parse_arguments(rest, prog="finetune_peft.py")
    check_single_token(options, task_options)

    tokenizer = AutoTokenizer.from_pretrained(task_options.model)
    model = AutoModelForMultipleChoice.from_pretrained(task_options.model, dtype=torch.float32)  # see finetune()
    model = get_peft_model(model, peft_config(options, model.config.hidden_size))
    model.print_trainable_parameters()
    results = finetune(
        task_options.task,
        task_options.data_dir,
        model,
        task_options.output_dir,
        training_args=training_args,
        tokenizer=tokenizer,
        pattern_id=task_options.pattern_id,
        max_length=task_options.max_length,
        multi_token=task_options.multi_token,
        loss_func=task_options.loss_func,
        length_penalty=task_options.length_penalty,
        wsc_candidates=task_options.wsc_candidates,
        train=not task_options.eval_only,
    )
    print(json.dumps({"task": results["task"], "method": options.method, "val": results["val"]}, indent=1))
    return results


if __name__ == "__main__":
    main()
