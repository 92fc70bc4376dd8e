"""PEFT on GLM (`glm_hf.peft_integration`): LoRA with default targets, and GLM's 2D positions under prompt tuning,
P-Tuning and prefix tuning, checked against the base model given the same virtual tokens by hand.

By hand, n virtual tokens sit in Part A: positions 0..n-1 and block position 0 in front of the real tokens, whose
positions (Part B: the mask's index) move by n while their block positions stay, and `prefix_length` grows by n.
For prefix tuning the n columns are the cached keys/values PEFT's prompt encoder produces.
"""

from __future__ import annotations

import copy
import sys
import threading
import warnings
from pathlib import Path

import pytest
import torch

peft = pytest.importorskip("peft", reason="peft is not installed (pip install peft)")

from peft import (  # noqa: E402
    IA3Config,
    LoraConfig,
    PeftModel,
    PrefixTuningConfig,
    PromptEncoderConfig,
    PromptTuningConfig,
    get_peft_model,
)
from peft.tuners.lora import LoraLayer  # noqa: E402
from transformers import LogitsProcessor, LogitsProcessorList  # noqa: E402

import glm_hf  # noqa: E402
from glm_hf.peft_integration import GLM_LORA_TARGET_MODULES, register_glm_with_peft  # noqa: E402

from conftest import (  # noqa: E402
    ASSETS,
    TINY_TOKEN_IDS,
    enable_activation_checkpointing,
    tiny_config,
    tiny_model,
)

NUM_VIRTUAL = 3
NO_DROPOUT = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0, "embedding_dropout_prob": 0.0}
PAD, CLS, MASK, EOS, SOP = (
    TINY_TOKEN_IDS[k] for k in ("pad_token_id", "cls_token_id", "mask_token_id", "eos_token_id", "sop_token_id")
)

PROMPT_METHODS = {
    "prompt_tuning": lambda: PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=NUM_VIRTUAL),
    "p_tuning_mlp": lambda: PromptEncoderConfig(
        task_type="CAUSAL_LM", num_virtual_tokens=NUM_VIRTUAL, encoder_hidden_size=32
    ),
    "p_tuning_lstm": lambda: PromptEncoderConfig(
        task_type="CAUSAL_LM",
        num_virtual_tokens=NUM_VIRTUAL,
        encoder_hidden_size=32,
        encoder_reparameterization_type="LSTM",
    ),
}


def padded_blank_batch() -> dict[str, torch.Tensor]:
    """Two GLM rows with a blank each, the first left-padded by 2: `[pad pad] [CLS] text [MASK] text [eos] [sop] B`.

    Part A spans the first 8 columns (left padding included), Part B the last 3 ([sop] and two targets), whose
    position is the [MASK]'s index among the real tokens and whose block positions count 1, 2, 3.
    """
    generator = torch.Generator().manual_seed(3)
    text = torch.randint(7, 96, (2, 11), generator=generator)
    rows = [
        [PAD, PAD, CLS, text[0, 0], text[0, 1], MASK, text[0, 2], EOS, SOP, text[0, 3], text[0, 4]],
        [CLS, text[1, 0], MASK, text[1, 1], text[1, 2], text[1, 3], text[1, 4], EOS, SOP, text[1, 5], text[1, 6]],
    ]
    input_ids = torch.tensor([[int(t) for t in row] for row in rows])
    attention_mask = torch.ones_like(input_ids)
    attention_mask[0, :2] = 0
    position_ids = torch.tensor([[0, 0, 0, 1, 2, 3, 4, 5, 3, 3, 3], [0, 1, 2, 3, 4, 5, 6, 7, 2, 2, 2]])
    block_position_ids = torch.tensor([[0] * 8 + [1, 2, 3]] * 2)
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "position_ids": position_ids,
        "block_position_ids": block_position_ids,
        "prefix_length": torch.tensor([8, 8]),
    }


