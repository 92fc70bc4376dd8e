"""ChatGLM-6B through `glm-hf convert` equals the ORIGINAL modeling_chatglm.py (issue 18).

The reference is `fixtures/original_chatglm_reference.{json.gz,safetensors}`, made by
`fixtures/make_original_chatglm_reference.py` with the original code on tiny random models (see its docstring). Each
test writes the fixture's weights in the original on-disk layout (`config.json` + `pytorch_model.bin`, or shards with
their index; fp16 or fp32), converts the folder with `convert_checkpoint` and loads it with the Auto classes.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModel, AutoModelForCausalLM, AutoModelForSeq2SeqLM

import glm_hf  # noqa: F401  (registers the Auto classes)
from glm_hf.conversion import convert_checkpoint
from glm_hf.conversion.checkpoint import CheckpointError

FIXTURES = Path(__file__).parent / "fixtures"
FIXTURE = json.loads(gzip.decompress((FIXTURES / "original_chatglm_reference.json.gz").read_bytes()))
TENSORS = load_file(str(FIXTURES / "original_chatglm_reference.safetensors"))
CASES = FIXTURE["cases"]
ATOL = 1e-5


def original_weights(model: str, dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
    prefix = f"{model}/weights/"
    return {key[len(prefix) :]: value.to(dtype) for key, value in TENSORS.items() if key.startswith(prefix)}


def write_original_folder(
    folder: Path, model: str, shards: int = 1, dtype: torch.dtype = torch.float16, config: dict | None = None
) -> Path:
    """The original ChatGLM-6B layout: config.json and pytorch_model.bin, or N shards with their index."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config or FIXTURE["models"][model]["config"]))
    weights = original_weights(model, dtype)
    if shards == 1:
        torch.save(weights, folder / "pytorch_model.bin")
        return folder
    keys = list(weights)
    weight_map = {}
    for index in range(shards):
        name = f"pytorch_model-{index + 1:05d}-of-{shards:05d}.bin"
        part = {key: weights[key] for key in keys[index::shards]}
        torch.save(part, folder / name)
        weight_map |= dict.fromkeys(part, name)
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder


_converted: dict[str, Path] = {}


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory):
    """`converted(model)`: the fixture model converted once per module (fp16 source, one file)."""

    def convert(model: str) -> Path:
        if model not in _converted:
            root = tmp_path_factory.mktemp(model)
            source = write_original_folder(root / "original", model)
            convert_checkpoint(source, root / "converted")
            _converted[model] = root / "converted"
        return _converted[model]

    return convert


def load(folder: Path) -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


def case_tensor(case: str, name: str) -> torch.Tensor:
    return TENSORS[CASES[case]["tensors"][name]]


def cases(kind: str, *, skip: tuple[str, ...] = ()) -> list[str]:
    return sorted(name for name, case in CASES.items() if case["kind"] == kind and not name.startswith(skip))


FORWARD_FROM_IDS = [
    name for name in cases("forward") if name.startswith(("forward_gmask_", "forward_mask_", "forward_both"))
]


@pytest.mark.parametrize("name", [n for n in FORWARD_FROM_IDS if "ptuning" not in n and "untied" not in n])
def test_forward_from_ids_equals_the_original(name: str, converted) -> None:
    """`model(input_ids)`: positions and the bidirectional context come from [gMASK]/[MASK] and <sop>."""
    model = load(converted(CASES[name]["model"]))
    input_ids = torch.tensor(CASES[name]["inputs"]["input_ids"])
    with torch.no_grad():
        out = model(input_ids, output_hidden_states=True)
    torch.testing.assert_close(out.logits, case_tensor(name, "logits"), rtol=0, atol=ATOL)
    expected_states = case_tensor(name, "hidden_states")  # DeepNorm grows them: fp32 rounding relative to their size
    scale = expected_states.abs().amax(dim=(1, 2, 3), keepdim=True)
    torch.testing.assert_close(torch.stack(out.hidden_states) / scale, expected_states / scale, rtol=0, atol=ATOL)


@pytest.mark.parametrize("name", ["forward_gmask_2d", "forward_both_masks_1d"])
def test_explicit_stacked_positions_and_4d_mask_equal_the_original(name: str, converted) -> None:
    """The original's `[B, 2, T]` positions and its 4-D mask (True = blocked: passed inverted, this package's
    convention) give the same logits as the ids alone."""
    model = load(converted(CASES[name]["model"]))
    input_ids = torch.tensor(CASES[name]["inputs"]["input_ids"])
    with torch.no_grad():
        logits = model(
            input_ids,
            position_ids=case_tensor(name, "position_ids"),
            attention_mask=~case_tensor(name, "attention_mask"),
        ).logits
    torch.testing.assert_close(logits, case_tensor(name, "logits"), rtol=0, atol=ATOL)


