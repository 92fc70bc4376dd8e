"""The `glm-hf` console script: a thin argument parser over the library's jobs."""

from __future__ import annotations

import argparse
import shlex
import shutil
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def _demo(args: argparse.Namespace) -> None:
    from .demo import print_report, run_demo

    report = run_demo(output=args.output, max_new_tokens=args.max_new_tokens)
    print_report(report)
    if args.output is None:  # a temporary folder: do not leave two model copies behind on every run
        shutil.rmtree(report.folder, ignore_errors=True)
        print(f"removed {report.folder}; pass --output DIR to keep the two model folders")


def _convert(args: argparse.Namespace) -> None:
    from .conversion import convert_checkpoint

    report = convert_checkpoint(
        args.source,
        args.output,
        dtype=args.dtype,
        num_attention_heads=args.num_attention_heads,
        tokenizer_family=args.tokenizer,
        vocab_dir=args.vocab_dir,
        max_shard_size=args.max_shard_size,
        overwrite=args.overwrite,
        verify=args.verify,
        trust_remote_pickle=args.trust_remote_pickle,
        command="glm-hf " + " ".join(shlex.quote(arg) for arg in args.argv),
        remote_code=args.remote_code,
        force=args.force,
    )
    print(report.summary())


def _chat(args: argparse.Namespace) -> None:
    from .chat import run_chat

    run_chat(args)


def _push(args: argparse.Namespace) -> None:
    from .hub import push_folder

    info = push_folder(
        args.folder,
        args.repo_id,
        private=args.private,
        revision=args.revision,
        commit_message=args.commit_message,
        exclude=args.exclude,
        dry_run=args.dry_run,
    )
    if args.dry_run:
        print("dry run: every check passed; nothing was uploaded")
    else:
        print(f"committed: {getattr(info, 'commit_url', info)}")


def _export_remote_code(args: argparse.Namespace) -> None:
    from .hub import export_remote_code

    for name in export_remote_code(args.folder):
        print(f"wrote {args.folder / name}")


def _export_original(args: argparse.Namespace) -> None:
    from .conversion import export_original

    for path in export_original(args.folder, args.output, mp=args.mp, overwrite=args.overwrite, force=args.force):
        print(f"wrote {path}")


def _infill(args: argparse.Namespace) -> None:
    from .infill_cli import run_infill

    run_infill(args)


def _pretrain(args: argparse.Namespace) -> None:
    from .pretraining import main as pretrain_main

    pretrain_main(args.rest)


def _finetune(args: argparse.Namespace) -> None:
    from .superglue.training import main as finetune_main

    finetune_main(args.rest, prog="glm-hf finetune")


