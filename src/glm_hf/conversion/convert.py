"""Original GLM checkpoint -> safetensors folder that `AutoModelForSeq2SeqLM.from_pretrained` loads.

One direction, tensor by tensor: read the (memory-mapped) source shards, merge model-parallel parts, rename, cast,
write. Hyper-parameters come from the tensors. The output is written into a temporary folder beside OUTPUT and
renamed into place only when complete, so a failure leaves nothing behind and an existing OUTPUT is only replaced
with `overwrite=True`.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..modeling.configuration_glm import FAMILY_TOKEN_IDS, PRESETS, GLMConfig
from ..modeling.modeling_glm import GLMModel, glm_generation_config
from ..progress import bytes_under, is_long_work, transformers_progress_bars
from .atomic import atomic_output_folder, check_output_location, check_replaceable
from .checkpoint import CheckpointError, CheckpointSource, load_checkpoint_file, locate_checkpoint, model_state_dict
from .keys import find_backbone, hf_to_original_key, original_to_hf_key
from .merge import FUSED_QKV, REPLICATED, merge_partitions, partition_rule
from .safetensors_writer import PlannedTensor, write_sharded_safetensors

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
SPECIAL_TOKEN_FIELDS = tuple(FAMILY_TOKEN_IDS["gpt2"])


@dataclass
class ConversionReport:
    """What a conversion read, wrote and left out."""

    source: Path
    output: Path
    layout: str
    num_shards: int
    config: GLMConfig
    tokenizer_family: str | None
    dtype: torch.dtype
    files: list[str]
    left_out: list[str] = field(default_factory=list)
    source_sha256: dict[str, str] = field(default_factory=dict)
    verify_summary: str | None = None

    def summary(self) -> str:
        config = self.config
        lines = [
            f"source:  {self.source} ({self.layout} layout, {self.num_shards} model-parallel shard(s))",
            f"output:  {self.output}: {', '.join(self.files)}",
            f"model:   {config.num_hidden_layers} layers, hidden {config.hidden_size}, "
            f"{config.num_attention_heads} heads, vocab {config.vocab_size}, "
            f"{config.max_position_embeddings} position rows, block positions: {config.block_position_encoding}",
            f"dtype:   {str(self.dtype).removeprefix('torch.')}; "
            f"tokenizer family: {self.tokenizer_family or 'unknown (pass --tokenizer FAMILY)'}",
        ]
        if self.left_out:
            lines.append(f"left out ({len(self.left_out)} keys not in the backbone): {', '.join(self.left_out)}")
        if self.verify_summary:
            lines.append(f"verify:  {self.verify_summary}")
        return "\n".join(lines)


def merged_shape(name: str, shapes: list[torch.Size]) -> tuple[int, ...]:
    """The shape of `name` after merging its per-rank shapes, checking that they fit together."""
    rule = partition_rule(name)
    first = tuple(shapes[0])
    if rule == REPLICATED or len(shapes) == 1:
        if any(tuple(shape) != first for shape in shapes):
            raise CheckpointError(f"{name} is replicated over the shards but their shapes differ: {shapes}.")
        return first
    dim = 0 if rule == FUSED_QKV else rule
    rest = {tuple(size for d, size in enumerate(shape) if d != dim) for shape in shapes}
    if len(rest) != 1:
        raise CheckpointError(f"{name} has shard shapes that do not fit together along dim {dim}: {shapes}.")
    merged = list(first)
    merged[dim] = sum(shape[dim] for shape in shapes)
    return tuple(merged)


# What a converted folder holds: the weights, configs, model card, tokenizer files and remote code.
CONVERTED_FILE_PATTERNS = (
    "model.safetensors",
    "model-*-of-*.safetensors",
    "model.safetensors.index.json",
    "config.json",
    "generation_config.json",
    "README.md",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "*.py",
)


def is_converted_folder(folder: Path) -> bool:
    """Whether `folder` is one `glm-hf convert` wrote (a GLM config.json and only the files a conversion writes),
    so that `--overwrite` may replace it without losing anything else."""
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        names = [path.name for path in folder.iterdir()]
    except (OSError, ValueError):
        return False
    if not isinstance(config, dict) or config.get("model_type") != GLMConfig.model_type:
        return False
    return all(any(fnmatch(name, pattern) for pattern in CONVERTED_FILE_PATTERNS) for name in names)


def infer_num_attention_heads(
    hidden_size: int,
    num_layers: int,
    num_shards: int,
    given: int | None,
    hub_config: Mapping[str, Any] | None,
) -> int:
    """The head count: given (`--num-attention-heads`), else THUDM's Hub config, else that of the released preset
    with these shapes. The tensors cannot tell it (the fused projection is [3h, h] whatever the count), so a shape no
    release has needs the flag; a count the shards contradict (n model-parallel shards split whole heads) is refused.
    """
    source = "--num-attention-heads"
    if given is None and hub_config is not None and hub_config.get("num_attention_heads") is not None:
        given, source = hub_config["num_attention_heads"], "num_attention_heads in the checkpoint's config.json"
    if given is None:
        shape = (num_layers, hidden_size)
        counts = {heads for layers, hidden, heads, *_ in PRESETS.values() if (layers, hidden) == shape}
        if len(counts) != 1:
            raise CheckpointError(
                f"The checkpoint does not record its number of attention heads, and its shapes ({num_layers} layers, "
                f"hidden size {hidden_size}) are those of no released GLM: pass --num-attention-heads N, the value "
                "the model was trained with (the original's --num-attention-heads)"
                + (f"; with {num_shards} model-parallel shards, a multiple of {num_shards}." if num_shards > 1 else "")
            )
        given, source = counts.pop(), f"the released GLM of {num_layers} layers x {hidden_size}"
    if isinstance(given, bool) or not isinstance(given, int) or given <= 0:
        raise CheckpointError(f"{source} gives {given!r} attention heads; it must be a positive whole number.")
    if hidden_size % given:
        raise CheckpointError(
            f"{source} gives {given} attention heads, but the hidden size {hidden_size} is not a multiple of it."
        )
    if given % num_shards:
        raise CheckpointError(
            f"{source} gives {given} attention heads, but the checkpoint has {num_shards} model-parallel shards, "
            f"which split whole heads: the count must be a multiple of {num_shards}."
        )
    return given


def infer_config(
    shapes: Mapping[str, tuple[int, ...]],
    num_attention_heads: int | None,
    tokenizer_family: str | None,
    hub_config: Mapping[str, Any] | None,
    num_shards: int = 1,
) -> GLMConfig:
    """The GLMConfig of a backbone, from its tensor shapes (and `infer_num_attention_heads` for the head count)."""
    vocab_size, hidden_size = shapes["word_embeddings.weight"]
    num_layers = 1 + max(int(name.split(".")[2]) for name in shapes if name.startswith("transformer.layers."))
    num_attention_heads = infer_num_attention_heads(
        hidden_size, num_layers, num_shards, num_attention_heads, hub_config
    )
    if tokenizer_family is not None and tokenizer_family not in FAMILY_TOKEN_IDS:
        raise CheckpointError(f"Unknown tokenizer family {tokenizer_family!r}; known: {', '.join(FAMILY_TOKEN_IDS)}.")
    special_ids = FAMILY_TOKEN_IDS[tokenizer_family] if tokenizer_family else dict.fromkeys(SPECIAL_TOKEN_FIELDS, None)
    return GLMConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_attention_heads,
        intermediate_size=shapes["transformer.layers.0.mlp.dense_h_to_4h.weight"][0],
        max_position_embeddings=shapes["transformer.position_embeddings.weight"][0],
        block_position_encoding="transformer.block_position_embeddings.weight" in shapes,
        **special_ids,
    )


def guess_tokenizer_family(vocab_size: int, hidden_size: int, num_layers: int) -> str | None:
    """The tokenizer family of a released shape (padded vocabulary + size), or None for other shapes."""
    if vocab_size == 30592:
        return "bert-base-uncased"
    if vocab_size == 50048:
        return "chinese-sp-10b" if num_layers == 48 else "chinese-sp"
    if vocab_size == 50304:
        return "roberta" if (num_layers, hidden_size) == (24, 1024) else "gpt2"
    return None


def check_distinct_shards(hashes: Mapping[str, str]) -> None:
    """Refuse model-parallel shards with the same bytes: a copy of one rank in place of another merges into a
    model with duplicated, wrong halves."""
    by_hash: dict[str, list[str]] = {}
    for name, digest in hashes.items():
        by_hash.setdefault(digest, []).append(name)
    copies = [names for names in by_hash.values() if len(names) > 1]
    if copies:
        raise CheckpointError(
            f"The model-parallel shards {', '.join(copies[0])} are identical files (sha256 {next(iter(by_hash))[:12]}"
            "...): each rank holds a different part of the weights, so one is a copy of another. Copy the right "
            "shards again."
        )


def sha256_of(path: Path, progress: tqdm | None = None) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 24):
            digest.update(chunk)
            if progress is not None:
                progress.update(len(chunk))
    return digest.hexdigest()


@dataclass
class _LoadedSource:
    source: CheckpointSource
    shards: list[Mapping[str, torch.Tensor]]
    backbone: dict[str, str]
    left_out: list[str]
    prefix: str = ""

    def key_in_file(self, name: str) -> str:
        """The key of the original backbone name `name` in the checkpoint file (with the file's prefix)."""
        return self.backbone.get(name, self.prefix + name)

    def merged(self, name: str) -> torch.Tensor:
        try:
            return merge_partitions(name, [shard[self.backbone[name]] for shard in self.shards])
        except ValueError as error:
            raise CheckpointError(f"{self.source.root}: {error}") from None


def load_source(source: str | Path, trust_remote_pickle: bool = False) -> _LoadedSource:
    """Locate, load (memory-mapped) and check every shard of an original checkpoint."""
    located = locate_checkpoint(source)
    loaded = [load_checkpoint_file(file, trust_remote_pickle) for file in located.files]
    for file, contents in zip(located.files, loaded, strict=True):
        recorded = contents.get("mp_world_size") if isinstance(contents, Mapping) else None
        if recorded is None:
            continue
        try:
            world_size = int(recorded) if isinstance(recorded, (int, str)) and not isinstance(recorded, bool) else None
        except ValueError:
            world_size = None
        if world_size is None:
            raise CheckpointError(
                f"{file} records mp_world_size={recorded!r} ({type(recorded).__name__}), not a number of "
                "model-parallel ranks: the file is damaged or not a Megatron checkpoint."
            )
        if world_size != len(located.files):
            raise CheckpointError(
                f"{file} records mp_world_size={world_size}, but {len(located.files)} shard(s) were found in "
                f"{file.parent} (mp_rank_XX_model_states.pt): a shard is missing or one is left over from another run."
            )
    shards = [model_state_dict(contents, file) for file, contents in zip(located.files, loaded, strict=True)]
    try:
        prefix, backbone, left_out = find_backbone(shards[0].keys())
    except ValueError as error:
        raise CheckpointError(f"{located.files[0]}: {error}") from None
    for file, shard in zip(located.files[1:], shards[1:], strict=True):
        if set(shard) != set(shards[0]):
            difference = sorted(set(shard) ^ set(shards[0]))
            raise CheckpointError(f"{file} holds different keys than {located.files[0]}: {', '.join(difference)}.")
    return _LoadedSource(source=located, shards=shards, backbone=backbone, left_out=left_out, prefix=prefix)


def check_source_tensors(loaded: _LoadedSource) -> None:
    """Refuse tensors no GLM holds (sparse, integer or non-float weights) and a backbone without the tables every
    GLM has, naming the file and the tensors, before anything is written."""
    first = loaded.source.files[0]
    for key in loaded.backbone.values():
        tensor = loaded.shards[0][key]
        if tensor.layout != torch.strided:
            raise CheckpointError(
                f"{first}: {key} is a {tensor.layout} tensor; GLM weights are dense. Convert it to a dense tensor "
                "(tensor.to_dense()) and save the checkpoint again."
            )
        if not tensor.is_floating_point():
            raise CheckpointError(
                f"{first}: {key} holds {tensor.dtype} values, but GLM weights are floating point: the file is "
                "damaged or not a GLM checkpoint."
            )
    required = {
        "word_embeddings.weight": "the word embeddings",
        "transformer.position_embeddings.weight": "the position table",
        "transformer.final_layernorm.weight": "the final LayerNorm",
        "transformer.layers.0.mlp.dense_h_to_4h.weight": "the first layer's MLP",
    }
    missing = [
        f"{loaded.key_in_file(name)} ({what})" for name, what in required.items() if name not in loaded.backbone
    ]
    if missing:
        raise CheckpointError(
            f"{first} lacks {', '.join(missing)}: a partial or damaged checkpoint (every GLM has them). Check that "
            "the file was copied whole, or convert the full checkpoint."
        )


def some_of(names: list[str], most: int = 8) -> str:
    """`names` for a message: the first `most`, then how many more."""
    return ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "")


