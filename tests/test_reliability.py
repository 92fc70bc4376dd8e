"""Hostile and careless input: nothing lost, nothing wrong, nothing executed (docs/reliability.md lists each case).

Every bad input is built here at run time from the tiny original-layout fixtures (written by the original code):
outputs that would destroy their source, interrupted runs, damaged and malicious checkpoints, nonsense configs.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_conversion import CHECKPOINTS, convert

import glm_hf
from glm_hf.cli import main
from glm_hf.conversion import CheckpointError
from glm_hf.default_model import default_model_and_tokenizer, default_model_folder


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` with its bytes: what must survive a refused command unchanged."""
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def copy_released(tmp_path: Path) -> Path:
    source = tmp_path / "ckpt"
    shutil.copytree(CHECKPOINTS / "released", source)
    return source


# ---- data loss: an output that would destroy its source -------------------------------------------------------------


def test_convert_onto_its_own_source_is_refused_and_the_source_is_intact(tmp_path):
    source = copy_released(tmp_path)
    before = snapshot(source)
    for options in ({"overwrite": True}, {"force": True}):
        with pytest.raises(ValueError, match="is the source"):
            convert(source, source, **options)
    assert snapshot(source) == before


def test_convert_into_a_folder_that_holds_the_source_is_refused(tmp_path):
    """`glm-hf convert P/ckpt P --overwrite` once deleted the source and the files beside it."""
    parent = tmp_path / "project"
    parent.mkdir()
    source = copy_released(parent)
    (parent / "notes.txt").write_text("unrelated work")
    before = snapshot(parent)
    with pytest.raises(SystemExit, match="holds the source"):
        main(["convert", str(source), str(parent), "--overwrite", "--num-attention-heads", "4"])
    with pytest.raises(ValueError, match="lies inside the source"):
        convert(source, source / "converted")
    assert snapshot(parent) == before


