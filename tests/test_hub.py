"""Hub uploads, the model card and the remote-code export (issue 10), without contacting the Hub.

The upload is checked through the exact `CommitOperationAdd`s that `huggingface_hub` would commit, recorded by a
fake `HfApi`; the remote-code folder is loaded by a separate Python process that cannot import glm_hf.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub
import pytest
import torch
from huggingface_hub import ModelCard
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

import glm_hf
from glm_hf import hub
from glm_hf.cli import main
from glm_hf.conversion import ConversionReport, convert_checkpoint
from glm_hf.conversion.convert import model_card

from conftest import ASSETS

CHECKPOINTS = Path(__file__).parent / "fixtures" / "original_checkpoints"
HAVE_ASSETS = (ASSETS / "gpt2-vocab.json").is_file() and (ASSETS / "gpt2-merges.txt").is_file()
NO_ASSETS = f"shared assets (gpt2 vocabulary) not found at {ASSETS}; set GLM_HF_ASSETS"
REMOTE_FILES = [
    "captured_decoding.py",
    "chatglm_positions.py",
    "chatglm_rotary.py",
    "cloze_glm.py",
    "configuration_glm.py",
    "direct_layers.py",
    "infilling_glm.py",
    "modeling_glm.py",
    "tokenization_glm.py",
]
TEXTS = ["Hello [MASK] world .", "one [sMASK] two", "<|startofpiece|> x <|endofpiece|>", "  ", "a [gMASK]"]


class FakeApi:
    """Records what `HfApi` would be asked to do; sends nothing."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict]] = []

    def create_repo(self, repo_id: str, **kwargs) -> SimpleNamespace:
        self.calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))
        return SimpleNamespace(repo_id=repo_id)

    def create_branch(self, repo_id: str, **kwargs) -> None:
        self.calls.append(("create_branch", {"repo_id": repo_id, **kwargs}))

    def create_commit(self, repo_id: str, operations=(), **kwargs) -> SimpleNamespace:
        self.calls.append(("create_commit", {"repo_id": repo_id, "operations": list(operations), **kwargs}))
        return SimpleNamespace(commit_url=f"https://huggingface.co/{repo_id}/commit/0")

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]

    def commit(self) -> dict:
        return next(kwargs for name, kwargs in self.calls if name == "create_commit")


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def convert(source: Path, output: Path, **options) -> ConversionReport:
    options.setdefault("num_attention_heads", 4)
    options.setdefault("show_progress", False)
    if HAVE_ASSETS:
        options.setdefault("tokenizer_family", "gpt2")
        options.setdefault("vocab_dir", ASSETS)
    return convert_checkpoint(source, output, **options)


