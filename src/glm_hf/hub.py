"""Converted folders on the Hugging Face Hub: checking, uploading, and exporting the model code as remote code.

* `check_converted_folder` refuses what is not a converted GLM folder (no config, another model type, a shard named
  by the index that is missing, pickled weights) before anything is uploaded.
* `upload_operations` / `push_folder`: the `huggingface_hub` commit of a folder (`HfApi.create_repo` +
  `HfApi.create_commit`), safetensors only; `api` can be any object with those methods, so the commit can be
  inspected without a network.
* `export_remote_code` writes `configuration_glm.py`, `modeling_glm.py`, `tokenization_glm.py` (and the two modules
  the tokenizer's builder methods import) into a folder, generated from this package's own modules with their
  package-relative imports rewritten to the flat layout, plus `auto_map` in `config.json` /
  `tokenizer_config.json`, so that `from_pretrained(..., trust_remote_code=True)` works without `glm_hf`.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import os
import sys
from collections.abc import Sequence
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

from huggingface_hub import CommitOperationAdd

from .conversion.safetensors_writer import INDEX_FILE, SINGLE_FILE
from .modeling.configuration_glm import GLMConfig

MODEL_TYPE = GLMConfig.model_type
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
# Left out of an upload: version-control/cache folders, editor and staging leftovers.
SKIPPED_NAMES = ("__pycache__",)
SKIPPED_SUFFIXES = (".pyc", ".partial", ".tmp", ".lock", ".incomplete", "~")
# Trainer state that `glm-hf pretrain` / `finetune` (transformers' Trainer) leave beside the model: left out of an
# upload, with a note. Patterns match a path relative to the folder, or its first folder.
TRAINING_STATE_PATTERNS = (
    "checkpoint-*",
    "runs",
    "training_args.bin",
    "trainer_state.json",
    "optimizer.pt",
    "scheduler.pt",
    "scaler.pt",
    "rng_state*.pth",
)
# Bytes per element of the safetensors dtypes, to check each tensor's byte range against its shape.
SAFETENSORS_ITEM_SIZES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
}  # fmt: skip

# The flat remote-code files and the package modules they are generated from.
REMOTE_CODE_MODULES: dict[str, str] = {
    "configuration_glm": "glm_hf.modeling.configuration_glm",
    "chatglm_positions": "glm_hf.modeling.chatglm_positions",
    "chatglm_rotary": "glm_hf.modeling.chatglm_rotary",
    "captured_decoding": "glm_hf.modeling.captured_decoding",
    "direct_layers": "glm_hf.modeling.direct_layers",
    "modeling_glm": "glm_hf.modeling.modeling_glm",
    "tokenization_glm": "glm_hf.tokenization_glm",
    "infilling_glm": "glm_hf.infilling",
    "cloze_glm": "glm_hf.cloze",
}
# What the generated files may import besides the standard library and each other.
REMOTE_CODE_DEPENDENCIES = frozenset({"torch", "transformers", "tokenizers", "huggingface_hub"})
CONFIG_AUTO_MAP = {
    "AutoConfig": "configuration_glm.GLMConfig",
    "AutoModel": "modeling_glm.GLMModel",
    "AutoModelForSeq2SeqLM": "modeling_glm.GLMForConditionalGeneration",
    "AutoModelForCausalLM": "modeling_glm.GLMForConditionalGeneration",
    "AutoModelForMultipleChoice": "modeling_glm.GLMForMultipleChoice",
    "AutoModelForSequenceClassification": "modeling_glm.GLMForSequenceClassification",
}
TOKENIZER_AUTO_MAP = {"AutoTokenizer": [None, "tokenization_glm.GLMTokenizerFast"]}


class NotAConvertedFolder(ValueError):
    """The folder is not a converted GLM model folder; the message says why."""


# --- checking and uploading ------------------------------------------------------------------------------------


def check_converted_folder(folder: str | os.PathLike[str], exclude: Sequence[str] = ()) -> dict[str, Any]:
    """Refuse (`NotAConvertedFolder`, with the reason) a folder that is not a converted GLM; return its config.

    A converted folder has a `config.json` of model type "glm_blocklm" that loads as a `GLMConfig`, its safetensors
    weights (every shard the index names, or `model.safetensors`, each with a readable header whose tensors lie
    inside the file), no pickled weights, no link to anything outside it, and every remote-code file its `auto_map`
    names. Training state and `exclude` patterns are not checked (they are not uploaded).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise NotAConvertedFolder(f"{folder} is not a folder.")
    _check_links(folder)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise NotAConvertedFolder(f"{folder} has no config.json: not a converted GLM folder (run `glm-hf convert`).")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise NotAConvertedFolder(f"{config_path} is not valid JSON: {error}.") from None
    if not isinstance(config, dict) or config.get("model_type") != MODEL_TYPE:
        found = config.get("model_type") if isinstance(config, dict) else None
        raise NotAConvertedFolder(
            f"{config_path} has model_type {found!r}, not {MODEL_TYPE!r}: not a converted GLM folder."
        )
    try:
        GLMConfig.from_dict(config)
    except Exception as error:  # noqa: BLE001 (strict dataclass checks raise their own types; every one refuses)
        raise NotAConvertedFolder(f"{config_path} does not load as a GLM configuration: {error}") from None
    pickles = [str(path.relative_to(folder)) for path in _files(folder, exclude) if _is_pickle(path)]
    if pickles:
        raise NotAConvertedFolder(
            f"{folder} holds pickled files ({', '.join(pickles)}); only safetensors are uploaded: remove them first."
        )
    index_path = folder / INDEX_FILE
    if index_path.is_file():
        try:
            weight_map = json.loads(index_path.read_text(encoding="utf-8"))["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise NotAConvertedFolder(f"{index_path} is not a safetensors index: {error!r}.") from None
        shards = list(dict.fromkeys(weight_map.values()))
        missing = [name for name in shards if not (folder / name).is_file()]
        if missing:
            raise NotAConvertedFolder(f"{folder} lacks shard(s) named by {INDEX_FILE}: {', '.join(missing)}.")
    elif not (folder / SINGLE_FILE).is_file():
        raise NotAConvertedFolder(f"{folder} has neither {SINGLE_FILE} nor {INDEX_FILE}: no weights to upload.")
    else:
        shards = [SINGLE_FILE]
    for name in shards:
        _check_safetensors_header(folder / name)
    code_files = {f"{ref.split('.')[0]}.py" for ref in _auto_map_references(config.get("auto_map"))}
    missing_code = sorted(name for name in code_files if not (folder / name).is_file())
    if missing_code:
        raise NotAConvertedFolder(
            f"config.json's auto_map names {', '.join(missing_code)}, missing from {folder} "
            "(run `glm-hf export-remote-code FOLDER`)."
        )
    return config


def _auto_map_references(auto_map: Any) -> list[str]:
    if not isinstance(auto_map, dict):
        return []
    references = []
    for value in auto_map.values():
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(item, str) and "--" not in item:  # "repo--module.Class" points at another repository
                references.append(item)
    return references


def _check_safetensors_header(path: Path) -> None:
    """A safetensors file: an 8-byte little-endian header length, a JSON header, and a body that holds every tensor
    the header names at its byte range (of the size its dtype and shape need), up to the body's end."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        length = int.from_bytes(prefix, "little") if len(prefix) == 8 else -1
        if not 0 < length <= size - 8:
            raise NotAConvertedFolder(f"{path} is not a safetensors file (bad header length).")
        try:
            header = json.loads(handle.read(length))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise NotAConvertedFolder(f"{path} is not a safetensors file (unreadable header).") from None
    if not isinstance(header, dict):
        raise NotAConvertedFolder(f"{path} is not a safetensors file (its header is no JSON object).")
    body = size - 8 - length
    end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            start, stop = entry["data_offsets"]
            count = 1
            for dim in entry["shape"]:
                count *= int(dim)
            needed = count * SAFETENSORS_ITEM_SIZES[entry["dtype"]]
        except (KeyError, TypeError, ValueError):
            raise NotAConvertedFolder(f"{path}: the header entry of {name!r} is malformed: {entry!r}.") from None
        if not (isinstance(start, int) and isinstance(stop, int) and 0 <= start <= stop <= body):
            raise NotAConvertedFolder(
                f"{path}: tensor {name!r} lies at bytes {start}..{stop} of the data, but the file holds {body} bytes "
                "of data (truncated or damaged: convert again)."
            )
        if stop - start != needed:
            raise NotAConvertedFolder(
                f"{path}: tensor {name!r} takes {stop - start} bytes, but its dtype and shape need {needed}."
            )
        end = max(end, stop)
    if end != body:
        raise NotAConvertedFolder(f"{path}: {body - end} bytes of data follow the last tensor (damaged file).")


def _check_links(folder: Path) -> None:
    """Refuse a symbolic link under `folder` that leads outside it (an upload would send what it points to)."""
    root = folder.resolve()
    for base, dirs, names in os.walk(folder):
        for name in [*dirs, *names]:
            path = Path(base) / name
            if path.is_symlink():
                target = path.resolve()
                if target != root and root not in target.parents:
                    raise NotAConvertedFolder(
                        f"{path} is a link to {target}, outside {folder}: an upload would send that file. Copy what "
                        "belongs to the model into the folder, or remove the link."
                    )


def _skipped(relative: Path) -> bool:
    """Hidden (`.git`, `.cache`), cache and staging files: never part of an upload."""
    return any(
        part.startswith(".") or part in SKIPPED_NAMES or part.endswith(SKIPPED_SUFFIXES) for part in relative.parts
    )


def _is_pickle(path: Path) -> bool:
    return path.name.lower().endswith(PICKLE_SUFFIXES)


def _left_out(relative: Path, exclude: Sequence[str]) -> bool:
    """Training state (`TRAINING_STATE_PATTERNS`) or an `exclude` pattern (matched against the relative POSIX path or
    its first part)."""
    candidates = (relative.as_posix(), relative.parts[0])
    return any(fnmatch(text, pattern) for pattern in (*TRAINING_STATE_PATTERNS, *exclude) for text in candidates)


def _files(folder: Path, exclude: Sequence[str] = ()) -> list[Path]:
    """Every regular file under `folder`, sorted, without hidden, cache and staging files, training state and
    `exclude` patterns (pickles included)."""
    found = []
    for root, dirs, names in os.walk(folder):
        base = Path(root)
        dirs[:] = sorted(name for name in dirs if not _skipped((base / name).relative_to(folder)))
        found += [base / name for name in names if (base / name).is_file()]
    kept = (path.relative_to(folder) for path in found)
    return sorted(folder / path for path in kept if not _skipped(path) and not _left_out(path, exclude))


def left_out_training_state(folder: str | os.PathLike[str], exclude: Sequence[str] = ()) -> list[str]:
    """The top-level names under `folder` that an upload leaves out as training state or by `exclude`."""
    folder = Path(folder)
    return sorted(
        path.name for path in folder.iterdir() if not _skipped(Path(path.name)) and _left_out(Path(path.name), exclude)
    )


def upload_operations(folder: str | os.PathLike[str], exclude: Sequence[str] = ()) -> list[CommitOperationAdd]:
    """The `CommitOperationAdd`s of a commit of `folder`: every file (relative POSIX paths) except pickles, hidden,
    cache or staging files, training state and `exclude` patterns. Each operation hashes its file (its
    `upload_info` holds the size and sha256)."""
    folder = Path(folder)
    return [
        CommitOperationAdd(path_in_repo=path.relative_to(folder).as_posix(), path_or_fileobj=str(path))
        for path in _files(folder, exclude)
        if not _is_pickle(path)
    ]


def push_folder(
    folder: str | os.PathLike[str],
    repo_id: str,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
    api: Any = None,
    token: str | bool | None = None,
    show_progress: bool = True,
    exclude: Sequence[str] = (),
    dry_run: bool = False,
) -> Any:
    """Upload a converted folder to the Hub model repository `repo_id` in one commit; returns the `CommitInfo`.

    The folder is checked first (`check_converted_folder`); the repository is created if needed
    (`exist_ok=True`, `private` applies to a new one) and so is the branch `revision`. `api` defaults to
    `huggingface_hub.HfApi()`; the login is `hf auth login` or `HF_TOKEN`, or pass `token`. Trainer state
    (`checkpoint-*/`, `training_args.bin`, ...) and `exclude` patterns (fnmatch, on paths relative to the folder)
    stay behind, with a note. `dry_run`: every check and the list of files, then the operations are returned and
    nothing touches the network.
    """
    folder = Path(folder)
    check_converted_folder(folder, exclude)
    operations = upload_operations(folder, exclude)
    left_out = left_out_training_state(folder, exclude)
    if show_progress or dry_run:
        total = sum(operation.upload_info.size for operation in operations)
        verb = "Would upload" if dry_run else "Uploading"
        print(f"{verb} {len(operations)} files ({_human(total)}) from {folder} to {repo_id}@{revision or 'main'}:")
        for operation in operations:
            print(f"  {operation.path_in_repo} ({_human(operation.upload_info.size)})")
        if left_out:
            print(f"left out (training state or --exclude): {', '.join(left_out)}")
    if dry_run:
        return operations
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi()
    created = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model", token=token)
    repo_id = getattr(created, "repo_id", None) or repo_id
    if revision is not None and not revision.startswith("refs/pr/"):
        api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type="model", token=token)
    return api.create_commit(
        repo_id,
        operations=operations,
        commit_message=commit_message or f"Upload GLM converted with glm-hf ({folder.name})",
        revision=revision,
        repo_type="model",
        token=token,
    )


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{size} B"


# --- remote code -----------------------------------------------------------------------------------------------


def remote_code_sources() -> dict[str, str]:
    """`{file name: source}` of the flat remote-code files, generated from the package modules."""
    flat_of = {module: flat for flat, module in REMOTE_CODE_MODULES.items()}
    version = importlib.import_module("glm_hf").__version__
    sources = {}
    for flat, module_name in REMOTE_CODE_MODULES.items():
        module = importlib.import_module(module_name)
        source = _flatten_imports(inspect.getsource(module), module_name, flat_of)
        header = (
            f"# Generated by glm-hf {version} from {module_name} (`glm-hf export-remote-code`); "
            "edit the glm_hf package, not this copy.\n"
        )
        sources[f"{flat}.py"] = header + source
    for name, source in sources.items():
        outside = remote_code_imports(source) - REMOTE_CODE_DEPENDENCIES - set(sys.stdlib_module_names)
        if outside:
            raise RuntimeError(f"The remote-code file {name} would import {', '.join(sorted(outside))}.")
    return sources


def remote_code_imports(source: str) -> set[str]:
    """The top-level packages a source needs, as transformers' `check_imports` sees them (imports inside `try`
    blocks are optional); a relative import that does not name a flat remote-code file is listed as it is written."""
    packages: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.Try):
            return
        if isinstance(node, ast.Import):
            packages.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                packages.add((node.module or "").split(".")[0])
            elif node.level > 1 or (node.module or "") not in REMOTE_CODE_MODULES:
                packages.add("." * node.level + (node.module or ""))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(source))
    return packages


def _flatten_imports(source: str, module_name: str, flat_of: dict[str, str]) -> str:
    """Rewrite the package-relative imports of `module_name` into imports between the flat files."""
    lines = source.split("\n")
    package = module_name.rsplit(".", 1)[0]
    replacements = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.level > 0:
            base = package.split(".")
            base = base[: len(base) - (node.level - 1)]
            target = ".".join(base + ([node.module] if node.module else []))
            replacements.append((node, _flat_import(node, target, module_name, flat_of)))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            packages = {name.split(".")[0] for name in names}
            if "glm_hf" in packages:
                raise RuntimeError(f"{module_name} imports glm_hf absolutely (line {node.lineno}): cannot export it.")
    for node, statements in sorted(replacements, key=lambda item: item[0].lineno, reverse=True):
        first = lines[node.lineno - 1]
        indent = first[: len(first) - len(first.lstrip())]
        lines[node.lineno - 1 : node.end_lineno] = [indent + statement for statement in statements]
    return "\n".join(lines)


def _flat_import(node: ast.ImportFrom, target: str, module_name: str, flat_of: dict[str, str]) -> list[str]:
    if target in flat_of:
        return [f"from .{flat_of[target]} import {_aliases(node.names)}"]
    # `from .package import Name`: import each name from the exported module that defines it.
    package = importlib.import_module(target)
    grouped: dict[str, list[ast.alias]] = {}
    for alias in node.names:
        value = getattr(package, alias.name)
        home = next(
            (
                exported
                for exported in flat_of
                if getattr(sys.modules.get(exported) or importlib.import_module(exported), alias.name, None) is value
                and (getattr(value, "__module__", exported) == exported or not hasattr(value, "__module__"))
            ),
            None,
        )
        if home is None:
            raise RuntimeError(f"{module_name} imports {alias.name} from {target}, which no remote-code file defines.")
        grouped.setdefault(flat_of[home], []).append(alias)
    return [f"from .{flat} import {_aliases(aliases)}" for flat, aliases in grouped.items()]


def _aliases(names: Sequence[ast.alias]) -> str:
    return ", ".join(alias.name if alias.asname is None else f"{alias.name} as {alias.asname}" for alias in names)


def export_remote_code(folder: str | os.PathLike[str]) -> list[str]:
    """Write the remote-code files into a converted `folder` and point `auto_map` at them; returns the files written.

    `config.json` gets `auto_map` for AutoConfig, AutoModel, AutoModelForSeq2SeqLM, AutoModelForCausalLM and the
    task heads' AutoModelForMultipleChoice / AutoModelForSequenceClassification;
    `tokenizer_config.json`, when the folder has one, for AutoTokenizer.
    """
    folder = Path(folder)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise NotAConvertedFolder(f"{folder} has no config.json: not a converted GLM folder.")
    config = json.loads(config_path.read_text(encoding="utf-8"))
    if config.get("model_type") != MODEL_TYPE:
        raise NotAConvertedFolder(f"{config_path} has model_type {config.get('model_type')!r}, not {MODEL_TYPE!r}.")
    written = []
    for name, source in remote_code_sources().items():
        _write_text(folder / name, source)
        written.append(name)
    config["auto_map"] = dict(CONFIG_AUTO_MAP)
    _write_text(config_path, json.dumps(config, indent=2, sort_keys=True) + "\n")
    written.append("config.json")
    tokenizer_config_path = folder / "tokenizer_config.json"
    tokenizer_config = (
        json.loads(tokenizer_config_path.read_text(encoding="utf-8")) if tokenizer_config_path.is_file() else None
    )
    # Only GLM's own tokenizer class needs its code; a plain fast tokenizer (ChatGLM-6B's) loads without any.
    if tokenizer_config is not None and tokenizer_config.get("tokenizer_class") == "GLMTokenizerFast":
        tokenizer_config["auto_map"] = dict(TOKENIZER_AUTO_MAP)
        _write_text(tokenizer_config_path, json.dumps(tokenizer_config, indent=2, ensure_ascii=False) + "\n")
        written.append("tokenizer_config.json")
    return written


def _write_text(path: Path, text: str) -> None:
    """Write a file whole or not at all (a temporary file renamed over it)."""
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)


__all__ = [
    "CONFIG_AUTO_MAP",
    "NotAConvertedFolder",
    "REMOTE_CODE_MODULES",
    "TOKENIZER_AUTO_MAP",
    "check_converted_folder",
    "export_remote_code",
    "push_folder",
    "remote_code_imports",
    "remote_code_sources",
    "upload_operations",
]