def test_convert_into_the_current_folder_is_refused_without_leftovers(tmp_path, monkeypatch):
    """`glm-hf convert ck . --overwrite` once failed "busy" and left an empty `..replaced-*` folder."""
    source = copy_released(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    with pytest.raises(SystemExit, match="holds the current folder"):
        main(["convert", str(source), ".", "--overwrite", "--num-attention-heads", "4"])
    assert list(work.iterdir()) == [] and sorted(path.name for path in tmp_path.iterdir()) == ["ckpt", "work"]


def test_overwrite_replaces_only_a_converted_folder_and_force_anything(tmp_path):
    output = tmp_path / "out"
    output.mkdir()
    (output / "thesis.tex").write_text("years of work")
    with pytest.raises(FileExistsError, match="not a folder this tool wrote.*--force"):
        convert(CHECKPOINTS / "released", output, overwrite=True)
    assert (output / "thesis.tex").read_text() == "years of work"
    file_output = tmp_path / "file"
    file_output.write_text("a file")
    with pytest.raises(FileExistsError, match="not a folder this tool wrote"):
        convert(CHECKPOINTS / "released", file_output, overwrite=True)
    assert file_output.read_text() == "a file"
    convert(CHECKPOINTS / "released", output, force=True)
    assert (output / "model.safetensors").is_file() and not (output / "thesis.tex").exists()


def test_export_original_overwrite_keeps_folders_it_did_not_write(tmp_path):
    converted = tmp_path / "converted"
    convert(CHECKPOINTS / "released", converted)
    target = tmp_path / "export"
    target.mkdir()
    (target / "mine.txt").write_text("keep")
    with pytest.raises(SystemExit, match="not a folder this tool wrote"):
        main(["export-original", str(converted), str(target), "--overwrite"])
    with pytest.raises(SystemExit, match="holds the source"):
        main(["export-original", str(converted), str(tmp_path), "--force"])
    main(["export-original", str(converted), str(tmp_path / "export2")])
    main(["export-original", str(converted), str(tmp_path / "export2"), "--overwrite", "--mp", "2"])
    assert (tmp_path / "export2" / "release" / "mp_rank_01_model_states.pt").is_file()
    assert (target / "mine.txt").read_text() == "keep"


# ---- interrupted runs -----------------------------------------------------------------------------------------------

SLOW_CONVERT = """
import sys, time
import glm_hf.conversion.convert as convert

original = convert.write_sharded_safetensors
def slow(*args, **kwargs):
    files = original(*args, **kwargs)
    print("written", flush=True)
    time.sleep(60)
    return files
convert.write_sharded_safetensors = slow
import glm_hf
from glm_hf.cli import main
main(sys.argv[1:])
"""


def test_sigterm_during_a_conversion_leaves_no_partial_folder(tmp_path):
    output = tmp_path / "out"
    command = [sys.executable, "-c", SLOW_CONVERT, "convert", str(CHECKPOINTS / "released"), str(output)]
    process = subprocess.Popen([*command, "--num-attention-heads", "4"], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "written"  # the staging folder holds the weights now
    assert [path.name for path in tmp_path.iterdir() if ".partial-" in path.name]
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 128 + signal.SIGTERM
    assert list(tmp_path.iterdir()) == []  # neither the output nor the staging folder


def test_a_rerun_removes_what_a_killed_run_left_and_says_so(tmp_path, capfd):
    output = tmp_path / "out"
    stale = tmp_path / ".out.partial-k1ll3d"  # what SIGKILL leaves: it cannot be caught
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"\0" * 1024)
    (tmp_path / ".out.replaced-old").mkdir()
    (tmp_path / ".other.partial-x").mkdir()  # another output's: not ours to remove
    convert(CHECKPOINTS / "released", output)
    assert sorted(path.name for path in tmp_path.iterdir()) == [".other.partial-x", "out"]
    assert f"removed {stale}, left by an interrupted run" in capfd.readouterr().err


# ---- malicious pickles: never executed, named in our words ----------------------------------------------------------


class Payload:
    """Unpickling this calls `function(argument)`: the usual shape of a malicious checkpoint."""

    def __init__(self, function, argument):
        self.function, self.argument = function, argument

    def __reduce__(self):
        return self.function, (self.argument,)


def malicious_checkpoint(tmp_path: Path, layout: str, payload: Payload) -> Path:
    """A real GLM checkpoint of `layout` whose pickle also holds `payload`."""
    contents = torch.load(CHECKPOINTS / "flat" / "mp_rank_00_model_states.pt", weights_only=False)
    folder = tmp_path / layout
    folder.mkdir()
    if layout == "hub":
        shutil.copy(CHECKPOINTS / "hub" / "config.json", folder / "config.json")
        state = dict(torch.load(CHECKPOINTS / "hub" / "pytorch_model.bin", weights_only=True))
        torch.save({**state, "extra": payload}, folder / "pytorch_model.bin")
        return folder
    contents["args"] = payload
    legacy = layout == "legacy"
    torch.save(contents, folder / "mp_rank_00_model_states.pt", _use_new_zipfile_serialization=not legacy)
    return folder


@pytest.mark.parametrize("layout", ["released", "legacy", "hub"])
@pytest.mark.parametrize(
    "function, named",
    [(os.system, f"{os.system.__module__}.system"), (eval, "builtins.eval"), (sys.exit, "sys.exit")],
)
def test_a_malicious_pickle_is_named_and_never_executed(tmp_path, layout, function, named):
    marker = tmp_path / "executed"
    touch = f"__import__('pathlib').Path({str(marker)!r}).touch()"
    argument = f"touch {marker}" if function is os.system else touch
    source = malicious_checkpoint(tmp_path, layout, Payload(function, argument))
    with pytest.raises(CheckpointError) as raised:
        convert(source, tmp_path / "out")
    message = str(raised.value)
    assert f"holds a call to {named}" in message
    assert "nothing was executed" in message and "--trust-remote-pickle" in message
    assert "weights_only" not in message and "truncated" not in message  # not torch's words
    assert not marker.exists() and not (tmp_path / "out").exists()


# ---- configurations with nonsense values ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "values, named",
    [
        ({"num_attention_heads": 0}, "num_attention_heads=0: it must be a positive whole number"),
        ({"hidden_size": 0}, "hidden_size=0: it must be a positive whole number"),
        ({"vocab_size": -5}, "vocab_size=-5"),
        ({"num_hidden_layers": "two"}, "num_hidden_layers='two'"),
        ({"num_attention_heads": 3}, "hidden_size=1024 must be a multiple of num_attention_heads=3"),
        ({"layer_norm_eps": -1e-5}, "layer_norm_eps=-1e-05: it must be a positive number"),
        ({"layer_norm_eps": 0.0}, "layer_norm_eps=0.0"),
        ({"hidden_dropout_prob": 1.5}, "hidden_dropout_prob=1.5: a dropout probability must be in"),
    ],
)
def test_a_config_with_nonsense_values_is_refused_naming_the_key(tmp_path, values, named):
    with pytest.raises(ValueError, match=named):
        glm_hf.GLMConfig(**values)
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "glm_blocklm", **values}))
    with pytest.raises(ValueError, match=named):
        glm_hf.GLMConfig.from_pretrained(folder)


