"""Removing a backdoor without its trigger. Every defense has one shape (:class:`~backdoor_lens.defense.base.Defense`: the
suspect model, its tokenizer, the defender's clean prompts and the model's own answers, and a shared
training :class:`~backdoor_lens.defense.base.Budget`, in; a :class:`~backdoor_lens.defense.base.DefendedModel` with the model to measure and the
:class:`~backdoor_lens.lm.decoding.Decoder` to generate with, out), so a grid runs them side by side:

- training: :class:`~backdoor_lens.defense.fine_tuning.CleanFineTuning`, :class:`~backdoor_lens.defense.fine_pruning.FinePruning` (arXiv 1805.12185), :class:`~backdoor_lens.defense.crow.Crow`
  (arXiv 2411.12768), :class:`~backdoor_lens.defense.beear.Beear` (arXiv 2406.17092), :class:`~backdoor_lens.defense.collapse_defense.BackdoorCollapse`;
- weights only: :class:`~backdoor_lens.defense.quantization.Quantization` (INT8 / INT4, simulated);
- decoding: :class:`~backdoor_lens.defense.temperature.DecodingTemperature`, :class:`~backdoor_lens.defense.cleangen.CleanGen` (arXiv 2406.12257).

Backdoor Collapse itself (known-trigger injection, then recovery) and the evidence that an unknown
trigger aggregates with the known ones live in :mod:`~backdoor_lens.defense.backdoor_collapse` and :mod:`~backdoor_lens.defense.aggregation`.
"""

from .aggregation import aggregation_evidence, shared_projection
from .backdoor_collapse import CollapseConfig, collapse, inject_known, recover
from .base import Budget, DefendedModel, Defense
from .beear import Beear
from .cleangen import CleanGen, CleanGenDecoder, cleangen_generate
from .collapse_defense import BackdoorCollapse
from .crow import Crow, consistency_loss
from .fine_pruning import FinePruning, least_active, neuron_means, prune_neurons
from .fine_tuning import CleanFineTuning
from .quantization import Quantization, fake_quantize, quantize_model
from .temperature import DecodingTemperature

__all__ = [
    "aggregation_evidence", "shared_projection", "CollapseConfig", "collapse", "inject_known", "recover",
    "Budget", "DefendedModel", "Defense",
    "CleanFineTuning", "FinePruning", "Crow", "Beear", "BackdoorCollapse", "Quantization", "DecodingTemperature",
    "CleanGen", "CleanGenDecoder", "cleangen_generate", "consistency_loss", "least_active", "neuron_means",
    "prune_neurons", "fake_quantize", "quantize_model",
]
