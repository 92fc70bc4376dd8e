"""Strict command lines for the Trainer jobs (`glm-hf pretrain`, `glm-hf finetune`).

transformers' `HfArgumentParser` accepts abbreviations (`--max_step` for `--max_steps`) and, where a job passes the
remaining options on, a misspelled one can vanish without a word. Here an option is spelled in full or refused,
an unknown one names itself, and a bad value prints the job's short usage rather than the 600-line list of every
`TrainingArguments` field.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from transformers import HfArgumentParser


def short_usage_error(prog: str) -> Any:
    """An `ArgumentParser.error` replacement: the job's one-line usage and the message, exit status 2."""

    def error(message: str) -> NoReturn:
        print(f"usage: {prog} [options] (all options: {prog} --help)\n{prog}: error: {message}", file=sys.stderr)
        raise SystemExit(2)

    return error


def strict_parser(dataclass_types: Any, prog: str, error: Any = None) -> HfArgumentParser:
    """An `HfArgumentParser` that takes no abbreviation and reports errors through `error` (default: the job's
    short usage)."""
    parser = HfArgumentParser(dataclass_types, prog=prog, allow_abbrev=False)
    parser.error = error or short_usage_error(prog)  # argparse reports every parse error through this method
    return parser


def given_fields(dataclass_types: Any, argv: Sequence[str], prog: str, error: Any = None) -> set[str]:
    """The fields of `dataclass_types` that `argv` sets (by any spelling: dashes, underscores, `--no_x`); any option
    that is no field is an error naming it."""
    types = dataclass_types if isinstance(dataclass_types, (list, tuple)) else [dataclass_types]
    probe = strict_parser(types, prog, error)
    names = {field.name for kind in types for field in dataclasses.fields(kind) if field.init}
    for action in probe._actions:
        if action.dest in names:
            action.default = argparse.SUPPRESS  # only the fields given reach the namespace
            action.required = False  # a required field (none in TrainingArguments) must not fail this probe
    namespace, unknown = probe.parse_known_args(list(argv))
    if unknown:
        probe.error(
            f"unrecognized arguments: {' '.join(unknown)} (not an option of {prog} nor a TrainingArguments field; "
            "options are spelled in full)"
        )
    return set(vars(namespace))


__all__ = ["given_fields", "short_usage_error", "strict_parser"]