def positions_by_hand(batch: dict[str, torch.Tensor], n: int, prepend: bool) -> dict[str, torch.Tensor]:
    """The GLM kwargs of `batch` behind n virtual columns, written out (prepended, or cached for prefix tuning)."""
    batch_size = batch["input_ids"].shape[0]
    position_ids = batch["position_ids"] + n
    block_position_ids = batch["block_position_ids"]
    attention_mask = torch.cat([torch.ones(batch_size, n, dtype=torch.long), batch["attention_mask"]], dim=1)
    if prepend:
        position_ids = torch.cat([torch.arange(n).expand(batch_size, n), position_ids], dim=1)
        block_position_ids = torch.cat([torch.zeros(batch_size, n, dtype=torch.long), block_position_ids], dim=1)
    return {
        "position_ids": position_ids,
        "block_position_ids": block_position_ids,
        "attention_mask": attention_mask,
        "prefix_length": batch["prefix_length"] + n,
    }


def embeddings_by_hand(base: glm_hf.GLMForConditionalGeneration, prompts: torch.Tensor, input_ids: torch.Tensor):
    return torch.cat([prompts, base.get_input_embeddings()(input_ids)], dim=1)


def greedy_loop_by_hand(base, batch, steps: int, prompts=None, prefix_cache=None) -> torch.Tensor:
    """Greedy decoding without generate(): the whole sequence each step (new tokens keep the [MASK]'s position and
    count block positions up), behind prepended `prompts` or a copy of `prefix_cache`."""
    n = NUM_VIRTUAL
    batch = dict(batch)
    new_tokens = []
    for _ in range(steps):
        kwargs = positions_by_hand(batch, n, prepend=prompts is not None)
        if prompts is not None:
            inputs = {"inputs_embeds": embeddings_by_hand(base, prompts, batch["input_ids"])}
        else:
            inputs = {"input_ids": batch["input_ids"], "past_key_values": copy.deepcopy(prefix_cache)}
        logits = base(**inputs, **kwargs, use_cache=False).logits
        token = logits[:, -1].argmax(-1, keepdim=True)
        new_tokens.append(token)
        batch["input_ids"] = torch.cat([batch["input_ids"], token], dim=1)
        batch["attention_mask"] = torch.cat([batch["attention_mask"], torch.ones_like(token)], dim=1)
        batch["position_ids"] = torch.cat([batch["position_ids"], batch["position_ids"][:, -1:]], dim=1)
        batch["block_position_ids"] = torch.cat(
            [batch["block_position_ids"], batch["block_position_ids"][:, -1:] + 1], dim=1
        )
    return torch.cat(new_tokens, dim=1)


def greedy(model, batch, steps: int, **kwargs) -> torch.Tensor:
    output = model.generate(
        **batch, max_new_tokens=steps, min_new_tokens=steps, do_sample=False, eos_token_id=None, **kwargs
    )
    return output[:, -steps:]


# ---- LoRA ------------------------------------------------------------------------------------------------------


def test_lora_without_target_modules_adapts_every_block_projection() -> None:
    model = get_peft_model(tiny_model(), LoraConfig(task_type="CAUSAL_LM", r=4))
    adapted = sorted(name for name, module in model.named_modules() if isinstance(module, LoraLayer))
    expected = sorted(
        f"base_model.model.glm.layers.{layer}.{part}"
        for layer in range(2)
        for part in ("attention.query_key_value", "attention.dense", "mlp.dense_h_to_4h", "mlp.dense_4h_to_h")
    )
    assert adapted == expected
    assert set(model.peft_config["default"].target_modules) == set(GLM_LORA_TARGET_MODULES)

    torch.manual_seed(0)
    classifier = glm_hf.GLMForSequenceClassification(tiny_config(num_labels=2))
    model = get_peft_model(classifier, LoraConfig(task_type="SEQ_CLS", r=4))
    adapted = sorted(name for name, module in model.named_modules() if isinstance(module, LoraLayer))
    assert adapted == expected  # the head's own `dense` is trained whole (modules_to_save), not adapted
    assert {
        name.split(".modules_to_save")[0]
        for name, p in model.named_parameters()
        if "lora_" not in name and p.requires_grad
    } == {"base_model.model.classifier"}


