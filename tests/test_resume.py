"""Interrupted and parallel runs give the same answer: a toy study killed (SIGKILL) at several points
and resumed writes the summary.json of an uninterrupted run; PCP tuning resumed after a kill or a
Ctrl-C repeats an uninterrupted study's trials; broken caches and journals heal; writes are atomic,
leave no orphan temporary files and respect the umask. Every run here uses 1 torch thread (seeded
training is bit-reproducible only at a fixed thread count)."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import optuna
import pytest
import torch

from backdoor_lens.analysis import tune
from backdoor_lens.analysis.tune import TuneConfig, tune_scales
from backdoor_lens.experiments.common.seeds import comparable
from backdoor_lens.experiments.common.stages import Stages, carry_stages, portable
from backdoor_lens.experiments.common.timing import compute_profile
from backdoor_lens.models.storage import save_model
from backdoor_lens.models.toy import build_model, sentiment_toy_config
from backdoor_lens.util.hashing import fingerprint
from backdoor_lens.util.io import save_tensors, sweep_temporary_files, write_json

THREADS = 1
CONFIG_CODE = """
from backdoor_lens.analysis.tune import TuneConfig
from backdoor_lens.data.toy import ToyDataConfig
from backdoor_lens.experiments.toy import study as toy
from backdoor_lens.lm import TrainConfig
CONFIG = toy.ToyStudyConfig(
    models=("sent2",),
    data=ToyDataConfig(words_per_sentiment=40, train_per_sentiment=150, finetune_per_sentiment=100,
                       val_per_sentiment=10, eval_per_class=8, poison_rate=0.1),
    benign=TrainConfig(epochs=3, lr=3e-3, batch_size=64),
    poison=TrainConfig(epochs=2, lr=3e-3, batch_size=64, eval_every=2),
    tune=TuneConfig(n_trials=5),
    model_shape={"n_layers": 3, "n_heads": 4, "d_model": 16},
    freeze_sets={"none": (), "embed": ("embed", "pos_embed"), "blocks.0.mlp": ("blocks.0.mlp",)},
)
"""
DRIVER = textwrap.dedent("""
    import json, os, signal, sys, time, traceback
    import torch
    torch.set_num_threads({threads})
    {config}
    results = []
    for step in json.loads(sys.argv[1]):
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the study, in a child process that may be killed at any moment
            os.close(read)
            os.dup2(write, 1)
            try:
                toy.run(CONFIG, step["out"], progress=False, log=lambda m: print(m, flush=True))
                os._exit(0)
            except BaseException:
                traceback.print_exc()
                os._exit(1)
        os.close(write)
        lines = []
        with os.fdopen(read) as log:
            for line in log:
                lines.append(line.rstrip())
                if step["kill_after"] and step["kill_after"] in line:
                    time.sleep(step["delay"])
                    os.kill(pid, signal.SIGKILL)
                    break
        _, status = os.waitpid(pid, 0)
        results.append({{"out": step["out"], "status": status, "lines": lines}})
    print("RESULTS " + json.dumps(results))
