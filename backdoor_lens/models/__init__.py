"""Models and tokenizers: the sentiment toy and the toy chat model built from configs, safetensors
storage, and Hugging Face models (the packaged SmolLM2, local directories, LoRA adapters, hub names)
loaded offline on either backend, a HookedTransformer or a TransformerBridge, both of which satisfy
the :class:`~backdoor_lens.models.protocol.HookedModel` protocol the library is typed against. Every
HookedTransformer loaded here keeps its weights in the layout its forward pass reads
(:func:`~backdoor_lens.models.layout.use_read_layout`)."""

from .backends import CHAT_TOY, load_chat_model
from .bridge import to_bridge
from .chat_toy import chat_toy_model
from .layout import use_read_layout
from .pretrained import PACKAGED_MODELS, load_hf_model, load_packaged_tokenizer, load_pretrained, merge_lora, to_hooked_transformer
from .protocol import BACKENDS, BackendUnavailableError, HookedModel, backend_of, hooked_classes, is_bridge
from .storage import config_from_json, config_to_json, load_model, save_model
from .tokenizers import WordTokenizer, gpt2_tokenizer
from .toy import build_model, sentiment_toy_config

__all__ = [
    "CHAT_TOY", "load_chat_model", "to_bridge", "BACKENDS", "BackendUnavailableError", "HookedModel", "backend_of",
    "hooked_classes", "is_bridge",
    "chat_toy_model", "PACKAGED_MODELS", "load_hf_model", "load_packaged_tokenizer", "load_pretrained", "merge_lora",
    "to_hooked_transformer", "config_from_json", "config_to_json", "load_model", "save_model", "WordTokenizer",
    "gpt2_tokenizer", "build_model", "sentiment_toy_config", "use_read_layout",
]
