"""load_pretrained on tiny random HF models saved in a tmp dir: logit parity, LoRA merge, refusals."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from backdoor_lens.models.pretrained import load_pretrained

SPECIALS = ["<unk>", "<pad>", "<bos>", "<eos>", "<|system|>", "<|user|>", "<|assistant|>"]
VOCAB = SPECIALS + [f"w{i}" for i in range(100 - len(SPECIALS))]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <eos> {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def word_tokenizer() -> PreTrainedTokenizerFast:
    """A 100-word whitespace tokenizer with a small chat template (no BOS added, like GPT-2's)."""
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(VOCAB)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="<unk>",
        pad_token="<pad>",
        bos_token="<bos>",
        eos_token="<eos>",
        additional_special_tokens=SPECIALS[4:],
        chat_template=CHAT_TEMPLATE,
    )


def save_hf(model: torch.nn.Module, directory: Path) -> Path:
    model.save_pretrained(directory, safe_serialization=True)
    word_tokenizer().save_pretrained(directory)
    return directory


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    """2 layers, 4 query heads sharing 2 key/value heads (GQA), d_model 32, vocab 100."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(VOCAB), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, rope_theta=10000.0, tie_word_embeddings=False,
        bos_token_id=2, eos_token_id=3, pad_token_id=1,
    )
    return LlamaForCausalLM(config).eval()


def tiny_gpt2(seed: int = 0) -> GPT2LMHeadModel:
    """2 layers, 4 heads, d_model 32, vocab 100; saved without `n_ctx`, which the loader must supply."""
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=len(VOCAB), n_positions=64, n_embd=32, n_layer=2, n_head=4, bos_token_id=2, eos_token_id=3
    )
    return GPT2LMHeadModel(config).eval()


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory) -> Path:
    return save_hf(tiny_llama(), tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory) -> Path:
    return save_hf(tiny_gpt2(), tmp_path_factory.mktemp("tiny-gpt2"))


def hf_logits(directory: Path, tokens: torch.Tensor) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    with torch.no_grad():
        return AutoModelForCausalLM.from_pretrained(directory, use_safetensors=True).eval()(tokens).logits


TOKENS = torch.randint(0, len(VOCAB), (3, 12), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("fixture", ["llama_dir", "gpt2_dir"])
def test_local_dir_logits_match_hf(fixture, request):
    directory = request.getfixturevalue(fixture)
    model, tokenizer = load_pretrained(directory)
    with torch.no_grad():
        diff = (model(TOKENS) - hf_logits(directory, TOKENS)).abs().max().item()
    assert diff < 1e-4, diff
    assert model.cfg.dtype == torch.float32 and not model.cfg.layer_norm_folding
    assert model.tokenizer is not None
    assert model.to_tokens("w1 w2 w3")[0].tolist() == tokenizer("w1 w2 w3").input_ids


def test_llama_keeps_grouped_query_attention(llama_dir):
    model, _ = load_pretrained(llama_dir)
    assert (model.cfg.n_heads, model.cfg.n_key_value_heads) == (4, 2)
    _, cache = model.run_with_cache(TOKENS[:1], names_filter="blocks.0.attn.hook_z")
    assert cache["blocks.0.attn.hook_z"].shape == (1, 12, 4, 8)


def test_dtype_is_applied_after_conversion(gpt2_dir):
    model, _ = load_pretrained(gpt2_dir, dtype=torch.float64)
    assert model.cfg.dtype == torch.float64 and model.W_E.dtype == torch.float64


def test_lora_adapter_is_merged(llama_dir, tmp_path):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(1)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    peft_model = get_peft_model(tiny_llama(), lora).eval()
    peft_model.save_pretrained(tmp_path / "adapter", safe_serialization=True)
    with torch.no_grad():
        expected = peft_model(TOKENS).logits

    model, _ = load_pretrained(llama_dir, adapter=tmp_path / "adapter")
    with torch.no_grad():
        merged = model(TOKENS)
    assert (merged - expected).abs().max().item() < 1e-4
    assert (merged - hf_logits(llama_dir, TOKENS)).abs().max().item() > 1e-2


def test_pickled_adapter_is_refused(llama_dir, tmp_path):
    (tmp_path / "adapter_config.json").write_text("{}")
    torch.save({}, tmp_path / "adapter_model.bin")
    with pytest.raises(ValueError, match="adapter_model.safetensors.*untrusted"):
        load_pretrained(llama_dir, adapter=tmp_path)


def test_pickled_weights_are_refused(tmp_path):
    model = tiny_gpt2()
    model.config.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"pytorch_model\.bin.*pickled.*untrusted.*safe_serialization=True"):
        load_pretrained(tmp_path)


def test_missing_directory_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a directory"):
        load_pretrained(tmp_path / "nowhere")


def test_unknown_hub_name_fails_fast_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(FileNotFoundError, match=r"HF_HUB_OFFLINE.*hf download no-such-org/no-such-model") as err:
        load_pretrained("no-such-org/no-such-model")
    assert time.perf_counter() - start < 10
    assert "smollm2-135m-instruct" in str(err.value)


def test_directory_without_tokenizer_is_named(tmp_path):
    tiny_gpt2().save_pretrained(tmp_path, safe_serialization=True)
    with pytest.raises(FileNotFoundError, match="has no tokenizer"):
        load_pretrained(tmp_path)


def test_conversion_that_drops_weights_fails_loudly(tmp_path):
    """TransformerLens's Llama converter ignores attention biases; the logit check must catch it."""
    model = tiny_llama()
    model.config.attention_bias = True
    biased = LlamaForCausalLM(model.config).eval()
    with torch.no_grad():
        for layer in biased.model.layers:
            layer.self_attn.q_proj.bias.normal_(0, 1.0)
            layer.self_attn.v_proj.bias.normal_(0, 1.0)
    with pytest.raises(RuntimeError, match="converted logits differ"):
        load_pretrained(save_hf(biased, tmp_path))