""").format(threads=THREADS, config=textwrap.indent(CONFIG_CODE, ""))

KILL_POINTS = {
    "benign training": ("[sent2] benign model", 0.15),
    "poisoned fine-tuning": ("[sent2] poisoned fine-tuning", 0.05),
    "PCP tuning": ("[sent2] PCP replacement and tuning", 0.6),
    "freezing fine-tunes": ("[sent2] freezing during poisoned fine-tuning", 0.2),
}


def journal_facts(path: Path) -> dict[str, tuple[int, int, int]]:
    """Per study in the journal: (complete trials, failed trials, duplicate parameter sets among complete)."""
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
    out = {}
    for summary in optuna.get_all_study_summaries(storage):
        trials = optuna.load_study(study_name=summary.study_name, storage=storage).get_trials(deepcopy=False)
        complete = [tuple(sorted(t.params.items())) for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
        failed = sum(t.state == optuna.trial.TrialState.FAIL for t in trials)
        out[summary.study_name] = (len(complete), failed, len(complete) - len(set(complete)))
    return out


def temporary_files(folder: Path) -> list[Path]:
    """Orphan temporary files of atomic writes under `folder`, outside set-aside copies."""
    return [p for p in folder.rglob(".*.tmp*") if ".corrupt-" not in str(p)]


def test_killed_toy_study_resumes_to_the_uninterrupted_summary(tmp_path):
    plan = [{"out": str(tmp_path / "reference"), "kill_after": None, "delay": 0}]
    for name, (line, delay) in KILL_POINTS.items():
        out = str(tmp_path / name.replace(" ", "-"))
        plan += [{"out": out, "kill_after": line, "delay": delay}, {"out": out, "kill_after": None, "delay": 0}]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(plan)], capture_output=True, text=True,
                          timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.split("RESULTS ", 1)[1])
    reference, runs = results[0], results[1:]
    assert reference["status"] == 0
    expected = comparable(json.loads((tmp_path / "reference" / "summary.json").read_text()))
    print(f"\ntorch threads: {THREADS}; reference: {len(reference['lines'])} log lines")
    for (name, (line, _)), killed, resumed in zip(KILL_POINTS.items(), runs[::2], runs[1::2]):
        out = Path(resumed["out"])
        assert os.WIFSIGNALED(killed["status"]) and os.WTERMSIG(killed["status"]) == signal.SIGKILL, name
        assert resumed["status"] == 0, (name, resumed["lines"][-5:])
        got = comparable(json.loads((out / "summary.json").read_text()))
        facts = journal_facts(out / "optuna.journal")
        reused = [m for m in resumed["lines"] if "reused" in m or "set aside" in m]
        print(f"kill during {name} (after {killed['lines'][-1]!r}): resumed, summary identical: {got == expected}; "
              f"stages reused/healed: {len(reused)}; studies: {len(facts)}, failed (killed) trials: "
              f"{sum(f[1] for f in facts.values())}, duplicates: {sum(f[2] for f in facts.values())}")
        assert got == expected, name
        assert all(f[0] == 5 and f[2] == 0 for f in facts.values()), facts
        assert temporary_files(out) == [], name


# ---- tuning alone: kill -9 and Ctrl-C mid-trial ---------------------------------------------------
def bowl(scales: torch.Tensor) -> float:
    return float(((scales - torch.tensor([0.7, 1.4, 0.3])) ** 2).sum())


TUNE = TuneConfig(n_trials=14, factor_range=(0.05, 2.0), seed=3)


def trials_of(path: Path) -> tuple[list[tuple], float]:
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
    study = optuna.load_study(study_name="bowl", storage=storage)
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    return sorted(tuple(sorted(t.params.items())) for t in complete), study.best_value


def killing_objective(at: int):
    calls = []

    def objective(scales: torch.Tensor) -> float:
        calls.append(1)
        if len(calls) == at:
            os.kill(os.getpid(), signal.SIGKILL)
        return bowl(scales)

    return objective


def _tune(path: str, objective=bowl) -> None:
    torch.set_num_threads(THREADS)
    tune_scales(objective, torch.ones(3), TUNE, path, "bowl", progress=False)


def _tune_then_die(path: str, at: int) -> None:
    _tune(path, killing_objective(at))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> tuple[list[tuple], float]:
    path = tmp_path_factory.mktemp("tune") / "reference.journal"
    result = tune_scales(bowl, torch.ones(3), TUNE, str(path), "bowl", progress=False)
    assert result.n_trials == 14
    return trials_of(path)


@pytest.mark.parametrize("at", [1, 6, 12])
def test_tuning_killed_mid_trial_resumes_to_the_same_trials(tmp_path, uninterrupted, at):
    path = tmp_path / "optuna.journal"
    child = multiprocessing.get_context("fork").Process(target=_tune_then_die, args=(str(path), at))
    child.start()
    child.join(120)
    assert child.exitcode == -signal.SIGKILL
    result = tune_scales(bowl, torch.ones(3), TUNE, str(path), "bowl", progress=False)
    params, best = trials_of(path)
    assert (params, best) == uninterrupted and result.value == best and result.n_trials == 14


def test_trial_killed_before_it_recorded_its_worker_is_retried(tmp_path, monkeypatch):
    # A kill between Optuna creating a trial and the trial recording its process leaves a running
    # trial with no owner; a resumed study once waited on it forever.
    monkeypatch.setattr(tune, "UNCLAIMED_SECONDS", 0.0)
    path = str(tmp_path / "optuna.journal")
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(path))
    orphan = optuna.create_study(study_name="bowl", storage=storage).ask()  # running, unclaimed
    child = multiprocessing.get_context("fork").Process(target=_tune, args=(path,))
    child.start()
    child.join(120)
    hung = child.exitcode is None
    if hung:
        child.kill()
    assert not hung and child.exitcode == 0
    trials = optuna.load_study(study_name="bowl", storage=storage).get_trials(deepcopy=False)
    assert trials[orphan.number].state == optuna.trial.TrialState.FAIL
    assert sum(t.state == optuna.trial.TrialState.COMPLETE for t in trials) == TUNE.n_trials


def test_an_unclaimed_trial_waits_out_its_grace_period(tmp_path):
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(tmp_path / "j")))
    study = optuna.create_study(study_name="bowl", storage=storage)
    trial = study.ask()
    frozen = study.get_trials(deepcopy=False)[trial.number]
    assert not tune._unclaimed(frozen)  # just created: its worker may be about to claim it
    study.tell(trial, 1.0)


def test_tuning_stopped_by_ctrl_c_resumes_to_the_same_trials(tmp_path, uninterrupted):
    calls = []

    def interrupted(scales: torch.Tensor) -> float:
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return bowl(scales)

    path = str(tmp_path / "optuna.journal")
    with pytest.raises(KeyboardInterrupt):
        tune_scales(interrupted, torch.ones(3), TUNE, path, "bowl", progress=False)
    tune_scales(bowl, torch.ones(3), TUNE, path, "bowl", progress=False)
    assert trials_of(Path(path)) == uninterrupted


def test_journal_cut_short_or_corrupt_heals(tmp_path, uninterrupted):
    path = tmp_path / "optuna.journal"
    tune_scales(bowl, torch.ones(3), TuneConfig(n_trials=6, factor_range=(0.05, 2.0), seed=3), str(path), "bowl",
                progress=False)
    with open(path, "ab") as f:
        f.write(b'{"op_code": 5, "worker_id": "x", "trial_id": 3, "par')  # an append cut short by a kill
    with pytest.warns(UserWarning, match="cut short by a kill; dropped its last"):
        tune_scales(bowl, torch.ones(3), TUNE, str(path), "bowl", progress=False)
    assert trials_of(path) == uninterrupted
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:3] + [b"not json\n"] + lines[3:]))
    with pytest.warns(UserWarning, match="Optuna journal is corrupt"):
        tune_scales(bowl, torch.ones(3), TUNE, str(path), "bowl", progress=False)
    assert trials_of(path) == uninterrupted  # recomputed from scratch, same draws
    assert len(list(tmp_path.glob("optuna.journal.corrupt-*"))) == 1


# ---- caches that heal ----------------------------------------------------------------------------
def tiny_model():
    return build_model(sentiment_toy_config(d_vocab=20, n_ctx=8, n_layers=2, n_heads=2, d_model=8))


def test_model_cache_cut_short_is_set_aside_and_recomputed(tmp_path):
    logs: list[str] = []
    stages = Stages(tmp_path, logs.append)
    model = tiny_model()
    stages.model("benign", {"k": 1}, lambda: (model, {"n": 1}))
    (tmp_path / "benign" / "complete.json").unlink()  # killed before the completion marker
    rebuilt, facts = stages.model("benign", {"k": 1}, lambda: (model, {"n": 2}))
    assert facts == {"n": 2} and any("saved incompletely" in line and str(tmp_path / "benign") in line for line in logs)
    path = tmp_path / "benign" / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-10])  # truncated after the marker was written
    _, facts = stages.model("benign", {"k": 1}, lambda: (model, {"n": 3}))
    assert facts == {"n": 3}
    _, facts = stages.model("benign", {"k": 1}, lambda: (model, {"n": 4}))
    assert facts == {"n": 3}  # healthy now: reused


def test_stage_weights_and_tables_cut_short_are_recomputed(tmp_path):
    logs: list[str] = []
    stages = Stages(tmp_path, logs.append)
    model = tiny_model()
    stages.weights("tuned", {"k": 1}, model, lambda: ({"n": 1}, ["embed.W_E"]))
    path = tmp_path / "tuned.safetensors"
    path.write_bytes(path.read_bytes()[:-7])
    assert stages.weights("tuned", {"k": 1}, model, lambda: ({"n": 2}, ["embed.W_E"])) == {"n": 2}
    table = stages.table("answers", {"k": 1})
    table.fill(["a", "b"], lambda keys: [k.upper() for k in keys], chunk=1, log=logs.append)
    (tmp_path / "answers.json").write_text('{"key": "')
    assert stages.table("answers", {"k": 1}).rows == {}
    assert sum("set aside" in line for line in logs) == 2


def test_save_model_writes_config_first_and_marker_last(tmp_path, monkeypatch):
    import backdoor_lens.models.storage as storage

    order: list[str] = []
    real_json, real_tensors = storage.write_json, storage.save_tensors
    monkeypatch.setattr(storage, "write_json", lambda p, o: order.append(Path(p).name) or real_json(p, o))
    monkeypatch.setattr(storage, "save_tensors", lambda p, *a: order.append(Path(p).name) or real_tensors(p, *a))
    save_model(tiny_model(), tmp_path / "m")
    assert order == ["config.json", "model.safetensors", "complete.json"]


# ---- atomic writes -------------------------------------------------------------------------------
def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_orphan_temporary_files_of_killed_writers_are_swept(tmp_path):
    import socket

    host = "".join(c if c.isalnum() or c in "_-" else "_" for c in socket.gethostname())
    orphan = tmp_path / f".summary.json.tmp{dead_pid()}@{host}.abcd1234"
    live = tmp_path / f".other.json.tmp{os.getpid()}@{host}.abcd1234"
    orphan.write_text("half")
    live.write_text("in progress")
    write_json(tmp_path / "summary.json", {"a": 1})
    assert not orphan.exists() and live.exists()
    live.unlink()
    assert sweep_temporary_files(tmp_path) == [] and sorted(os.listdir(tmp_path)) == ["summary.json"]


def test_killed_atomic_write_leaves_the_old_file_and_the_next_write_sweeps(tmp_path):
    target = tmp_path / "big.safetensors"
    save_tensors(target, {"x": torch.zeros(3)})
    code = textwrap.dedent(f"""
        import os, signal, torch
        from safetensors import torch as st
        real = st.save_file
        def dying(tensors, path, metadata=None):
            open(path, "wb").write(b"partial")
            os.kill(os.getpid(), signal.SIGKILL)
        st.save_file = dying
        from backdoor_lens.util.io import save_tensors
        save_tensors({str(target)!r}, {{"x": torch.ones(3)}})
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL
    assert len(list(tmp_path.glob(".big.safetensors.tmp*"))) == 1
    from backdoor_lens.util.io import load_tensors

    assert torch.equal(load_tensors(target)[0]["x"], torch.zeros(3))  # the old file is intact
    save_tensors(tmp_path / "other.safetensors", {"x": torch.ones(1)})
    assert list(tmp_path.glob(".*.tmp*")) == []


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_respect_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        write_json(tmp_path / "a.json", {})
        save_tensors(tmp_path / "b.safetensors", {"x": torch.zeros(1)})
        save_model(tiny_model(), tmp_path / "m")
    finally:
        os.umask(old)
    for path in (tmp_path / "a.json", tmp_path / "b.safetensors", tmp_path / "m" / "model.safetensors"):
        assert path.stat().st_mode & 0o777 == mode, path


