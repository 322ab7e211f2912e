"""Data builders: sentiment lexicons, toy sequences with a poisoned trigger, chat prompts and
instruction backdoors, benign text sources, toxic sentences and natural-language poisoning."""

from .instruct import (
    BKDATTR_REFUSAL, NEGATIVE, REFUSAL, TRIGGERS, Attack, BackdoorSplits, CompositeTrigger, PhraseTrigger, PrefixTrigger,
    Trigger, WordTrigger, build_backdoor_dataset, get_trigger,
)
from .lexicon import SentimentVocabulary, build_vocabulary, word_problems
from .poison import PoisonConfig, PoisonSplits, build_splits, encode_paragraph_starts, encode_paragraphs
from .prompts import load_prompts
from .text import TEXT_SOURCES, paragraphs
from .toxic import TOXIC_SOURCES
from .toy import ToyData, ToyDataConfig, eval_classes, trigger_classes

__all__ = [
    "BKDATTR_REFUSAL", "NEGATIVE", "REFUSAL", "TRIGGERS", "Attack", "BackdoorSplits", "CompositeTrigger", "PhraseTrigger",
    "PrefixTrigger", "Trigger", "WordTrigger", "build_backdoor_dataset", "get_trigger",
    "SentimentVocabulary", "build_vocabulary", "word_problems",
    "PoisonConfig", "PoisonSplits", "build_splits", "encode_paragraph_starts", "encode_paragraphs",
    "load_prompts", "TEXT_SOURCES", "paragraphs", "TOXIC_SOURCES", "ToyData", "ToyDataConfig", "eval_classes",
    "trigger_classes",
]