@pytest.fixture(scope="module")
def remote_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`released` converted with --remote-code --verify (and the gpt2 tokenizer when the assets exist)."""
    output = tmp_path_factory.mktemp("remote") / "glm-tiny"
    convert(CHECKPOINTS / "released", output, remote_code=True, verify=True, command="glm-hf convert released out")
    return output


@pytest.fixture()
def plain_folder(tmp_path: Path) -> Path:
    output = tmp_path / "plain"
    convert(CHECKPOINTS / "released", output)
    return output


def sizes(folder: Path) -> dict[str, int]:
    return {
        path.relative_to(folder).as_posix(): path.stat().st_size
        for path in folder.rglob("*")
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    }


# --- model card -------------------------------------------------------------------------------------------------


def test_model_card_metadata_and_contents(remote_folder: Path) -> None:
    card = ModelCard.load(remote_folder / "README.md")
    data = card.data.to_dict()
    assert data["license"] == "other" and data["license_name"]
    assert data["library_name"] == "transformers"
    assert data["pipeline_tag"] == "text-generation"
    assert {"glm", "glm_blocklm", "custom_code"} <= set(data["tags"])
    assert data.get("language") == ("en" if HAVE_ASSETS else None)
    assert "base_model" not in data  # the tiny fixture is no released model
    source = CHECKPOINTS / "released" / "1000" / "mp_rank_00_model_states.pt"
    assert hashlib.sha256(source.read_bytes()).hexdigest() in card.text
    assert "`glm-hf convert released out`" in card.text
    assert "29 tensors equal their source bitwise" in card.text  # the --verify result
    assert "glm_hf.fill_blanks(" in card.text and "Trainer(" in card.text
    assert "trust_remote_code=True" in card.text


def test_model_card_without_verify_and_released_shapes(plain_folder: Path) -> None:
    text = (plain_folder / "README.md").read_text()
    assert "Not verified" in text and "custom_code" not in text and "import glm_hf" in text
    report = ConversionReport(
        source=Path("glm-large-chinese"),
        output=Path("out"),
        layout="released",
        num_shards=1,
        config=glm_hf.GLMConfig.from_preset("glm-large-chinese"),
        tokenizer_family="chinese-sp",
        dtype=torch.float16,
        files=[],
        source_sha256={"mp_rank_00_model_states.pt": "ab" * 32},
        verify_summary="checked",
    )
    data = ModelCard(model_card(report, "cmd")).data.to_dict()
    assert data["base_model"] == "THUDM/glm-large-chinese" and data["language"] == "zh"
    assert ModelCard(model_card(report, "cmd", license="mit")).data.to_dict()["license"] == "mit"


# --- refusals ---------------------------------------------------------------------------------------------------


def _no_config(folder: Path) -> None:
    (folder / "config.json").unlink()


def _wrong_type(folder: Path) -> None:
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "bert"}))


def _pickle(folder: Path) -> None:
    torch.save({"x": torch.zeros(1)}, folder / "pytorch_model.bin")


def _no_weights(folder: Path) -> None:
    (folder / "model.safetensors").unlink()


def _not_safetensors(folder: Path) -> None:
    (folder / "model.safetensors").write_bytes(b"\xff" * 64)


def _missing_code(folder: Path) -> None:
    hub.export_remote_code(folder)
    (folder / "modeling_glm.py").unlink()


def _link_outside(folder: Path) -> None:
    outside = folder.parent / "secret.txt"
    outside.write_text("not for upload")
    (folder / "notes.txt").symlink_to(outside)


def _truncated_weights(folder: Path) -> None:
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[:-100])


def _trailing_bytes(folder: Path) -> None:
    with open(folder / "model.safetensors", "ab") as handle:
        handle.write(b"\0" * 16)


def _wrong_tensor_size(folder: Path) -> None:
    data = (folder / "model.safetensors").read_bytes()
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + length])
    name = next(key for key in header if key != "__metadata__")
    header[name]["shape"] = [*header[name]["shape"], 2]  # twice the elements in the same bytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (length - len(text)) if len(text) <= length else b""
    assert len(text) == length
    (folder / "model.safetensors").write_bytes(data[:8] + text + data[8 + length :])


def _config_that_cannot_load(folder: Path) -> None:
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "num_attention_heads": 3}))


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (_no_config, "no config.json"),
        (_wrong_type, "model_type 'bert'"),
        (_pickle, "pytorch_model.bin"),
        (_no_weights, "neither model.safetensors"),
        (_not_safetensors, "not a safetensors file"),
        (_missing_code, "modeling_glm.py"),
        (_link_outside, "notes.txt is a link to .*secret.txt, outside"),
        (_truncated_weights, "the file holds .* bytes of data \\(truncated or damaged"),
        (_trailing_bytes, "16 bytes of data follow the last tensor"),
        (_wrong_tensor_size, "but its dtype and shape need"),
        (_config_that_cannot_load, "does not load as a GLM configuration"),
    ],
)
def test_refused_before_anything_is_uploaded(plain_folder: Path, damage, reason: str) -> None:
    hub.check_converted_folder(plain_folder)  # fine before the damage
    damage(plain_folder)
    api = FakeApi()
    with pytest.raises(hub.NotAConvertedFolder, match=reason):
        hub.push_folder(plain_folder, "user/glm", api=api, show_progress=False)
    assert api.calls == []


def test_missing_shard_named_by_the_index(tmp_path: Path) -> None:
    folder = tmp_path / "sharded"
    convert(CHECKPOINTS / "released", folder, max_shard_size="50KB")
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1
    hub.check_converted_folder(folder)
    (folder / shards[1]).unlink()
    api = FakeApi()
    with pytest.raises(hub.NotAConvertedFolder, match=shards[1]):
        hub.push_folder(folder, "user/glm", api=api, show_progress=False)
    assert api.calls == []
    with pytest.raises(SystemExit, match=f"glm-hf push: error: .*{shards[1]}"):
        main(["push", str(folder), "user/glm"])


# --- the commit -------------------------------------------------------------------------------------------------


def test_upload_operations_are_every_file_but_hidden_staging_and_pickles(plain_folder: Path) -> None:
    expected = sizes(plain_folder)
    assert "model.safetensors" in expected and "config.json" in expected and "README.md" in expected
    (plain_folder / ".cache" / "huggingface").mkdir(parents=True)
    (plain_folder / ".cache" / "huggingface" / "x.lock").write_text("x")
    (plain_folder / ".git").mkdir()
    (plain_folder / ".git" / "HEAD").write_text("ref")
    (plain_folder / "__pycache__").mkdir()
    (plain_folder / "__pycache__" / "m.pyc").write_bytes(b"0")
    (plain_folder / "model.safetensors.partial").write_bytes(b"0")
    (plain_folder / "optimizer.pt").write_bytes(b"0")
    (plain_folder / "eval").mkdir()
    (plain_folder / "eval" / "results.json").write_text("{}")
    expected["eval/results.json"] = 2
    operations = hub.upload_operations(plain_folder)
    assert {op.path_in_repo: op.upload_info.size for op in operations} == expected
    assert [op.path_in_repo for op in operations] == sorted(expected)
    for op in operations:
        assert op.upload_info.sha256 == hashlib.sha256((plain_folder / op.path_in_repo).read_bytes()).digest()


def test_push_folder_commits_exactly_the_folder(remote_folder: Path, capsys: pytest.CaptureFixture) -> None:
    api = FakeApi()
    info = hub.push_folder(remote_folder, "user/glm-tiny", private=True, revision="v1", commit_message="m", api=api)
    assert info.commit_url.startswith("https://huggingface.co/user/glm-tiny")
    assert api.names() == ["create_repo", "create_branch", "create_commit"]
    assert api.calls[0][1] == {
        "repo_id": "user/glm-tiny",
        "private": True,
        "exist_ok": True,
        "repo_type": "model",
        "token": None,
    }
    assert api.calls[1][1]["branch"] == "v1" and api.calls[1][1]["exist_ok"] is True
    commit = api.commit()
    assert commit["repo_id"] == "user/glm-tiny" and commit["revision"] == "v1" and commit["commit_message"] == "m"
    uploaded = {op.path_in_repo: op.upload_info.size for op in commit["operations"]}
    assert uploaded == sizes(remote_folder)
    assert set(REMOTE_FILES) <= set(uploaded) and not any(name.endswith((".bin", ".pt")) for name in uploaded)
    assert "model.safetensors" in capsys.readouterr().out  # the upload plan is shown


def test_push_cli_defaults_and_options(remote_folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    apis: list[FakeApi] = []
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda: apis.append(FakeApi()) or apis[-1])
    main(["push", str(remote_folder), "user/a"])
    assert apis[-1].names() == ["create_repo", "create_commit"]
    assert apis[-1].calls[0][1]["private"] is False
    assert apis[-1].commit()["revision"] is None and "glm-tiny" in apis[-1].commit()["commit_message"]
    main(["push", str(remote_folder), "user/b", "--private", "--revision", "dev", "--commit-message", "hello"])
    assert apis[-1].calls[0][1]["private"] is True
    assert apis[-1].commit()["revision"] == "dev" and apis[-1].commit()["commit_message"] == "hello"


def test_model_and_tokenizer_push_to_hub(remote_folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import transformers.utils.hub as transformers_hub

    api = FakeApi()
    monkeypatch.setattr(transformers_hub, "hf_api", lambda: api)
    card = ModelCard.load(remote_folder / "README.md")
    monkeypatch.setattr(transformers_hub, "create_and_tag_model_card", lambda *args, **kwargs: card)
    model = AutoModelForSeq2SeqLM.from_pretrained(remote_folder)
    assert isinstance(model, glm_hf.GLMForConditionalGeneration)  # glm_hf's own class, not the remote code
    model.push_to_hub("user/glm-tiny", revision="main")
    paths = {op.path_in_repo for op in api.commit()["operations"]}
    assert {"model.safetensors", "config.json", "generation_config.json", "README.md"} <= paths
    assert not any(path.endswith((".bin", ".pt")) for path in paths)
    if HAVE_ASSETS:
        api.calls.clear()
        AutoTokenizer.from_pretrained(remote_folder).push_to_hub("user/glm-tiny")
        assert {"tokenizer.json", "tokenizer_config.json"} <= {op.path_in_repo for op in api.commit()["operations"]}


# --- remote code ------------------------------------------------------------------------------------------------


def lines_outside_relative_imports(source: str) -> set[str]:
    """The stripped lines of a module, those of its relative imports (one statement may span several) left out."""
    inside = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.level > 0:
            inside.update(range(node.lineno - 1, node.end_lineno))
    return {line.strip() for number, line in enumerate(source.splitlines()) if number not in inside}


def test_remote_code_is_generated_from_the_package(remote_folder: Path) -> None:
    sources = hub.remote_code_sources()
    assert sorted(sources) == REMOTE_FILES
    for name, module_name in ((f"{flat}.py", module) for flat, module in hub.REMOTE_CODE_MODULES.items()):
        written = (remote_folder / name).read_text()
        assert written == sources[name]
        package_source = Path(sys.modules[module_name].__file__).read_text()
        body = written.split("\n", 1)[1]
        assert module_name in written.split("\n", 1)[0]
        # Only import statements differ from the package module.
        changed = lines_outside_relative_imports(body) ^ lines_outside_relative_imports(package_source)
        assert all(
            line.startswith(("from .", "try:", "except ImportError", "raise ImportError", "import sentencepiece"))
            for line in changed
        ), changed


def test_remote_code_imports_only_torch_transformers_and_stdlib(remote_folder: Path) -> None:
    allowed = {"torch", "transformers", "tokenizers", "huggingface_hub"} | set(sys.stdlib_module_names)
    for name in REMOTE_FILES:
        source = (remote_folder / name).read_text()
        assert hub.remote_code_imports(source) <= allowed, name
        assert "glm_hf" not in hub.remote_code_imports(source) and "from .modeling import" not in source
    from transformers.dynamic_module_utils import get_imports, get_relative_import_files

    for name in REMOTE_FILES:  # what transformers checks before it runs the files
        assert set(get_imports(remote_folder / name)) <= allowed, name
    related = {Path(path).name for path in get_relative_import_files(remote_folder / "tokenization_glm.py")}
    assert related == set(REMOTE_FILES) - {"tokenization_glm.py"}
    config = json.loads((remote_folder / "config.json").read_text())
    assert config["auto_map"] == hub.CONFIG_AUTO_MAP
    if HAVE_ASSETS:
        tokenizer_config = json.loads((remote_folder / "tokenizer_config.json").read_text())
        assert tokenizer_config["auto_map"] == {"AutoTokenizer": [None, "tokenization_glm.GLMTokenizerFast"]}


def test_export_remote_code_cli(plain_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert "auto_map" not in json.loads((plain_folder / "config.json").read_text())
    main(["export-remote-code", str(plain_folder)])
    assert "modeling_glm.py" in capsys.readouterr().out
    assert json.loads((plain_folder / "config.json").read_text())["auto_map"] == hub.CONFIG_AUTO_MAP
    assert all((plain_folder / name).is_file() for name in REMOTE_FILES)
    hub.check_converted_folder(plain_folder)
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(SystemExit, match="model_type 'bert'"):
        main(["export-remote-code", str(tmp_path / "bert")])


REMOTE_SCRIPT = r"""
import importlib.abc, json, sys

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "glm_hf" or name.startswith("glm_hf."):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked)")

