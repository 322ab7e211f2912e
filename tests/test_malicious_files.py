"""Files from strangers: every loader refuses pickles (under any name), index redirects, remote-code
fields, absurd sizes, truncated files and symlinks out of the folder, before anything runs or is
allocated. Each payload would create a marker file if it ever ran (the first tests show they are
live); each test asserts the marker never appears and that the error names the file and the rule."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import struct
import sys
from pathlib import Path

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from backdoor_lens.experiments.common.stages import Stages
from backdoor_lens.models.pretrained import load_pretrained
from backdoor_lens.models.storage import load_model, save_model
from backdoor_lens.models.tokenizers import gpt2_tokenizer
from backdoor_lens.models.toy import build_model, sentiment_toy_config
from backdoor_lens.util.io import RefusedFileError, load_artifact, load_tensors, save_artifact


class Payload:
    """Unpickling this writes `marker`: what a malicious pickle does instead of returning weights."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "payload ran"))


@pytest.fixture
def marker(tmp_path) -> Path:
    """The file a payload would create; asserted absent after every test."""
    path = tmp_path / "PAYLOAD_RAN"
    yield path
    assert not path.exists(), "a payload ran"


def write_pickle(path: Path, marker: Path, torch_format: bool = True) -> Path:
    """A pickle at `path` whose loading runs the payload (torch.save's zip format, or a raw pickle)."""
    if torch_format:
        torch.save({"weight": Payload(marker)}, path)
    else:
        path.write_bytes(pickle.dumps(Payload(marker)))
    return path


