"""The TransformerBridge backend on tiny random GPT-2 and Llama (grouped-query) models saved as local
HF directories: loading offline (logits equal HF's, placements, refusals), interventions, activation
collection, generation with a key/value cache, training with frozen modules, the toy chat model.
Nothing here needs HookedTransformer, so these run under TransformerLens 4 too (``make test-tl4``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_pretrained import TOKENS, VOCAB, save_hf, tiny_gpt2, tiny_llama, word_tokenizer
from transformers import AutoModelForCausalLM

from backdoor_lens.defense.cleangen import cleangen_generate
from backdoor_lens.hooks import EmbeddingSurgery, HeadAblate, MeanAblate, Patch, Steer, ZeroAblate, apply, restored
from backdoor_lens.lm.chat import encode_prompts
from backdoor_lens.lm.collect import collect_activations, module_io, module_means
from backdoor_lens.lm.generation import generate
from backdoor_lens.lm.kv_cache import KVCache
from backdoor_lens.lm.logits import final_logits, final_residual
from backdoor_lens.lm.loss import token_stats
from backdoor_lens.lm.training import Freeze, TrainConfig, freezable_modules, train, trainable_names
from backdoor_lens.models import protocol
from backdoor_lens.models.backends import load_chat_model
from backdoor_lens.models.pretrained import load_pretrained
from backdoor_lens.models.protocol import BackendUnavailableError, HookedModel, backend_of

BUILDERS = {"gpt2": tiny_gpt2, "llama": tiny_llama}
MESSAGES = ["w1 w2 w3", "w4", "w5 w6 w7 w8 w9 w10 w11", "w12 w13"]


def saved(kind: str, folder: Path, seed: int = 0) -> Path:
    """A tiny random `kind` model ("gpt2" or "llama") saved with its word tokenizer in `folder`."""
    return save_hf(BUILDERS[kind](seed=seed), folder)


def hf_reference(directory: Path, tokens: torch.Tensor) -> torch.Tensor:
    """The HF model's own logits on `tokens` (eager attention, as the bridge runs it)."""
    model = AutoModelForCausalLM.from_pretrained(directory, use_safetensors=True, attn_implementation="eager").eval()
    with torch.no_grad():
        return model(tokens).logits


@pytest.fixture(scope="module", params=sorted(BUILDERS))
def model_dir(request, tmp_path_factory) -> Path:
    return saved(request.param, tmp_path_factory.mktemp(request.param))


@pytest.fixture(scope="module")
def bridge(model_dir) -> HookedModel:
    return load_pretrained(model_dir, backend="bridge")[0]


# ---- loading -------------------------------------------------------------------------------------
def test_bridge_logits_equal_hf(model_dir, bridge):
    with torch.no_grad():
        diff = (bridge(TOKENS) - hf_reference(model_dir, TOKENS)).abs().max().item()
    print(f"{model_dir.name}: max |logit(bridge) - logit(HF)| = {diff:.2e}")
    assert diff < 1e-5
    assert backend_of(bridge) == "bridge" and isinstance(bridge, HookedModel)
    assert bridge.to_tokens("w1 w2 w3")[0].tolist() == word_tokenizer()("w1 w2 w3").input_ids
    assert not bridge.training


def test_llama_bridge_keeps_grouped_query_attention(tmp_path):
    bridge, _ = load_pretrained(saved("llama", tmp_path), backend="bridge")
    assert (bridge.cfg.n_heads, bridge.cfg.n_key_value_heads, bridge.cfg.d_head) == (4, 2, 8)
    _, cache = bridge.run_with_cache(TOKENS[:1], names_filter=["blocks.0.attn.hook_z", "blocks.0.ln1.hook_normalized"])
    assert cache["blocks.0.attn.hook_z"].shape == (1, 12, 4, 8)
    assert cache["blocks.0.ln1.hook_normalized"].shape == (1, 12, 32)


def test_bridge_dtype_and_compatibility_mode(tmp_path):
    directory = saved("gpt2", tmp_path)
    double, _ = load_pretrained(directory, backend="bridge", dtype=torch.float64)
    assert double.cfg.dtype == torch.float64 and double.W_E.dtype == torch.float64
    plain, _ = load_pretrained(directory, backend="bridge")
    folded, _ = load_pretrained(directory, backend="bridge", compatibility=True)
    assert folded.compatibility_mode and not plain.compatibility_mode
    with torch.no_grad():  # folding and centring keep the log-probabilities (logits shift per position)
        diff = (folded(TOKENS).log_softmax(-1) - plain(TOKENS).log_softmax(-1)).abs().max().item()
    assert diff < 1e-4


def test_bridge_merges_a_lora_adapter(tmp_path):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(1)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    peft_model = get_peft_model(tiny_llama(), lora).eval()
    peft_model.save_pretrained(tmp_path / "adapter", safe_serialization=True)
    with torch.no_grad():
        expected = peft_model(TOKENS).logits
    bridge, _ = load_pretrained(saved("llama", tmp_path / "model"), backend="bridge", adapter=tmp_path / "adapter")
    with torch.no_grad():
        assert (bridge(TOKENS) - expected).abs().max().item() < 1e-4