def test_lora_generation_decodes_on_the_kept_static_cache_as_the_bare_model_does() -> None:
    """PEFT's generate() takes its turn under the base model's lock without making its run look nested: the static
    cache generate() keeps serves LoRA runs too, call after call."""
    model = get_peft_model(tiny_model(), LoraConfig(task_type="CAUSAL_LM", r=4)).eval()
    base = model.get_base_model()
    batch = padded_blank_batch()
    settings = {"max_new_tokens": 4, "min_new_tokens": 4, "do_sample": False, "cache_implementation": "static"}
    with torch.no_grad():
        first = model.generate(**batch, **settings)
        kept = base.kept_static_cache
        second = model.generate(**batch, **settings)
    assert kept is not None and base.kept_static_cache is kept
    assert first.tolist() == second.tolist()


def test_a_captured_lora_step_is_not_replayed_with_the_adapters_switched_off_merged_or_rescaled(monkeypatch) -> None:
    """A CUDA graph holds the LoRA branch as it was when captured: with the adapters switched off, merged into the
    weights (in place: the pointers stay) or scaled, a run gets another step, whose tokens are those of the model
    as it is then; with the adapters back on, the next run replays the first graph again."""
    from test_captured_decoding import capture_everything, serves

    captured = capture_everything(monkeypatch)
    model = get_peft_model(tiny_model(), LoraConfig(task_type="CAUSAL_LM", r=4, init_lora_weights=False)).eval()
    base = model.get_base_model()
    batch = padded_blank_batch()
    settings = {"max_new_tokens": 4, "min_new_tokens": 4, "do_sample": False, "cache_implementation": "static"}
    model.generate(**batch, **settings)
    step, cache = captured[0], base.kept_static_cache[-1]
    with model.disable_adapter():
        assert not serves(step, base)
        tokens = model.generate(**batch, **settings)
        assert base.decode_steps[cache] is captured[1]
        assert tokens.tolist() == tiny_model().generate(**batch, **settings).tolist()
    replays = step.graph.replays
    model.generate(**batch, **settings)
    assert base.decode_steps[cache] is step and step.graph.replays > replays
    assert [capture.model_ref() for capture in captured].count(base) == 2  # the last run captured nothing
    model.base_model.merge_adapter()
    assert not serves(step, base)
    model.base_model.unmerge_adapter()
    assert serves(step, base)
    for layer in (module for module in base.modules() if isinstance(module, LoraLayer)):
        layer.scale_layer(2.0)
    assert not serves(step, base)


def test_runs_alternating_between_two_adapters_replay_a_graph_each(monkeypatch) -> None:
    """Each adapter's runs keep their captured step on the kept cache: switching adapters at every call captures
    once per adapter, not once per call."""
    from test_captured_decoding import capture_everything

    captures = capture_everything(monkeypatch)
    model = get_peft_model(tiny_model(), LoraConfig(task_type="CAUSAL_LM", r=4, init_lora_weights=False)).eval()
    model.add_adapter("second", LoraConfig(task_type="CAUSAL_LM", r=4, init_lora_weights=False))
    batch = padded_blank_batch()
    settings = {"max_new_tokens": 4, "min_new_tokens": 4, "do_sample": False, "cache_implementation": "static"}
    for adapter in ("default", "second") * 3:
        model.set_adapter(adapter)
        model.generate(**batch, **settings)
    assert len(captures) == 2


@pytest.mark.parametrize("method", sorted(PROMPT_METHODS))
def test_prompt_learning_generates_on_a_static_cache_as_on_the_dynamic_one(method: str) -> None:
    """Prompt tuning and P-Tuning prepend their n virtual columns to the prompt, so the static cache that
    `cache_implementation="static"` asks for must hold n columns more than the sequence: sized for the sequence
    alone, the last n steps wrote past its end (IndexError from the cache's index_copy_)."""
    model = get_peft_model(tiny_model(), PROMPT_METHODS[method]()).eval()
    batch = padded_blank_batch()
    settings = {"max_new_tokens": 4, "min_new_tokens": 4, "do_sample": False}
    with torch.no_grad():
        dynamic = model.generate(**batch, **settings)
        static = model.generate(**batch, cache_implementation="static", **settings)
    assert static.tolist() == dynamic.tolist()


