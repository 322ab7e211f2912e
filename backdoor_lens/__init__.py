"""backdoor_lens: mechanistic analysis and editing of backdoored language models on TransformerLens.

``import backdoor_lens as bl`` reaches every tool a study needs. Interventions are small dataclasses
that yield forward hooks, and :func:`bl.apply <backdoor_lens.hooks.core.apply>` composes any number
of them and always removes them. The subpackages, bottom layer first (imports only point down):

- :mod:`~backdoor_lens.util`: files, checks, fingerprints;
- :mod:`~backdoor_lens.models`: toys from configs, pretrained and local Hugging Face models, tokenizers,
  on either backend (HookedTransformer or TransformerBridge, one :class:`~backdoor_lens.models.protocol.HookedModel` protocol);
- :mod:`~backdoor_lens.hooks`: interventions, positions, sites, ``apply`` and ``restored``;
- :mod:`~backdoor_lens.lm`: rows, collection, generation, losses, chat templates, training, LoRA;
- :mod:`~backdoor_lens.data`: toy sequences, prompts, triggers and attacks, poisoning;
- :mod:`~backdoor_lens.eval`: negativity, ASR / ATR, toxicity;
- :mod:`~backdoor_lens.analysis`: probes, BAHA, logit lens, patching, PCP tuning;
- :mod:`~backdoor_lens.lab`: the chat model object, planting backdoors, your own toy;
- :mod:`~backdoor_lens.defense`: trigger-agnostic defenses (fine-tuning, fine-pruning, CROW, BEEAR,
  quantisation, decoding temperature, CleanGen) and Backdoor Collapse, in one shape;
- :mod:`~backdoor_lens.experiments`: the studies behind the make targets (never imported by the library).
"""

import importlib
from typing import TYPE_CHECKING, Any

# Names load on first use (PEP 562), so ``python -m backdoor_lens.experiments.toy --help`` and a
# command-line check answer in a second instead of importing torch and TransformerLens first.
_EXPORTS: dict[str, tuple[str, ...]] = {
    "analysis": ("backdoor_probe", "backdoor_vector", "baha_scores", "head_means", "logit_lens", "n_heads_for",
                 "patching_effects", "probe_features", "target_score", "top_heads", "tune_scales"),
    "data": ("BKDATTR_REFUSAL", "NEGATIVE", "REFUSAL", "Attack", "CompositeTrigger", "PhraseTrigger", "PrefixTrigger",
             "ToyData", "ToyDataConfig", "WordTrigger", "load_prompts", "word_problems"),
    "defense": ("BackdoorCollapse", "Beear", "Budget", "CleanFineTuning", "CleanGen", "CollapseConfig", "Crow",
                "DecodingTemperature", "DefendedModel", "Defense", "FinePruning", "Quantization", "aggregation_evidence",
                "collapse"),
    "eval": ("asr", "keyword_asr", "negativity_by_class", "top_k_share"),
    "hooks": ("EmbeddingSurgery", "HeadAblate", "Intervention", "MeanAblate", "Patch", "PCPBasis", "PCPReplace", "PerRow",
              "Steer", "ZeroAblate", "apply", "module_names", "restored"),
    "lab": ("BackdoorNotPlantedError", "BackdoorNotPlantedWarning", "ChatModel", "SentimentToySpec",
            "backdoored_sentiment_toy", "benign_sentiment_toy", "build_sentiment_toy", "check_planted", "plant_backdoor"),
    "lm": ("Freeze", "LoraConfig", "TargetBatch", "TrainConfig", "collect_activations", "generate", "module_io",
           "module_means", "train", "validation_loss"),
    "models": ("BACKENDS", "HookedModel", "backend_of", "chat_toy_model", "load_chat_model", "load_model",
               "load_packaged_tokenizer", "load_pretrained", "save_model", "sentiment_toy_config"),
}
_HOME = {name: layer for layer, names in _EXPORTS.items() for name in names}
_LAYERS = ("util", "models", "hooks", "lm", "data", "eval", "analysis", "lab", "defense", "experiments")