sys.meta_path.insert(0, Block())
try:
    import glm_hf  # noqa: F401
except ImportError:
    pass
else:
    raise SystemExit("glm_hf is importable in the remote-code subprocess")

import torch
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

folder, out = sys.argv[1], sys.argv[2]
torch.set_num_threads(1)
model = AutoModelForSeq2SeqLM.from_pretrained(folder, trust_remote_code=True, dtype=torch.float32).eval()
inputs = {key: torch.tensor(value) for key, value in json.loads(sys.argv[3]).items()}
with torch.no_grad():
    logits = model(**inputs).logits
result = {"logits": logits.tolist(), "class": type(model).__module__ + "." + type(model).__name__}
if len(sys.argv) > 4:
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    texts = json.loads(sys.argv[4])
    result["tokenizer_class"] = type(tokenizer).__module__ + "." + type(tokenizer).__name__
    result["ids"] = [tokenizer.encode(text) for text in texts]
    result["decoded"] = [tokenizer.decode(ids) for ids in result["ids"]]
    masked = [text for text in texts if "MASK]" in text]
    built = tokenizer.build_inputs_for_generation(masked, model.config)
    result["generation_inputs"] = {key: value.tolist() for key, value in built.items()}
result["glm_hf_loaded"] = any(name.split(".")[0] == "glm_hf" for name in sys.modules)
with open(out, "w") as handle:
    json.dump(result, handle)