def test_stages_keep_their_compute_seconds_across_a_resume(tmp_path):
    model = tiny_model()

    def slow(value):
        time.sleep(0.05)
        return value

    first = Stages(tmp_path, lambda m: None)
    first.run("measure", {"k": 1}, lambda: slow(1))
    first.weights("tuned", {"k": 1}, model, lambda: (slow({"n": 1}), ["embed.W_E"]))
    first.model("whole", {"k": 1}, lambda: (model, slow({"n": 1})))
    assert set(first.seconds) == {"measure", "tuned", "whole"} and all(s >= 0.05 for s in first.seconds.values())
    resumed = Stages(tmp_path, lambda m: None)
    resumed.run("measure", {"k": 1}, lambda: slow(2))
    resumed.weights("tuned", {"k": 1}, model, lambda: (slow({"n": 2}), ["embed.W_E"]))
    resumed.model("whole", {"k": 1}, lambda: (model, slow({"n": 2})))
    assert resumed.skipped == ["measure", "tuned", "whole"] and resumed.seconds == first.seconds
    (tmp_path / "old.json").write_text(json.dumps({"key": fingerprint({"k": 1}), "result": 3}))  # saved before timing
    assert resumed.run("old", {"k": 1}, lambda: 4) == 3 and resumed.seconds["old"] is None
    assert compute_profile([resumed.seconds], lambda name: "all")["untimed_stages"] == 1