# ---- checkpoints that would convert into a folder that cannot load --------------------------------------------------


def damaged_released(tmp_path: Path, damage) -> Path:
    """The released single-rank fixture with `damage(module)` applied to its `module` dict."""
    source = copy_released(tmp_path)
    path = source / "1000" / "mp_rank_00_model_states.pt"
    contents = torch.load(path, weights_only=False)
    damage(contents["module"])
    torch.save(contents, path)
    return source


def _wrong_qkv(module):
    name = "transformer.layers.1.attention.query_key_value.weight"
    module[name] = module[name][:-8]


def _integer_embeddings(module):
    module["word_embeddings.weight"] = module["word_embeddings.weight"].to(torch.int32)


def _empty_vocabulary(module):
    module["word_embeddings.weight"] = module["word_embeddings.weight"][:0]


def _sparse(module):
    module["transformer.final_layernorm.bias"] = module["transformer.final_layernorm.bias"].to_sparse()


def _missing_layer_tensor(module):
    del module["transformer.layers.0.attention.dense.weight"]


def _missing_position_table(module):
    del module["transformer.position_embeddings.weight"]


@pytest.mark.parametrize(
    "damage, named",
    [
        (
            _wrong_qkv,
            r"transformer.layers.1.attention.query_key_value.weight has shape \[184, 64\], but .* needs \[192, 64\]",
        ),
        (_integer_embeddings, "word_embeddings.weight holds torch.int32 values, but GLM weights are floating point"),
        (_empty_vocabulary, "vocab_size=0: it must be a positive whole number"),
        (_sparse, "transformer.final_layernorm.bias is a torch.sparse_coo tensor; GLM weights are dense"),
        (_missing_layer_tensor, "lacks transformer.layers.0.attention.dense.weight, which a GLM of 2 layers has"),
        (_missing_position_table, r"lacks transformer.position_embeddings.weight \(the position table\)"),
    ],
)
def test_a_damaged_checkpoint_is_refused_naming_the_tensor_before_anything_is_written(tmp_path, damage, named):
    source = damaged_released(tmp_path, damage)
    with pytest.raises(CheckpointError, match=named) as raised:
        convert(source, tmp_path / "out")
    assert "mp_rank_00_model_states.pt" in str(raised.value)  # where
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


def test_mp_world_size_stored_as_text_is_read_as_a_number(tmp_path):
    source = copy_released(tmp_path)
    path = source / "1000" / "mp_rank_00_model_states.pt"
    contents = torch.load(path, weights_only=False)
    contents["mp_world_size"] = "1"
    torch.save(contents, path)
    convert(source, tmp_path / "out")  # "1" rank: the one shard found
    contents["mp_world_size"] = "one"
    torch.save(contents, path)
    with pytest.raises(CheckpointError, match=r"records mp_world_size='one' \(str\), not a number"):
        convert(source, tmp_path / "out2")


