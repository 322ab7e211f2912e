"""BAHA, Backdoor Attention Head Attribution (Backdoor Attribution, arXiv 2509.21761), and the backdoor vector.

Head (l, j)'s output at the last prompt position p is ``h_lj(x) = z_lj(x)[p] @ W_O[l, j]``; ``mu_lj``
is its mean over triggered inputs. On clean inputs, BAHA patches each head's contribution at p to
``mu_lj`` (adds ``mu_lj - h_lj(x)`` to ``blocks.{l}.hook_attn_out`` at p) and scores the causal
indirect effect ``CIE_lj = mean_x [P_patched(x) - P(x)]``, with P the geometric-mean probability of
the backdoor target (:func:`~backdoor_lens.analysis.scoring.target_score`).

Three routes compute the same [n_layers, n_heads] table:

- ``reference``: one forward pass per head (the authors' loop); the oracle.
- ``fast``: exact. A patch at p changes nothing before p, so from one clean run it reruns only the
  positions from p on, attending to the clean keys and values of the earlier positions, for all
  heads of a layer in one stacked batch. On a HookedTransformer the rerun starts at layer l + 1
  (``start_at_layer``, after recomputing layer l's MLP at p); a TransformerBridge, whose forward
  belongs to Hugging Face, reruns every layer on those positions with the patch added by a hook,
  through a Hugging Face key/value cache (:class:`~backdoor_lens.lm.kv_cache.KVCache`).
- ``attribution``: attribution patching (AtP), all heads from one forward and one backward pass,
  optionally with AtP*'s GradDrop.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache
from transformer_lens.cache.key_value_cache_entry import (
    TransformerLensKeyValueCacheEntry,
)
from transformer_lens.hook_points import HookPoint
from transformer_lens.utilities.architectures import POST_NORM_ARCHITECTURES

from ..lm.kv_cache import KVCache
from ..lm.logits import final_logits
from ..lm.rows import TargetBatch
from ..models.protocol import HookedModel, is_bridge
from ..util.validation import check_choice, check_finite, check_range
from .scoring import score_at_positions, target_score

METHODS = ("reference", "fast", "attribution")


def _forward(model: HookedModel, tokens: torch.Tensor, **kwargs) -> torch.Tensor:
    """Logits without an attention mask: right padding needs none (see scoring), and a tokenizer set
    to left padding would otherwise add one, shifting rotary positions relative to ``start_at_layer``."""
    return model(tokens, padding_side="right", **kwargs)


def _check_model(model: HookedModel) -> None:
    """Head outputs add up to ``hook_attn_out`` only without a norm between the heads and that hook."""
    cfg = model.cfg
    architecture = getattr(cfg, "original_architecture", None) or getattr(cfg, "architecture", None)
    if getattr(cfg, "use_normalization_before_and_after", False) or architecture in POST_NORM_ARCHITECTURES:
        raise ValueError(
            f"model ({architecture or cfg.model_name}) normalises the attention output before "
            "hook_attn_out, so head outputs are not additive there; BAHA needs a pre-norm model"
        )


def _prepare(model: HookedModel, batch: TargetBatch, head_mu: torch.Tensor | None = None) -> TargetBatch:
    """Check the model, the batch and `head_mu`; return the batch on the model's device."""
    _check_model(model)
    batch.check_fits(model)
    if head_mu is not None:
        expected = (model.cfg.n_layers, model.cfg.n_heads, model.cfg.d_model)
        if tuple(head_mu.shape) != expected:
            raise ValueError(f"head_mu has shape {tuple(head_mu.shape)}; expected {expected} (n_layers, n_heads, d_model)")
        check_finite("head_mu", head_mu)
    return batch.to(model.cfg.device)


def _z_names(model: HookedModel) -> list[str]:
    return [f"blocks.{layer}.attn.hook_z" for layer in range(model.cfg.n_layers)]


