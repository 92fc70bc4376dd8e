"""The `glm-hf` console script."""

from __future__ import annotations

import subprocess
import sys

import pytest

from glm_hf.cli import main
from glm_hf.demo import run_demo


def test_demo_saves_reloads_and_fills_the_blank(tmp_path, capsys):
    main(["demo", "--output", str(tmp_path / "model")])
    printed = capsys.readouterr().out
    assert "model.safetensors" in printed and "AutoModelForSeq2SeqLM" in printed
    assert "both gave the same tokens" in printed
    report = run_demo(output=tmp_path / "again")
    assert report.reload_max_abs_diff == 0.0
    assert "[MASK]" not in report.filled_text and report.span
    assert report.filled_text.startswith("the ghost of the king ")


def test_demo_refuses_a_non_empty_folder(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(SystemExit, match="not empty"):
        main(["demo", "--output", str(tmp_path)])
    assert (tmp_path / "keep.txt").read_text() == "mine"


def test_console_script_module_prints_help():
    result = subprocess.run([sys.executable, "-m", "glm_hf.cli", "--help"], capture_output=True, text=True, check=True)
    assert "demo" in result.stdout