def test_lora_training_save_reload_and_merge_give_the_same_logits(tmp_path) -> None:
    batch = padded_blank_batch()
    labels = batch["input_ids"].clone()
    labels[:, :9] = -100
    model = get_peft_model(tiny_model(**NO_DROPOUT), LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    losses = []
    for _ in range(4):
        loss = model(**batch, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    model.eval()
    with torch.no_grad():
        trained = model(**batch).logits
    with torch.no_grad(), model.disable_adapter():
        base_logits = model(**batch).logits
    assert not torch.allclose(trained, base_logits, atol=1e-3)  # the adapter changed the model

    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix in (".safetensors", ".bin", ".json")) == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    reloaded = PeftModel.from_pretrained(tiny_model(**NO_DROPOUT), tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).logits, trained, rtol=0, atol=0)
        merged = reloaded.merge_and_unload()
        assert type(merged) is glm_hf.GLMForConditionalGeneration
        assert not any(isinstance(module, LoraLayer) for module in merged.modules())
        torch.testing.assert_close(merged(**batch).logits, trained, rtol=1e-5, atol=1e-4)


# ---- prompt tuning and P-Tuning -----------------------------------------------------------------------------------


@pytest.mark.parametrize("method", sorted(PROMPT_METHODS))
def test_prompt_learning_logits_and_loss_equal_the_embeddings_given_by_hand(method: str) -> None:
    base = tiny_model(**NO_DROPOUT)
    model = get_peft_model(base, PROMPT_METHODS[method]()).eval()
    batch = padded_blank_batch()
    labels = batch["input_ids"].clone()
    labels[:, :9] = -100
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="Position ids are not supported")  # PEFT's own handling is off
        output = model(**batch, labels=labels)
    prompts = model.get_prompt(batch_size=2).detach()  # the encoder's output: fixed embeddings
    by_hand = base(
        inputs_embeds=embeddings_by_hand(base, prompts, batch["input_ids"]),
        labels=torch.cat([torch.full((2, NUM_VIRTUAL), -100), labels], dim=1),
        **positions_by_hand(batch, NUM_VIRTUAL, prepend=True),
    )
    torch.testing.assert_close(output.logits, by_hand.logits, rtol=0, atol=0)
    torch.testing.assert_close(output.loss, by_hand.loss, rtol=0, atol=0)

    output.loss.backward()  # training reaches the prompt encoder and nothing else
    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(name.startswith("prompt_encoder.") for name in trainable)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable.values())


def test_p_tuning_of_the_single_token_cloze_head_reads_the_shifted_mask_column() -> None:
    torch.manual_seed(0)
    base = glm_hf.GLMForMultipleChoice(tiny_config(initializer_range=0.3)).eval()
    model = get_peft_model(
        base, PromptEncoderConfig(task_type="SEQ_CLS", num_virtual_tokens=NUM_VIRTUAL, encoder_hidden_size=32)
    ).eval()
    batch = padded_blank_batch()
    cloze = {k: v[:, :9] for k, v in batch.items() if k != "prefix_length"}  # Part A and the [sop]
    cloze.update(
        prefix_length=batch["prefix_length"],
        mask_positions=torch.tensor([8, 8]),
        verbalizer_ids=torch.tensor([[20, 30, 40]] * 2),
        labels=torch.tensor([2, 0]),
    )
    output = model(**cloze)
    prompts = model.get_prompt(batch_size=2).detach()
    by_hand = base(
        inputs_embeds=embeddings_by_hand(base, prompts, cloze["input_ids"]),
        mask_positions=cloze["mask_positions"] + NUM_VIRTUAL,
        verbalizer_ids=cloze["verbalizer_ids"],
        labels=cloze["labels"],
        **positions_by_hand(cloze, NUM_VIRTUAL, prepend=True),
    )
    torch.testing.assert_close(output.logits, by_hand.logits, rtol=0, atol=0)
    torch.testing.assert_close(output.loss, by_hand.loss, rtol=0, atol=0)


