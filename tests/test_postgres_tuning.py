"""PCP tuning spread over worker processes on a real PostgreSQL server (started here with initdb /
pg_ctl in a temporary folder): three workers share one study, one is killed (SIGKILL) mid-trial;
the others retry its trial after its heartbeats stop, no parameter set runs twice, and the study
ends with exactly the trials asked for. Compared with one worker on its own: the same draws in the
random start-up phase, and a best value at least as good as that phase's.

Skips, saying exactly why, where the PostgreSQL server binaries (Debian: ``apt-get install
postgresql``) or the psycopg driver (``pip install 'backdoor_lens[postgres]'``) are missing."""

from __future__ import annotations

import glob
import multiprocessing
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest
import torch

from backdoor_lens.analysis.tune import TuneConfig, tune_scales

N_TRIALS, STARTUP = 24, 10  # TPE draws at random for its first 10 complete trials
CONFIG = TuneConfig(n_trials=N_TRIALS, factor_range=(0.05, 2.0), seed=7)
HEARTBEAT = 1  # seconds; a trial without a heartbeat for 3 of them is stale


def _server_binaries() -> tuple[str, str] | None:
    for folder in [None, *sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)]:
        initdb, pg_ctl = (shutil.which(name, path=folder) for name in ("initdb", "pg_ctl"))
        if initdb and pg_ctl:
            return initdb, pg_ctl
    return None


def _as_server_user(command: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: run it as the `postgres` user then."""
    if os.geteuid() != 0:
        return command
    return ["runuser", "-u", "postgres", "--", *command]


@pytest.fixture(scope="module")
def postgres_url():
    binaries = _server_binaries()
    if binaries is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed: on Debian run "
                    "`apt-get install postgresql` (the CI script tries this)")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("the psycopg driver is not installed: pip install 'backdoor_lens[postgres]'")
    if os.geteuid() == 0:
        try:
            server_user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root, and there is no `postgres` user to run the server as (initdb refuses root)")
        if shutil.which("runuser") is None:
            pytest.skip("running as root without `runuser` to start the server as the `postgres` user")
    initdb, pg_ctl = binaries
    folder = Path(tempfile.mkdtemp(prefix="backdoor_lens-pg-", dir="/tmp"))
    if os.geteuid() == 0:
        os.chown(folder, server_user.pw_uid, server_user.pw_gid)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run = lambda command: subprocess.run(_as_server_user(command), capture_output=True, text=True, timeout=120)  # noqa: E731
    made = run([initdb, "-D", str(folder / "data"), "-U", "tuner", "--auth=trust", "-E", "UTF8"])
    if made.returncode:
        pytest.skip(f"initdb failed: {made.stderr.strip()[-500:]}")
    started = run([pg_ctl, "-D", str(folder / "data"), "-l", str(folder / "log"), "-w", "-t", "60", "-o",
                   f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c max_connections=50", "start"])
    if started.returncode:
        pytest.skip(f"pg_ctl could not start the server: {started.stderr.strip()[-500:]}")
    try:
        import psycopg

        with psycopg.connect(f"host=127.0.0.1 port={port} user=tuner dbname=postgres", autocommit=True) as conn:
            conn.execute("CREATE DATABASE optuna")
        yield f"postgresql://tuner@127.0.0.1:{port}/optuna"
    finally:
        run([pg_ctl, "-D", str(folder / "data"), "-m", "immediate", "stop"])
        shutil.rmtree(folder, ignore_errors=True)


def bowl(scales: torch.Tensor) -> float:
    time.sleep(0.15)  # long enough for trials of different workers to overlap
    return float(((scales - torch.tensor([0.7, 1.4, 0.3])) ** 2).sum())


def _worker(url: str, study: str, die_on_trial: int | None) -> None:
    torch.set_num_threads(1)
    calls = []

    def objective(scales: torch.Tensor) -> float:
        calls.append(1)
        if len(calls) == die_on_trial:
            os.kill(os.getpid(), signal.SIGKILL)  # killed mid-trial: its heartbeats stop
        return bowl(scales)

    result = tune_scales(objective, torch.ones(3), CONFIG, url, study, progress=False, heartbeat=HEARTBEAT, poll=0.2)
    assert result.n_trials == N_TRIALS


def _study(url: str, name: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=url).get_trials(deepcopy=False)


def _complete(trials: list[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
    return [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]


def test_three_workers_one_killed_share_a_postgres_study(postgres_url):
    start = time.perf_counter()
    single = tune_scales(bowl, torch.ones(3), CONFIG, postgres_url, "single", progress=False, heartbeat=HEARTBEAT)
    single_seconds = time.perf_counter() - start

    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_worker, args=(postgres_url, "shared", 3 if i == 0 else None)) for i in range(3)]
    start = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join(300)
    shared_seconds = time.perf_counter() - start
    assert [w.exitcode for w in workers] == [-signal.SIGKILL, 0, 0]

    trials = _study(postgres_url, "shared")
    complete = _complete(trials)
    params = [tuple(sorted(t.params.items())) for t in complete]
    duplicates = len(params) - len(set(params))
    retried = [t for t in complete if t.system_attrs.get("failed_trial") is not None]
    per_worker = Counter(t.user_attrs["worker"].split("|")[1] for t in complete)
    failed = Counter(t.user_attrs.get("skipped", "stale") for t in trials if t.state == optuna.trial.TrialState.FAIL)
    best_shared = min(t.value for t in complete)

    single_trials = _complete(_study(postgres_url, "single"))
    startup = lambda ts: sorted(tuple(sorted(t.params.items())) for t in ts if t.user_attrs["slot"] < STARTUP)  # noqa: E731
    best_startup = min(t.value for t in single_trials if t.user_attrs["slot"] < STARTUP)
    print(f"\nPostgreSQL tuning: 3 workers (1 killed mid-trial), {len(complete)} complete trials of {N_TRIALS} asked, "
          f"{len(trials)} trials in all (failed: {dict(failed)}), {len(retried)} retried after the kill, "
          f"complete trials per worker pid: {dict(per_worker)}, duplicate parameter sets: {duplicates}; "
          f"best value {best_shared:.6f} in {shared_seconds:.1f} s vs a single worker's {single.value:.6f} in "
          f"{single_seconds:.1f} s (best of the {STARTUP} random start-up trials, identical in both: {best_startup:.6f})")
    assert len(complete) == N_TRIALS and duplicates == 0
    assert len(retried) == 1 and failed["stale"] == 1
    assert len(per_worker) >= 2
    assert startup(complete) == startup(single_trials)  # the same draws, whichever worker made them
    assert best_shared <= best_startup and single.value <= best_startup


def test_second_run_reuses_the_finished_study(postgres_url):
    first = tune_scales(bowl, torch.ones(3), TuneConfig(n_trials=4, seed=1), postgres_url, "again", progress=False)
    start = time.perf_counter()
    again = tune_scales(bowl, torch.ones(3), TuneConfig(n_trials=4, seed=1), postgres_url, "again", progress=False)
    assert (again.value, again.n_trials) == (first.value, 4) and time.perf_counter() - start < 5
