"""A ChatGLM-6B folder with its `ice_text.model` converts into a model + tokenizer that chats (issue 18): the chat
template, streaming through transformers' streamers, `glm-hf chat`, and PEFT (LoRA, prefix tuning) training.

The source is a tiny random ChatGLM in the original layout whose vocabulary is the tokenizer fixture's SentencePiece
model (`fixtures/chatglm_tiny_ice_text.model`, 3,000 pieces; the release's `num_image_tokens: 0`)."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PrefixTuningConfig, TaskType, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, TextIteratorStreamer

import glm_hf  # noqa: F401  (registers the Auto classes)
from glm_hf.chat import chat_turns, read_turns
from glm_hf.conversion import convert_checkpoint
from glm_hf.conversion.checkpoint import CheckpointError

FIXTURES = Path(__file__).parent / "fixtures"
SENTENCEPIECE_MODEL = FIXTURES / "chatglm_tiny_ice_text.model"
SPECIAL_IDS = {"mask_token_id": 3000, "gmask_token_id": 3001, "bos_token_id": 3004, "eos_token_id": 3005}
CONFIG = {
    "model_type": "chatglm",
    "architectures": ["ChatGLMModel"],
    "vocab_size": 3088,
    "hidden_size": 32,
    "num_layers": 2,
    "num_attention_heads": 4,
    "inner_hidden_size": 64,
    "layernorm_epsilon": 1e-5,
    "max_sequence_length": 256,
    "position_encoding_2d": True,
    "pad_token_id": 3,
    "use_cache": True,
    **SPECIAL_IDS,
}


def random_original_weights(config: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """A ChatGLM state dict in the original names, fp16, per-head grouped `query_key_value` rows."""
    generator = torch.Generator().manual_seed(seed)
    hidden, inner, vocab = config["hidden_size"], config["inner_hidden_size"], config["vocab_size"]

    def normal(*shape: int, std: float = 0.2, mean: float = 0.0) -> torch.Tensor:
        return (torch.randn(shape, generator=generator) * std + mean).half()

    weights = {"transformer.word_embeddings.weight": normal(vocab, hidden, std=0.3)}
    for layer in range(config["num_layers"]):
        prefix = f"transformer.layers.{layer}."
        for norm in ("input_layernorm", "post_attention_layernorm"):
            weights[f"{prefix}{norm}.weight"] = normal(hidden, std=0.1, mean=1.0)
            weights[f"{prefix}{norm}.bias"] = normal(hidden, std=0.05)
        for name, rows, columns in (
            ("attention.query_key_value", 3 * hidden, hidden),
            ("attention.dense", hidden, hidden),
            ("mlp.dense_h_to_4h", inner, hidden),
            ("mlp.dense_4h_to_h", hidden, inner),
        ):
            weights[f"{prefix}{name}.weight"] = normal(rows, columns)
            weights[f"{prefix}{name}.bias"] = normal(rows, std=0.05)
    weights["transformer.final_layernorm.weight"] = normal(hidden, std=0.1, mean=1.0)
    weights["transformer.final_layernorm.bias"] = normal(hidden, std=0.05)
    weights["lm_head.weight"] = weights["transformer.word_embeddings.weight"].clone()
    return weights


def write_source(folder: Path, num_image_tokens: int = 0, **config_changes: int) -> Path:
    folder.mkdir(parents=True)
    config = {**CONFIG, **config_changes}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "tokenizer_config.json").write_text(json.dumps({"num_image_tokens": num_image_tokens}))
    shutil.copy(SENTENCEPIECE_MODEL, folder / "ice_text.model")
    torch.save(random_original_weights(config), folder / "pytorch_model.bin")
    return folder


@pytest.fixture(scope="module")
def chat_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("chatglm_chat")
    report = convert_checkpoint(write_source(root / "original"), root / "converted")
    assert "tokenizer.json" in report.files
    return root / "converted"


def test_tokenizer_ids_disagreeing_with_the_config_are_refused(tmp_path: Path) -> None:
    source = write_source(tmp_path / "original", num_image_tokens=20000)
    with pytest.raises(CheckpointError, match="num_image_tokens=20000"):
        convert_checkpoint(source, tmp_path / "converted")
    assert not (tmp_path / "converted").exists()


def test_chat_template_prompt_generates_like_the_original_prompt(chat_folder: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(chat_folder)
    model = AutoModelForCausalLM.from_pretrained(chat_folder).eval()
    messages = [
        {"role": "user", "content": "你好"},
        {"role": "assistant", "content": "你好！"},
        {"role": "user", "content": "what is a book?"},
    ]
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    original_prompt = "[Round 0]\n问：你好\n答：你好！\n[Round 1]\n问：what is a book?\n答："
    assert inputs["input_ids"].tolist() == tokenizer([original_prompt], return_tensors="pt")["input_ids"].tolist()
    assert inputs["input_ids"][0, -2:].tolist() == [SPECIAL_IDS["gmask_token_id"], SPECIAL_IDS["bos_token_id"]]
    out = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    model.generate(**inputs, max_new_tokens=6, do_sample=False, streamer=streamer)
    streamed = "".join(streamer)
    assert streamed == tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


def test_chat_turns_keep_the_history_and_stream_each_answer(chat_folder: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(chat_folder)
    model = AutoModelForCausalLM.from_pretrained(chat_folder).eval()
    output = io.StringIO()
    history = chat_turns(
        model, tokenizer, ["你好", "what is a book?"], output=output, max_new_tokens=5, do_sample=False
    )
    assert [query for query, _ in history] == ["你好", "what is a book?"]
    # The second answer is the greedy reply to the original's two-round prompt.
    prompt = f"[Round 0]\n问：你好\n答：{history[0][1]}\n[Round 1]\n问：what is a book?\n答："
    inputs = tokenizer([prompt], return_tensors="pt")
    reply = model.generate(**inputs, max_new_tokens=5, do_sample=False)[0, inputs["input_ids"].shape[1] :]
    assert history[1][1] == glm_hf.tokenization_chatglm.chatglm_response(
        tokenizer.decode(reply, skip_special_tokens=True)
    )
    assert output.getvalue().count("\n") == 2  # one streamed line per answer


def test_read_turns_stops_at_an_empty_line() -> None:
    assert list(read_turns(io.StringIO("a\n b \n\nc\n"), interactive=False)) == ["a", "b"]


def test_glm_hf_chat_reads_turns_from_stdin(chat_folder: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "glm_hf.cli", "chat", str(chat_folder), "--greedy", "--max-new-tokens", "4"],
        input="你好\n/clear\nhello\n",
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "(history cleared)" in lines and len(lines) == 3


def test_glm_hf_chat_refuses_a_folder_without_a_chat_template(tmp_path: Path) -> None:
    from glm_hf.default_model import default_model_folder

    result = subprocess.run(
        [sys.executable, "-m", "glm_hf.cli", "chat", str(default_model_folder())],
        input="hi\n",
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0 and "no chat template" in result.stderr


@pytest.mark.parametrize("method", ["lora", "prefix"])
def test_peft_trains_chatglm(method: str, chat_folder: Path) -> None:
    """LoRA and prefix tuning train on ChatGLM with the shifted loss: the loss falls on a repeated example."""
    tokenizer = AutoTokenizer.from_pretrained(chat_folder)
    model = AutoModelForCausalLM.from_pretrained(chat_folder)
    if method == "lora":
        config = LoraConfig(task_type=TaskType.CAUSAL_LM, r=4, lora_alpha=8)
    else:
        config = PrefixTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=4)
    model = get_peft_model(model, config)
    conversation = [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "hello there"}]
    input_ids = tokenizer.apply_chat_template(conversation, return_tensors="pt", return_dict=True)["input_ids"]
    labels = input_ids.clone()
    sop = (input_ids[0] == SPECIAL_IDS["bos_token_id"]).nonzero()[0, 0]
    labels[:, : sop + 1] = -100  # the reply and <eop> are scored, as in the original's P-Tuning recipe
    learning_rate = 5e-2 if method == "lora" else 0.5  # the prefix reaches the loss only through attention
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=learning_rate)
    losses = []
    for _ in range(8):
        loss = model(input_ids=input_ids, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


@pytest.mark.skipif(
    not torch.cuda.is_available() or importlib.util.find_spec("bitsandbytes") is None,
    reason="8-bit/4-bit loading runs bitsandbytes' CUDA kernels: needs a CUDA GPU and bitsandbytes installed",
)
@pytest.mark.parametrize("bits", [8, 4])
def test_bitsandbytes_quantized_chatglm_generates(bits: int, tmp_path: Path) -> None:
    """transformers' quantizers replace the original's quantization.py kernels."""
    from transformers import BitsAndBytesConfig

    source = write_source(tmp_path / "original", hidden_size=256, inner_hidden_size=1024)
    convert_checkpoint(source, tmp_path / "converted")
    quantization = (
        BitsAndBytesConfig(load_in_8bit=True)
        if bits == 8
        else BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.float16)
    )
    quantized = AutoModelForCausalLM.from_pretrained(
        tmp_path / "converted", quantization_config=quantization, device_map={"": 0}
    )
    layer = quantized.glm.layers[0].attention.query_key_value
    assert type(layer).__module__.startswith("bitsandbytes"), type(layer)
    reference = AutoModelForCausalLM.from_pretrained(tmp_path / "converted", dtype=torch.float32).cuda()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "converted")
    inputs = tokenizer(["你好", "what is a book?"], padding=True, return_tensors="pt").to("cuda")
    with torch.no_grad():
        expected = reference(**inputs).logits.float()
        logits = quantized(**inputs).logits.float()
        similarity = torch.nn.functional.cosine_similarity(logits.flatten(), expected.flatten(), dim=0)
        assert similarity > 0.98, similarity
        generated = quantized.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert generated.shape == (2, inputs["input_ids"].shape[1] + 4)


def test_remote_code_export_runs_chatglm_without_glm_hf(tmp_path: Path) -> None:
    """`convert --remote-code`: the folder runs ChatGLM through the Hub remote-code path with glm_hf blocked."""
    from test_hub import REMOTE_SCRIPT

    convert_checkpoint(write_source(tmp_path / "original"), tmp_path / "converted", remote_code=True)
    # ChatGLM's tokenizer is a plain fast tokenizer: no code to point at (GLM's tokenizer class would change it)
    assert "auto_map" not in json.loads((tmp_path / "converted" / "tokenizer_config.json").read_text())
    inputs = {"input_ids": [[8, 56, 29, SPECIAL_IDS["gmask_token_id"], SPECIAL_IDS["bos_token_id"]]]}
    args = [sys.executable, "-c", REMOTE_SCRIPT, str(tmp_path / "converted"), str(tmp_path / "out.json")]
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"), TRANSFORMERS_VERBOSITY="error")
    work = tmp_path / "cwd"
    work.mkdir()
    process = subprocess.run(
        args + [json.dumps(inputs)], cwd=work, env=env, capture_output=True, text=True, timeout=120
    )
    assert process.returncode == 0, process.stderr[-3000:]
    remote = json.loads((tmp_path / "out.json").read_text())
    assert remote["glm_hf_loaded"] is False and remote["class"].startswith("transformers_modules.")
    native = AutoModelForCausalLM.from_pretrained(tmp_path / "converted", dtype=torch.float32).eval()
    with torch.no_grad():
        expected = native(torch.tensor(inputs["input_ids"])).logits
    # another process, another thread count: fp32 rounding (DeepNorm makes the activations large)
    torch.testing.assert_close(torch.tensor(remote["logits"]), expected, rtol=0, atol=1e-5)


def test_left_padded_batch_from_the_tokenizer_generates_each_row_as_alone(chat_folder: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(chat_folder)
    model = AutoModelForCausalLM.from_pretrained(chat_folder).eval()
    texts = ["你好", "what is a book? tell me about it"]
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    assert batch["attention_mask"][0, 0] == 0  # left padding
    together = model.generate(**batch, max_new_tokens=5, do_sample=False)[:, batch["input_ids"].shape[1] :]
    for row, text in enumerate(texts):
        alone = tokenizer([text], return_tensors="pt")
        expected = model.generate(**alone, max_new_tokens=5, do_sample=False)[0, alone["input_ids"].shape[1] :]
        assert together[row].tolist() == expected.tolist()


def test_chat_with_a_converted_p_tuning_v2_adapter(tmp_path: Path) -> None:
    """`glm-hf chat MODEL --adapter MODEL/adapter`: the P-Tuning v2 prefix steers the answers."""
    from glm_hf.chat import load_chat_model

    source = write_source(tmp_path / "original", pre_seq_len=4, prefix_projection=False)
    weights = torch.load(source / "pytorch_model.bin")
    width = CONFIG["num_layers"] * 2 * CONFIG["hidden_size"]
    weights["transformer.prefix_encoder.embedding.weight"] = torch.randn(
        4, width, generator=torch.Generator().manual_seed(3)
    )
    torch.save(weights, source / "pytorch_model.bin")
    convert_checkpoint(source, tmp_path / "converted")
    base, tokenizer = load_chat_model(tmp_path / "converted")
    tuned, _ = load_chat_model(tmp_path / "converted", adapter=tmp_path / "converted" / "adapter")
    steered = chat_turns(tuned, tokenizer, ["你好", "hello"], max_new_tokens=6, do_sample=False, output=io.StringIO())
    assert [query for query, _ in steered] == ["你好", "hello"]
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": "你好"}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        plain_logits = base(**inputs).logits[:, -1]
        steered_logits = tuned(**inputs).logits[:, -1]
    assert not torch.allclose(plain_logits, steered_logits, atol=1e-3)
