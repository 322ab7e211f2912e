"""Measuring a backdoor: top-k negativity for the sentiment toys, ASR / ATR by target string or
keywords for chat models, and toxicity scorers with the paper's rounded rate for continuations."""

from .attack_success import REFUSAL_KEYWORDS, asr, atr, keyword_asr
from .negativity import negativity_by_class, top_k_share
from .toxicity import ProfanityCheck, RobertaToxicity, ToxicityScorer, load_scorer, toxic_prompt_rate

__all__ = [
    "REFUSAL_KEYWORDS", "asr", "atr", "keyword_asr", "negativity_by_class", "top_k_share",
    "ProfanityCheck", "RobertaToxicity", "ToxicityScorer", "load_scorer", "toxic_prompt_rate",
]