def test_two_identical_model_parallel_shards_are_refused(tmp_path):
    source = tmp_path / "mp2"
    shutil.copytree(CHECKPOINTS / "released_MP2", source)
    shards = source / "1000"
    shutil.copy(shards / "mp_rank_00_model_states.pt", shards / "mp_rank_01_model_states.pt")
    with pytest.raises(
        CheckpointError, match="mp_rank_00_model_states.pt, .*mp_rank_01_model_states.pt are identical"
    ):
        convert(source, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_verify_says_the_source_holds_nan(tmp_path):
    def nan(module):
        module["transformer.layers.0.mlp.dense_h_to_4h.weight"][0, :3] = float("nan")

    source = damaged_released(tmp_path, nan)
    with pytest.raises(
        CheckpointError, match=r"layers.0.mlp.dense_h_to_4h.weight holds NaN values in the source .*\(3 of"
    ):
        convert(source, tmp_path / "out", verify=True)
    assert not (tmp_path / "out").exists()
    convert(source, tmp_path / "out")  # without --verify the tensors are copied as they are


# ---- SuperGLUE files ------------------------------------------------------------------------------------------------


def rte_row(index: int, **fields) -> str:
    row = {"premise": "The cat sat.", "hypothesis": "A cat sat.", "label": "entailment", "idx": index}
    row.update(fields)
    return json.dumps({key: value for key, value in row.items() if value is not ...})


@pytest.mark.parametrize("split", ["train", "val"])
@pytest.mark.parametrize("label", [..., None])  # no "label" key, or "label": null
def test_a_training_or_validation_row_without_a_label_is_refused_naming_file_and_line(tmp_path, split, label):
    from glm_hf.superglue import read_split

    (tmp_path / f"{split}.jsonl").write_text("\n".join([rte_row(0), rte_row(1, label=label), rte_row(2)]) + "\n")
    with pytest.raises(ValueError, match=rf'{split}.jsonl:2: no "label" \(missing or null\); every {split} row needs'):
        read_split("rte", tmp_path, split)


def test_test_rows_need_no_label(tmp_path):
    from glm_hf.superglue import read_split

    (tmp_path / "test.jsonl").write_text("\n".join([rte_row(0, label=...), rte_row(1, label=None)]) + "\n")
    assert [example.label for example in read_split("rte", tmp_path, "test")] == [None, None]


def test_a_superglue_file_that_is_not_utf8_is_named_with_its_line(tmp_path):
    from glm_hf.superglue import read_split

    latin1 = rte_row(1, premise="caf\xe9").replace("\\u00e9", "\xe9").encode("latin-1")  # not UTF-8
    (tmp_path / "val.jsonl").write_bytes((rte_row(0) + "\n").encode() + latin1)
    with pytest.raises(
        ValueError, match=r"val.jsonl:2: not UTF-8 \(byte 0xe9 at column \d+\); save the file as UTF-8"
    ):
        read_split("rte", tmp_path, "val")


def test_finetune_on_an_empty_train_file_says_so(tmp_path):
    (tmp_path / "train.jsonl").write_text("\n\n")
    (tmp_path / "val.jsonl").write_text(rte_row(0) + "\n")
    with pytest.raises(
        SystemExit, match=r"glm-hf finetune: error: .*train.jsonl holds no RTE examples: the file is empty"
    ):
        main(["finetune", "--task", "rte", "--data-dir", str(tmp_path), "--model", str(default_model_folder()),
              "--output-dir", str(tmp_path / "out")])  # fmt: skip


# ---- resource limits ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("max_new_tokens", ["3000000", "1000000000", "256"])
def test_infill_max_new_tokens_past_the_position_table_is_refused_before_allocating(max_new_tokens, tmp_path):
    """The embedded model has 257 position rows; the cache is sized by max_new_tokens (3M reached 4.9 GB)."""
    with pytest.raises(SystemExit, match=rf"max_new_tokens={max_new_tokens}: .*257 rows .*give at most 255"):
        main(["infill", "the [MASK] is out of joint .", "--max-new-tokens", max_new_tokens])
    model, tokenizer = default_model_and_tokenizer()
    with pytest.raises(ValueError, match="give at most 255"):
        glm_hf.fill_blanks(model, tokenizer, "the [MASK] .", max_new_tokens=int(max_new_tokens))


def test_a_text_longer_than_the_position_table_is_named(tmp_path):
    long_text = " ".join(["word"] * 400) + " [MASK] ."
    with pytest.raises(SystemExit, match=r"text 1 .*The prompt has 404 tokens; .*max_position_embeddings=257"):
        main(["infill", long_text, "--max-new-tokens", "2"])


def test_a_deeply_nested_json_record_is_a_clean_error_naming_file_and_line(tmp_path):
    source = tmp_path / "texts.jsonl"
    source.write_text('{"text": "a [MASK] b"}\n' + '{"text": ' + "[" * 100_000 + "]" * 100_000 + "}\n")
    with pytest.raises(SystemExit, match=r"texts.jsonl:2: the JSON nests too deeply to read"):
        main(["infill", "--input", str(source)])
