"""Multi-blank infilling (`fill_blanks`, the pipeline, `glm-hf infill`) against a slow, cache-free reference."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import pipeline

import glm_hf
from glm_hf.cli import main
from glm_hf.infilling import build_generation_inputs, encode_prompt, fill_blanks, length_sorted_batches

from conftest import tiny_chatglm, tiny_config, tiny_word_tokenizer

TEXTS = [
    "the king [MASK] the queen and the [MASK] of the house .",
    "a bird [MASK] .",
    "the old king of the dark house was a new man to his child , and [MASK] .",
]


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_word_tokenizer()


@pytest.fixture(scope="module")
def model(tokenizer):
    torch.manual_seed(0)
    config = tiny_config(max_position_embeddings=129, initializer_range=0.5)  # varied greedy choices
    return glm_hf.GLMForConditionalGeneration(config).eval()


@torch.no_grad()
def reference_fill(model, tokenizer, text: str, max_new_tokens: int) -> list[list[int]]:
    """The original `generate_samples.py` procedure, one token at a time, recomputing everything (no cache)."""
    config = model.config
    context = encode_prompt(tokenizer, config, text)
    masks = {config.mask_token_id}
    blanks = [index for index, token in enumerate(context) if token in masks]
    ids, positions, blocks = list(context), list(range(len(context))), [0] * len(context)
    spans = []
    for mask_position in blanks:
        ids, positions, blocks = ids + [config.sop_token_id], positions + [mask_position], blocks + [1]
        span = []
        for _ in range(max_new_tokens):
            logits = model(
                torch.tensor([ids]),
                position_ids=torch.tensor([positions]),
                block_position_ids=torch.tensor([blocks]),
                prefix_length=len(context),
            ).logits[0, -1]
            token = int(logits.argmax())
            if token in (config.eop_token_id, config.eos_token_id):
                break
            span.append(token)
            ids, positions, blocks = ids + [token], positions + [mask_position], blocks + [blocks[-1] + 1]
        spans.append(span)
    return spans


def test_every_blank_is_filled_like_the_cache_free_reference(model, tokenizer):
    results = fill_blanks(model, tokenizer, TEXTS, max_new_tokens=6, do_sample=False)
    for text, result in zip(TEXTS, results, strict=True):
        expected = reference_fill(model, tokenizer, text, max_new_tokens=6)
        assert [tokenizer.decode(span) for span in expected] == result.spans
        assert len(result.spans) == text.count("[MASK]")
        assert "[MASK]" not in result.text
    filled = results[0]
    assert filled.text == TEXTS[0].replace("[MASK]", filled.spans[0], 1).replace("[MASK]", filled.spans[1], 1)


@pytest.mark.parametrize("batch_size", [None, 2], ids=["all-at-once", "by-length"])
@pytest.mark.parametrize("num_beams", [1, 3], ids=["greedy", "beam"])
def test_batched_results_equal_one_by_one_results(model, tokenizer, num_beams, batch_size):
    # With batch_size=2 the shortest two texts (1 and 0) share a batch and text 2 follows: results keep input order.
    batched = fill_blanks(
        model, tokenizer, TEXTS, batch_size=batch_size, max_new_tokens=5, num_beams=num_beams, do_sample=False
    )
    single = [fill_blanks(model, tokenizer, text, max_new_tokens=5, num_beams=num_beams)[0] for text in TEXTS]
    assert batched == single


def test_length_sorted_batches_group_similar_lengths():
    assert length_sorted_batches([5, 1, 9, 3, 7], 2) == [[1, 3], [0, 4], [2]]
    assert length_sorted_batches([5, 1, 9], None) == [[0, 1, 2]]
    assert length_sorted_batches([], 4) == []
    with pytest.raises(ValueError, match="batch_size must be at least 1, got 0"):
        length_sorted_batches([5, 1], 0)


def test_sampling_is_reproducible_with_a_seed(model, tokenizer):
    runs = []
    for _ in range(2):
        torch.manual_seed(11)
        runs.append(fill_blanks(model, tokenizer, TEXTS, max_new_tokens=5, do_sample=True, top_k=20))
    assert runs[0] == runs[1]
    assert [len(result.spans) for result in runs[0]] == [2, 1, 1]


def test_a_text_without_mask_gets_one_appended_with_a_warning(model, tokenizer):
    with pytest.warns(UserWarning, match=r"appending ' \[MASK\]'"):
        result = fill_blanks(model, tokenizer, "the old king", max_new_tokens=3)[0]
    assert len(result.spans) == 1 and result.text.startswith("the old king ")


def test_generation_inputs_put_sop_at_the_first_mask(tokenizer, model):
    inputs = build_generation_inputs(tokenizer, model.config, TEXTS[:2])
    config = model.config
    assert inputs["input_ids"][:, -1].tolist() == [config.sop_token_id] * 2
    assert inputs["block_position_ids"][:, -1].tolist() == [1, 1]
    first = encode_prompt(tokenizer, config, TEXTS[0])
    assert inputs["position_ids"][0, -1] == first.index(config.mask_token_id)
    second = encode_prompt(tokenizer, config, TEXTS[1])
    assert inputs["attention_mask"][1].tolist().count(0) == len(first) - len(second)
    output = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert output.shape == (2, inputs["input_ids"].shape[1] + 4)


def test_bad_inputs_get_clear_errors(model, tokenizer):
    with pytest.raises(ValueError, match="empty text"):
        fill_blanks(model, tokenizer, "   ")
    with pytest.raises(ValueError, match=r"no \[sMASK\]"):
        fill_blanks(model, tokenizer, "the [sMASK] king")
    with pytest.raises(ValueError, match=r"max_position_embeddings=129"):
        fill_blanks(model, tokenizer, "the king " * 70 + "[MASK]")
    with pytest.raises(ValueError, match="num_return_sequences"):
        fill_blanks(model, tokenizer, TEXTS[1], num_return_sequences=2)
    with pytest.raises(ValueError, match="attention_mask, use_cache"):
        fill_blanks(model, tokenizer, TEXTS[1], use_cache=False, attention_mask=None)


@pytest.mark.parametrize("kind", ["chatglm", "no block positions"])
def test_models_blank_infilling_cannot_prompt_are_refused_saying_why(tokenizer, kind: str, tmp_path):
    if kind == "chatglm":
        model, message = tiny_chatglm(), "this model is a ChatGLM, prompted as `text \\[gMASK\\] <sop>`"
    else:
        model = glm_hf.GLMForConditionalGeneration(tiny_config(block_position_encoding=False)).eval()
        message = "this model has no block positions"
    with pytest.raises(ValueError, match=message):
        fill_blanks(model, tokenizer, TEXTS[1], max_new_tokens=2)
    with pytest.raises(ValueError, match=message):
        build_generation_inputs(tokenizer, model.config, TEXTS[1])
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    with pytest.raises(SystemExit, match=f"glm-hf infill: error: .*{message}"):
        main(["infill", "--model", str(tmp_path), TEXTS[1], "--max-new-tokens", "2"])


def test_build_generation_inputs_takes_one_text_as_a_string(model, tokenizer):
    one = build_generation_inputs(tokenizer, model.config, TEXTS[1])
    listed = build_generation_inputs(tokenizer, model.config, [TEXTS[1]])
    assert one.keys() == listed.keys() and all(torch.equal(one[name], listed[name]) for name in one)
    assert one["input_ids"].shape[0] == 1


def test_generation_options_come_from_the_model_generation_config_too(model, tokenizer):
    from transformers import GenerationConfig

    beams = GenerationConfig(num_beams=3, max_new_tokens=4)
    assert fill_blanks(model, tokenizer, TEXTS, generation_config=beams) == fill_blanks(
        model, tokenizer, TEXTS, num_beams=3, max_new_tokens=4
    )
    spans = fill_blanks(model, tokenizer, TEXTS[1], generation_config=GenerationConfig(max_new_tokens=2))[0].spans
    assert len(tokenizer.encode(spans[0], add_special_tokens=False)) <= 2
    with pytest.raises(ValueError, match="max_new_tokens .per blank"):
        fill_blanks(model, tokenizer, TEXTS[1], max_length=40)
    two_each = GenerationConfig(num_beams=2, num_return_sequences=2)
    with pytest.raises(ValueError, match="num_return_sequences"):
        fill_blanks(model, tokenizer, TEXTS[1], generation_config=two_each)
    with pytest.raises(ValueError, match="Unknown generation options: colour"):
        fill_blanks(model, tokenizer, TEXTS[1], colour="red")


@pytest.mark.parametrize("num_beams", [1, 3], ids=["greedy", "beam"])
@pytest.mark.parametrize("source", ["given", "model"])
def test_a_generation_config_naming_a_cache_implementation_fills_as_one_without(
    model: glm_hf.GLMForConditionalGeneration,
    tokenizer: Any,
    num_beams: int,
    source: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """fill_blanks builds every batch's cache itself, so a `cache_implementation` (e.g. the "static" one a caller
    decodes with elsewhere), in a generation config given to it or in the model's own, has nothing to choose: the
    texts are filled as without it. transformers refuses a cache passed together with `cache_implementation` (and
    fills an unset one from the model's config), which made every such call fail."""
    from transformers import GenerationConfig

    options = {"max_new_tokens": 4, "num_beams": num_beams, "do_sample": False}
    expected = fill_blanks(model, tokenizer, TEXTS, **options)
    if source == "given":
        given = GenerationConfig(cache_implementation="static", **options)
        assert fill_blanks(model, tokenizer, TEXTS, generation_config=given) == expected
        assert given.cache_implementation == "static"  # the caller's config is left as it was
    else:
        monkeypatch.setattr(model.generation_config, "cache_implementation", "static")
        assert fill_blanks(model, tokenizer, TEXTS, **options) == expected
        assert model.generation_config.cache_implementation == "static"


def test_text_infilling_pipeline_wraps_fill_blanks(model, tokenizer):
    infill = pipeline("text-infilling", model=model, tokenizer=tokenizer)
    output = infill(TEXTS[0], max_new_tokens=6)
    expected = fill_blanks(model, tokenizer, TEXTS[0], max_new_tokens=6)[0]
    assert output == {"filled_text": expected.text, "spans": expected.spans}


def test_cli_infill_reads_jsonl_and_writes_jsonl(tmp_path, capsys):
    source = tmp_path / "texts.jsonl"
    source.write_text("".join(json.dumps({"text": text}) + "\n" for text in TEXTS))
    output = tmp_path / "filled.jsonl"
    main(["infill", "--input", str(source), "--output", str(output), "--batch-size", "2", "--max-new-tokens", "3"])
    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert [record["text"] for record in records] == TEXTS  # batched by length (1 and 0, then 2), written in order
    for record in records:
        assert "[MASK]" not in record["filled_text"]
        assert record["filled_text"].startswith(record["text"].split("[MASK]")[0])
    assert "wrote 3 filled texts" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="already exists"):
        main(["infill", "--input", str(source), "--output", str(output)])