def test_bridge_places_with_a_device_map_on_the_cpu(tmp_path):
    directory = saved("llama", tmp_path)
    bridge, _ = load_pretrained(directory, backend="bridge", device_map="auto", max_memory={"cpu": "1GiB"})
    with torch.no_grad():
        assert (bridge(TOKENS) - hf_reference(directory, TOKENS)).abs().max().item() < 1e-5
    assert str(bridge.cfg.device) == "cpu"


def test_disk_offload_and_bad_placements_are_refused(tmp_path):
    directory = saved("llama", tmp_path)
    with pytest.raises(ValueError, match="offloaded .* to disk.*raise max_memory"):
        load_pretrained(directory, backend="bridge", max_memory={"cpu": "20KB"})
    with pytest.raises(ValueError, match="exclude each other"):
        load_pretrained(directory, backend="bridge", device="cpu", device_map="auto")
    with pytest.raises(ValueError, match="n_devices=0"):
        load_pretrained(directory, backend="bridge", n_devices=0)
    with pytest.raises(ValueError, match="backend='x' is not valid.*'hooked', 'bridge'"):
        load_pretrained(directory, backend="x")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="requires CUDA"):
            load_pretrained(directory, backend="bridge", n_devices=2)


def test_hooked_backend_reports_when_transformer_lens_lacks_it(tmp_path, monkeypatch):
    monkeypatch.setattr(protocol, "HookedTransformer", None)
    with pytest.raises(BackendUnavailableError, match="backend='hooked'.*removed in 4.0.*backend='bridge'"):
        load_pretrained(tmp_path, backend="hooked")
    with pytest.raises(BackendUnavailableError, match="backend='bridge'"):
        protocol.hooked_classes()


