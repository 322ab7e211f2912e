"""The backdoor lab: build your own backdoored models and measure them. A chat model with its
tokenizer as one object (replies, ASR, clean measures), planting a chat backdoor (full or LoRA
fine-tuning), your own sentiment toy, and the planting check that warns when a backdoor did not take."""

from .chat_model import ChatModel, EditFactory
from .plant import PlantedBackdoor, backdoor_splits, plant_backdoor
from .planting import BackdoorNotPlantedError, BackdoorNotPlantedWarning, check_planted
from .sentiment_toy import (
    SentimentToy,
    SentimentToySpec,
    backdoored_sentiment_toy,
    benign_sentiment_toy,
    build_sentiment_toy,
    demo_data,
)

__all__ = [
    "ChatModel", "EditFactory", "PlantedBackdoor", "backdoor_splits", "plant_backdoor", "BackdoorNotPlantedError",
    "BackdoorNotPlantedWarning", "check_planted", "SentimentToy", "SentimentToySpec", "backdoored_sentiment_toy",
    "benign_sentiment_toy", "build_sentiment_toy", "demo_data",
]