def test_cli_infill_prints_filled_texts_and_rejects_bad_files(tmp_path, capsys):
    main(["infill", TEXTS[1], "--max-new-tokens", "2"])
    assert capsys.readouterr().out.startswith("a bird ")
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "fine [MASK]"}\n{not json\n')
    with pytest.raises(SystemExit, match=r"broken.jsonl:2: not valid JSON"):
        main(["infill", "--input", str(broken)])
    with pytest.raises(SystemExit, match="does not exist"):
        main(["infill", "--input", str(tmp_path / "missing.txt")])


def test_pipeline_batches_texts(model, tokenizer):
    infill = pipeline("text-infilling", model=model, tokenizer=tokenizer)
    batched = infill(TEXTS, max_new_tokens=4, batch_size=2)
    expected = fill_blanks(model, tokenizer, TEXTS, max_new_tokens=4)
    assert batched == [{"filled_text": result.text, "spans": result.spans} for result in expected]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--num-beams", "0"], "at least 1"),
        (["--top-p", "2"], r"--top-p must be in \(0, 1\]"),
        (["--temperature", "0"], "--temperature must be positive"),
        (["--device", "tpu"], r"--device tpu: give cpu, cuda, cuda:N or auto"),
        (["--device", "gpu please"], r"--device gpu please: give cpu, cuda, cuda:N or auto"),
        (["--device", "cuda:99"], r"--device cuda:99: this machine has (no CUDA device|\d+ CUDA device)"),
    ],
)
def test_cli_infill_refuses_bad_options_before_loading_a_model(arguments, message):
    with pytest.raises(SystemExit, match=message):
        main(["infill", TEXTS[1], *arguments])