def real_tokens(name: str) -> torch.Tensor:
    """[B, T] 1 for real tokens, 0 for left pads: the padding mask a fast tokenizer gives."""
    return (~case_tensor(name, "attention_mask")[:, 0, -1, :]).long()


@pytest.mark.parametrize("name", ["pad_tokenizer_2d", "pad_mask_token_tokenizer_2d"])
def test_left_padding_with_a_2d_mask_equals_the_original_tokenizer_batch(name: str, converted) -> None:
    """A 2-D padding mask gives what the original gets from its tokenizer's 4-D mask and positions (pads hidden,
    real positions from 0), on every real token."""
    model = load(converted("chatglm2d"))
    input_ids = case_tensor(name, "input_ids")
    mask = real_tokens(name)
    with torch.no_grad():
        logits = model(input_ids, attention_mask=mask).logits
    real = mask.bool()
    expected = case_tensor(name, "logits")
    if name == "pad_mask_token_tokenizer_2d":  # rows with both [MASK] and [gMASK]: the tokenizer takes [MASK]'s index
        with torch.no_grad():
            logits = model(input_ids, attention_mask=mask, position_ids=case_tensor(name, "position_ids")).logits
    torch.testing.assert_close(logits[real], expected[real], rtol=0, atol=ATOL)


@pytest.mark.parametrize("name", ["pad_unmasked_2d", "pad_unmasked_1d"])
def test_left_pads_without_a_mask_are_attended_as_in_the_original(name: str, converted) -> None:
    model = load(converted(CASES[name]["model"]))
    input_ids = torch.tensor(CASES[name]["inputs"]["input_ids"])
    with torch.no_grad():
        logits = model(input_ids).logits
    torch.testing.assert_close(logits, case_tensor(name, "logits"), rtol=0, atol=ATOL)


def test_1d_padded_batch_with_the_original_4d_mask(converted) -> None:
    """1-D with the tokenizer's 4-D mask only: positions from the ids (pads counted), pads blocked."""
    name = "pad_mask_only_1d"
    model = load(converted("chatglm1d"))
    input_ids = torch.tensor(CASES[name]["inputs"]["input_ids"])
    with torch.no_grad():
        logits = model(input_ids, attention_mask=~case_tensor(name, "attention_mask")).logits
    real = real_tokens(name).bool()
    torch.testing.assert_close(logits[real], case_tensor(name, "logits")[real], rtol=0, atol=ATOL)


@pytest.mark.parametrize("name", cases("loss"))
def test_shifted_loss_equals_the_original(name: str, converted) -> None:
    model = load(converted(CASES[name]["model"]))
    inputs = CASES[name]["inputs"]
    with torch.no_grad():
        out = model(torch.tensor(inputs["input_ids"]), labels=torch.tensor(inputs["labels"]))
    torch.testing.assert_close(out.loss, case_tensor(name, "loss"), rtol=0, atol=ATOL)


GENERATE = [
    name
    for name in cases("generate")
    if "ptuning" not in name and "pad" not in name and not (name.endswith("_1d_no_cache") and "mask_two" not in name)
]


@pytest.mark.parametrize("name", GENERATE)
def test_greedy_generation_with_scores_equals_the_original(name: str, converted) -> None:
    """`generate(input_ids)` gives the original's tokens and step scores, with and without the cache. (1-D [gMASK]
    rows without the cache are left out: the original then counts their positions on, unlike its own cached run.)"""
    model = load(converted(CASES[name]["model"]))
    input_ids = torch.tensor(CASES[name]["inputs"]["input_ids"])
    out = model.generate(
        input_ids,
        max_new_tokens=8,
        do_sample=False,
        use_cache=not name.endswith("_no_cache"),
        output_scores=True,
        return_dict_in_generate=True,
    )
    assert out.sequences.tolist() == CASES[name]["inputs"]["sequences"]
    torch.testing.assert_close(torch.stack(out.scores), case_tensor(name, "scores"), rtol=0, atol=ATOL)


@pytest.mark.parametrize("given_positions", [False, True])
def test_padded_greedy_generation_equals_the_original_tokenizer_batch(given_positions: bool, converted) -> None:
    """From a 2-D padding mask alone, or with the original tokenizer's stacked positions as well."""
    name = "generate_pad_tokenizer_2d"
    model = load(converted("chatglm2d"))
    positions = {"position_ids": case_tensor(name, "position_ids")} if given_positions else {}
    out = model.generate(
        case_tensor(name, "input_ids"),
        attention_mask=real_tokens(name),
        **positions,
        max_new_tokens=8,
        do_sample=False,
        output_scores=True,
        return_dict_in_generate=True,
    )
    assert out.sequences.tolist() == CASES[name]["inputs"]["sequences"]
    torch.testing.assert_close(torch.stack(out.scores), case_tensor(name, "scores"), rtol=0, atol=ATOL)


