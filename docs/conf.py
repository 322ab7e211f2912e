"""Sphinx configuration: executed recipes (sphinx-gallery), the API reference from docstrings
(autosummary), experiment pages with their latest report snapshots (MyST Markdown). Built strictly by
``make docs``: any warning, a failing recipe or a broken cross-reference fails the build."""

from __future__ import annotations

import os
import warnings

# Set before anything imports tqdm, which reads TQDM_DISABLE once: no progress bars in the output.
for name, value in {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                    "MPLBACKEND": "Agg", "TQDM_DISABLE": "1"}.items():
    os.environ.setdefault(name, value)

import torch  # noqa: E402
from sphinx_gallery.sorting import ExplicitOrder  # noqa: E402

# The recipes run in this process. Their models are tiny (and the chat model small): one thread is
# faster than two fighting over 2 cores, as in tests/conftest.py.
torch.set_num_threads(1)
# TransformerLens 3.x deprecates HookedTransformer in favour of 4.x's bridge; the toolkit is pinned to
# 3.x on purpose (DESIGN.md), so the notice is noise in a recipe that builds one directly.
warnings.filterwarnings("ignore", message="HookedTransformer is deprecated", category=DeprecationWarning)

project = "backdoor_lens"
author = "backdoor_lens contributors"
copyright = "backdoor_lens contributors, MIT licence"

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.viewcode",
    "myst_parser",
    "sphinx_gallery.gen_gallery",
]

html_theme = "furo"
html_title = "backdoor_lens"
templates_path = ["_templates"]
exclude_patterns = ["_build", "recipes", "snapshots/*/*.md", "**/sg_execution_times.rst"]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
myst_heading_anchors = 3

autosummary_generate = True
autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "ignore-module-all": True}
autodoc_typehints = "description"
autodoc_typehints_format = "short"

# Every cross-reference must resolve, except to the libraries this one builds on (no intersphinx:
# the build is offline).
nitpicky = True
nitpick_ignore_regex = [
    (r"py:class", r"'.*'"),  # jaxtyping shape strings, e.g. Float[Tensor, 'batch pos']
    (r"py:.*", r"(torch|transformer_lens|transformers|jaxtyping|numpy|np|optuna|datasets|sklearn|matplotlib|peft|pathlib|collections|typing|os|random|argparse)\b.*"),
    (r"py:.*", r"(Float|Int|Bool|Tensor|HookedTransformer|HookPoint|PreTrainedModel|PreTrainedTokenizerBase|Path|Dataset|Pipeline|Figure|Axes|ndarray|Any|Callable|Iterator|Iterable|Sequence|Mapping|Literal|Optional|Union)\b.*"),
    (r"py:class", r"(int|float|str|bool|dict|list|tuple|set|None|bytes|object|type)\b.*"),
    (r"py:class", r"backdoor_lens\.experiments\.common\.stages\.T"),  # a TypeVar
]

# Every recipe in recipes/, in page order: an unlisted one stops the build (sphinx-gallery names it
# a "subsection folder" missing from the order).
RECIPES = [
    "own_sentiment_toy.py",
    "mean_ablation.py",
    "activation_patching.py",
    "pcp_replacement.py",
    "pcp_tuning.py",
    "probe_layers.py",
    "baha_exact_vs_attribution.py",
    "backdoor_vector.py",
    "freeze_modules.py",
    "backdoor_collapse.py",
    "two_defenses.py",
    "lora_checkpoint.py",
    "packaged_chat_model.py",
    "own_chat_model.py",
    "sharded_model.py",
]

sphinx_gallery_conf = {
    "examples_dirs": "recipes",
    "gallery_dirs": "auto_recipes",
    "filename_pattern": r".*\.py$",
    "within_subsection_order": ExplicitOrder(RECIPES),
    "abort_on_example_error": True,
    "run_stale_examples": True,
    "download_all_examples": False,
    "capture_repr": ("_repr_html_", "__repr__"),
    "ignore_repr_types": r"matplotlib|NoneType",
    "show_signature": False,
    "min_reported_time": 0,
    "remove_config_comments": True,
}