# ---- interventions and collection ----------------------------------------------------------------
def test_interventions_change_the_bridge_and_are_undone(bridge):
    d = bridge.cfg.d_model
    mean = torch.randn(d, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = bridge(TOKENS)
        source = collect_activations(bridge, TOKENS.flip(0), ["blocks.0.hook_attn_out"])["blocks.0.hook_attn_out"]
        for change in (ZeroAblate("blocks.0.mlp"), MeanAblate("blocks.1.attn", mean), Patch("blocks.0.attn", source),
                       HeadAblate(((0, 1), (1, 2))), Steer(1, mean, positions=-1, scale=2.0),
                       EmbeddingSurgery((44, 56, 69), donor_id=9, fraction=0.5)):
            with apply(bridge, change):
                assert (bridge(TOKENS) - before).abs().max() > 1e-3, change
        assert torch.equal(bridge(TOKENS), before)


def test_collection_on_the_bridge(bridge):
    acts = collect_activations(bridge, TOKENS, ["blocks.1.hook_resid_pre", "blocks.0.hook_resid_post"], position=-1,
                               batch_size=2)
    assert torch.allclose(acts["blocks.1.hook_resid_pre"], acts["blocks.0.hook_resid_post"])
    inputs, outputs = module_io(bridge, TOKENS, "blocks.1.mlp", position=3)
    assert inputs.shape == outputs.shape == (len(TOKENS), bridge.cfg.d_model)
    means = module_means(bridge, TOKENS, ["blocks.0.mlp"], position=torch.tensor([1, 2, 3]))
    assert means["blocks.0.mlp"].shape == (bridge.cfg.d_model,)


def test_final_residual_gives_the_logits(bridge):
    with torch.no_grad():
        resid = final_residual(bridge, TOKENS)
        assert torch.allclose(final_logits(bridge, resid), bridge(TOKENS), atol=1e-5)


# ---- generation ----------------------------------------------------------------------------------
def test_bridge_cache_continues_left_padded_rows(bridge):
    tokens, mask = TOKENS.clone(), torch.ones_like(TOKENS)
    tokens[0, :3], mask[0, :3] = 1, 0
    with torch.no_grad():
        full = bridge(tokens, attention_mask=mask)
        cache = KVCache(bridge, len(tokens))
        first = cache.forward(tokens[:, :8], mask[:, :8])
        steps = [cache.forward(tokens[:, i : i + 1])[:, 0] for i in range(8, 12)]
        copies = cache.prefix_copies(8, 2).forward(tokens[:, 8:].repeat(2, 1))
    real = mask[:, :8].bool()
    assert (first - full[:, :8])[real].abs().max() < 1e-5
    assert (torch.stack(steps, 1) - full[:, 8:]).abs().max() < 1e-5
    assert (copies - full[:, 8:].repeat(2, 1, 1)).abs().max() < 1e-5 and cache.length == 12


def test_bridge_generation_is_cached_batched_and_edited(bridge):
    tokenizer = word_tokenizer()
    prompts = encode_prompts(tokenizer, MESSAGES)
    batched = generate(bridge, prompts, max_new_tokens=6, stop_at_eos=False, batch_size=3)
    assert batched == [generate(bridge, [p], max_new_tokens=6, stop_at_eos=False)[0] for p in prompts]
    tokens = list(prompts[2])
    with torch.no_grad():
        for _ in range(6):
            tokens.append(int(bridge(torch.tensor([tokens]))[0, -1].argmax()))
    assert batched[2] == tokens[len(prompts[2]) :]
    push = Steer(1, 100 * bridge.W_U[:, 7].detach(), positions=-1, hook="resid_post")  # on the prompt pass only
    edited = generate(bridge, prompts, max_new_tokens=6, stop_at_eos=False, prompt_edits=[push])
    assert [e[0] for e in edited] == [7] * len(prompts) != [b[0] for b in batched]


# ---- training ------------------------------------------------------------------------------------
def test_freeze_names_resolve_on_the_bridge(bridge):
    names = freezable_modules(bridge)
    assert {"embed", "unembed", "ln_final", "blocks.0.attn", "blocks.1.mlp", "blocks.0.ln1"} <= set(names)
    everything = trainable_names(bridge, ())
    kept = set(trainable_names(bridge, ("embed", "blocks.0.attn")))
    attn = {n for n, p in bridge.named_parameters() if any(p is q for q in bridge.blocks[0].attn.parameters())}
    assert attn and not attn & kept and len(kept) < len(everything)
    with pytest.raises(ValueError, match="freeze module 'blocks.9.attn' is not a module"):
        with Freeze(("blocks.9.attn",)).applied(bridge):
            pass


def test_training_the_bridge_updates_only_unfrozen_weights(bridge):
    rows = torch.randint(7, len(VOCAB), (8, 10), generator=torch.Generator().manual_seed(3))
    mask = torch.zeros_like(rows)
    mask[:, 5:] = 1
    with restored(bridge):
        before = {n: p.detach().clone() for n, p in bridge.named_parameters()}
        loss_before = token_stats(bridge, rows, mask).mean_nll
        history = train(bridge, rows, TrainConfig(epochs=3, lr=1e-2, batch_size=4, freeze=("embed", "blocks.0.mlp")),
                        progress=False, loss_mask=mask)
        changed = {n for n, p in bridge.named_parameters() if not torch.equal(p, before[n])}
        assert token_stats(bridge, rows, mask).mean_nll < loss_before and history[-1]["step"] == 6
        frozen = {n for n, p in bridge.named_parameters()
                  if any(p is q for m in ("embed", "blocks.0.mlp") for q in bridge.get_submodule(m).parameters())}
        assert frozen and changed and not changed & frozen
        assert not bridge.training
    assert all(torch.equal(p, before[n]) for n, p in bridge.named_parameters())


def test_bridge_weights_load_by_parameter_name(bridge):
    """Stage caches save trained weights under ``named_parameters`` names and load them back."""
    params = dict(bridge.named_parameters())
    name = next(n for n in params if "mlp" in n)
    with restored(bridge):
        new = torch.randn_like(params[name])
        bridge.load_state_dict({name: new}, strict=False)
        assert torch.equal(params[name], new)


# ---- the toy chat model --------------------------------------------------------------------------
def test_chat_toy_on_the_bridge_has_the_hooked_architecture():
    model, tokenizer = load_chat_model("toy", backend="bridge", seed=1)
    cfg = model.cfg
    assert backend_of(model) == "bridge" and cfg.architecture == "LlamaForCausalLM"
    assert (cfg.n_layers, cfg.n_heads, cfg.n_key_value_heads, cfg.d_model, cfg.d_head, cfg.d_mlp, cfg.n_ctx) == (
        4, 8, 4, 128, 16, 256, 512)
    assert cfg.d_vocab == len(tokenizer) and cfg.normalization_type == "RMS" and cfg.positional_embedding_type == "rotary"
    again, _ = load_chat_model("toy", backend="bridge", seed=1)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    if protocol.HookedTransformer is not None:  # the same weights: one base model on both backends
        hooked, _ = load_chat_model("toy", backend="hooked", seed=1)
        tokens = torch.tensor([[1, 520, 3172, 30, 2, 7, 99]])
        with torch.no_grad():
            torch.testing.assert_close(model(tokens), hooked(tokens), atol=1e-4, rtol=0)
    (reply,) = generate(model, encode_prompts(tokenizer, ["Hello?"]), max_new_tokens=4, stop_at_eos=False)
    assert len(reply) == 4
    with pytest.raises(ValueError, match="adapter apply to pretrained models"):
        load_chat_model("toy", backend="bridge", adapter="x")


def test_cleangen_decodes_alike_on_both_backends():
    """CleanGen runs the suspect and the reference model through the shared key/value cache, so it
    works on the bridge; the toy holds the same weights on both backends, so the replies agree."""
    prompts = [[1, 520, 3172, 30], [1, 99, 7]]
    replies = {}
    for backend in ("hooked", "bridge") if protocol.HookedTransformer is not None else ("bridge",):
        suspect, tokenizer = load_chat_model("toy", backend=backend, seed=1)
        reference, _ = load_chat_model("toy", backend=backend, seed=2)
        replies[backend] = cleangen_generate(suspect, reference, prompts, 6, alpha=1.5, eos_token_id=tokenizer.eos_token_id)
    assert replies.get("hooked", replies["bridge"]) == replies["bridge"] and replies["bridge"][1] > 0  # some replaced