@pytest.mark.parametrize("variant", ["ptuning_embedding", "ptuning_projection"])
def test_p_tuning_v2_prefix_converts_to_a_peft_adapter_equal_to_the_original(variant: str, converted) -> None:
    folder = converted(variant)
    assert (folder / "adapter" / "adapter_config.json").is_file()
    model = PeftModel.from_pretrained(load(folder), folder / "adapter").eval()
    forward, generate = f"forward_gmask_{variant}", f"generate_two_{variant}"
    with torch.no_grad():
        logits = model(input_ids=torch.tensor(CASES[forward]["inputs"]["input_ids"])).logits
    torch.testing.assert_close(logits, case_tensor(forward, "logits"), rtol=0, atol=ATOL)
    out = model.generate(
        input_ids=torch.tensor(CASES[generate]["inputs"]["input_ids"]),
        max_new_tokens=8,
        do_sample=False,
        output_scores=True,
        return_dict_in_generate=True,
    )
    assert out.sequences.tolist() == CASES[generate]["inputs"]["sequences"]
    torch.testing.assert_close(torch.stack(out.scores), case_tensor(generate, "scores"), rtol=0, atol=ATOL)


def test_lm_head_is_tied_as_the_original_loads_the_release(converted) -> None:
    """The release's config.json has no tie_word_embeddings: the original ties lm_head to the embeddings on load
    and ignores the file's lm_head, so the converted model does too."""
    name = "forward_gmask_untied_lm_head"
    folder = converted("untied_lm_head")
    model = load(folder)
    assert model.config.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() == model.glm.word_embeddings.weight.data_ptr()
    with torch.no_grad():
        logits = model(torch.tensor(CASES[name]["inputs"]["input_ids"])).logits
    torch.testing.assert_close(logits, case_tensor(name, "logits"), rtol=0, atol=ATOL)


def test_config_saying_untied_keeps_the_files_lm_head(tmp_path: Path) -> None:
    name = "forward_gmask_untied_lm_head"
    config = {**FIXTURE["models"]["untied_lm_head"]["config"], "tie_word_embeddings": False}
    source = write_original_folder(tmp_path / "original", "untied_lm_head", config=config)
    convert_checkpoint(source, tmp_path / "converted")
    model = load(tmp_path / "converted")
    assert not model.config.tie_word_embeddings
    with torch.no_grad():
        logits = model(torch.tensor(CASES[name]["inputs"]["input_ids"])).logits
    torch.testing.assert_close(logits, case_tensor(name, "logits_constructed"), rtol=0, atol=ATOL)


@pytest.mark.parametrize(("shards", "dtype"), [(3, torch.float16), (1, torch.float32), (2, torch.float32)])
def test_sharded_and_fp32_sources_convert_to_the_same_model(
    shards: int, dtype: torch.dtype, tmp_path: Path, converted
) -> None:
    source = write_original_folder(tmp_path / "original", "chatglm2d", shards=shards, dtype=dtype)
    report = convert_checkpoint(source, tmp_path / "converted", verify=True)
    assert report.num_shards == shards and report.dtype == dtype
    assert "equal their source bitwise" in report.verify_summary
    reference = load(converted("chatglm2d")).state_dict()
    state = load(tmp_path / "converted").state_dict()
    assert state.keys() == reference.keys()
    assert all(torch.equal(state[key], reference[key]) for key in state)


@pytest.mark.parametrize("auto_class", [AutoModel, AutoModelForCausalLM, AutoModelForSeq2SeqLM])
def test_converted_folder_loads_with_every_auto_class_without_remote_code(auto_class, converted) -> None:
    folder = converted("chatglm2d")
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "glm_blocklm" and "auto_map" not in config
    model = auto_class.from_pretrained(folder)
    assert type(model).__module__.startswith("glm_hf.")


def test_missing_shard_is_named(tmp_path: Path) -> None:
    source = write_original_folder(tmp_path / "original", "chatglm2d", shards=3)
    (source / "pytorch_model-00002-of-00003.bin").unlink()
    with pytest.raises(CheckpointError, match=r"pytorch_model-00002-of-00003\.bin.*missing"):
        convert_checkpoint(source, tmp_path / "converted")
    assert not (tmp_path / "converted").exists()