def check_against_config(loaded: _LoadedSource, shapes: Mapping[str, tuple[int, ...]], config: GLMConfig) -> None:
    """Every tensor a model of `config` needs is there with its shape (a gap in the layers, a damaged fused
    projection, a zero vocabulary would otherwise write a folder that cannot load)."""
    with torch.device("meta"):
        expected = {name: tuple(tensor.shape) for name, tensor in GLMModel(config).state_dict().items()}
    found = {original_to_hf_key(name)[len("glm.") :]: (name, shape) for name, shape in shapes.items()}
    first = loaded.source.files[0]
    missing = [loaded.key_in_file(hf_to_original_key(f"glm.{name}")) for name in expected if name not in found]
    if missing:
        raise CheckpointError(
            f"{first} lacks {some_of(missing)}, which a GLM of {config.num_hidden_layers} layers has: a partial or "
            "damaged checkpoint."
        )
    for name, shape in expected.items():
        original, actual = found[name]
        if tuple(actual) != shape:
            raise CheckpointError(
                f"{first}: {loaded.key_in_file(original)} has shape {list(actual)}, but a GLM of hidden size "
                f"{config.hidden_size}, {config.num_attention_heads} heads and vocabulary {config.vocab_size} needs "
                f"{list(shape)} (as the other tensors say): the checkpoint is damaged or not of this architecture."
            )