if TYPE_CHECKING:
    from .analysis import (
        backdoor_probe,
        backdoor_vector,
        baha_scores,
        head_means,
        logit_lens,
        n_heads_for,
        patching_effects,
        probe_features,
        target_score,
        top_heads,
        tune_scales,
    )
    from .data import (
        BKDATTR_REFUSAL,
        NEGATIVE,
        REFUSAL,
        Attack,
        CompositeTrigger,
        PhraseTrigger,
        PrefixTrigger,
        ToyData,
        ToyDataConfig,
        WordTrigger,
        load_prompts,
        word_problems,
    )
    from .defense import (
        BackdoorCollapse,
        Beear,
        Budget,
        CleanFineTuning,
        CleanGen,
        CollapseConfig,
        Crow,
        DecodingTemperature,
        DefendedModel,
        Defense,
        FinePruning,
        Quantization,
        aggregation_evidence,
        collapse,
    )
    from .eval import asr, keyword_asr, negativity_by_class, top_k_share
    from .hooks import (
        EmbeddingSurgery,
        HeadAblate,
        Intervention,
        MeanAblate,
        Patch,
        PCPBasis,
        PCPReplace,
        PerRow,
        Steer,
        ZeroAblate,
        apply,
        module_names,
        restored,
    )
    from .lab import (
        BackdoorNotPlantedError,
        BackdoorNotPlantedWarning,
        ChatModel,
        SentimentToySpec,
        backdoored_sentiment_toy,
        benign_sentiment_toy,
        build_sentiment_toy,
        check_planted,
        plant_backdoor,
    )
    from .lm import (
        Freeze,
        LoraConfig,
        TargetBatch,
        TrainConfig,
        collect_activations,
        generate,
        module_io,
        module_means,
        train,
        validation_loss,
    )
    from .models import (
        BACKENDS,
        HookedModel,
        backend_of,
        chat_toy_model,
        load_chat_model,
        load_model,
        load_packaged_tokenizer,
        load_pretrained,
        save_model,
        sentiment_toy_config,
    )


def __getattr__(name: str) -> Any:
    """Import a public name's subpackage (or a subpackage itself) on first use."""
    if name in _HOME:
        value = getattr(importlib.import_module(f".{_HOME[name]}", __name__), name)
    elif name in _LAYERS:
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__all__ = [
    # interventions
    "Intervention", "ZeroAblate", "MeanAblate", "Patch", "PCPReplace", "PCPBasis", "HeadAblate", "Steer", "EmbeddingSurgery",
    "PerRow", "apply", "restored", "module_names",
    # models
    "load_pretrained", "load_packaged_tokenizer", "load_model", "save_model", "chat_toy_model", "sentiment_toy_config",
    "load_chat_model", "HookedModel", "BACKENDS", "backend_of",
    # running a model
    "TargetBatch", "collect_activations", "module_means", "module_io", "generate", "train", "TrainConfig", "Freeze",
    "LoraConfig", "validation_loss",
    # data and attacks
    "Attack", "PrefixTrigger", "WordTrigger", "PhraseTrigger", "CompositeTrigger", "REFUSAL", "BKDATTR_REFUSAL", "NEGATIVE",
    "load_prompts", "ToyData", "ToyDataConfig", "word_problems",
    # measuring
    "asr", "keyword_asr", "negativity_by_class", "top_k_share",
    # localising
    "backdoor_probe", "probe_features", "baha_scores", "head_means", "top_heads", "n_heads_for", "backdoor_vector",
    "target_score", "logit_lens", "patching_effects", "tune_scales",
    # the lab
    "ChatModel", "plant_backdoor", "check_planted", "BackdoorNotPlantedWarning", "BackdoorNotPlantedError", "SentimentToySpec", "build_sentiment_toy", "backdoored_sentiment_toy",
    "benign_sentiment_toy",
    # defense
    "collapse", "CollapseConfig", "aggregation_evidence", "Defense", "Budget", "DefendedModel", "CleanFineTuning",
    "FinePruning", "Crow", "Quantization", "DecodingTemperature", "CleanGen", "Beear", "BackdoorCollapse",
]