def _show_batch(args: argparse.Namespace) -> None:
    from .visualize import load_tokenizer, show_batch

    figure = show_batch(
        args.texts,
        args.output,
        tokenizer=load_tokenizer(args.tokenizer, args.vocab_dir),
        input_path=args.input,
        objective=args.objective,
        seed=args.seed,
        max_length=args.max_length,
        task_mask=args.task_mask,
        overwrite=args.overwrite,
    )
    print(f"wrote {figure.path}: {len(figure.tokens)} tokens, Part A {figure.prefix_length}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="glm-hf", description="The original GLM in transformers.")
    jobs = parser.add_subparsers(dest="job", required=True)

    demo = jobs.add_parser(
        "demo", help="the embedded default GLM: export to the original layout, convert back, compare, fill blanks"
    )
    demo.add_argument("--output", type=Path, default=None, help="new or empty folder to keep the model folders in")
    demo.add_argument("--max-new-tokens", type=int, default=8)
    demo.set_defaults(run=_demo)

    convert = jobs.add_parser(
        "convert", help="original GLM or ChatGLM-6B checkpoint -> safetensors folder for from_pretrained"
    )
    convert.add_argument(
        "source",
        type=Path,
        help="checkpoint folder (released, flat or Hub layout; or a ChatGLM-6B folder) or .pt/.bin file",
    )
    convert.add_argument("output", type=Path, help="folder to create")
    convert.add_argument("--dtype", choices=["auto", "float32", "float16", "bfloat16"], default="auto")
    convert.add_argument(
        "--num-attention-heads",
        type=int,
        default=None,
        help="default: the checkpoint's config.json, else the released model of its shape; required otherwise",
    )
    convert.add_argument("--tokenizer", default=None, metavar="FAMILY", help="tokenizer family (special token ids)")
    convert.add_argument("--vocab-dir", type=Path, default=None, help="folder with the family's vocabulary files")
    convert.add_argument("--max-shard-size", default="5GB")
    convert.add_argument("--overwrite", action="store_true", help="replace an earlier converted OUTPUT folder")
    convert.add_argument("--force", action="store_true", help="replace OUTPUT whatever it holds")
    convert.add_argument("--verify", action="store_true", help="reload, compare every tensor, run a forward pass")
    convert.add_argument(
        "--trust-remote-pickle", action="store_true", help="unpickle globals beyond those GLM checkpoints need"
    )
    convert.add_argument(
        "--remote-code",
        action="store_true",
        help="also write the model/tokenizer code (auto_map) for trust_remote_code",
    )
    convert.set_defaults(run=_convert)

    infill = jobs.add_parser("infill", help="fill every [MASK]/[sMASK]/[gMASK] of texts, or of a .txt/.jsonl file")
    infill.add_argument("texts", nargs="*", help="texts with blanks (or use --input)")
    infill.add_argument("--model", type=Path, default=None, help="model folder (default: the embedded default)")
    infill.add_argument(
        "--input",
        type=Path,
        default=None,
        help=".txt (a text per line; blank lines skipped) or .jsonl ({'text': ...})",
    )
    infill.add_argument(
        "--output",
        type=Path,
        default=None,
        help=".jsonl (a record per text: text, filled_text, spans) or .txt (filled texts) to write (default: print)",
    )
    infill.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    infill.add_argument("--batch-size", type=int, default=16)
    infill.add_argument("--max-new-tokens", type=int, default=32, help="per blank")
    infill.add_argument("--num-beams", type=int, default=1)
    infill.add_argument("--do-sample", action="store_true")
    infill.add_argument("--top-k", type=int, default=None)
    infill.add_argument("--top-p", type=float, default=None)
    infill.add_argument("--temperature", type=float, default=None)
    infill.add_argument("--seed", type=int, default=None, help="seed for sampling")
    infill.add_argument(
        "--device", default="auto", help="cpu, cuda or cuda:N; auto (default): the GPU where one is available"
    )
    infill.add_argument(
        "--dtype",
        default="auto",
        choices=("auto", "float32", "float16", "bfloat16"),
        help="auto (default): float32 on the CPU, the checkpoint's on a GPU",
    )
    infill.set_defaults(run=_infill)

    chat = jobs.add_parser("chat", help="talk to a converted ChatGLM-6B (turns from the terminal or stdin, streamed)")
    chat.add_argument("model", type=Path, help="converted ChatGLM-6B folder (with its tokenizer)")
    chat.add_argument(
        "--adapter", type=Path, default=None, help="PEFT adapter folder, e.g. MODEL/adapter (P-Tuning v2)"
    )
    chat.add_argument("--max-new-tokens", type=int, default=512)
    chat.add_argument("--greedy", action="store_true", help="greedy decoding instead of the original's sampling")
    chat.add_argument("--top-p", type=float, default=0.7)
    chat.add_argument("--temperature", type=float, default=0.95)
    chat.add_argument("--seed", type=int, default=None, help="seed for sampling")
    chat.add_argument("--dtype", choices=["auto", "float32", "float16", "bfloat16"], default="auto")
    chat.set_defaults(run=_chat)

    export = jobs.add_parser("export-original", help="glm-hf folder -> the original checkpoint layout")
    export.add_argument("folder", type=Path)
    export.add_argument("output", type=Path)
    export.add_argument("--mp", type=int, default=1, help="model-parallel ranks to split into")
    export.add_argument("--overwrite", action="store_true", help="replace an earlier export at OUTPUT")
    export.add_argument("--force", action="store_true", help="replace OUTPUT whatever it holds")
    export.set_defaults(run=_export_original)

    push = jobs.add_parser(
        "push", help="upload a converted folder (safetensors only) to a Hugging Face Hub repository"
    )
    push.add_argument("folder", type=Path)
    push.add_argument("repo_id", help="namespace/name of the model repository (created if needed)")
    push.add_argument("--private", action="store_true", help="create the repository private")
    push.add_argument("--revision", default=None, help="branch to commit to (created if needed; default main)")
    push.add_argument("--commit-message", default=None)
    push.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="PATTERN",
        help="leave out files matching PATTERN (fnmatch, relative to FOLDER; repeatable); Trainer state always is",
    )
    push.add_argument("--dry-run", action="store_true", help="run every check and list the files; upload nothing")
    push.set_defaults(run=_push)

    remote = jobs.add_parser(
        "export-remote-code", help="write the model/tokenizer code into a converted folder (auto_map) for the Hub"
    )
    remote.add_argument("folder", type=Path)
    remote.set_defaults(run=_export_remote_code)

    pretrain = jobs.add_parser(
        "pretrain",
        add_help=False,
        help="train a GLM with the blank-infilling objective on .txt/.jsonl files (Trainer; `pretrain --help`)",
    )
    pretrain.set_defaults(run=_pretrain)

    finetune = jobs.add_parser(
        "finetune",
        add_help=False,
        help="fine-tune on a SuperGLUE task with cloze questions (Trainer; `finetune --help`)",
    )
    finetune.set_defaults(run=_finetune)

    show = jobs.add_parser(
        "show-batch", help="draw one blank-infilling training example (tokens, 2D positions, attention mask) as PNG"
    )
    show.add_argument("texts", nargs="*", help="documents (default: --input, else a built-in paragraph)")
    show.add_argument("--input", type=Path, default=None, help=".txt (a document per line) or .jsonl ({'text': ...})")
    show.add_argument("--output", type=Path, required=True, help=".png file to write")
    show.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    show.add_argument("--objective", choices=["span", "sentence", "document"], default="span")
    show.add_argument("--seed", type=int, default=0, help="the collator's seed")
    show.add_argument("--max-length", type=int, default=64, help="tokens per packed sample")
    show.add_argument("--task-mask", action="store_true", help="[sMASK]/[gMASK] for the sentence/document objectives")
    show.add_argument("--tokenizer", default=None, metavar="FAMILY", help="tokenizer family, with --vocab-dir")
    show.add_argument(
        "--vocab-dir", type=Path, default=None, help="vocabulary files, or a saved tokenizer (default: the model's)"
    )
    show.set_defaults(run=_show_batch)
    return parser


# Jobs whose options are parsed by the library (transformers' `HfArgumentParser` with `TrainingArguments`): the
# console script hands them every argument after the job's name, `--help` included.
PASS_THROUGH_JOBS = {"pretrain", "finetune"}


@contextmanager
def exit_on_sigterm() -> Iterator[None]:
    """Inside the block, SIGTERM (`kill`, a job scheduler's stop) exits by unwinding like Ctrl-C, so that a job's
    staging folders are removed and nothing half-written stays behind (SIGKILL cannot be caught: the next run cleans
    up). The caller's handler comes back after the block."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.job not in PASS_THROUGH_JOBS and rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    args.argv = argv
    args.rest = rest
    try:
        with exit_on_sigterm():
            args.run(args)
    except (OSError, KeyError, ValueError) as error:  # user errors; their messages say what to change
        raise SystemExit(f"glm-hf {args.job}: error: {error}") from None


if __name__ == "__main__":
    main()