def plan_tensors(loaded: _LoadedSource, dtype: torch.dtype) -> tuple[list[PlannedTensor], dict[str, tuple[int, ...]]]:
    """The output tensors in glm-hf names with their merged shapes; values are merged and cast when written."""
    shapes = {
        name: merged_shape(name, [shard[key].shape for shard in loaded.shards])
        for name, key in loaded.backbone.items()
    }

    def producer(name: str) -> Callable[[], torch.Tensor]:
        return lambda: loaded.merged(name).to(dtype)

    planned = [
        PlannedTensor(original_to_hf_key(name), shapes[name], dtype, producer(name))
        for name in sorted(loaded.backbone)
    ]
    return planned, shapes


def _resolve_dtype(dtype: str, loaded: _LoadedSource) -> torch.dtype:
    if dtype == "auto":
        return loaded.shards[0][loaded.backbone["word_embeddings.weight"]].dtype
    if dtype not in DTYPES:
        raise CheckpointError(f"Unknown dtype {dtype!r}; choose auto, {', '.join(DTYPES)}.")
    return DTYPES[dtype]


def convert_checkpoint(
    source: str | Path,
    output: str | Path,
    *,
    dtype: str = "auto",
    num_attention_heads: int | None = None,
    tokenizer_family: str | None = None,
    vocab_dir: str | Path | None = None,
    max_shard_size: str | int = "5GB",
    overwrite: bool = False,
    verify: bool = False,
    trust_remote_pickle: bool = False,
    show_progress: bool | None = None,
    command: str | None = None,
    remote_code: bool = False,
    force: bool = False,
) -> ConversionReport:
    """Convert an original GLM checkpoint into a safetensors model folder at `output` (atomically).

    `overwrite` replaces an earlier converted folder (`is_converted_folder`), `force` whatever is at `output`; an
    output that is, holds or lies inside the source is refused either way. With `remote_code`, the folder also gets
    the model and tokenizer code as Hub remote code (`auto_map`), so that `from_pretrained(output,
    trust_remote_code=True)` works without glm_hf (see `glm_hf.hub.export_remote_code`).

    A ChatGLM-6B folder (`config.json` with `model_type "chatglm"`) goes to `conversion.chatglm.convert_chatglm`; a
    GLM-4 or ChatGLM2/3 folder is refused, naming where those are served."""
    from .chatglm import convert_chatglm, is_chatglm_folder, refuse_later_generations  # it imports this module

    output = Path(output)
    refuse_later_generations(source)
    if is_chatglm_folder(source):
        if num_attention_heads is not None or tokenizer_family is not None or vocab_dir is not None:
            raise CheckpointError(
                f"{source} is a ChatGLM-6B folder: its config.json gives the head count and its ice_text.model the "
                "tokenizer; drop --num-attention-heads, --tokenizer and --vocab-dir."
            )
        return convert_chatglm(
            source,
            output,
            dtype=dtype,
            max_shard_size=max_shard_size,
            overwrite=overwrite,
            force=force,
            verify=verify,
            trust_remote_pickle=trust_remote_pickle,
            show_progress=show_progress,
            remote_code=remote_code,
        )
    # Checked again when writing; fail before the slow part.
    check_output_location(output, [Path(source)])
    check_replaceable(output, overwrite, is_converted_folder, force)
    if vocab_dir is not None and tokenizer_family is None:
        raise CheckpointError("--vocab-dir needs --tokenizer FAMILY to know which vocabulary files to read.")

    loaded = load_source(source, trust_remote_pickle)
    source_bytes = bytes_under(loaded.source.files)
    if show_progress is None:  # bars only for a checkpoint that takes a while
        show_progress = is_long_work(source_bytes)
    check_source_tensors(loaded)
    torch_dtype = _resolve_dtype(dtype, loaded)
    planned, shapes = plan_tensors(loaded, torch_dtype)
    vocab_size, hidden_size = shapes["word_embeddings.weight"]
    num_layers = 1 + max(int(name.split(".")[2]) for name in shapes if name.startswith("transformer.layers."))
    family = tokenizer_family or guess_tokenizer_family(vocab_size, hidden_size, num_layers)
    try:
        config = infer_config(shapes, num_attention_heads, family, loaded.source.hub_config, len(loaded.shards))
    except CheckpointError:
        raise
    except ValueError as error:  # GLMConfig's own checks (a zero vocabulary or width)
        raise CheckpointError(f"{loaded.source.files[0]}: the tensors describe no valid GLM: {error}") from None
    check_against_config(loaded, shapes, config)
    with tqdm(
        total=source_bytes,
        desc="Hashing source",
        unit="B",
        unit_scale=True,
        disable=not show_progress,
    ) as bar:
        hashes = {str(file.relative_to(loaded.source.root)): sha256_of(file, bar) for file in loaded.source.files}
    check_distinct_shards(hashes)
    config.dtype = torch_dtype

    sources = [Path(source), *loaded.source.files]
    with atomic_output_folder(
        output, overwrite, sources=sources, replaceable=is_converted_folder, force=force
    ) as staging:
        files = write_sharded_safetensors(staging, planned, max_shard_size, show_progress)
        _write_config_files(staging, config)
        files += ["config.json", "generation_config.json"]
        if vocab_dir is not None:
            files += _write_tokenizer(staging, family, Path(vocab_dir), config)
        if remote_code:
            from ..hub import export_remote_code

            files = list(dict.fromkeys([*files, *export_remote_code(staging)]))
        report = ConversionReport(
            source=Path(source),
            output=output,
            layout=loaded.source.layout,
            num_shards=len(loaded.shards),
            config=config,
            tokenizer_family=family,
            dtype=torch_dtype,
            files=sorted([*files, "README.md"]),
            left_out=loaded.left_out,
            source_sha256=hashes,
        )
        if verify:
            report.verify_summary = verify_conversion(staging, loaded, planned)
        (staging / "README.md").write_text(model_card(report, command, remote_code=remote_code), encoding="utf-8")
    return report