def test_prompt_tuning_without_glm_positions_moves_part_b() -> None:
    """PEFT's own handling (position_ids dropped) gives Part B other logits: the GLM step above is what fixes them."""
    base = tiny_model()
    model = get_peft_model(base, PROMPT_METHODS["prompt_tuning"]()).eval()
    batch = padded_blank_batch()
    with torch.no_grad():
        glm_logits = model(**batch).logits
        original = type(model)._adjust_prompt_learning_kwargs._glm_hf_original
        with pytest.MonkeyPatch.context() as patch, pytest.warns(UserWarning, match="Position ids are not supported"):
            patch.setattr(type(model), "_adjust_prompt_learning_kwargs", original)
            peft_logits = model(**batch).logits  # the model still extends the block ids and prefix_length
    part_a, part_b = slice(NUM_VIRTUAL, NUM_VIRTUAL + 8), slice(NUM_VIRTUAL + 8, None)
    torch.testing.assert_close(peft_logits[1, part_a], glm_logits[1, part_a])  # unpadded Part A: positions agree
    assert not torch.allclose(glm_logits[:, part_b], peft_logits[:, part_b], atol=1e-3)


@pytest.mark.parametrize(
    ("method", "options"),
    [
        ("prompt_tuning", {}),
        ("prompt_tuning", {"use_cache": False}),
        ("p_tuning_mlp", {}),
        ("p_tuning_lstm", {"num_beams": 2}),
    ],
)
def test_prompt_learning_generate_equals_generate_with_embeddings_by_hand(method: str, options: dict) -> None:
    base = tiny_model()
    model = get_peft_model(base, PROMPT_METHODS[method]()).eval()
    batch = padded_blank_batch()
    with torch.no_grad():
        generated = greedy(model, batch, steps=5, **options)
        prompts = model.get_prompt(batch_size=2)
        by_hand = greedy(
            base,
            {
                "inputs_embeds": embeddings_by_hand(base, prompts, batch["input_ids"]),
                **positions_by_hand(batch, NUM_VIRTUAL, prepend=True),
            },
            steps=5,
            **options,
        )
        torch.testing.assert_close(generated, by_hand, rtol=0, atol=0)
        if not options:
            loop = greedy_loop_by_hand(base, batch, steps=5, prompts=prompts)
            torch.testing.assert_close(generated, loop, rtol=0, atol=0)


@pytest.mark.parametrize("method", ["prompt_tuning", "prefix_tuning"])
def test_generate_past_the_position_table_after_the_shift_fails_clearly(method: str) -> None:
    base = tiny_model()  # 65 position rows
    config = (
        PROMPT_METHODS[method]()
        if method in PROMPT_METHODS
        else PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=NUM_VIRTUAL)
    )
    model = get_peft_model(base, config).eval()
    input_ids = torch.randint(7, 96, (1, 63))  # positions 0..62 fit; moved by 3 they do not
    with torch.no_grad():
        assert base.generate(input_ids, max_new_tokens=1).shape == (1, 64)
        with pytest.raises(ValueError, match="past the 65 rows of the position tables"):
            model.generate(input_ids=input_ids, max_new_tokens=1)


