"""The `glm-hf` console script."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from glm_hf.cli import main
from glm_hf.demo import run_demo


def test_demo_exports_converts_back_compares_and_fills_blanks(tmp_path, capsys):
    main(["demo"])
    printed = capsys.readouterr().out
    assert "mp_rank_00_model_states.pt" in printed and "model.safetensors" in printed
    assert "both gave the same fills" in printed
    temporary = Path(printed.split("removed ", 1)[1].split(";", 1)[0])
    assert temporary.name.startswith("glm-demo-") and not temporary.exists()  # no model copies left behind
    report = run_demo(output=tmp_path / "again", texts=["to be, or not to be, that is the [MASK]."])
    assert report.logits_max_abs_diff == 0.0  # fp16 weights -> original layout -> converter: bit for bit
    assert (report.folder / "original" / "release" / "mp_rank_00_model_states.pt").is_file()
    assert (report.folder / "converted" / "model.safetensors").is_file()
    (filled,) = report.filled
    assert "[MASK]" not in filled and filled.startswith("to be, or not to be, that is the ")
    assert set(report.seconds) >= {"load", "export", "convert"}


def test_demo_refuses_a_non_empty_folder(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(SystemExit, match="not empty"):
        main(["demo", "--output", str(tmp_path)])
    assert (tmp_path / "keep.txt").read_text() == "mine"


def test_console_script_module_prints_help():
    result = subprocess.run([sys.executable, "-m", "glm_hf.cli", "--help"], capture_output=True, text=True, check=True)
    assert all(job in result.stdout for job in ("demo", "show-batch", "pretrain"))


def test_pretrain_hands_its_options_and_help_to_the_training_parser(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["pretrain", "--help"])
    assert exit_info.value.code == 0
    assert "--train_files" in capsys.readouterr().out  # TrainingArguments' parser, not the console script's
    with pytest.raises(SystemExit):
        main(["show-batch", "--output", "x.png", "--no-such-flag"])
    assert "unrecognized arguments: --no-such-flag" in capsys.readouterr().err