def _write_config_files(folder: Path, config: GLMConfig) -> None:
    config.architectures = ["GLMForConditionalGeneration"]
    config.save_pretrained(folder)
    glm_generation_config(config).save_pretrained(folder)


def _write_tokenizer(folder: Path, family: str | None, vocab_dir: Path, config: GLMConfig) -> list[str]:
    """Write the family's tokenizer, limited to the model's positions; warn when its ids outgrow the embedding."""
    from ..tokenization_glm import build_tokenizer

    tokenizer = build_tokenizer(family, vocab_dir)
    tokenizer.model_max_length = config.max_position_embeddings
    if len(tokenizer) > config.vocab_size:
        warnings.warn(
            f"The {family} tokenizer has {len(tokenizer)} ids but the model only {config.vocab_size} embedding rows: "
            "is --tokenizer the right family for this checkpoint?",
            stacklevel=3,
        )
    before = set(path.name for path in folder.iterdir())
    tokenizer.save_pretrained(folder)
    return sorted(set(path.name for path in folder.iterdir()) - before)


def verify_folder(
    folder: Path,
    auto_class: Any,
    planned: list[PlannedTensor],
    source_key: Callable[[str], str],
    probe_ids: Callable[[Any], torch.Tensor],
) -> str:
    """`--verify`: reload `folder` with `auto_class`, compare every written tensor bitwise with the values it was
    written from (refusing a source that holds NaN, named by `source_key(name)`), and run one forward pass on
    `probe_ids(config)`. Shared by the GLM and the ChatGLM converters."""
    with transformers_progress_bars(is_long_work(bytes_under(folder))):
        model = auto_class.from_pretrained(folder, dtype=planned[0].dtype).eval()
    state = model.state_dict()
    for tensor in planned:
        source = tensor.produce()
        if source.isnan().any():
            raise CheckpointError(
                f"Verification stopped: {source_key(tensor.name)} holds NaN values in the source checkpoint "
                f"({int(source.isnan().sum())} of {source.numel()}): the checkpoint is damaged or its training "
                "diverged, and any model made from it computes NaN. Convert another checkpoint (or drop --verify "
                "to copy it as it is)."
            )
        if not torch.equal(state[tensor.name], source):
            raise CheckpointError(
                f"Verification failed: {source_key(tensor.name)} differs from its source after conversion."
            )
    input_ids = probe_ids(model.config)
    with torch.no_grad():
        logits = model(input_ids.to(model.device)).logits
    if not torch.isfinite(logits).all():
        raise CheckpointError("Verification failed: the converted model gives non-finite logits.")
    return (
        f"{len(planned)} tensors equal their source bitwise; a forward pass on {input_ids.shape[-1]} tokens gives "
        f"finite logits {tuple(logits.shape)}"
    )


