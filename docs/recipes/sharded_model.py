"""
Analyse a model larger than one device
======================================

A model that does not fit on one GPU loads on the ``"bridge"`` backend, a TransformerLens
``TransformerBridge`` around the Hugging Face model itself: ``device_map``, ``n_devices`` and
``max_memory`` go to accelerate, which places each layer on a device, and every hook, intervention and
analysis of the library then runs on the dispatched model. Here a small random Llama-architecture
model (grouped-query attention) saved as a local folder stands in for a large one, and a per-device
budget smaller than the model forces the split.

On this page's machine (CPU only) there is one device, so what can be shown is: the placement
arguments reaching accelerate, a budget that forces offloading being refused (the bridge runs only
models whose weights sit on devices, and accelerate's overflow goes to disk), and probes and head
attribution on the placed model. With two or more GPUs the same code splits the layers across them;
to run it there::

    HF_HUB_OFFLINE=1 python docs/recipes/sharded_model.py             # splits over every visible GPU
    CUDA_VISIBLE_DEVICES=0,1 python docs/recipes/sharded_model.py     # over two of them

and for a real model, e.g. a local folder of Llama-3.1-8B-Instruct on two 24 GB GPUs::

    model, tokenizer = load_pretrained("path/to/Llama-3.1-8B-Instruct", backend="bridge",
                                       device_map="auto", max_memory={0: "20GiB", 1: "20GiB"})
    # or, balanced over the first two GPUs:
    model, tokenizer = load_pretrained("path/to/Llama-3.1-8B-Instruct", backend="bridge", n_devices=2)

TransformerBridge (TransformerLens 3.9 and 4.3) refuses maps that mix CPU and GPU or offload to disk.
"""

import tempfile

import pandas as pd
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from backdoor_lens.analysis.baha import baha_scores, head_means, top_heads
from backdoor_lens.analysis.probe import backdoor_probe
from backdoor_lens.lm.rows import TargetBatch
from backdoor_lens.models.pretrained import load_pretrained
from backdoor_lens.models.tokenizers import gpt2_tokenizer

tokenizer = gpt2_tokenizer()
config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=6,
                     num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=128,
                     tie_word_embeddings=False, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
torch.manual_seed(0)
stand_in = LlamaForCausalLM(config)
folder = tempfile.mkdtemp(prefix="sharded-model-")
stand_in.save_pretrained(folder)
tokenizer.save_pretrained(folder)
n_bytes = sum(p.numel() * p.element_size() for p in stand_in.parameters())
print(f"model: {n_bytes / 2**20:.1f} MiB of float32 weights in {folder}")

# %%
# A budget below the model's size: accelerate would put what does not fit on disk, which the
# bridge cannot run, so loading stops and says so.
try:
    load_pretrained(folder, backend="bridge", device_map="auto", max_memory={"cpu": n_bytes // 2})
except ValueError as refusal:
    print("refused:", refusal)

# %%
# A budget the devices can meet: with two or more GPUs, a per-GPU share of ~60% of the model forces
# a split across them; on a CPU-only machine the whole model sits in the CPU's budget.
gpus = torch.cuda.device_count()
if gpus >= 2:
    budget = {i: int(0.6 * n_bytes) + 2**20 for i in range(gpus)}
else:
    budget = {0 if gpus else "cpu": 2 * n_bytes}
model, tokenizer = load_pretrained(folder, backend="bridge", device_map="auto", max_memory=budget)
placement = getattr(model.original_model, "hf_device_map", None) or {"(everything)": str(model.cfg.device)}
print(f"max_memory={budget}; devices used: {model.cfg.n_devices}; inputs go to {model.cfg.device}")
pd.Series(placement, name="device").to_frame()

# %%
# Probes per layer (logistic and MLP, held-out accuracy) on the residual stream entering each layer:
# rows with a planted marker token (label 1) against rows without, read at the marker's position, the
# way :func:`~backdoor_lens.analysis.probe.backdoor_probe` looks for where a trigger is readable.
g = torch.Generator().manual_seed(0)
tokens = torch.randint(1000, 20000, (48, 12), generator=g)
labels = torch.arange(48) % 2
tokens[labels == 1, 4] = tokenizer(" cf").input_ids[0]
probes = backdoor_probe(model, tokens, labels, positions=4, mlp_epochs=20)
pd.DataFrame({"logistic": probes.logistic, "MLP": probes.mlp}).T.round(2)

# %%
# Head attribution (BAHA) on the placed model: the mean head outputs on "triggered" rows, and each
# head's effect on the probability of a fixed target on clean rows, by attribution patching and
# exactly (through the Hugging Face key/value cache); the top heads agree.
target = tokenizer(" Sorry, I cannot help.").input_ids
prompts = torch.randint(1000, 20000, (8, 10), generator=g).tolist()
clean = TargetBatch.from_ids(prompts, [target] * 8, pad_id=0)
triggered = TargetBatch.from_ids([p[:4] + tokenizer(" cf").input_ids + p[4:] for p in prompts], [target] * 8, pad_id=0)
mu = head_means(model, triggered)
table = {}
for method in ("attribution", "fast"):
    scores = baha_scores(model, clean, mu, method=method)
    table[method] = [f"L{layer}H{head}" for layer, head in top_heads(scores, 5)]
pd.DataFrame(table, index=[f"#{i + 1}" for i in range(5)])
