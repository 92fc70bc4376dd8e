"""ChatGLM-6B folder (THUDM/chatglm-6b remote-code layout) -> safetensors folder loaded without remote code.

The source is `config.json` beside `pytorch_model.bin` or `pytorch_model-0000N-of-0000M.bin` shards with their
`pytorch_model.bin.index.json` (fp16 or fp32). Shards are memory-mapped and written tensor by tensor, so memory
stays near one tensor; the output appears atomically, as for GLM. Two things change on the way:

- `query_key_value` rows are grouped per head in the original (`[q_h | k_h | v_h]` for each head h); they are
  reordered once into this package's `[Q; K; V]` (`grouped_qkv_to_stacked`).
- A P-Tuning v2 prefix encoder (`transformer.prefix_encoder.*`) becomes a PEFT prefix-tuning adapter in
  `OUTPUT/adapter`: its output rows (for the projection variant, embedding -> Linear -> tanh -> Linear evaluated
  once) are the adapter's prompt table, so `PeftModel.from_pretrained(base, OUTPUT/adapter)` gives the original's
  past keys and values (rows 2i and 2i + 1 of layer i).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..modeling.configuration_glm import GLMConfig
from ..modeling.modeling_glm import GLMModel, glm_generation_config
from ..progress import bytes_under, is_long_work
from .atomic import atomic_output_folder, check_output_location, check_replaceable
from .chatglm_config import NOT_CONVERTED, read_chatglm_config
from .checkpoint import CheckpointError, load_checkpoint_file, model_state_dict
from .convert import ConversionReport, is_converted_folder, sha256_of, some_of, verify_folder
from .safetensors_writer import PlannedTensor, write_safetensors_file, write_sharded_safetensors

WEIGHTS_FILE = "pytorch_model.bin"
WEIGHTS_INDEX_FILE = "pytorch_model.bin.index.json"
SENTENCEPIECE_FILE = "ice_text.model"
ADAPTER_FOLDER = "adapter"
PREFIX_ENCODER = "transformer.prefix_encoder."
# Parameters of every original block: `transformer.layers.N.<name>` -> `glm.layers.N.<name>`.
LAYER_PARAMETERS = (
    "input_layernorm.weight",
    "input_layernorm.bias",
    "attention.query_key_value.weight",
    "attention.query_key_value.bias",
    "attention.dense.weight",
    "attention.dense.bias",
    "post_attention_layernorm.weight",
    "post_attention_layernorm.bias",
    "mlp.dense_h_to_4h.weight",
    "mlp.dense_h_to_4h.bias",
    "mlp.dense_4h_to_h.weight",
    "mlp.dense_4h_to_h.bias",
)
TOP_LEVEL_KEYS = {
    "transformer.word_embeddings.weight": "glm.word_embeddings.weight",
    "transformer.final_layernorm.weight": "glm.final_layernorm.weight",
    "transformer.final_layernorm.bias": "glm.final_layernorm.bias",
    "lm_head.weight": "lm_head.weight",
}
# Buffers the original recomputes and never loads (`RotaryEmbedding._load_from_state_dict` ignores them).
IGNORED_SUFFIX = ".attention.rotary_emb.inv_freq"
# ChatGLM-6B config key -> the GLMConfig keys that take its value (<sop> and <eop> are its bos and eos).
CONFIG_KEYS = {
    "vocab_size": ("vocab_size",),
    "hidden_size": ("hidden_size",),
    "num_layers": ("num_hidden_layers",),
    "num_attention_heads": ("num_attention_heads",),
    "inner_hidden_size": ("intermediate_size",),
    "max_sequence_length": ("max_position_embeddings",),
    "layernorm_epsilon": ("layer_norm_eps",),
    "pad_token_id": ("pad_token_id",),
    "bos_token_id": ("bos_token_id", "sop_token_id"),
    "eos_token_id": ("eos_token_id", "eop_token_id"),
    "mask_token_id": ("mask_token_id",),
    "gmask_token_id": ("gmask_token_id",),
}
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def is_chatglm_folder(source: str | Path) -> bool:
    """Whether `source` is a folder whose `config.json` says `model_type "chatglm"` (any ChatGLM generation; the
    later ones are refused by `read_chatglm_config`)."""
    config = Path(source) / "config.json"
    if not config.is_file():
        return False
    try:
        return json.loads(config.read_text(encoding="utf-8")).get("model_type") == "chatglm"
    except (UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return False


def refuse_later_generations(source: str | Path) -> None:
    """Refuse a transformers-native GLM-4 folder (`model_type` "glm4*", or "glm" with GLM-4's grouped-query keys;
    THUDM's GLM Hub files also say "glm" but have none), naming where it is served."""
    config_path = Path(source) / "config.json"
    if not config_path.is_file():
        return
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if isinstance(model_type, str) and (
        model_type.startswith("glm4") or (model_type == "glm" and "num_key_value_heads" in config)
    ):
        raise CheckpointError(f"{config_path}: model_type {model_type!r} is GLM-4. {NOT_CONVERTED}")


def chatglm_to_glm_config(original: Mapping[str, Any]) -> GLMConfig:
    """The `GLMConfig` that runs a ChatGLM-6B config as the original does (see `configuration_glm.CHATGLM_6B`).

    The head is tied unless the config says `tie_word_embeddings: false`: the release has no such key, so
    transformers ties `lm_head` to the word embeddings when it loads the original."""
    values = {ours: original[key] for key, names in CONFIG_KEYS.items() for ours in names}
    values["smask_token_id"] = original["gmask_token_id"] + 1  # [sMASK] follows [gMASK] in ChatGLM's vocabulary
    values["block_position_encoding"] = original.get("position_encoding_2d", True)
    values["tie_word_embeddings"] = original.get("tie_word_embeddings", True)
    values["use_cache"] = original.get("use_cache", True)
    return GLMConfig.from_preset("chatglm-6b", **values)


def original_to_hf_key(key: str) -> str | None:
    """The glm-hf name of an original ChatGLM-6B backbone or head key; None for keys outside that table."""
    if key in TOP_LEVEL_KEYS:
        return TOP_LEVEL_KEYS[key]
    prefix = "transformer.layers."
    if key.startswith(prefix):
        layer, _, parameter = key[len(prefix) :].partition(".")
        if layer.isdigit() and parameter in LAYER_PARAMETERS:
            return f"glm.layers.{layer}.{parameter}"
    return None


def grouped_qkv_to_stacked(tensor: torch.Tensor, num_heads: int) -> torch.Tensor:
    """ChatGLM's per-head `[q_h | k_h | v_h]` rows of `query_key_value` (weight or bias) as `[Q; K; V]`."""
    rows = tensor.shape[0]
    return (
        tensor.reshape(num_heads, 3, rows // (3 * num_heads), *tensor.shape[1:]).transpose(0, 1).reshape(tensor.shape)
    )


def weight_files(folder: Path) -> list[Path]:
    """The weight files of a ChatGLM-6B folder: every shard its index names (all present), or the single file."""
    index = folder / WEIGHTS_INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            names = sorted(set(weight_map.values()))
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as error:
            raise CheckpointError(f"{index}: not a readable shard index ({error!r}).") from None
        missing = [name for name in names if not (folder / name).is_file()]
        if missing:
            raise CheckpointError(
                f"{index} names {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} not in {folder}: "
                "a shard is missing (download every pytorch_model-0000N-of-0000M.bin)."
            )
        return [folder / name for name in names]
    if (folder / WEIGHTS_FILE).is_file():
        return [folder / WEIGHTS_FILE]
    raise CheckpointError(f"{folder} holds config.json but neither {WEIGHTS_FILE} nor {WEIGHTS_INDEX_FILE}.")


def load_tensors(files: list[Path], trust_remote_pickle: bool = False) -> dict[str, tuple[torch.Tensor, Path]]:
    """Every tensor of the (memory-mapped) shards with the file it came from; a key in two shards is refused."""
    tensors: dict[str, tuple[torch.Tensor, Path]] = {}
    for file in files:
        for key, tensor in model_state_dict(load_checkpoint_file(file, trust_remote_pickle), file).items():
            if key in tensors:
                raise CheckpointError(f"{key} is in both {tensors[key][1]} and {file}: the shards overlap.")
            tensors[key] = (tensor, file)
    return tensors


def check_tensors(tensors: Mapping[str, tuple[torch.Tensor, Path]], config: GLMConfig, folder: Path) -> list[str]:
    """Refuse what a model of `config` cannot load (a missing or misshapen tensor, non-float values), naming the
    tensor; returns the keys left out (neither backbone, head, prefix encoder nor ignored buffer)."""
    with torch.device("meta"):
        expected = {f"glm.{name}": tuple(t.shape) for name, t in GLMModel(config).state_dict().items()}
    expected["lm_head.weight"] = (config.vocab_size, config.hidden_size)
    found = {original_to_hf_key(key): key for key in tensors if original_to_hf_key(key) is not None}
    missing = [name for name in expected if name not in found and name != "lm_head.weight"]
    if missing:
        raise CheckpointError(
            f"{folder}: the weights lack {some_of(missing)} (glm-hf names), which a ChatGLM of "
            f"{config.num_hidden_layers} layers has: a partial download or a damaged checkpoint."
        )
    for name, key in found.items():
        tensor, file = tensors[key]
        if name not in expected:
            raise CheckpointError(f"{file}: {key} belongs to no layer of a {config.num_hidden_layers}-layer config.")
        if not tensor.is_floating_point() or tensor.layout != torch.strided:
            raise CheckpointError(f"{file}: {key} holds {tensor.dtype} {tensor.layout} values, not dense floats.")
        if tuple(tensor.shape) != expected[name]:
            raise CheckpointError(
                f"{file}: {key} has shape {list(tensor.shape)}, but config.json (hidden_size {config.hidden_size}, "
                f"{config.num_attention_heads} heads, inner_hidden_size {config.intermediate_size}, vocab_size "
                f"{config.vocab_size}) needs {list(expected[name])}."
            )
    return sorted(
        key
        for key in tensors
        if original_to_hf_key(key) is None and not key.startswith(PREFIX_ENCODER) and not key.endswith(IGNORED_SUFFIX)
    )


def plan_model(
    tensors: Mapping[str, tuple[torch.Tensor, Path]], config: GLMConfig, dtype: torch.dtype
) -> list[PlannedTensor]:
    """The output tensors (renamed, `query_key_value` reordered, cast when written); a tied head is not written."""

    def producer(key: str) -> Callable[[], torch.Tensor]:
        def produce() -> torch.Tensor:
            tensor = tensors[key][0]
            if ".attention.query_key_value." in key:
                tensor = grouped_qkv_to_stacked(tensor, config.num_attention_heads)
            return tensor.to(dtype)

        return produce

    planned = []
    for key in sorted(tensors):
        name = original_to_hf_key(key)
        if name is None or (name == "lm_head.weight" and config.tie_word_embeddings):
            continue
        planned.append(PlannedTensor(name, tuple(tensors[key][0].shape), dtype, producer(key)))
    return planned


def prefix_table(tensors: Mapping[str, tuple[torch.Tensor, Path]], original: Mapping[str, Any]) -> torch.Tensor:
    """The P-Tuning v2 prefix encoder's output for prefix tokens 0..n-1, `[n, layers * 2 * hidden]` in float32:
    the embedding itself, or embedding -> Linear -> tanh -> Linear with `prefix_projection`."""
    weights = {
        key[len(PREFIX_ENCODER) :]: tensor.float()
        for key, (tensor, _) in tensors.items()
        if key.startswith(PREFIX_ENCODER)
    }
    rows = original["pre_seq_len"]
    width = original["num_layers"] * 2 * original["hidden_size"]
    try:
        table = weights["embedding.weight"]
        if original.get("prefix_projection"):
            hidden = torch.tanh(torch.nn.functional.linear(table, weights["trans.0.weight"], weights["trans.0.bias"]))
            table = torch.nn.functional.linear(hidden, weights["trans.2.weight"], weights["trans.2.bias"])
    except KeyError as error:
        projection = "with" if original.get("prefix_projection") else "without"
        raise CheckpointError(
            f"The prefix encoder ({projection} prefix_projection, as config.json says) lacks "
            f"{PREFIX_ENCODER}{error.args[0]}."
        ) from None
    if tuple(table.shape) != (rows, width):
        raise CheckpointError(
            f"The prefix encoder gives {list(table.shape)} rows x values, but config.json (pre_seq_len {rows}, "
            f"{original['num_layers']} layers, hidden_size {original['hidden_size']}) needs [{rows}, {width}]."
        )
    return table


def write_prefix_adapter(folder: Path, table: torch.Tensor, config: GLMConfig) -> list[str]:
    """Write the PEFT prefix-tuning adapter (`adapter_config.json`, `adapter_model.safetensors`) into `folder`.

    The table stays float32 whatever the model's dtype: the projection variant's rows are computed values that
    fp16 would round (PEFT casts them to the model's dtype when it runs)."""
    from peft import PrefixTuningConfig, TaskType

    folder.mkdir(parents=True, exist_ok=True)
    PrefixTuningConfig(
        task_type=TaskType.CAUSAL_LM,
        num_virtual_tokens=table.shape[0],
        token_dim=config.hidden_size,
        num_transformer_submodules=1,
        num_attention_heads=config.num_attention_heads,
        num_layers=config.num_hidden_layers,
        encoder_hidden_size=config.hidden_size,
        prefix_projection=False,  # the projection is folded into the table
        inference_mode=True,
    ).save_pretrained(folder)
    values = table.float().contiguous()
    write_safetensors_file(
        folder / "adapter_model.safetensors",
        [PlannedTensor("prompt_embeddings", tuple(values.shape), torch.float32, lambda: values)],
    )
    return [f"{ADAPTER_FOLDER}/adapter_config.json", f"{ADAPTER_FOLDER}/adapter_model.safetensors"]


def convert_chatglm(
    source: str | Path,
    output: str | Path,
    *,
    dtype: str = "auto",
    max_shard_size: str | int = "5GB",
    overwrite: bool = False,
    force: bool = False,
    verify: bool = False,
    trust_remote_pickle: bool = False,
    show_progress: bool | None = None,
    remote_code: bool = False,
) -> ConversionReport:
    """Convert a ChatGLM-6B folder into a glm-hf folder at `output` (atomically), as `convert_checkpoint` does GLM.

    The folder gets the model when the source holds it, the PEFT adapter in `adapter/` when it holds a P-Tuning v2
    prefix encoder (`pre_seq_len` in config.json), and the tokenizer when `ice_text.model` is beside the weights.
    """
    folder, output = Path(source), Path(output)
    check_output_location(output, [folder])
    check_replaceable(output, overwrite, is_converted_folder, force)
    original = read_chatglm_config(folder)
    try:
        config = chatglm_to_glm_config(original)
    except (ValueError, TypeError, KeyError) as error:
        raise CheckpointError(f"{folder / 'config.json'}: describes no valid ChatGLM-6B: {error}") from None
    files = weight_files(folder)
    tensors = load_tensors(files, trust_remote_pickle)
    has_model = any(original_to_hf_key(key) is not None for key in tensors)
    has_prefix = any(key.startswith(PREFIX_ENCODER) for key in tensors)
    if has_prefix and not original.get("pre_seq_len"):
        raise CheckpointError(f"{folder}: the weights hold {PREFIX_ENCODER}* but config.json sets no pre_seq_len.")
    if not has_model and not has_prefix:
        raise CheckpointError(
            f"{folder}: the weights hold neither a ChatGLM-6B model nor a P-Tuning v2 prefix encoder."
        )
    left_out = check_tensors(tensors, config, folder) if has_model else []
    if dtype == "auto":
        torch_dtype = next(tensor.dtype for tensor, _ in tensors.values() if tensor.is_floating_point())
    elif dtype in DTYPES:
        torch_dtype = DTYPES[dtype]
    else:
        raise CheckpointError(f"Unknown dtype {dtype!r}; choose auto, {', '.join(DTYPES)}.")
    table = prefix_table(tensors, original) if has_prefix else None
    if show_progress is None:
        show_progress = is_long_work(bytes_under(files))
    planned = plan_model(tensors, config, torch_dtype) if has_model else []
    with tqdm(
        total=bytes_under(files), desc="Hashing source", unit="B", unit_scale=True, disable=not show_progress
    ) as bar:
        hashes = {file.name: sha256_of(file, bar) for file in files}
    written: list[str] = []
    with atomic_output_folder(
        output, overwrite, sources=[folder, *files], replaceable=is_converted_folder, force=force
    ) as staging:
        if planned:
            written += write_sharded_safetensors(staging, planned, max_shard_size, show_progress)
        config.dtype = torch_dtype
        config.architectures = ["GLMForConditionalGeneration"]
        config.save_pretrained(staging)
        glm_generation_config(config).save_pretrained(staging)
        written += ["config.json", "generation_config.json"]
        if table is not None:
            written += write_prefix_adapter(staging / ADAPTER_FOLDER, table, config)
        tokenizer_written = (folder / SENTENCEPIECE_FILE).is_file()
        if tokenizer_written:
            written += _write_tokenizer(staging, folder, config)
        if remote_code:
            from ..hub import export_remote_code

            written = list(dict.fromkeys([*written, *export_remote_code(staging)]))
        report = ConversionReport(
            source=folder,
            output=output,
            layout="chatglm" if has_model else "chatglm p-tuning v2 prefix only",
            num_shards=len(files),
            config=config,
            tokenizer_family="chatglm (ice_text.model)" if tokenizer_written else None,
            dtype=torch_dtype,
            files=sorted([*written, "README.md"]),
            left_out=left_out,
            source_sha256=hashes,
        )
        if verify and planned:
            report.verify_summary = verify_chatglm(staging, planned)
        (staging / "README.md").write_text(_model_card(report, has_model, table is not None), encoding="utf-8")
    return report


def verify_chatglm(folder: Path, planned: list[PlannedTensor]) -> str:
    """`verify_folder` for a ChatGLM: tensors named as in glm-hf (the original's `query_key_value` is reordered), a
    `[gMASK] <sop>` prompt as the probe."""
    from transformers import AutoModelForCausalLM

    def probe_ids(config: GLMConfig) -> torch.Tensor:
        return torch.tensor([[5, 6, 7, config.gmask_token_id, config.sop_token_id]]).remainder(config.vocab_size)

    return verify_folder(folder, AutoModelForCausalLM, planned, str, probe_ids)


def _model_card(report: ConversionReport, has_model: bool, has_adapter: bool) -> str:
    """A short README: what the folder holds, its source files' sha256 and how to load it."""
    lines = [
        "---",
        "library_name: transformers",
        "tags: [chatglm, glm_blocklm, glm-hf]",
        "license: other",
        "---",
        "",
        f"# ChatGLM-6B converted by glm-hf from `{report.source.name}`",
        "",
        "Loads with `import glm_hf` and the Auto classes, without `trust_remote_code` (see glm-hf's docs/chatglm.md).",
        "",
    ]
    if has_model:
        lines += [
            "```python",
            "import glm_hf",
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            "",
            'model = AutoModelForCausalLM.from_pretrained("PATH")',
            "```",
            "",
        ]
    if has_adapter:
        lines += [
            f"`{ADAPTER_FOLDER}/` is the source's P-Tuning v2 prefix as a PEFT prefix-tuning adapter:",
            f'`PeftModel.from_pretrained(base_model, "PATH/{ADAPTER_FOLDER}")`.',
            "",
        ]
    lines += ["Source files (sha256):", ""]
    lines += [f"- `{name}`: `{digest}`" for name, digest in report.source_sha256.items()]
    return "\n".join(lines) + "\n"


def _write_tokenizer(folder: Path, source: Path, config: GLMConfig) -> list[str]:
    """Write the fast tokenizer built from the source's `ice_text.model`, with the `num_image_tokens` of its
    `tokenizer_config.json` (the release says 0; the original code's default is 20000); refuse one whose special
    token ids disagree with config.json."""
    from ..tokenization_chatglm import chatglm_tokenizer_from_sentencepiece

    settings_path = source / "tokenizer_config.json"
    settings = json.loads(settings_path.read_text(encoding="utf-8")) if settings_path.is_file() else {}
    num_image_tokens = settings.get("num_image_tokens", 20000)
    tokenizer = chatglm_tokenizer_from_sentencepiece(source / SENTENCEPIECE_FILE, num_image_tokens=num_image_tokens)
    expected = {"<sop>": config.sop_token_id, "<eop>": config.eop_token_id, "[gMASK]": config.gmask_token_id}
    found = {token: tokenizer.convert_tokens_to_ids(token) for token in expected}
    if found != expected:
        raise CheckpointError(
            f"{source / SENTENCEPIECE_FILE} with num_image_tokens={num_image_tokens} gives the ids {found}, but "
            f"config.json says {expected}: the tokenizer files belong to another release (set num_image_tokens in "
            "tokenizer_config.json to the release's value)."
        )
    tokenizer.model_max_length = config.max_position_embeddings
    before = {path.name for path in folder.iterdir()}
    tokenizer.save_pretrained(folder)
    return sorted({path.name for path in folder.iterdir()} - before)