def verify_conversion(folder: Path, loaded: _LoadedSource, planned: list[PlannedTensor]) -> str:
    """`verify_folder` for a GLM: tensors named as in the checkpoint file, a probe of ids 0..7."""
    from transformers import AutoModelForSeq2SeqLM

    key_in_file = {original_to_hf_key(name): loaded.key_in_file(name) for name in loaded.backbone}

    def probe_ids(config: GLMConfig) -> torch.Tensor:
        return torch.arange(min(8, config.max_position_embeddings)).remainder(config.vocab_size)[None]

    return verify_folder(folder, AutoModelForSeq2SeqLM, planned, key_in_file.__getitem__, probe_ids)


# THUDM's Hub repositories of the released models, by (layers, hidden, vocabulary).
THUDM_HUB_REPOS = {
    (24, 1024, 30592): "THUDM/glm-large",
    (24, 1024, 50304): "THUDM/glm-roberta-large",
    (24, 1024, 50048): "THUDM/glm-large-chinese",
    (36, 2048, 50304): "THUDM/glm-2b",
    (48, 4096, 50304): "THUDM/glm-10b",
    (48, 4096, 50048): "THUDM/glm-10b-chinese",
}
MODEL_CARD_LICENSE = "other"  # code: MIT (THUDM/GLM); weights: THUDM's terms, not restated here
MODEL_CARD_PIPELINE_TAG = "text-generation"  # the Hub has no blank-infilling task; spans are generated