@pytest.mark.parametrize("method", ["prompt_tuning", "prefix_tuning"])
def test_prompt_learning_runs_from_two_threads_and_inside_a_run_get_the_tokens_each_gets_alone(method: str) -> None:
    """PEFT gives the base model its own `prepare_inputs_for_generation` for a run and takes it back after: a run
    in another thread (PEFT's or the base model's alone) and a run inside a run (from a logits processor) each keep
    theirs, and the base model ends as it was (its own fast paths again)."""
    base = tiny_model()
    config = (
        PROMPT_METHODS[method]()
        if method in PROMPT_METHODS
        else PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=NUM_VIRTUAL)
    )
    model = get_peft_model(base, config).eval()
    batch = padded_blank_batch()
    settings = {"max_new_tokens": 6, "min_new_tokens": 6, "do_sample": False}
    with torch.no_grad():
        alone = {"peft": model.generate(**batch, **settings).tolist(), "base": base.generate(**batch, **settings)}
    alone["base"] = alone["base"].tolist()
    assert alone["peft"] != alone["base"]  # the virtual tokens change what the model generates
    runs: dict[str, list] = {"peft": [], "base": []}

    def generate_repeatedly(name: str) -> None:
        with torch.no_grad():
            for _ in range(4):
                runs[name].append((model if name == "peft" else base).generate(**batch, **settings).tolist())

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # the two threads' runs interleave at every step
    try:
        threads = [threading.Thread(target=generate_repeatedly, args=(name,)) for name in runs]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    assert runs == {name: [tokens] * 4 for name, tokens in alone.items()}

    inner: list = []

    class GenerateOnce(LogitsProcessor):
        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
            if not inner:
                inner.append(model.generate(**batch, **settings).tolist())
            return scores

    with torch.no_grad():
        outer = model.generate(**batch, logits_processor=LogitsProcessorList([GenerateOnce()]), **settings)
    assert inner == [alone["peft"]] and outer.tolist() == alone["peft"]
    assert "prepare_inputs_for_generation" not in vars(base)


# ---- prefix tuning (P-Tuning v2) ------------------------------------------------------------------------------------


def prefix_model(**overrides) -> tuple[glm_hf.GLMForConditionalGeneration, PeftModel]:
    base = tiny_model(**overrides)
    return base, get_peft_model(base, PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=NUM_VIRTUAL)).eval()


def test_prefix_tuning_logits_equal_the_cache_given_by_hand_and_every_query_sees_the_prefix() -> None:
    base, model = prefix_model(attn_implementation="eager", **NO_DROPOUT)
    batch = padded_blank_batch()
    with torch.no_grad():
        output = model(**batch, output_attentions=True)
        by_hand = base(
            input_ids=batch["input_ids"],
            past_key_values=model.get_prompt(batch_size=2),
            **positions_by_hand(batch, NUM_VIRTUAL, prepend=False),
        )
    torch.testing.assert_close(output.logits, by_hand.logits, rtol=0, atol=0)
    real_rows = batch["attention_mask"].bool()  # pads' rows are unused
    for weights in output.attentions:  # [B, heads, T, n + T]
        on_prefix = weights[..., :NUM_VIRTUAL].sum(-1)  # [B, heads, T]
        assert (on_prefix.permute(0, 2, 1)[real_rows] > 0).all()


def test_prefix_tuning_without_prefix_length_keeps_the_whole_input_in_part_a() -> None:
    base, model = prefix_model()
    batch = {k: v for k, v in padded_blank_batch().items() if k != "prefix_length"}
    with torch.no_grad():
        output = model(**batch)
        kwargs = positions_by_hand({**batch, "prefix_length": torch.tensor([11, 11])}, NUM_VIRTUAL, prepend=False)
        by_hand = base(input_ids=batch["input_ids"], past_key_values=model.get_prompt(batch_size=2), **kwargs)
    torch.testing.assert_close(output.logits, by_hand.logits, rtol=0, atol=0)


@pytest.mark.parametrize("use_cache", [True, False])
def test_prefix_tuning_generate_equals_a_greedy_loop_over_the_prefix_by_hand(use_cache: bool) -> None:
    base, model = prefix_model()
    batch = padded_blank_batch()
    with torch.no_grad():
        generated = greedy(model, batch, steps=5, use_cache=use_cache)
        loop = greedy_loop_by_hand(base, batch, steps=5, prefix_cache=model.get_prompt(batch_size=2))
    torch.testing.assert_close(generated, loop, rtol=0, atol=0)


