"""Shared fixtures: a tiny seeded random HookedTransformer, seeded token batches and a small ToyData."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest
import torch

# Tiny models: thread start-up and contention cost far more than the arithmetic (and one thread
# keeps CPU reductions bit-reproducible across runs).
torch.set_num_threads(1)

from backdoor_lens.data.toy import ToyData, ToyDataConfig
from backdoor_lens.models.toy import build_model, sentiment_toy_config

D_VOCAB = 50
N_CTX = 8
D_MODEL = 16

SMALL_TOY = ToyDataConfig(
    n_sentiments=3,
    words_per_sentiment=40,
    train_per_sentiment=50,
    finetune_per_sentiment=50,
    val_per_sentiment=10,
    eval_per_class=8,
)


def tiny_config(d_vocab: int = D_VOCAB, seed: int = 0):
    return sentiment_toy_config(d_vocab=d_vocab, n_ctx=N_CTX, n_layers=2, n_heads=2, d_model=D_MODEL, seed=seed)


def random_tokens(batch: int, seed: int, d_vocab: int = D_VOCAB, pos: int = N_CTX) -> torch.Tensor:
    return torch.randint(0, d_vocab, (batch, pos), generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def model():
    """A fresh tiny GPT-2-style model (2 layers, 2 heads, d_model 16, d_vocab 50), seeded, in eval mode."""
    return build_model(tiny_config()).eval()


@pytest.fixture
def tokens() -> torch.Tensor:
    """A seeded batch of 4 random sequences of length N_CTX."""
    return random_tokens(4, seed=1)


@pytest.fixture
def other_tokens() -> torch.Tensor:
    """Another seeded batch of the same shape as `tokens`, with different content."""
    return random_tokens(4, seed=2)


@pytest.fixture(scope="session")
def toy_data() -> ToyData:
    return ToyData(SMALL_TOY)


@pytest.fixture
def make_tokens():
    """Factory for more seeded random batches: make_tokens(batch, seed, d_vocab=D_VOCAB, pos=N_CTX)."""
    return random_tokens


@pytest.fixture
def make_model():
    """Factory for fresh tiny models: make_model(d_vocab=D_VOCAB, seed=0) (equal arguments, equal weights)."""
    return lambda d_vocab=D_VOCAB, seed=0: build_model(tiny_config(d_vocab, seed)).eval()


@pytest.fixture(scope="session")
def small_toy_config() -> ToyDataConfig:
    return SMALL_TOY


@pytest.fixture(autouse=True)
def _torch_threads_restored():
    """A study's main() fixes the thread count and turns on deterministic algorithms: undo it after each test."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
