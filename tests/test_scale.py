"""Scale: device_map offload, gradient checkpointing, mixed precision, compile, data-parallel Trainer, k-bit loading.

Everything runs on a CPU with the tiny test model; the k-bit (bitsandbytes) and fp16 checks need CUDA and say so.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSeq2SeqLM, Trainer, TrainingArguments

import glm_hf

from conftest import blank_inputs, enable_activation_checkpointing, tiny_model

sys.path.insert(0, str(Path(__file__).resolve().parent / "helpers"))
from train_tiny_glm import BlankDataset  # noqa: E402

HELPERS = Path(__file__).resolve().parent / "helpers"
NO_DROPOUT = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0, "embedding_dropout_prob": 0.0}


def labelled(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    labels = batch["input_ids"].clone()
    labels[:, :9] = -100  # blank_inputs' Part A
    return {**batch, "labels": labels}


def test_device_map_offload_to_cpu_and_disk_generates_like_the_whole_model(tmp_path) -> None:
    model = tiny_model(num_hidden_layers=4)
    model.save_pretrained(tmp_path / "model")
    # About 860 kB of weights, 200 kB per block: 500 kB keeps the embeddings and a block in memory, the rest on disk.
    offloaded = AutoModelForSeq2SeqLM.from_pretrained(
        tmp_path / "model", device_map="auto", max_memory={"cpu": "500KB"}, offload_folder=tmp_path / "offload"
    )
    placements = set(offloaded.hf_device_map.values())
    assert placements == {"cpu", "disk"}, offloaded.hf_device_map
    assert offloaded.hf_device_map["glm.layers.3"] == "disk"

    batch = blank_inputs()
    with torch.no_grad():
        torch.testing.assert_close(offloaded(**batch).logits, model(**batch).logits, rtol=0, atol=0)
        expected = model.generate(**batch, max_new_tokens=6, do_sample=False)
        torch.testing.assert_close(offloaded.generate(**batch, max_new_tokens=6, do_sample=False), expected)


def test_gradient_checkpointing_recomputes_the_blocks_and_gives_the_same_gradients() -> None:
    batch = labelled(blank_inputs())

    def loss_grads_and_block_calls(checkpointing: bool):
        model = tiny_model(**NO_DROPOUT).train()
        if checkpointing:
            enable_activation_checkpointing(model)
        calls = []
        model.glm.layers[0].attention.register_forward_hook(lambda *_: calls.append(1))
        loss = model(**batch).loss
        loss.backward()
        return loss, {name: p.grad for name, p in model.named_parameters()}, len(calls)

    loss, grads, calls = loss_grads_and_block_calls(checkpointing=False)
    checkpointed_loss, checkpointed_grads, checkpointed_calls = loss_grads_and_block_calls(checkpointing=True)
    assert (calls, checkpointed_calls) == (1, 2)  # the backward pass ran the block again
    torch.testing.assert_close(checkpointed_loss, loss, rtol=0, atol=0)
    for name, grad in grads.items():
        torch.testing.assert_close(checkpointed_grads[name], grad, rtol=1e-6, atol=1e-7, msg=name)


@pytest.mark.parametrize(
    "precision",
    [
        "bf16",
        pytest.param(
            "fp16",
            marks=pytest.mark.skipif(
                not torch.cuda.is_available(),
                reason="fp16 mixed precision through Trainer needs a CUDA device (on a CPU Trainer stays in float32)",
            ),
        ),
    ],
)
def test_trainer_mixed_precision_with_gradient_checkpointing(tmp_path, precision: str) -> None:
    model = tiny_model(**NO_DROPOUT).train()
    dtypes = []
    model.glm.layers[0].attention.query_key_value.register_forward_hook(lambda _m, _i, out: dtypes.append(out.dtype))
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        max_steps=2,
        learning_rate=1e-3,
        report_to=[],
        save_strategy="no",
        disable_tqdm=True,
        gradient_checkpointing=True,
        use_cpu=not torch.cuda.is_available(),
        **{precision: True},
    )
    Trainer(model=model, args=args, train_dataset=BlankDataset(size=8)).train()
    expected = torch.bfloat16 if precision == "bf16" else torch.float16
    assert dtypes == [expected] * 4  # 2 steps x (forward + checkpointed recompute), in half precision
    assert all(p.dtype == torch.float32 for p in model.parameters())  # float32 master weights
    assert any(not torch.equal(before[name], p.detach().cpu()) for name, p in model.named_parameters())


def _c_compiler() -> str | None:
    return os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")


@pytest.mark.skipif(
    importlib.util.find_spec("torch._inductor") is None or _c_compiler() is None,
    reason="torch.compile's inductor backend needs torch._inductor and a C++ compiler (g++/clang++) on the CPU",
)
def test_torch_compile_forward_equals_eager() -> None:
    model = tiny_model()
    compiled = torch.compile(model)
    batch = blank_inputs()
    with torch.no_grad():
        eager = model(**batch, use_cache=False).logits
        torch.testing.assert_close(compiled(**batch, use_cache=False).logits, eager, rtol=1e-4, atol=1e-4)


def _train(output_dir: Path, per_device_batch_size: int, processes: int) -> dict:
    script = [
        str(HELPERS / "train_tiny_glm.py"),
        str(output_dir),
        "--per-device-batch-size",
        str(per_device_batch_size),
    ]
    if processes > 1:
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            str(processes),
            *script,
        ]
    else:
        command = [sys.executable, *script]
    source = str(Path(glm_hf.__file__).resolve().parents[1])
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([source, os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
    }
    process = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-3000:]
    result = json.loads((output_dir / "result.json").read_text())
    result["weights"] = torch.load(output_dir / "weights.pt")
    return result


@pytest.mark.skipif(not torch.distributed.is_available(), reason="this torch build has no torch.distributed")
def test_two_gloo_processes_reach_the_same_loss_and_weights_as_one_with_the_doubled_batch(tmp_path) -> None:
    single = _train(tmp_path / "single", per_device_batch_size=4, processes=1)
    parallel = _train(tmp_path / "parallel", per_device_batch_size=2, processes=2)
    assert (single["world_size"], parallel["world_size"]) == (1, 2)
    assert len(single["losses"]) == 3 and len(set(single["losses"])) == 3  # three different batches were trained on
    torch.testing.assert_close(parallel["losses"], single["losses"], rtol=1e-5, atol=1e-5)
    for name, weight in single["weights"].items():
        torch.testing.assert_close(parallel["weights"][name], weight, rtol=1e-5, atol=1e-6, msg=name)
    initial = tiny_model(**NO_DROPOUT).state_dict()
    assert not torch.equal(
        single["weights"]["glm.layers.0.attention.query_key_value.weight"],
        initial["glm.layers.0.attention.query_key_value.weight"],
    )


@pytest.mark.skipif(
    not torch.cuda.is_available() or importlib.util.find_spec("bitsandbytes") is None,
    reason="8-bit/4-bit loading runs bitsandbytes' CUDA kernels: needs a CUDA GPU and bitsandbytes installed",
)
@pytest.mark.parametrize("bits", [8, 4])
def test_bitsandbytes_kbit_loading_generates(tmp_path, bits: int) -> None:
    from transformers import BitsAndBytesConfig

    model = tiny_model(hidden_size=256, num_attention_heads=4, initializer_range=0.02)
    model.save_pretrained(tmp_path)
    quantization = (
        BitsAndBytesConfig(load_in_8bit=True)
        if bits == 8
        else BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.float16)
    )
    quantized = AutoModelForSeq2SeqLM.from_pretrained(tmp_path, quantization_config=quantization, device_map={"": 0})
    layer = quantized.glm.layers[0].attention.query_key_value
    assert type(layer).__module__.startswith("bitsandbytes"), type(layer)
    batch = {k: v.cuda() for k, v in blank_inputs().items()}
    with torch.no_grad():
        reference = model.cuda()(**batch).logits.float()
        logits = quantized(**batch).logits.float()
        similarity = torch.nn.functional.cosine_similarity(logits.flatten(), reference.flatten(), dim=0)
        assert similarity > 0.98, similarity
        generated = quantized.generate(**batch, max_new_tokens=4, do_sample=False)
    assert generated.shape == (2, batch["input_ids"].shape[1] + 4)


def test_documented_fsdp_and_deepspeed_configs_fit_the_model() -> None:
    """The configs in examples/configs parse, and FSDP wraps a class the model has (they need GPUs to run)."""
    import yaml

    configs = Path(__file__).resolve().parents[1] / "examples" / "configs"
    fsdp = yaml.safe_load((configs / "accelerate_fsdp.yaml").read_text())
    assert fsdp["distributed_type"] == "FSDP" and fsdp["fsdp_config"]["fsdp_version"] == 2
    wrapped = fsdp["fsdp_config"]["fsdp_transformer_layer_cls_to_wrap"]
    model = tiny_model()
    assert wrapped in model._no_split_modules
    assert sum(type(module).__name__ == wrapped for module in model.modules()) == model.config.num_hidden_layers
    deepspeed = json.loads((configs / "deepspeed_zero3.json").read_text())
    assert deepspeed["zero_optimization"]["stage"] == 3
    assert deepspeed["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    assert deepspeed["train_micro_batch_size_per_gpu"] == "auto"  # filled in from TrainingArguments