def test_prefix_tuning_trains_the_prefix() -> None:
    _, model = prefix_model(**NO_DROPOUT)
    model.train()
    batch = padded_blank_batch()
    labels = batch["input_ids"].clone()
    labels[:, :9] = -100
    model(**batch, labels=labels).loss.backward()
    grads = [p.grad for name, p in model.named_parameters() if p.requires_grad]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)


def test_prefix_tuning_with_gradient_checkpointing_is_refused_clearly() -> None:
    base, model = prefix_model(**NO_DROPOUT)
    enable_activation_checkpointing(base)
    model.train()
    with pytest.raises(ValueError, match="Gradient checkpointing recomputes every layer without its KV cache"):
        model(**padded_blank_batch())


# ---- the model's own rule and the registration ---------------------------------------------------------------------


def test_position_ids_shorter_than_the_input_describe_the_tokens_after_prepended_embeddings() -> None:
    base = tiny_model()
    batch = padded_blank_batch()
    prompts = torch.randn(2, NUM_VIRTUAL, base.config.hidden_size)
    embeddings = embeddings_by_hand(base, prompts, batch["input_ids"])
    with torch.no_grad():
        full = base(inputs_embeds=embeddings, **positions_by_hand(batch, NUM_VIRTUAL, prepend=True)).logits
        short = base(
            inputs_embeds=embeddings,
            attention_mask=torch.cat([torch.ones(2, NUM_VIRTUAL, dtype=torch.long), batch["attention_mask"]], 1),
            position_ids=batch["position_ids"],
            block_position_ids=batch["block_position_ids"],
            prefix_length=batch["prefix_length"],
        ).logits
        torch.testing.assert_close(short, full, rtol=0, atol=0)
        cached = base(input_ids=batch["input_ids"][:, :4], use_cache=True).past_key_values
        with pytest.raises(ValueError, match="only a first pass may give fewer"):
            base(input_ids=batch["input_ids"][:, 4:], past_key_values=cached, position_ids=batch["position_ids"])


def test_registration_is_idempotent_and_leaves_other_models_to_peft() -> None:
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
    from transformers import GPT2Config, GPT2LMHeadModel

    wrapped = PeftModel._adjust_prompt_learning_kwargs
    assert register_glm_with_peft() is True
    assert PeftModel._adjust_prompt_learning_kwargs is wrapped
    assert TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING["glm_blocklm"] == GLM_LORA_TARGET_MODULES
    ia3 = get_peft_model(tiny_model(), IA3Config(task_type="CAUSAL_LM"))
    scaled = sorted(name.split("glm.layers.")[1] for name, module in ia3.named_modules() if hasattr(module, "ia3_l"))
    assert scaled == ["0.attention.query_key_value", "0.mlp.dense_4h_to_h", "1.attention.query_key_value",
                      "1.mlp.dense_4h_to_h"]  # fmt: skip

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50, n_positions=32))
    model = get_peft_model(gpt2, PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=NUM_VIRTUAL))
    kwargs = {"position_ids": torch.arange(4)[None]}
    with pytest.warns(UserWarning, match="Position ids are not supported"):
        model._adjust_prompt_learning_kwargs(model.active_peft_config, kwargs=kwargs)
    assert kwargs["position_ids"] is None


# ---- the example ----------------------------------------------------------------------------------------------------

RTE = ASSETS / "superglue" / "RTE"
BERT_VOCAB = ASSETS / "bert-base-uncased-vocab.txt"