def code_module(folder: Path, name: str, marker: Path) -> Path:
    """A Python module whose import writes `marker` (what remote code would run)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.py").write_text(f"from pathlib import Path\nPath({str(marker)!r}).write_text('code ran')\n")
    return folder


def test_payloads_are_live(tmp_path):
    """Controls: the pickle and the module do create the marker when loaded the unsafe way."""
    live = tmp_path / "live"
    torch.load(write_pickle(tmp_path / "p.bin", live), weights_only=False)
    assert live.exists()
    live.unlink()
    sys.path.insert(0, str(code_module(tmp_path / "mod", "evil_module_probe", live)))
    try:
        __import__("evil_module_probe")
    finally:
        sys.path.pop(0)
    assert live.exists()


def refused(call, *needles: str) -> str:
    """Run `call`, expect a refusal (ValueError or FileNotFoundError), and check the message holds every needle."""
    with pytest.raises((ValueError, FileNotFoundError)) as err:
        call()
    message = str(err.value)
    for needle in needles:
        assert needle in message, f"{needle!r} not in: {message}"
    print(f"\nREFUSED: {message}")
    return message


# ---- load_model (HookedTransformer folders) ------------------------------------------------------
@pytest.fixture
def saved_model(tmp_path) -> Path:
    model = build_model(sentiment_toy_config(d_vocab=20, n_ctx=8, n_layers=2, n_heads=2, d_model=8))
    save_model(model, tmp_path / "model")
    return tmp_path / "model"


def edit_config(folder: Path, **changes) -> None:
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config | changes))


def test_clean_saved_model_loads(saved_model):
    model, _ = load_model(saved_model)
    assert model.cfg.n_layers == 2 and model.cfg.tokenizer_name is None


@pytest.mark.parametrize("changes, needle", [
    ({"tokenizer_name": "MODULE_DIR", "trust_remote_code": True}, "field tokenizer_name="),
    ({"trust_remote_code": True}, "field trust_remote_code=True is not allowed"),
    ({"tokenizer_name": "gpt2"}, "field tokenizer_name='gpt2' is not allowed"),
    ({"auto_map": {"AutoTokenizer": "evil.Tokenizer"}}, "field 'auto_map' is not a HookedTransformerConfig field"),
    ({"from_checkpoint": True, "checkpoint_index": 3}, "is not allowed"),
    ({"load_in_4bit": True}, "field load_in_4bit=True is not allowed"),
    ({"dtype": "load"}, "field dtype='load' is not valid"),
], ids=["tokenizer-module", "trust-remote-code", "tokenizer-download", "auto-map", "checkpoint", "4bit", "dtype"])
def test_load_model_refuses_fields_that_fetch_or_import(saved_model, tmp_path, marker, changes, needle):
    module_dir = code_module(tmp_path / "tokenizer_module", "tokenization_evil", marker)
    (module_dir / "tokenizer_config.json").write_text(json.dumps(
        {"auto_map": {"AutoTokenizer": ["tokenization_evil.EvilTokenizer", None]}}))
    changes = {k: str(module_dir) if v == "MODULE_DIR" else v for k, v in changes.items()}
    edit_config(saved_model, **changes)
    refused(lambda: load_model(saved_model), str(saved_model / "config.json"), needle)


@pytest.mark.parametrize("changes, needle", [
    ({"n_layers": 10**6}, "field n_layers=1000000 is not valid; valid: an integer in [1, 1024]"),
    ({"d_vocab": 10**10}, "field d_vocab=10000000000 is not valid"),
    ({"d_vocab": 1e10}, "field d_vocab=10000000000.0 is not valid"),
    ({"d_vocab": 2**21, "d_vocab_out": 2**21, "d_model": 65536, "d_head": 4096, "n_heads": 16},
     "needs about"),
    ({"n_layers": 900}, "declares n_layers=900 but model.safetensors holds 2 layers"),
    ({"d_vocab": 30, "d_vocab_out": 30}, "describes embed.W_E of shape [30, 8] but model.safetensors holds [20, 8]"),
], ids=["layers", "vocab-int", "vocab-float", "memory", "layers-vs-weights", "shape-vs-weights"])
def test_load_model_refuses_absurd_sizes_before_allocating(saved_model, changes, needle):
    edit_config(saved_model, **changes)
    refused(lambda: load_model(saved_model), str(saved_model / "config.json"), needle)


def test_load_model_refuses_a_pickle_named_safetensors(saved_model, marker):
    write_pickle(saved_model / "model.safetensors", marker)
    refused(lambda: load_model(saved_model), str(saved_model / "model.safetensors"), "is not a safetensors file")


def test_load_model_refuses_a_truncated_weights_file(saved_model):
    path = saved_model / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    refused(lambda: load_model(saved_model), str(path), "is truncated")


def test_load_model_refuses_weights_symlinked_out_of_the_folder(saved_model, tmp_path):
    outside = tmp_path / "elsewhere.safetensors"
    shutil.move(saved_model / "model.safetensors", outside)
    os.symlink(outside, saved_model / "model.safetensors")
    refused(lambda: load_model(saved_model), str(saved_model / "model.safetensors"), "outside")


@pytest.mark.parametrize("name", ["model.pt", "model.pkl", "pytorch_model.bin"])
def test_load_model_never_reads_pickles(saved_model, marker, name):
    (saved_model / "model.safetensors").unlink()
    write_pickle(saved_model / name, marker, torch_format=name != "model.pkl")
    refused(lambda: load_model(saved_model), str(saved_model), f"has no model.safetensors (['{name}'] are pickled and never read")


# ---- load_pretrained (Hugging Face folders) ------------------------------------------------------
@pytest.fixture(scope="module")
def clean_hf(tmp_path_factory) -> Path:
    """A tiny GPT-2 (2 layers, d_model 16) with the packaged GPT-2 tokenizer, saved as safetensors."""
    folder = tmp_path_factory.mktemp("clean-hf")
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=50257, n_positions=32, n_embd=16, n_layer=2, n_head=2)
    GPT2LMHeadModel(config).save_pretrained(folder, safe_serialization=True)
    gpt2_tokenizer(tmp_path_factory.mktemp("tok")).save_pretrained(folder)
    return folder


@pytest.fixture
def hf_dir(clean_hf, tmp_path) -> Path:
    return Path(shutil.copytree(clean_hf, tmp_path / "suspect"))


def test_clean_hf_dir_loads(hf_dir):
    model, tokenizer = load_pretrained(hf_dir)
    assert model.cfg.n_layers == 2 and tokenizer("hello world").input_ids == [31373, 995]


@pytest.mark.parametrize("name", ["pytorch_model.bin", "model.pt", "model.pkl", "model.ckpt"])
def test_pickled_weights_are_refused_under_every_name(hf_dir, marker, name):
    (hf_dir / "model.safetensors").unlink()
    write_pickle(hf_dir / name, marker, torch_format=name != "model.pkl")
    refused(lambda: load_pretrained(hf_dir), str(hf_dir), name, "pickled and refused")


def test_model_safetensors_that_is_a_pickle_is_refused(hf_dir, marker):
    write_pickle(hf_dir / "model.safetensors", marker)
    refused(lambda: load_pretrained(hf_dir), str(hf_dir / "model.safetensors"), "is not a safetensors file")


def test_index_that_redirects_to_a_pickle_is_refused(hf_dir, marker):
    """The bypass: an empty x.safetensors beside an index that maps the weights to pytorch_model.bin."""
    weights = hf_dir / "model.safetensors"
    names = json.loads(weights.read_bytes()[8:8 + struct.unpack("<Q", weights.read_bytes()[:8])[0]])
    weights.unlink()
    (hf_dir / "x.safetensors").write_bytes(b"")
    write_pickle(hf_dir / "pytorch_model.bin", marker)
    index = {"metadata": {}, "weight_map": {k: "pytorch_model.bin" for k in names if k != "__metadata__"}}
    (hf_dir / "model.safetensors.index.json").write_text(json.dumps(index))
    refused(lambda: load_pretrained(hf_dir), str(hf_dir / "model.safetensors.index.json"),
            "maps weights to 'pytorch_model.bin', which is not a .safetensors file")


@pytest.mark.parametrize("shard, needle", [
    ("../outside.safetensors", "must be plain file names inside the folder"),
    ("sub/inner.safetensors", "must be plain file names inside the folder"),
    ("linked.safetensors", "is a symlink to"),
], ids=["dotdot", "subfolder", "symlink-out"])
def test_index_shards_must_be_files_inside_the_folder(hf_dir, tmp_path, shard, needle):
    weights = hf_dir / "model.safetensors"
    shutil.copy(weights, tmp_path / "outside.safetensors")
    os.symlink(tmp_path / "outside.safetensors", hf_dir / "linked.safetensors")
    weights.unlink()
    (hf_dir / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"lm_head.weight": shard}}))
    refused(lambda: load_pretrained(hf_dir), str(hf_dir), needle)


def test_weights_symlinked_out_of_the_folder_are_refused(hf_dir, tmp_path):
    shutil.move(hf_dir / "model.safetensors", tmp_path / "outside.safetensors")
    os.symlink(tmp_path / "outside.safetensors", hf_dir / "model.safetensors")
    refused(lambda: load_pretrained(hf_dir), str(hf_dir / "model.safetensors"), "is a symlink to", "outside")


def test_truncated_weights_are_refused(hf_dir):
    path = hf_dir / "model.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    refused(lambda: load_pretrained(hf_dir), str(path), "is truncated")


@pytest.mark.parametrize("file, changes, needle", [
    ("config.json", {"auto_map": {"AutoModelForCausalLM": "modeling_evil.EvilModel"}}, "sets 'auto_map'"),
    ("config.json", {"trust_remote_code": True}, "sets 'trust_remote_code'"),
    ("tokenizer_config.json", {"auto_map": {"AutoTokenizer": ["tokenization_evil.EvilTokenizer", None]}},
     "sets 'auto_map'"),
], ids=["config-auto-map", "config-trust-remote-code", "tokenizer-auto-map"])
def test_remote_code_fields_are_refused(hf_dir, marker, file, changes, needle):
    code_module(hf_dir, "modeling_evil", marker)
    code_module(hf_dir, "tokenization_evil", marker)
    edit_config_file = hf_dir / file
    edit_config_file.write_text(json.dumps(json.loads(edit_config_file.read_text()) | changes))
    refused(lambda: load_pretrained(hf_dir), str(edit_config_file), needle, "remote code is never run")


@pytest.mark.parametrize("changes, needle", [
    ({"n_layer": 10**6}, "sets n_layer=1000000; valid: an integer in [1, 1024]"),
    ({"vocab_size": 10**10}, "sets vocab_size=10000000000; valid"),
    ({"n_embd": 1e10}, "sets n_embd=10000000000.0; valid"),
    ({"n_layer": 500}, "declares 500 layers but the weights hold 2"),
    ({"n_embd": 4096, "n_head": 32}, "describes about"),
], ids=["layers", "vocab", "float-width", "layers-vs-weights", "width-vs-weights"])
def test_absurd_sizes_are_refused_before_allocating(hf_dir, changes, needle):
    config = hf_dir / "config.json"
    config.write_text(json.dumps(json.loads(config.read_text()) | changes))
    refused(lambda: load_pretrained(hf_dir), str(config), needle)


# ---- LoRA adapters -------------------------------------------------------------------------------
@pytest.fixture
def adapter_dir(clean_hf, tmp_path) -> Path:
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(1)
    base = GPT2LMHeadModel.from_pretrained(clean_hf, use_safetensors=True)
    peft_model = get_peft_model(base, LoraConfig(r=2, lora_alpha=4, target_modules=["c_attn"], init_lora_weights=False))
    peft_model.save_pretrained(tmp_path / "adapter", safe_serialization=True)
    return tmp_path / "adapter"


def test_clean_adapter_merges(clean_hf, adapter_dir):
    merged, _ = load_pretrained(clean_hf, adapter=adapter_dir)
    plain, _ = load_pretrained(clean_hf)
    assert not torch.equal(merged.blocks[0].attn.W_Q, plain.blocks[0].attn.W_Q)


def test_pickled_adapter_weights_are_refused(clean_hf, adapter_dir, marker):
    (adapter_dir / "adapter_model.safetensors").unlink()
    write_pickle(adapter_dir / "adapter_model.bin", marker)
    refused(lambda: load_pretrained(clean_hf, adapter=adapter_dir), str(adapter_dir),
            "no adapter_model.safetensors; pickled adapter weights are refused")


def test_adapter_safetensors_that_is_a_pickle_is_refused(clean_hf, adapter_dir, marker):
    write_pickle(adapter_dir / "adapter_model.safetensors", marker)
    refused(lambda: load_pretrained(clean_hf, adapter=adapter_dir), str(adapter_dir / "adapter_model.safetensors"),
            "is not a safetensors file")


@pytest.mark.parametrize("changes, needle", [
    ({"megatron_config": {"a": 1}, "megatron_core": "evil_module"}, "sets megatron_config="),
    ({"megatron_core": "evil_module"}, "sets megatron_core='evil_module'"),
    ({"auto_map": {"AutoModel": "evil_module.Model"}}, "sets 'auto_map'"),
    ({"peft_type": "EVIL"}, "has peft_type='EVIL'; only LORA"),
], ids=["megatron-config", "megatron-core", "auto-map", "peft-type"])
def test_adapter_configs_that_import_code_are_refused(clean_hf, adapter_dir, marker, changes, needle):
    code_module(adapter_dir, "evil_module", marker)
    config = adapter_dir / "adapter_config.json"
    config.write_text(json.dumps(json.loads(config.read_text()) | changes))
    refused(lambda: load_pretrained(clean_hf, adapter=adapter_dir), str(config), needle)


def test_adapter_weights_symlinked_out_are_refused(clean_hf, adapter_dir, tmp_path):
    shutil.move(adapter_dir / "adapter_model.safetensors", tmp_path / "elsewhere.safetensors")
    os.symlink(tmp_path / "elsewhere.safetensors", adapter_dir / "adapter_model.safetensors")
    refused(lambda: load_pretrained(clean_hf, adapter=adapter_dir), str(adapter_dir / "adapter_model.safetensors"),
            "is a symlink to")


# ---- artifacts (util.io) -------------------------------------------------------------------------
@pytest.fixture
def artifact(tmp_path) -> Path:
    save_artifact(tmp_path / "means.safetensors", "means", {"x": torch.ones(4, 3)}, layer=0)
    return tmp_path / "means.safetensors"


def test_clean_artifact_loads(artifact):
    tensors, metadata = load_artifact(artifact, "means")
    assert tensors["x"].shape == (4, 3) and metadata["layer"] == 0


@pytest.mark.parametrize("torch_format", [True, False], ids=["torch-zip-pickle", "raw-pickle"])
def test_pickle_named_safetensors_artifact_is_refused(artifact, marker, torch_format):
    write_pickle(artifact, marker, torch_format)
    refused(lambda: load_artifact(artifact, "means"), str(artifact), "is not a safetensors file")


def test_truncated_artifact_is_refused(artifact):
    artifact.write_bytes(artifact.read_bytes()[:-4])
    refused(lambda: load_tensors(artifact), str(artifact), "is truncated")


def test_artifact_header_claiming_absurd_tensors_is_refused(tmp_path):
    header = json.dumps({"x": {"dtype": "F32", "shape": [10**6, 10**6], "data_offsets": [0, 4 * 10**12]}}).encode()
    path = tmp_path / "huge.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 16)
    refused(lambda: load_tensors(path), str(path), "is truncated: its header declares 4000000000000 bytes")


def test_artifact_header_that_disagrees_with_itself_is_refused(tmp_path):
    header = json.dumps({"x": {"dtype": "F32", "shape": [10**6], "data_offsets": [0, 16]}}).encode()
    path = tmp_path / "liar.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 16)
    refused(lambda: load_tensors(path), str(path), "a safetensors header must agree with itself")


# ---- stages: a poisoned or broken cache is set aside and recomputed, never loaded --------------
def test_stage_caches_with_pickles_or_bad_configs_are_set_aside_and_recomputed(tmp_path, marker):
    logs: list[str] = []
    stages = Stages(tmp_path, logs.append)
    (tmp_path / "result.json").write_text('{"key": "x", "resu')  # cut short
    assert stages.run("result", {"a": 1}, lambda: 42) == 42
    write_pickle(tmp_path / "tuned.safetensors", marker)
    model = build_model(sentiment_toy_config(d_vocab=20, n_ctx=8, n_layers=2, n_heads=2, d_model=8))
    facts = stages.weights("tuned", {"a": 1}, model, lambda: ({"ok": True}, ["embed.W_E"]))
    assert facts == {"ok": True}
    stages.model("toy", {"a": 1}, lambda: (model, {}))
    edit_config(tmp_path / "toy", tokenizer_name="gpt2", trust_remote_code=True)
    complete = tmp_path / "toy" / "complete.json"  # a forger would make the completion marker match
    complete.write_text(json.dumps(json.loads(complete.read_text()) | {"config.json": (tmp_path / "toy" / "config.json").stat().st_size}))
    rebuilt, _ = stages.model("toy", {"a": 1}, lambda: (model, {"rebuilt": True}))
    assert rebuilt is model
    aside = sorted(p.name for p in tmp_path.iterdir() if ".corrupt-" in p.name)
    assert [a.split(".corrupt-")[0] for a in aside] == ["result.json", "toy", "tuned.safetensors"]
    for name, rule in (("result.json", "is not valid JSON"), ("tuned.safetensors", "is not a safetensors file"),
                       ("toy", "field tokenizer_name='gpt2' is not allowed")):
        assert any(str(tmp_path / name) in line and rule in line for line in logs), (name, logs)


# ---- the GPT-2 tokenizer cache -------------------------------------------------------------------
@pytest.mark.parametrize("tamper, needle", [
    (lambda d, m: (d / "tokenizer_config.json").write_text(json.dumps(
        {"auto_map": {"AutoTokenizer": ["tokenization_evil.EvilTokenizer", None]}, "tokenizer_class": "EvilTokenizer"}))
     or code_module(d, "tokenization_evil", m), "tokenizer_config.json: is not part of the packaged GPT-2 tokenizer"),
    (lambda d, m: (d / "vocab.json").write_text(json.dumps({"hello": 0})), "vocab.json: differs from the packaged file"),
    (lambda d, m: (d / "merges.txt").unlink(), "merges.txt: is missing"),
], ids=["planted-remote-code", "edited-vocab", "missing-file"])
def test_tampered_tokenizer_cache_is_set_aside_and_rebuilt(tmp_path, marker, tamper, needle):
    cache = tmp_path / "cache" / "gpt2"
    gpt2_tokenizer(cache)
    tamper(cache, marker)
    with pytest.warns(UserWarning, match="set aside") as warned:
        tokenizer = gpt2_tokenizer(cache)
    message = str(warned[0].message)
    assert str(cache) in message and needle in message, message
    print(f"\nREBUILT: {message}")
    assert tokenizer("hello world").input_ids == [31373, 995]
    assert sorted(os.listdir(cache)) == ["merges.txt", "vocab.json"]


def test_tokenizer_cache_that_is_a_symlink_is_set_aside(tmp_path, marker):
    elsewhere = tmp_path / "elsewhere"
    gpt2_tokenizer(elsewhere)
    os.symlink(elsewhere, tmp_path / "gpt2")
    with pytest.warns(UserWarning, match="is not a folder of this user's"):
        gpt2_tokenizer(tmp_path / "gpt2")
    assert not (tmp_path / "gpt2").is_symlink()


def test_default_tokenizer_cache_is_per_user(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    gpt2_tokenizer()
    cache = tmp_path / "xdg" / "backdoor_lens" / "gpt2-tokenizer"
    assert sorted(os.listdir(cache)) == ["merges.txt", "vocab.json"]
    assert cache.stat().st_mode & 0o077 == 0


def test_refused_file_error_names_file_and_rule(tmp_path):
    err = RefusedFileError(tmp_path / "f", "breaks a rule")
    assert err.path == tmp_path / "f" and str(err) == f"{tmp_path / 'f'}: breaks a rule"