def model_card(
    report: ConversionReport, command: str | None, remote_code: bool = False, license: str = MODEL_CARD_LICENSE
) -> str:
    """The folder's README.md, a `huggingface_hub.ModelCard`: metadata (license, language, tags, library, pipeline
    tag, base model), the source files and their sha256, the conversion command, the `--verify` result and usage
    snippets (loading, infilling, fine-tuning with `Trainer`)."""
    from huggingface_hub import ModelCard, ModelCardData

    config = report.config
    family = report.tokenizer_family
    language = None if family is None else ("zh" if family.startswith("chinese") else "en")
    shape = (config.num_hidden_layers, config.hidden_size, config.vocab_size)
    base_model = THUDM_HUB_REPOS.get(shape)
    data = ModelCardData(
        license=license,
        license_name="glm-original-weights" if license == "other" else None,
        language=language,
        tags=["glm", "glm_blocklm", "blank-infilling", "glm-hf"] + (["custom_code"] if remote_code else []),
        library_name="transformers",
        pipeline_tag=MODEL_CARD_PIPELINE_TAG,
        base_model=base_model,
    )
    dtype = str(report.dtype).removeprefix("torch.")
    hashes = "\n".join(f"| `{name}` | `{digest}` |" for name, digest in report.source_sha256.items())
    left_out = ", ".join(f"`{key}`" for key in report.left_out) or "nothing"
    verify = (
        f"`--verify`: {report.verify_summary}."
        if report.verify_summary
        else "Not verified at conversion time (run `glm-hf convert ... --verify` for the bitwise tensor comparison)."
    )
    load_kwargs = ", trust_remote_code=True" if remote_code else ""
    import_line = "" if remote_code else "import glm_hf  # pip install glm-hf: registers model_type glm_blocklm\n"
    loading = (
        "This folder carries its model and tokenizer code (`auto_map`), so it loads without `glm_hf` with "
        "`trust_remote_code=True`; with `glm_hf` installed it loads without remote code too."
        if remote_code
        else "Loading needs the `glm_hf` package (`import glm_hf` registers the model with the Auto classes)."
    )
    license_note = (
        "The original GLM code (THUDM/GLM) is MIT-licensed; the weights are THUDM's and come under the terms THUDM "
        "released them with: check those before redistributing or using them commercially."
        if license == "other"
        else f"License: {license}."
    )
    tokenizer_note = (
        f"Tokenizer family: `{family}`." if family else "Tokenizer family unknown (convert with `--tokenizer`)."
    )
    content = f"""---
{data.to_yaml()}
---

# GLM ({config.num_hidden_layers} layers, hidden {config.hidden_size}) converted with glm-hf

The original [THUDM/GLM](https://github.com/THUDM/GLM) model (autoregressive blank infilling, Du et al. 2021) as a
transformers model in safetensors ({dtype}), converted by glm-hf from the original
checkpoint{f" (the weights of [{base_model}](https://huggingface.co/{base_model}))" if base_model else ""}.

{config.num_hidden_layers} layers, hidden size {config.hidden_size}, {config.num_attention_heads} heads, vocabulary \
{config.vocab_size}, {config.max_position_embeddings} position rows. {tokenizer_note}

## Source and conversion

Converted from `{report.source}` ({report.layout} layout, {report.num_shards} model-parallel shard(s)):

| file | sha256 |
|---|---|
{hashes}

Left out of the conversion (not part of the GLM backbone): {left_out}.

Command: `{command or "glm_hf.conversion.convert_checkpoint"}`

Parity: {verify}

## Usage

{loading}

```python
{import_line}from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

model = AutoModelForSeq2SeqLM.from_pretrained("REPO_OR_FOLDER"{load_kwargs})
tokenizer = AutoTokenizer.from_pretrained("REPO_OR_FOLDER"{load_kwargs})
```

### Filling blanks

```python
import glm_hf

results = glm_hf.fill_blanks(model, tokenizer, ["Tsinghua University is located in [MASK] ."], max_new_tokens=16)
print(results[0].text, results[0].spans)
```

Without `glm_hf`, `tokenizer.build_inputs_for_generation(texts, model.config)` gives the inputs of
`model.generate(**inputs, max_new_tokens=16)` for the first blank of each text.

### Fine-tuning with `Trainer`

Labels are aligned with the inputs (not shifted): the model reads `[CLS] text [eos] [sop] answer` and learns
`answer [eop]` from the `[sop]` position on.

```python
import torch
from transformers import Trainer, TrainingArguments


def example(text, answer):
    prompt = tokenizer.build_inputs_for_generation([text], model.config)  # [CLS] text [eos] [sop]
    target = tokenizer.encode(answer, add_special_tokens=False) + [model.config.eop_token_id]
    n, extra = prompt["input_ids"].shape[1], len(target) - 1
    return {{
        "input_ids": torch.cat([prompt["input_ids"][0], torch.tensor(target[:-1], dtype=torch.long)]),
        "attention_mask": torch.ones(n + extra, dtype=torch.long),
        "position_ids": torch.cat([prompt["position_ids"][0], prompt["position_ids"][0, -1:].repeat(extra)]),
        "block_position_ids": torch.cat([prompt["block_position_ids"][0], torch.arange(2, 2 + extra)]),
        "prefix_length": torch.tensor(n - 1),
        "labels": torch.tensor([-100] * (n - 1) + target),
    }}


train = [example("The capital of France is [MASK] .", "Paris")]
args = TrainingArguments("glm-finetuned", per_device_train_batch_size=1, num_train_epochs=1, report_to=[])
Trainer(model=model, args=args, train_dataset=train).train()
model.save_pretrained("glm-finetuned")
```

## License

{license_note}
"""
    return str(ModelCard(content))