@pytest.mark.skipif(
    not (BERT_VOCAB.is_file() and (RTE / "train.jsonl").is_file()),
    reason=f"shared assets (BERT vocab, SuperGLUE RTE) not found in {ASSETS}",
)
@pytest.mark.parametrize("method", ["lora", "p-tuning"])
def test_finetune_peft_example_trains_and_writes_only_the_adapter(tmp_path, method: str) -> None:
    import importlib.util
    import json

    from transformers import AutoModelForMultipleChoice

    from glm_hf.superglue import DataCollatorForCloze, SuperGLUEDataset, predicted_labels, read_split

    spec = importlib.util.spec_from_file_location(
        "finetune_peft", Path(__file__).parents[1] / "examples" / "finetune_peft.py"
    )
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)

    data = tmp_path / "RTE"
    data.mkdir()
    (data / "train.jsonl").write_text("\n".join((RTE / "train.jsonl").read_text().splitlines()[:16]) + "\n")
    (data / "val.jsonl").write_text("\n".join((RTE / "val.jsonl").read_text().splitlines()[:6]) + "\n")
    tokenizer = glm_hf.build_tokenizer("bert-base-uncased", ASSETS)
    config = glm_hf.GLMConfig(
        vocab_size=30592, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=129,
        **NO_DROPOUT, **glm_hf.FAMILY_TOKEN_IDS["bert-base-uncased"],
    )  # fmt: skip
    torch.manual_seed(0)
    glm_hf.GLMForMultipleChoice(config).save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")

    output = tmp_path / "out"
    results = example.main(
        ["--method", method, "--task", "rte", "--data-dir", str(data), "--model", str(tmp_path / "model")]
        + ["--output-dir", str(output), "--max-length", "96", "--num_train_epochs", "2"]
        + ["--per_device_train_batch_size", "8", "--use_cpu", "True", "--seed", "0"]
    )
    assert results["train"]["global_step"] == 4
    weights = [p for p in (output / "model").iterdir() if p.suffix in (".safetensors", ".bin", ".pt")]
    assert sorted(p.name for p in weights) == ["adapter_model.safetensors", "training_args.bin"]  # no base weights
    base = AutoModelForMultipleChoice.from_pretrained(tmp_path / "model")
    model = PeftModel.from_pretrained(base, output / "model").eval()
    assert type(model).__name__ == "PeftModelForSequenceClassification"
    trained = [p for name, p in model.named_parameters() if "lora_B" in name or "prompt_encoder" in name]
    if method == "lora":
        assert trained and all(p.abs().sum() > 0 for p in trained)  # lora_B starts at zero

    val = SuperGLUEDataset(read_split("rte", data, "val"), tokenizer, base.config, "rte", max_length=96, split="val")
    batch = DataCollatorForCloze(pad_token_id=0)([val[i] for i in range(len(val))])
    with torch.no_grad():
        choices = model(**batch).logits.argmax(-1).tolist()
    predictions = [
        json.loads(line) for line in (output / "predictions" / "val" / "RTE.jsonl").read_text().splitlines()
    ]
    assert [record["label"] for record in predictions] == predicted_labels("rte", val.examples, choices)


def test_candidate_rows_shift_under_a_cached_prefix_and_cannot_take_prepended_prompts():
    """`GLMForMultipleChoice`'s `[B, C, T]` rows come with block ids: under prefix tuning every candidate row's
    positions and Part A move by n; stacked `[B, 2, T]` ids (no block ids) are still split."""
    from glm_hf.modeling.modeling_glm import shift_positions_for_virtual_tokens

    positions = torch.arange(12).view(1, 2, 6).clone()
    blocks = torch.zeros_like(positions)
    prefix = torch.tensor([[4, 4]])
    shifted, same_blocks, shifted_prefix = shift_positions_for_virtual_tokens(3, positions, blocks, prefix, False)
    assert torch.equal(shifted, positions + 3) and same_blocks is blocks and torch.equal(shifted_prefix, prefix + 3)
    with pytest.raises(ValueError, match="one-row-per-candidate"):
        shift_positions_for_virtual_tokens(3, positions, blocks, prefix, True)
    stacked_positions, stacked_blocks, _ = shift_positions_for_virtual_tokens(3, positions, None, None, False)
    assert torch.equal(stacked_positions, positions[:, 0] + 3) and torch.equal(stacked_blocks, positions[:, 1])