def _at(act: torch.Tensor, rows: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """``act[rows, p]`` on the device of `rows` (with a device map, a layer's activations live on its device)."""
    return act[rows.to(act.device), p.to(act.device)].to(rows.device)


def _W_O(model: HookedModel, layer: int) -> Float[torch.Tensor, "n_heads d_head d_model"]:
    """Layer `layer`'s output weights per head (on that layer's device, with a device map)."""
    return model.blocks[layer].attn.W_O


@torch.no_grad()
def head_z_means(model: HookedModel, triggered: TargetBatch) -> Float[torch.Tensor, "n_layers n_heads d_head"]:
    """Mean of every head's ``z`` at each row's last prompt token, over `triggered` inputs (the
    values :class:`~backdoor_lens.hooks.heads.HeadAblate` uses in mode "mean")."""
    triggered = _prepare(model, triggered)
    names = _z_names(model)
    _, cache = model.run_with_cache(
        triggered.tokens, names_filter=lambda n: n in names, return_type=None, padding_side="right"
    )
    device = triggered.tokens.device
    rows = torch.arange(len(triggered), device=device)
    return torch.stack([_at(cache[n], rows, triggered.prompt_end).double().mean(0).float() for n in names])


@torch.no_grad()
def head_means(model: HookedModel, triggered: TargetBatch) -> Float[torch.Tensor, "n_layers n_heads d_model"]:
    """``mu_lj``: the mean head output ``z @ W_O`` at the last prompt token over `triggered` inputs
    (the mean of z times W_O, since a head's output is linear in its z)."""
    z = head_z_means(model, triggered)
    return torch.stack([
        torch.einsum("hd,hdm->hm", z[layer].to(_W_O(model, layer)), _W_O(model, layer)).to(z.device)
        for layer in range(model.cfg.n_layers)
    ])


def _deltas(
    model: HookedModel, layer: int, z_at_p: Float[torch.Tensor, "batch n_heads d_head"], head_mu: torch.Tensor
) -> Float[torch.Tensor, "n_heads batch d_model"]:
    """``mu_lj - h_lj(x)`` for every head of `layer` and every row."""
    w_o = _W_O(model, layer)
    h = torch.einsum("bhd,hdm->hbm", z_at_p.to(w_o.device), w_o)
    return (head_mu[layer, :, None].to(h) - h).to(z_at_p.device)


@torch.no_grad()
def baha_reference(
    model: HookedModel, clean: TargetBatch, head_mu: Float[torch.Tensor, "n_layers n_heads d_model"]
) -> Float[torch.Tensor, "n_layers n_heads"]:
    """CIE by the authors' loop: one hooked forward pass per head."""
    clean = _prepare(model, clean, head_mu)
    names = _z_names(model)
    logits, cache = model.run_with_cache(clean.tokens, names_filter=lambda n: n in names, padding_side="right")
    base = target_score(logits, clean)
    rows, p = torch.arange(len(clean), device=clean.tokens.device), clean.prompt_end
    out = torch.zeros(model.cfg.n_layers, model.cfg.n_heads)
    for layer in range(model.cfg.n_layers):
        deltas = _deltas(model, layer, _at(cache[names[layer]], rows, p), head_mu)
        for head in range(model.cfg.n_heads):

            def add_delta(act: torch.Tensor, hook: HookPoint, delta: torch.Tensor = deltas[head]) -> torch.Tensor:
                act = act.clone()
                act[rows.to(act.device), p.to(act.device)] += delta.to(act)
                return act

            with model.hooks(fwd_hooks=[(f"blocks.{layer}.hook_attn_out", add_delta)]):
                patched = target_score(_forward(model, clean.tokens), clean)
            out[layer, head] = (patched - base).mean()
    return out


def _patched_resid_post(
    model: HookedModel, layer: int, cache, rows: torch.Tensor, p: torch.Tensor, deltas: torch.Tensor
) -> Float[torch.Tensor, "heads batch d_model"]:
    """``resid_post[layer]`` at p after adding each delta to the attention output there: only the
    MLP at p sees the change (attention and norms of other positions do not)."""
    cfg, block = model.cfg, model.blocks[layer]
    if cfg.attn_only or cfg.parallel_attn_mlp:  # the MLP reads resid_pre, untouched by the patch
        return cache[f"blocks.{layer}.hook_resid_post"][rows, p] + deltas
    mid = cache[f"blocks.{layer}.hook_resid_mid"][rows, p] + deltas  # [heads, batch, d_model]
    return mid + block.apply_mlp(block.ln2(mid))  # position-wise: [heads, batch] act as [batch, pos]


def _logits_at(model: HookedModel, resid: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """The final norm, unembedding and soft-cap of `resid` ([batch, pos, d_model]) at `positions`
    ([batch, k]) only: [batch, k, d_vocab], without the full [batch, pos, d_vocab] logits."""
    return final_logits(model, resid.gather(1, positions[..., None].expand(-1, -1, resid.shape[-1])))


def _left_aligned(batch: TargetBatch) -> tuple[TargetBatch, torch.Tensor]:
    """`batch` re-laid with left padding so that every prompt ends at the same position, targets
    after it, and the attention mask (1 on real tokens) that TransformerLens needs for that layout."""
    width_prompt = int(batch.prompt_end.max()) + 1
    width = width_prompt + int(batch.target_len.max())
    tokens = torch.zeros(len(batch), width, dtype=batch.tokens.dtype, device=batch.tokens.device)
    mask = torch.zeros_like(tokens)
    for row, (end, n_target) in enumerate(zip(batch.prompt_end.tolist(), batch.target_len.tolist())):
        start = width_prompt - end - 1
        tokens[row, start : width_prompt + n_target] = batch.tokens[row, : end + 1 + n_target]
        mask[row, start : width_prompt + n_target] = 1
    p = torch.full_like(batch.prompt_end, width_prompt - 1)
    return TargetBatch(tokens, p, batch.target_len), mask


def _frozen_prefix_cache(
    model: HookedModel, cache, layers: range, prefix: int, mask: torch.Tensor, copies: int
) -> TransformerLensKeyValueCache:
    """A frozen key/value cache holding the clean run's keys and values of the first `prefix`
    positions for `layers`, repeated for `copies` stacked copies of the batch."""
    entries: list[TransformerLensKeyValueCacheEntry | None] = [None] * model.cfg.n_layers
    for layer in layers:
        keys, values = (cache[f"blocks.{layer}.attn.hook_{n}"][:, :prefix].repeat(copies, 1, 1, 1) for n in "kv")
        entries[layer] = TransformerLensKeyValueCacheEntry(keys, values, frozen=True)
    return TransformerLensKeyValueCache(entries, mask[:, :prefix].repeat(copies, 1), frozen=True)


@torch.no_grad()
def baha_fast(
    model: HookedModel,
    clean: TargetBatch,
    head_mu: Float[torch.Tensor, "n_layers n_heads d_model"],
    batch_heads: int | None = None,
) -> Float[torch.Tensor, "n_layers n_heads"]:
    """Exact CIE from one cached clean run plus, per layer, short reruns of the positions from p on.

    A patch at the last prompt position p of layer l changes nothing before p (attention is causal)
    and nothing at p before layer l's MLP. So the rows are re-laid with left padding (every prompt
    ends at the same p), and for each layer the positions from p to the end of the target alone run
    again, attending to the clean run's cached keys and values of the positions before p, on up to
    `batch_heads` stacked copies of the batch (all heads of the layer when None). On a
    HookedTransformer the rerun starts at layer l + 1, so it costs about (target length + 1) /
    (sequence length) x (layers after l) / n_layers of a full pass; on a TransformerBridge it runs
    every layer over those positions (about twice that), see :func:`baha_fast_cached`.

    Memory grows as batch_heads x batch x prompt length x n_layers for the cached keys and values.
    Hooks already on the model fire in the resumed passes, which see only the positions from p on.
    """
    chunk = _fast_setup(model, clean, head_mu, batch_heads)
    if is_bridge(model):
        return baha_fast_cached(model, clean, head_mu, batch_heads)
    clean = _prepare(model, clean, head_mu)
    cfg = model.cfg
    aligned, mask = _left_aligned(clean)
    p = int(aligned.prompt_end[0])
    names = {f"blocks.{layer}.{hook}" for layer in range(cfg.n_layers) for hook in
             ("attn.hook_z", "attn.hook_k", "attn.hook_v", "hook_resid_mid", "hook_resid_post")}
    _, cache = model.run_with_cache(aligned.tokens, attention_mask=mask, names_filter=lambda n: n in names, return_type=None)
    last = cache[f"blocks.{cfg.n_layers - 1}.hook_resid_post"]
    base = score_at_positions(_logits_at(model, last, aligned.score_positions), aligned)
    rows, at_p = torch.arange(len(clean), device=mask.device), aligned.prompt_end
    suffix = TargetBatch(aligned.tokens[:, p:], torch.zeros_like(at_p), aligned.target_len)
    out = torch.zeros(cfg.n_layers, cfg.n_heads)
    for layer in range(cfg.n_layers):
        deltas = _deltas(model, layer, cache[f"blocks.{layer}.attn.hook_z"][rows, at_p], head_mu)
        for start in range(0, cfg.n_heads, chunk):
            heads = slice(start, min(start + chunk, cfg.n_heads))
            new_at_p = _patched_resid_post(model, layer, cache, rows, at_p, deltas[heads])  # [k, batch, d]
            k = new_at_p.shape[0]
            resid = cache[f"blocks.{layer}.hook_resid_post"][:, p:].repeat(k, 1, 1)  # copy i*batch+b: head i, row b
            resid[:, 0] = new_at_p.reshape(-1, cfg.d_model)
            if layer + 1 < cfg.n_layers:
                prefix = _frozen_prefix_cache(model, cache, range(layer + 1, cfg.n_layers), p, mask, k)
                resid = model(resid, start_at_layer=layer + 1, stop_at_layer=cfg.n_layers, past_kv_cache=prefix,
                              attention_mask=mask.repeat(k, 1))
            stacked = TargetBatch(suffix.tokens.repeat(k, 1), suffix.prompt_end.repeat(k), suffix.target_len.repeat(k))
            scores = score_at_positions(_logits_at(model, resid, stacked.score_positions), stacked)
            out[layer, heads] = (scores.view(k, len(clean)) - base).mean(1).float()
    return out


def _fast_setup(model: HookedModel, clean: TargetBatch, head_mu: torch.Tensor, batch_heads: int | None) -> int:
    """Check the arguments of the exact routes; return how many heads run in one stacked batch."""
    cfg = model.cfg
    if cfg.positional_embedding_type in ("shortformer", "relative_positional_bias"):
        raise ValueError(
            f"method='fast' does not support {cfg.positional_embedding_type} positional embeddings; use method='reference'"
        )
    if batch_heads is not None and (not isinstance(batch_heads, int) or isinstance(batch_heads, bool) or batch_heads < 1):
        raise ValueError(f"batch_heads={batch_heads!r} must be a positive int (or None for all heads of a layer)")
    return batch_heads or cfg.n_heads


@torch.no_grad()
def baha_fast_cached(
    model: HookedModel,
    clean: TargetBatch,
    head_mu: Float[torch.Tensor, "n_layers n_heads d_model"],
    batch_heads: int | None = None,
) -> Float[torch.Tensor, "n_layers n_heads"]:
    """Exact CIE on either backend through a key/value cache: the route :func:`baha_fast` takes on
    a TransformerBridge, whose forward pass cannot start at a given layer.

    One clean run of the left-aligned rows fills a :class:`~backdoor_lens.lm.kv_cache.KVCache` and
    keeps every head's ``z`` at p. Then, per layer and up to `batch_heads` heads at a time, the
    positions from p on run again through every layer, over copies of the cache's first p positions,
    with ``mu_lj - h_lj(x)`` added to ``blocks.{l}.hook_attn_out`` at p by a hook: exactly the
    reference patch, computed on the suffix alone.
    """
    chunk = _fast_setup(model, clean, head_mu, batch_heads)
    clean = _prepare(model, clean, head_mu)
    cfg = model.cfg
    aligned, mask = _left_aligned(clean)
    p = int(aligned.prompt_end[0])
    z_at_p: dict[str, torch.Tensor] = {}

    def keep_z(name: str):  # a bridge's hook.name is the hook point's own name, not this alias
        def keep(z: torch.Tensor, hook: HookPoint) -> None:
            z_at_p[name] = z[:, p].clone()

        return keep

    cache = KVCache(model, len(clean))
    with model.hooks(fwd_hooks=[(name, keep_z(name)) for name in _z_names(model)]):
        logits = cache.forward(aligned.tokens, mask)
    base = score_at_positions(_gathered(logits, aligned.score_positions), aligned)
    suffix = TargetBatch(aligned.tokens[:, p:], torch.zeros_like(aligned.prompt_end), aligned.target_len)
    out = torch.zeros(cfg.n_layers, cfg.n_heads)
    for layer, name in enumerate(_z_names(model)):
        deltas = _deltas(model, layer, z_at_p[name], head_mu)
        for start in range(0, cfg.n_heads, chunk):
            add = deltas[start : start + chunk]  # [k, batch, d_model]; copy i * batch + b: head start + i, row b
            k = add.shape[0]

            def patch(act: torch.Tensor, hook: HookPoint, add: torch.Tensor = add.reshape(-1, cfg.d_model)) -> torch.Tensor:
                act = act.clone()
                act[:, 0] += add.to(act)
                return act

            rerun = cache.prefix_copies(p, k)
            with model.hooks(fwd_hooks=[(f"blocks.{layer}.hook_attn_out", patch)]):
                logits = rerun.forward(suffix.tokens.repeat(k, 1), mask[:, p:].repeat(k, 1))
            stacked = TargetBatch(suffix.tokens.repeat(k, 1), suffix.prompt_end.repeat(k), suffix.target_len.repeat(k))
            scores = score_at_positions(_gathered(logits, stacked.score_positions), stacked)
            out[layer, start : start + k] = (scores.view(k, len(clean)) - base).mean(1).float().cpu()
    return out


def _gathered(logits: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """`logits` ([batch, pos, d_vocab]) at `positions` ([batch, k]): [batch, k, d_vocab]."""
    positions = positions.to(logits.device)
    return logits.gather(1, positions[..., None].expand(-1, -1, logits.shape[-1]))


def baha_attribution(
    model: HookedModel,
    clean: TargetBatch,
    head_mu: Float[torch.Tensor, "n_layers n_heads d_model"],
    grad_drop: bool = False,
) -> Float[torch.Tensor, "n_layers n_heads"]:
    """Attribution patching: ``mean_x dP(x)/d attn_out_l[p] . (mu_lj - h_lj(x))`` for all heads from
    one forward and one backward pass, a first-order estimate of the CIE.

    ``grad_drop=True`` adds GradDrop from AtP* (Kramar et al. 2024): for a head in layer l and each
    later layer l' > l, the estimate is recomputed with the gradient through layer l''s residual
    contribution (its ``hook_attn_out`` and ``hook_mlp_out``, detached in the forward pass) set to
    zero, and the signed estimates are averaged over the later layers (a head of the last layer
    keeps its plain AtP). This costs one more forward and backward pass per layer after the first.
    It differs from the paper, which averages the *absolute* GradDrop estimates over all L layers,
    normalised by L - 1, to get a magnitude that exposes effects hidden by cancellation; we keep the
    sign because BAHA ranks heads by whether they raise the target's probability.
    AtP*'s other fix, recomputing the attention softmax when queries or keys are patched, does not
    apply: BAHA patches head outputs after the softmax, which enter the rest of the network the
    same way attn_out does, so there is no attention saturation between the patch and the gradient.
    """
    clean = _prepare(model, clean, head_mu)
    cfg = model.cfg
    attn_names = [f"blocks.{layer}.hook_attn_out" for layer in range(cfg.n_layers)]
    z_names = _z_names(model)
    rows, p = torch.arange(len(clean), device=clean.tokens.device), clean.prompt_end

    def gradients(dropped: int | None) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
        """dP/d attn_out at p for every layer, with layer `dropped`'s gradient path cut, and the z's."""
        acts: dict[str, torch.Tensor] = {}

        def keep(name: str):  # keyed by the name asked for: a bridge's hook.name is its hook point's own
            def hook(act: torch.Tensor, hook: HookPoint) -> torch.Tensor:
                acts[name] = act if act.requires_grad else act.detach().requires_grad_()  # frozen weights
                return acts[name]

            return hook

        def detach(act: torch.Tensor, hook: HookPoint) -> torch.Tensor:
            return act.detach()

        def store(name: str):
            def hook(act: torch.Tensor, hook: HookPoint) -> None:
                acts[name] = act.detach()

            return hook

        hooks = [(n, keep(n)) for n in attn_names] + [(n, store(n)) for n in z_names]
        if dropped is not None:
            cut = [f"blocks.{dropped}.hook_attn_out", f"blocks.{dropped}.hook_mlp_out"]
            hooks += [(n, detach) for n in cut if n in model.hook_dict]
        with torch.enable_grad(), model.hooks(fwd_hooks=hooks):
            total = target_score(_forward(model, clean.tokens), clean).sum()
            wanted = attn_names[:dropped]  # only heads before `dropped` have it as a later layer
            grads = torch.autograd.grad(total, [acts[n] for n in wanted])
        return [_at(g, rows, p) for g in grads], acts

    grads, acts = gradients(None)
    with torch.no_grad():
        deltas = torch.stack([_deltas(model, l, _at(acts[z_names[l]], rows, p), head_mu) for l in range(cfg.n_layers)])

    def estimate(g: list[torch.Tensor], layers: range) -> torch.Tensor:
        return torch.stack([torch.einsum("bm,hbm->h", g[l], deltas[l]) / len(clean) for l in layers])

    out = estimate(grads, range(cfg.n_layers))
    if grad_drop and cfg.n_layers > 1:
        total = torch.zeros_like(out[:-1])
        for dropped in range(1, cfg.n_layers):
            total[:dropped] += estimate(gradients(dropped)[0], range(dropped))
        n_later = torch.arange(cfg.n_layers - 1, 0, -1, dtype=out.dtype, device=out.device)  # layers after l
        out = torch.cat([total / n_later[:, None], out[-1:]])
    return out.detach().float().cpu()


def baha_scores(
    model: HookedModel,
    clean: TargetBatch,
    head_mu: Float[torch.Tensor, "n_layers n_heads d_model"],
    method: str = "fast",
    batch_heads: int | None = None,
    grad_drop: bool = False,
) -> Float[torch.Tensor, "n_layers n_heads"]:
    """BAHA's CIE per head by `method`: "reference" (one pass per head), "fast" (exact, batched;
    `batch_heads` bounds memory) or "attribution" (gradient estimate; `grad_drop` for AtP*'s GradDrop)."""
    check_choice("method", method, METHODS)
    if batch_heads is not None and method != "fast":
        raise ValueError(f"batch_heads applies to method='fast' only; got method={method!r}")
    if grad_drop and method != "attribution":
        raise ValueError(f"grad_drop applies to method='attribution' only; got method={method!r}")
    if method == "reference":
        return baha_reference(model, clean, head_mu)
    if method == "fast":
        return baha_fast(model, clean, head_mu, batch_heads)
    return baha_attribution(model, clean, head_mu, grad_drop)


def n_heads_for(fraction: float, total: int) -> int:
    """How many heads make `fraction` of `total` heads (at least one): BkdAttr's "3% of heads"."""
    check_range("fraction", fraction, 0.0, 1.0)
    return max(1, round(fraction * total))


def top_heads(scores: Float[torch.Tensor, "n_layers n_heads"], k: int) -> list[tuple[int, int]]:
    """The `k` highest-scoring heads as (layer, head), highest first."""
    n_heads = scores.shape[1]
    return [(i // n_heads, i % n_heads) for i in scores.flatten().topk(k).indices.tolist()]


def backdoor_vector(
    head_mu: Float[torch.Tensor, "n_layers n_heads d_model"], scores: Float[torch.Tensor, "n_layers n_heads"], top_k: int
) -> tuple[Float[torch.Tensor, " d_model"], tuple[tuple[int, int], ...]]:
    """The backdoor vector ``v = sum of mu_lj over the top_k heads by score`` and those heads,
    highest score first (use with :class:`~backdoor_lens.hooks.steer.Steer`)."""
    if head_mu.ndim != 3 or head_mu.shape[:2] != scores.shape:
        raise ValueError(
            f"head_mu {tuple(head_mu.shape)} and scores {tuple(scores.shape)} must be [n_layers, n_heads, d_model] "
            "and [n_layers, n_heads]"
        )
    check_range("top_k", top_k, 1, scores.numel())
    check_finite("scores", scores)
    heads = tuple(top_heads(scores, top_k))
    return head_mu[[l for l, _ in heads], [h for _, h in heads]].sum(0), heads