def models_filled_with(monkeypatch: pytest.MonkeyPatch) -> list[tuple[torch.device, torch.dtype]]:
    """The device and dtype of the model each `fill_blanks` call of `glm-hf infill` is given."""
    from glm_hf import infill_cli

    seen: list[tuple[torch.device, torch.dtype]] = []

    def recording(model, *args, **kwargs):
        seen.append((model.device, model.dtype))
        return fill_blanks(model, *args, **kwargs)

    monkeypatch.setattr(infill_cli, "fill_blanks", recording)
    return seen


def test_cli_infill_runs_on_the_device_and_dtype_asked_for(monkeypatch, capsys):
    """By default the GPU where one is available (in the checkpoint's dtype), else the CPU in float32; `--device`
    and `--dtype` choose."""
    seen = models_filled_with(monkeypatch)
    main(["infill", TEXTS[1], "--max-new-tokens", "2"])
    default = (
        (torch.device("cuda", 0), torch.float16) if torch.cuda.is_available() else (torch.device("cpu"), torch.float32)
    )
    main(["infill", TEXTS[1], "--max-new-tokens", "2", "--device", "cpu", "--dtype", "bfloat16"])
    assert seen == [default, (torch.device("cpu"), torch.bfloat16)]
    assert all(line.startswith("a bird ") for line in capsys.readouterr().out.splitlines())