def test_carried_stages_are_keyed_json_only_and_never_overwrite_unless_asked(tmp_path):
    source, folder = tmp_path / "machine-a", tmp_path / "machine-b"
    Stages(source / "seed-0" / "vpi", log=lambda m: None).run("measures", {"a": 1}, lambda: {"asr": 0.5})
    save_tensors(source / "seed-0" / "vpi" / "backdoored.safetensors", {"w": torch.zeros(2)}, {"key": "k"})
    write_json(source / "seed-0" / "summary.json", {"attacks": {}})
    write_json(source / "notes.json", {"not": "a stage"})
    assert carry_stages(source, folder, log=lambda m: None) == 1
    assert [p.relative_to(folder).as_posix() for p in folder.rglob("*.*")] == ["seed-0/vpi/measures.json"]
    reused = Stages(folder / "seed-0" / "vpi", log=lambda m: None)
    assert reused.run("measures", {"a": 1}, lambda: pytest.fail("recomputed")) == {"asr": 0.5}
    Stages(source / "seed-0" / "vpi", log=lambda m: None).run("measures", {"a": 2}, lambda: {"asr": 0.0})
    assert carry_stages(source, folder, log=lambda m: None) == 0  # the folder's own result is kept
    assert carry_stages(source, folder, log=lambda m: None, replace=True) == 1
    assert reused.run("measures", {"a": 2}, lambda: pytest.fail("recomputed")) == {"asr": 0.0}
    with pytest.raises(FileNotFoundError, match="stages_from='.*nowhere' is not a folder"):
        carry_stages(tmp_path / "nowhere", folder)
    assert portable({"seconds": 3.1, "digest": "9b20", "loss": 0.2, "stage1": {"seconds": 1, "steps": 4}}) == {
        "loss": 0.2, "stage1": {"steps": 4}}


def test_a_result_measured_on_other_weights_is_reused_and_named(tmp_path):
    here = Stages(tmp_path, log=lambda m: None)
    here.measured_on = {"planted": "aaaa"}
    assert here.run("measures", {"a": 1}, lambda: {"asr": 0.5}) == {"asr": 0.5}
    assert json.loads((tmp_path / "measures.json").read_text())["measured_on"] == {"planted": "aaaa"}
    same = Stages(tmp_path, log=lambda m: None)
    same.measured_on = {"planted": "aaaa"}
    same.run("measures", {"a": 1}, lambda: pytest.fail("recomputed"))
    assert same.carried == []
    messages = []
    other = Stages(tmp_path, log=messages.append)
    other.measured_on = {"planted": "bbbb"}
    assert other.run("measures", {"a": 1}, lambda: pytest.fail("recomputed")) == {"asr": 0.5}
    assert other.carried == ["measures"] and "measured on {'planted': 'aaaa'}" in messages[-1]