def test_shape_that_disagrees_with_the_config_is_named(tmp_path: Path) -> None:
    config = {**FIXTURE["models"]["chatglm2d"]["config"], "inner_hidden_size": 48}
    source = write_original_folder(tmp_path / "original", "chatglm2d", config=config)
    with pytest.raises(
        CheckpointError,
        match=r"transformer\.layers\.0\.mlp\.dense_(h_to_4h|4h_to_h)\.weight has shape \[(64, 32|32, 64)\]",
    ):
        convert_checkpoint(source, tmp_path / "converted")
    assert not (tmp_path / "converted").exists()


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({"multi_query_attention": True, "padded_vocab_size": 65024}, "ChatGLM2/3-6B or GLM-4"),
        ({"model_type": "llama"}, "model_type 'llama'"),
    ],
)
def test_other_generations_are_refused_saying_where_they_are_served(
    extra: dict, expected: str, tmp_path: Path
) -> None:
    config = {**FIXTURE["models"]["chatglm2d"]["config"], **extra}
    source = write_original_folder(tmp_path / "original", "chatglm2d", config=config)
    if extra.get("model_type") == "llama":  # not a ChatGLM folder at all: the GLM path names what it expected
        with pytest.raises(CheckpointError, match="GLM checkpoint"):
            convert_checkpoint(source, tmp_path / "converted")
        return
    with pytest.raises(CheckpointError, match=expected) as error:
        convert_checkpoint(source, tmp_path / "converted")
    assert "GLM-4 is native in transformers" in str(error.value)


@pytest.mark.parametrize("config", [{"model_type": "glm4"}, {"model_type": "glm", "num_key_value_heads": 2}])
def test_glm4_folder_is_refused_as_native_in_transformers(config: dict, tmp_path: Path) -> None:
    source = tmp_path / "glm4"
    source.mkdir()
    (source / "config.json").write_text(json.dumps(config))
    (source / "model.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match="GLM-4 is native in transformers"):
        convert_checkpoint(source, tmp_path / "converted")


@pytest.mark.parametrize("name", ["generate_two_2d", "generate_one_1d"])
def test_static_cache_generation_equals_the_original(name: str, converted) -> None:
    """The static cache (the captured decode step's cache) gives the original's tokens too."""
    model = load(converted(CASES[name]["model"]))
    input_ids = torch.tensor(CASES[name]["inputs"]["input_ids"])
    out = model.generate(input_ids, max_new_tokens=8, do_sample=False, cache_implementation="static")
    assert out.tolist() == CASES[name]["inputs"]["sequences"]


def test_prefix_only_source_converts_to_an_adapter_for_the_converted_base(tmp_path: Path, converted) -> None:
    """The original P-Tuning v2 scripts save only the prefix encoder: it becomes `OUTPUT/adapter` alone, which runs
    on the base model converted from the full release."""
    variant = "ptuning_projection"
    weights = {key: value for key, value in original_weights(variant).items() if "prefix_encoder" in key}
    source = tmp_path / "ptuning"
    source.mkdir()
    (source / "config.json").write_text(json.dumps(FIXTURE["models"][variant]["config"]))
    torch.save(weights, source / "pytorch_model.bin")
    report = convert_checkpoint(source, tmp_path / "converted")
    assert "adapter/adapter_model.safetensors" in report.files
    assert not any(name.endswith(".safetensors") and "/" not in name for name in report.files)
    base = load(converted(variant))  # the same base weights, converted from the full checkpoint
    model = PeftModel.from_pretrained(base, tmp_path / "converted" / "adapter").eval()
    name = f"forward_gmask_{variant}"
    with torch.no_grad():
        logits = model(input_ids=torch.tensor(CASES[name]["inputs"]["input_ids"])).logits
    torch.testing.assert_close(logits, case_tensor(name, "logits"), rtol=0, atol=ATOL)


def test_glm_only_options_are_refused_for_a_chatglm_folder(tmp_path: Path) -> None:
    source = write_original_folder(tmp_path / "original", "chatglm2d")
    with pytest.raises(CheckpointError, match="drop --num-attention-heads"):
        convert_checkpoint(source, tmp_path / "converted", num_attention_heads=4)
    assert not (tmp_path / "converted").exists()


def test_export_original_refuses_a_chatglm_folder(tmp_path: Path, converted) -> None:
    from glm_hf.conversion.export import export_original

    with pytest.raises(CheckpointError, match="ChatGLM-6B model"):
        export_original(converted("chatglm2d"), tmp_path / "exported")
    assert not (tmp_path / "exported").exists()