def test_cli_infill_checks_files_and_model_folders(tmp_path):
    with pytest.raises(SystemExit, match="is a folder"):
        main(["infill", TEXTS[1], "--output", str(tmp_path)])
    latin1 = tmp_path / "texts.txt"
    latin1.write_bytes("caf\xe9 [MASK]\n".encode("latin-1"))
    with pytest.raises(SystemExit, match="texts.txt is not UTF-8"):
        main(["infill", "--input", str(latin1)])
    other = tmp_path / "texts.csv"
    other.write_text("a [MASK]\n")
    with pytest.raises(SystemExit, match="expected a .txt or .jsonl file"):
        main(["infill", "--input", str(other)])
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(SystemExit, match="model_type 'bert'"):
        main(["infill", TEXTS[1], "--model", str(tmp_path / "bert")])


def test_cli_infill_output_is_readable_like_any_new_file(tmp_path):
    import os

    umask = os.umask(0o022)
    try:
        main(["infill", TEXTS[1], "--output", str(tmp_path / "out.jsonl"), "--max-new-tokens", "2"])
    finally:
        os.umask(umask)
    assert (tmp_path / "out.jsonl").stat().st_mode & 0o777 == 0o644


def test_a_tokenizer_that_outgrows_the_embedding_is_named(tokenizer):
    config = tiny_config(vocab_size=40)  # the tokenizer has more ids than this
    small = glm_hf.GLMForConditionalGeneration(config).eval()
    with pytest.raises(ValueError, match="does not belong to this model"):
        fill_blanks(small, tokenizer, "the house at night [MASK]")


def test_cli_input_lines_break_at_newlines_only(tmp_path):
    """A JSON string may hold U+2028 unescaped; str.splitlines would cut the record there."""
    from glm_hf.infill_cli import read_texts

    source = tmp_path / "texts.jsonl"
    source.write_text(json.dumps({"text": "one\u2028two [MASK]"}, ensure_ascii=False) + "\n", encoding="utf-8")
    assert read_texts(source) == ["one\u2028two [MASK]"]


def test_cli_infill_refuses_texts_the_model_cannot_fill_before_filling_any(tmp_path):
    """The embedded default model (BERT vocabulary) has no [sMASK] / [gMASK]: the texts using them are named, up
    front, and no other text's work is lost half-way."""
    source = tmp_path / "texts.txt"
    source.write_text("the [MASK] is out of joint .\nthe rest is [sMASK] .\ngood night , sweet [MASK] .\na [gMASK]\n")
    output = tmp_path / "filled.jsonl"
    with pytest.raises(SystemExit) as raised:
        main(["infill", "--input", str(source), "--output", str(output), "--max-new-tokens", "2"])
    message = str(raised.value)
    assert "2 of the 4 texts of" in message and "nothing was filled" in message
    assert "text 2 ('the rest is [sMASK] .'): This model's vocabulary has no [sMASK]" in message
    assert "text 4 ('a [gMASK]'): This model's vocabulary has no [gMASK]" in message
    assert "text 1" not in message and not output.exists()


@pytest.mark.parametrize("suffix", [".txt", ".jsonl"])
def test_cli_infill_writes_the_format_its_output_extension_names(tmp_path, capsys, suffix):
    output = tmp_path / f"filled{suffix}"
    main(["infill", TEXTS[1], TEXTS[0], "--output", str(output), "--max-new-tokens", "2"])
    lines = output.read_text().splitlines()
    said = capsys.readouterr().out
    if suffix == ".txt":
        assert "(the filled texts, one per line)" in said
        assert lines[0].startswith("a bird ") and "[MASK]" not in lines[0] and not lines[0].startswith("{")
    else:
        assert "(JSON Lines: text, filled_text, spans)" in said
        assert json.loads(lines[0])["text"] == TEXTS[1]
    with pytest.raises(SystemExit, match=r"give a \.jsonl path .* or a \.txt path"):
        main(["infill", TEXTS[1], "--output", str(tmp_path / "filled.csv")])


def test_commands_on_small_models_print_no_progress_bars_or_false_warnings(tmp_path):
    """glm-hf on the 9 MB embedded model and the tiny fixtures: no "Loading weights" / "Splitting" / "Writing
    tensors" bars, no warnings (a real terminal's stderr is checked, in a subprocess)."""
    import subprocess
    import sys

    checkpoint = Path(__file__).parent / "fixtures" / "original_checkpoints" / "released"
    commands = [
        ["demo", "--output", str(tmp_path / "demo")],
        ["infill", TEXTS[1], "--max-new-tokens", "2"],
        ["convert", str(checkpoint), str(tmp_path / "converted"), "--num-attention-heads", "4"],
        ["export-original", str(tmp_path / "converted"), str(tmp_path / "original"), "--mp", "2"],
    ]
    for command in commands:
        result = subprocess.run(
            [sys.executable, "-m", "glm_hf.cli", *command], capture_output=True, text=True, check=True
        )
        assert result.stderr == "", (command, result.stderr)