"""


def test_remote_code_loads_without_glm_hf(remote_folder: Path, tmp_path: Path) -> None:
    inputs = {
        "input_ids": [[50, 3, 7, 60, 0, 1, 12, 40], [4, 9, 3, 22, 8, 0, 1, 30]],
        "position_ids": [[0, 1, 2, 3, 4, 5, 2, 2], [0, 1, 2, 3, 4, 5, 2, 2]],
        "block_position_ids": [[0, 0, 0, 0, 0, 0, 1, 2], [0, 0, 0, 0, 0, 0, 1, 2]],
        "prefix_length": [6, 6],
    }
    args = [sys.executable, "-c", REMOTE_SCRIPT, str(remote_folder), str(tmp_path / "out.json"), json.dumps(inputs)]
    if HAVE_ASSETS:
        args.append(json.dumps(TEXTS))
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"), TRANSFORMERS_VERBOSITY="error")
    work = tmp_path / "cwd"
    work.mkdir()
    process = subprocess.run(args, cwd=work, env=env, capture_output=True, text=True, timeout=120)
    assert process.returncode == 0, process.stderr[-3000:]
    remote = json.loads((tmp_path / "out.json").read_text())
    assert remote["glm_hf_loaded"] is False
    assert remote["class"].startswith("transformers_modules.") and remote["class"].endswith(
        "modeling_glm.GLMForConditionalGeneration"
    )

    torch.set_num_threads(1)
    native = AutoModelForSeq2SeqLM.from_pretrained(remote_folder, dtype=torch.float32).eval()
    assert isinstance(native, glm_hf.GLMForConditionalGeneration)
    with torch.no_grad():
        expected = native(**{key: torch.tensor(value) for key, value in inputs.items()}).logits
    torch.testing.assert_close(torch.tensor(remote["logits"]), expected, rtol=0, atol=1e-6)

    if not HAVE_ASSETS:
        pytest.skip(f"remote-code tokenizer not checked: {NO_ASSETS}")
    tokenizer = AutoTokenizer.from_pretrained(remote_folder)
    assert isinstance(tokenizer, glm_hf.GLMTokenizerFast)
    assert remote["tokenizer_class"].endswith("tokenization_glm.GLMTokenizerFast")
    assert remote["ids"] == [tokenizer.encode(text) for text in TEXTS]
    assert remote["decoded"] == [tokenizer.decode(ids) for ids in remote["ids"]]
    expected_inputs = tokenizer.build_inputs_for_generation([t for t in TEXTS if "MASK]" in t], native.config)
    assert remote["generation_inputs"] == {key: value.tolist() for key, value in expected_inputs.items()}


def test_convert_cli_remote_code(tmp_path: Path) -> None:
    output = tmp_path / "out"
    main(["convert", str(CHECKPOINTS / "flat"), str(output), "--num-attention-heads", "4", "--remote-code"])
    assert all((output / name).is_file() for name in REMOTE_FILES)
    assert json.loads((output / "config.json").read_text())["auto_map"] == hub.CONFIG_AUTO_MAP
    assert "--remote-code" in (output / "README.md").read_text()
    hub.check_converted_folder(output)
    shutil.rmtree(output)


def test_trainer_state_and_excluded_files_stay_behind_with_a_note(
    plain_folder: Path, capsys: pytest.CaptureFixture
) -> None:
    (plain_folder / "checkpoint-10").mkdir()
    torch.save({"step": 10}, plain_folder / "checkpoint-10" / "optimizer.pt")
    torch.save({"lr": 1.0}, plain_folder / "training_args.bin")
    (plain_folder / "trainer_state.json").write_text("{}")
    (plain_folder / "notes.md").write_text("draft")
    api = FakeApi()
    operations = hub.push_folder(plain_folder, "user/glm", api=api, exclude=["notes.*"], dry_run=True)
    assert api.calls == []  # a dry run touches no network
    names = {operation.path_in_repo for operation in operations}
    assert "model.safetensors" in names and not names & {"training_args.bin", "trainer_state.json", "notes.md"}
    assert not any(name.startswith("checkpoint-") for name in names)
    out = capsys.readouterr().out
    assert out.startswith("Would upload")
    assert (
        "left out (training state or --exclude): checkpoint-10, notes.md, trainer_state.json, training_args.bin" in out
    )
    hub.push_folder(plain_folder, "user/glm", api=api, exclude=["notes.*"], show_progress=False)
    committed = {operation.path_in_repo for operation in api.calls[-1][1]["operations"]}
    assert committed == names


def test_cli_push_dry_run_checks_and_lists_without_uploading(
    plain_folder: Path, capsys: pytest.CaptureFixture
) -> None:
    main(["push", str(plain_folder), "user/glm", "--dry-run"])
    out = capsys.readouterr().out
    assert "model.safetensors" in out and "dry run: every check passed; nothing was uploaded" in out
    _truncated_weights(plain_folder)
    with pytest.raises(SystemExit, match="glm-hf push: error: .*truncated or damaged"):
        main(["push", str(plain_folder), "user/glm", "--dry-run"])
