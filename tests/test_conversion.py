"""`glm-hf convert` / `export-original` on checkpoints written by the ORIGINAL THUDM/GLM code.

`fixtures/original_checkpoints/` was made by `fixtures/make_original_checkpoints.py`: one tiny fp16 model in the
released layout (DeepSpeed-style dict with numpy RNG states pickled under numpy 1.x names), split to MP=2 by the
original `change_mp.py`, the flat layout, THUDM's Hub layout (`glm.` prefix + unused extras) and a fine-tuned
cloze checkpoint (`prompt_spell.*` beside the backbone); `reference.safetensors` holds the original model's logits
with those fp16 weights.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForSeq2SeqLM

import glm_hf
from glm_hf.cli import main
from glm_hf.conversion import CheckpointError, convert_checkpoint, export_original, load_checkpoint_file

CHECKPOINTS = Path(__file__).parent / "fixtures" / "original_checkpoints"
ATOL = 2e-5


@pytest.fixture(scope="module")
def reference() -> dict[str, torch.Tensor]:
    with safe_open(CHECKPOINTS / "reference.safetensors", "pt") as handle:
        return {key: handle.get_tensor(key) for key in handle.keys()}


def convert(source: Path, output: Path, **options) -> glm_hf.conversion.ConversionReport:
    options.setdefault("num_attention_heads", 4)
    options.setdefault("show_progress", False)
    return convert_checkpoint(source, output, **options)


def logits_of(folder: Path, reference: dict[str, torch.Tensor]) -> torch.Tensor:
    model = AutoModelForSeq2SeqLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(
            reference["input_ids"], position_ids=reference["position_ids"], prefix_length=int(reference["sep"])
        ).logits


@pytest.mark.parametrize(
    "source",
    [
        "released",
        "released_MP2",
        "flat",
        "flat/mp_rank_00_model_states.pt",
        "hub",
        "hub/pytorch_model.bin",
        "finetuned",
    ],
)
def test_converted_checkpoint_reproduces_the_original_logits(tmp_path, reference, source):
    report = convert(CHECKPOINTS / source, tmp_path / "out", dtype="float32")
    assert report.config.num_attention_heads == 4
    torch.testing.assert_close(logits_of(tmp_path / "out", reference), reference["logits"], atol=ATOL, rtol=0)


def test_model_parallel_shards_merge_to_the_released_tensors_bitwise(tmp_path):
    convert(CHECKPOINTS / "released", tmp_path / "mp1")
    report = convert(CHECKPOINTS / "released_MP2", tmp_path / "mp2")
    assert report.num_shards == 2 and report.layout == "released"
    with (
        safe_open(tmp_path / "mp1" / "model.safetensors", "pt") as one,
        safe_open(tmp_path / "mp2" / "model.safetensors", "pt") as two,
    ):
        assert sorted(one.keys()) == sorted(two.keys())
        for key in one.keys():
            assert torch.equal(one.get_tensor(key), two.get_tensor(key)), key


def test_hyper_parameters_come_from_the_tensors(tmp_path):
    report = convert(CHECKPOINTS / "released", tmp_path / "out")
    config = report.config
    assert (config.vocab_size, config.hidden_size, config.num_hidden_layers) == (96, 64, 2)
    assert config.max_position_embeddings == 33 and config.block_position_encoding
    assert config.intermediate_size == 256
    assert config.num_attention_heads == 4
    assert report.dtype == torch.float16  # auto keeps the checkpoint's dtype
    saved = json.loads((tmp_path / "out" / "config.json").read_text())
    assert saved["model_type"] == "glm_blocklm" and saved["architectures"] == ["GLMForConditionalGeneration"]


def test_hub_checkpoint_drops_and_reports_unused_extras(tmp_path):
    report = convert(CHECKPOINTS / "hub", tmp_path / "out", num_attention_heads=None)
    assert report.layout == "hub"
    assert report.config.num_attention_heads == 4  # read from THUDM's config.json
    assert sorted(report.left_out) == ["dense.bias", "dense.weight", "out_proj.bias", "out_proj.weight"]
    assert "out_proj.weight" in report.summary()


def test_finetuned_checkpoint_converts_the_backbone_and_lists_the_rest(tmp_path):
    report = convert(CHECKPOINTS / "finetuned", tmp_path / "out")
    assert report.left_out and all(key.startswith("prompt_spell.") for key in report.left_out)
    assert "prompt_spell.spell_embeddings.weight" in report.left_out


def test_released_files_load_without_arbitrary_unpickling():
    released = load_checkpoint_file(CHECKPOINTS / "released" / "1000" / "mp_rank_00_model_states.pt")
    assert released["np_rng_state"][0] == "MT19937"  # pickled with numpy 1.x names (numpy.core.multiarray)
    shard = load_checkpoint_file(CHECKPOINTS / "released_MP2" / "1000" / "mp_rank_01_model_states.pt")
    assert shard["mp_world_size"] == 2  # re-pickled with numpy 2 names (numpy._core.multiarray)


def test_a_pickled_global_outside_the_allow_list_is_refused_unless_trusted(tmp_path):
    source = tmp_path / "checkpoint"
    source.mkdir()
    contents = torch.load(CHECKPOINTS / "flat" / "mp_rank_00_model_states.pt", weights_only=False)
    contents["args"] = shutil.copyfile  # stands for any callable a malicious pickle could carry
    torch.save(contents, source / "mp_rank_00_model_states.pt")
    with pytest.raises(CheckpointError, match=r"shutil\.copyfile.*--trust-remote-pickle"):
        convert(source, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    convert(source, tmp_path / "out", trust_remote_pickle=True)
    assert (tmp_path / "out" / "model.safetensors").is_file()


def test_sharded_output_writes_an_index_and_loads(tmp_path, reference):
    report = convert(CHECKPOINTS / "released", tmp_path / "out", dtype="float32", max_shard_size="100KB")
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    shard_files = set(index["weight_map"].values())
    assert len(shard_files) > 1 and all((tmp_path / "out" / name).is_file() for name in shard_files)
    assert "model.safetensors.index.json" in report.files
    torch.testing.assert_close(logits_of(tmp_path / "out", reference), reference["logits"], atol=ATOL, rtol=0)


def test_output_folder_has_generation_config_and_model_card(tmp_path):
    convert(CHECKPOINTS / "released", tmp_path / "out", tokenizer_family="bert-base-uncased")
    generation = json.loads((tmp_path / "out" / "generation_config.json").read_text())
    assert generation["eos_token_id"] == [30523, 0] and generation["pad_token_id"] == 0
    card = (tmp_path / "out" / "README.md").read_text()
    digest = glm_hf.conversion.convert.sha256_of(CHECKPOINTS / "released" / "1000" / "mp_rank_00_model_states.pt")
    assert digest in card and "released layout" in card


def test_export_original_matches_change_mp_and_round_trips_exactly(tmp_path):
    convert(CHECKPOINTS / "released", tmp_path / "hf")
    export_original(tmp_path / "hf", tmp_path / "original", mp=2)
    assert (tmp_path / "original" / "latest_checkpointed_iteration.txt").read_text() == "release"
    for rank in range(2):
        name = f"mp_rank_{rank:02d}_model_states.pt"
        ours = torch.load(tmp_path / "original" / "release" / name, weights_only=True)
        theirs = torch.load(CHECKPOINTS / "released_MP2" / "1000" / name, weights_only=False)
        assert ours["mp_world_size"] == 2 and ours["module"].keys() == theirs["module"].keys()
        for key, tensor in theirs["module"].items():
            assert torch.equal(ours["module"][key], tensor), key  # our split equals the original change_mp.py
    convert(tmp_path / "original", tmp_path / "again")
    for file in ("model.safetensors",):
        with safe_open(tmp_path / "hf" / file, "pt") as first, safe_open(tmp_path / "again" / file, "pt") as second:
            for key in first.keys():
                assert torch.equal(first.get_tensor(key), second.get_tensor(key)), key


def test_verify_compares_every_tensor_and_runs_a_forward(tmp_path):
    report = convert(CHECKPOINTS / "released_MP2", tmp_path / "out", verify=True)
    assert report.verify_summary.startswith("29 tensors equal their source bitwise")


def test_cli_convert_and_export_original(tmp_path, capsys):
    main(["convert", str(CHECKPOINTS / "released"), str(tmp_path / "out"), "--num-attention-heads", "4", "--verify"])
    printed = capsys.readouterr().out
    assert "1 model-parallel shard(s)" in printed and "equal their source bitwise" in printed
    main(["export-original", str(tmp_path / "out"), str(tmp_path / "original"), "--mp", "2"])
    assert "mp_rank_01_model_states.pt" in capsys.readouterr().out


# ---- bad inputs: a clear error, and nothing left on disk ----------------------------------------------------------


def copy_checkpoint(name: str, destination: Path) -> Path:
    shutil.copytree(CHECKPOINTS / name, destination)
    return destination


def assert_fails_cleanly(source: Path, output: Path, match: str, **options) -> None:
    with pytest.raises((CheckpointError, FileExistsError), match=match):
        convert(source, output, **options)
    assert not output.exists()
    leftovers = [path.name for path in output.parent.iterdir() if path.name.startswith(f".{output.name}.")]
    assert not leftovers, leftovers


def test_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    assert_fails_cleanly(tmp_path / "empty", tmp_path / "out", "No GLM checkpoint")


def test_missing_source(tmp_path):
    assert_fails_cleanly(tmp_path / "nowhere", tmp_path / "out", "does not exist")


def test_missing_shard(tmp_path):
    source = copy_checkpoint("released_MP2", tmp_path / "mp2")
    (source / "1000" / "mp_rank_00_model_states.pt").unlink()
    assert_fails_cleanly(source, tmp_path / "out", "Missing model-parallel shard.*mp_rank_00")


def test_shard_count_differs_from_the_recorded_world_size(tmp_path):
    source = copy_checkpoint("released_MP2", tmp_path / "mp2")
    (source / "1000" / "mp_rank_01_model_states.pt").unlink()
    assert_fails_cleanly(source, tmp_path / "out", "mp_world_size=2, but 1 shard")


def test_an_extra_shard(tmp_path):
    source = copy_checkpoint("released_MP2", tmp_path / "mp2")
    shutil.copyfile(source / "1000" / "mp_rank_01_model_states.pt", source / "1000" / "mp_rank_02_model_states.pt")
    assert_fails_cleanly(source, tmp_path / "out", "mp_world_size=2, but 3 shard")


def test_mismatched_shard_shapes(tmp_path):
    source = copy_checkpoint("released_MP2", tmp_path / "mp2")
    path = source / "1000" / "mp_rank_01_model_states.pt"
    contents = torch.load(path, weights_only=False)
    contents["module"]["transformer.layers.0.attention.dense.weight"] = torch.zeros(60, 32, dtype=torch.float16)
    torch.save(contents, path)
    assert_fails_cleanly(source, tmp_path / "out", "attention.dense.weight has shard shapes that do not fit")


def test_replicated_tensors_that_differ_between_shards(tmp_path):
    source = copy_checkpoint("released_MP2", tmp_path / "mp2")
    path = source / "1000" / "mp_rank_01_model_states.pt"
    contents = torch.load(path, weights_only=False)
    contents["module"]["transformer.final_layernorm.weight"] += 1
    torch.save(contents, path)
    assert_fails_cleanly(source, tmp_path / "out", "identical on every model-parallel rank")


def test_a_file_that_is_not_a_checkpoint(tmp_path):
    (tmp_path / "source").mkdir()
    (tmp_path / "source" / "mp_rank_00_model_states.pt").write_text("not a checkpoint")
    assert_fails_cleanly(tmp_path / "source", tmp_path / "out", "not a readable PyTorch checkpoint")


def test_a_truncated_file(tmp_path):
    source = copy_checkpoint("flat", tmp_path / "flat")
    path = source / "mp_rank_00_model_states.pt"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    assert_fails_cleanly(source, tmp_path / "out", "not a readable PyTorch checkpoint.*truncated, corrupt")


def test_a_legacy_format_file_converts_too(tmp_path, reference):
    (tmp_path / "legacy").mkdir()
    contents = torch.load(CHECKPOINTS / "flat" / "mp_rank_00_model_states.pt", weights_only=False)
    torch.save(contents, tmp_path / "legacy" / "model.pt", _use_new_zipfile_serialization=False)
    convert(tmp_path / "legacy" / "model.pt", tmp_path / "out", dtype="float32")
    torch.testing.assert_close(logits_of(tmp_path / "out", reference), reference["logits"], atol=ATOL, rtol=0)


def test_a_checkpoint_without_glm_weights(tmp_path):
    (tmp_path / "source").mkdir()
    torch.save({"module": {"encoder.weight": torch.zeros(2)}}, tmp_path / "source" / "mp_rank_00_model_states.pt")
    assert_fails_cleanly(tmp_path / "source", tmp_path / "out", "Not a GLM checkpoint")


def test_unknown_backbone_keys(tmp_path):
    source = copy_checkpoint("flat", tmp_path / "flat")
    path = source / "mp_rank_00_model_states.pt"
    contents = torch.load(path, weights_only=False)
    contents["module"]["transformer.r_w_bias"] = torch.zeros(4, 16)
    torch.save(contents, path)
    assert_fails_cleanly(source, tmp_path / "out", r"Unknown GLM backbone keys.*transformer\.r_w_bias")


def test_an_existing_output_is_kept_unless_overwrite(tmp_path):
    output = tmp_path / "out"
    output.mkdir()
    (output / "mine.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="--overwrite"):
        convert(CHECKPOINTS / "released", output)
    # --overwrite replaces only a folder this tool wrote; this one holds the user's file
    with pytest.raises(FileExistsError, match="not a folder this tool wrote.*--force"):
        convert(CHECKPOINTS / "released", output, overwrite=True)
    assert (output / "mine.txt").read_text() == "keep me"
    convert(CHECKPOINTS / "released", output, force=True)
    assert not (output / "mine.txt").exists() and (output / "model.safetensors").is_file()
    convert(CHECKPOINTS / "released", output, overwrite=True, dtype="float32")  # an earlier conversion: replaced
    assert json.loads((output / "config.json").read_text())["dtype"] == "float32"


def test_a_failed_overwrite_keeps_the_existing_output(tmp_path):
    output = tmp_path / "out"
    convert(CHECKPOINTS / "released", output)
    before = sorted(os.listdir(output))
    with pytest.raises(CheckpointError):
        convert(tmp_path / "nowhere", output, overwrite=True)
    assert sorted(os.listdir(output)) == before


def test_cli_reports_errors_without_a_traceback(tmp_path):
    with pytest.raises(SystemExit, match="glm-hf convert: error: .*does not exist"):
        main(["convert", str(tmp_path / "nowhere"), str(tmp_path / "out")])


def test_output_folder_is_readable_like_any_new_folder(tmp_path):
    umask = os.umask(0o022)
    try:
        convert(CHECKPOINTS / "released", tmp_path / "out")
    finally:
        os.umask(umask)
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o755


def test_overwrite_works_after_an_interrupted_one_left_a_retired_folder(tmp_path):
    output = tmp_path / "out"
    convert(CHECKPOINTS / "released", output)
    (tmp_path / ".out.replaced").mkdir()  # what an older interrupted overwrite could leave
    convert(CHECKPOINTS / "released", output, overwrite=True)
    assert (output / "model.safetensors").is_file()
    assert not [path.name for path in tmp_path.iterdir() if path.name.startswith(".out.replaced-")]


def test_shard_sizes_read_like_transformers_max_shard_size():
    from glm_hf.conversion.safetensors_writer import parse_size

    assert parse_size("5GB") == 5 * 10**9 and parse_size("2GiB") == 2 * 2**30 and parse_size("8Gb") == 10**9
    with pytest.raises(ValueError, match="write it like 5GB"):
        parse_size("five gigs")


def test_split_refuses_a_fused_qkv_that_is_not_three_blocks():
    from glm_hf.conversion.merge import split_partitions

    with pytest.raises(ValueError, match="multiple of 3"):
        split_partitions("transformer.layers.0.attention.query_key_value.weight", torch.zeros(7, 2), 2)


@pytest.mark.parametrize("layout", ["released", "released_MP2"])
def test_a_head_count_the_checkpoint_cannot_tell_is_required_never_guessed(tmp_path, layout):
    """The tensors do not record the head count, and the fixture's shapes (2 x 64) are no released GLM's."""
    with pytest.raises(CheckpointError, match=r"does not record its number of attention heads.*--num-attention-heads"):
        convert(CHECKPOINTS / layout, tmp_path / "out", num_attention_heads=None)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "heads, message",
    [
        (0, "gives 0 attention heads; it must be a positive whole number"),
        (-4, "gives -4 attention heads"),
        (3, "hidden size 64 is not a multiple of it"),
        (1, "2 model-parallel shards, which split whole heads: the count must be a multiple of 2"),
    ],
)
def test_a_head_count_the_shapes_contradict_is_refused(tmp_path, heads, message):
    with pytest.raises(CheckpointError, match=message):
        convert(CHECKPOINTS / "released_MP2", tmp_path / "out", num_attention_heads=heads)
    assert not (tmp_path / "out").exists()


def test_the_head_count_of_a_released_shape_comes_from_its_preset():
    from glm_hf.conversion.convert import infer_num_attention_heads

    assert infer_num_attention_heads(2048, 36, 2, None, None) == 32  # glm-2b
    assert infer_num_attention_heads(1152, 30, 1, None, None) == 18  # glm-515m
    assert infer_num_attention_heads(64, 2, 1, None, {"num_attention_heads": 4}) == 4  # THUDM's config.json
    with pytest.raises(CheckpointError, match="num_attention_heads in the checkpoint's config.json gives '4'"):
        infer_num_attention_heads(64, 2, 1, None, {"num_attention_heads": "4"})


def test_cli_num_attention_heads_zero_is_a_clean_error(tmp_path):
    with pytest.raises(SystemExit, match="glm-hf convert: error: --num-attention-heads gives 0 attention heads"):
        main(["convert", str(CHECKPOINTS / "released"), str(tmp_path / "out"), "--num-attention-heads", "0"])
