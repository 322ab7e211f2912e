"""Command-line argument types and checks shared by the studies and benchmarks.

Every value is checked when it is parsed, before a model is loaded or trained: counts are whole
numbers within sane bounds, floats are finite, a device exists, a seed is in range, an output folder
is writable, a storage URL parses and connects, a model folder passes the untrusted-file rules. A
mistake ends in one line (``<prog>: error: ...``) with exit code 2, never a traceback.

This module imports nothing heavy at import time (torch, a database driver or the model-file rules
are imported only by the check that needs them), so an entry point can check its command line in
about a second, before its own slow imports.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, NoReturn

CHAT_TOY = "toy"
"""`model` name of the toy chat model (:func:`~backdoor_lens.models.chat_toy.chat_toy_model`)."""
SMOLLM2 = "smollm2-135m-instruct"
"""The packaged chat model (a key of ``backdoor_lens.models.pretrained.PACKAGED_MODELS``)."""
MAX_SEED = 2**32 - 1
"""Seeds are 32-bit (NumPy's limit; torch accepts them too)."""


class CommandLineError(SystemExit):
    """A bad command line: exits with code 2; its text is the one-line message already printed."""

    def __init__(self, message: str):
        super().__init__(2)
        self.message = message

    def __str__(self) -> str:
        return self.message


def one_line(message: Any) -> str:
    """`message` with every run of whitespace (newlines included) folded to one space."""
    return " ".join(str(message).split())


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr and exit code 2 (no usage block)."""

    def error(self, message: str) -> NoReturn:
        """Print ``<prog>: error: <message>`` and exit with code 2."""
        line = f"{self.prog}: error: {one_line(message)}"
        print(line, file=sys.stderr)
        raise CommandLineError(line)

    def check(self, check: Callable[[], Any], what: str = "") -> Any:
        """`check()`'s result; an error it raises (a bad setting, model or folder found after
        parsing) becomes a one-line command-line error, prefixed with `what`."""
        try:
            return check()
        except (ValueError, OSError, RuntimeError, argparse.ArgumentTypeError) as err:
            self.error(f"{what}{err}")


def _bad(message: str) -> NoReturn:
    raise argparse.ArgumentTypeError(one_line(message))


def count(low: int = 1, high: int = 10**6) -> Callable[[str], int]:
    """An argument type: a whole number in [low, high] ("1e9" and "2.5" are refused)."""

    def parse(text: str) -> int:
        if not re.fullmatch(r"[+-]?\d+", text.strip()):
            _bad(f"{text!r} is not a whole number; valid: {low}..{high}")
        value = int(text)
        if not low <= value <= high:
            _bad(f"{value} is out of range; valid: {low}..{high}")
        return value

    parse.__name__, parse.__doc__ = "count", f"A whole number in [{low}, {high}]."
    return parse


seed = count(0, MAX_SEED)
"""An argument type: a seed in [0, 2**32 - 1]."""
MAX_SEEDS = 1000
DEFAULT_THREADS = 2
"""Studies run at a fixed, recorded torch thread count: results repeat bit for bit only at a fixed one."""


def parse_seeds(text: str) -> tuple[int, ...]:
    """``"3"`` -> seeds 0, 1, 2; ``"0,4,7"`` -> those seeds; ``"5,"`` -> seed 5 alone. Errors name the valid forms."""
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    numbers = [int(p) for p in parts if re.fullmatch(r"[+-]?\d+", p)]
    if not numbers or len(numbers) != len(parts):
        raise ValueError(f"seeds={text!r} is not valid; give a count (e.g. 3 for seeds 0, 1, 2) or a list such as 0,4,7")
    if len(numbers) == 1 and "," not in str(text):
        if not 1 <= numbers[0] <= MAX_SEEDS:
            raise ValueError(f"seeds={text!r}: a count must lie in [1, {MAX_SEEDS}] (one chosen seed: '{numbers[0]},')")
        return tuple(range(numbers[0]))
    if any(not 0 <= n <= MAX_SEED for n in numbers) or len(set(numbers)) != len(numbers):
        raise ValueError(f"seeds={text!r}: list distinct seeds in [0, {MAX_SEED}]")
    return tuple(numbers)


def seeds(text: str) -> tuple[int, ...]:
    """An argument type: a count of seeds or a comma-separated list (see :func:`parse_seeds`)."""
    try:
        return parse_seeds(text)
    except ValueError as err:
        _bad(str(err))


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """--seeds and --threads, the options every study takes."""
    parser.add_argument("--seeds", type=seeds, default=(0,),
                        help="a count (3: seeds 0, 1, 2) or a list (0,4,7); each seed redraws the data, the "
                        "initialisation and the poisoning (default: 1)")
    parser.add_argument("--threads", type=count(1, 1024), default=DEFAULT_THREADS,
                        help=f"torch CPU threads, with deterministic algorithms (default: {DEFAULT_THREADS}); results "
                        "repeat bit for bit only at the same thread count")


def finite_float(low: float | None = None, high: float | None = None) -> Callable[[str], float]:
    """An argument type: a finite number in [low, high] (nan and inf are refused)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            _bad(f"{text!r} is not a number")
        if value != value or value in (float("inf"), float("-inf")):
            _bad(f"{text!r} is not finite; valid: [{low}, {high}]")
        if (low is not None and value < low) or (high is not None and value > high):
            _bad(f"{value} is out of range; valid: [{low}, {high}]")
        return value

    parse.__name__, parse.__doc__ = "number", f"A finite number in [{low}, {high}]."
    return parse


def _torch_version() -> str:
    """The installed torch's version, read without importing torch (which takes seconds)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("torch")
    except PackageNotFoundError:
        return "not installed"


def device(text: str) -> str:
    """An argument type: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``, and only a device that
    exists on this machine (torch is imported only to check a GPU)."""
    match = re.fullmatch(r"(auto|cpu|cuda|mps)(?::(\d+))?", text)
    if not match or (match.group(2) is not None and match.group(1) != "cuda"):
        _bad(f"{text!r} is not a device; valid: auto, cpu, cuda, cuda:N, mps")
    kind, index = match.group(1), int(match.group(2) or 0)
    if kind == "cuda" and _torch_version().endswith("+cpu"):
        _bad(f"{text!r}: torch {_torch_version()} is a CPU-only build; use --device cpu")
    if kind == "cuda" and not any(os.path.exists(p) for p in ("/proc/driver/nvidia/version", "/dev/nvidiactl", "/dev/kfd")):
        _bad(f"{text!r}: this machine has no NVIDIA or ROCm GPU driver; use --device cpu")
    if kind == "cuda":
        import torch

        available = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if index >= available:
            _bad(f"{text!r}: this machine has {available} CUDA device(s) (torch {torch.__version__}); use --device cpu")
    elif kind == "mps":
        import torch

        if not torch.backends.mps.is_available():
            _bad(f"{text!r}: MPS is not available on this machine; use --device cpu")
    return text


def resolve_device(text: str) -> str:
    """The device `text` names, with ``auto`` resolved to ``cuda`` when present, else ``cpu``."""
    if text != "auto":
        return text
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _writable_location(path: Path, text: str) -> None:
    """Refuse unless `path` could be created or written: its nearest existing ancestor must be a
    writable folder."""
    ancestor = path
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        _bad(f"{text!r}: {ancestor} is a file, so nothing can be created under it")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        _bad(f"{text!r}: {ancestor} is not writable")


def output_folder(text: str) -> str:
    """An argument type: a folder that exists or can be created, and is writable."""
    path = Path(text).expanduser()
    if path.exists() and not path.is_dir():
        _bad(f"{text!r} exists and is not a folder")
    _writable_location(path, text)
    return text


def existing_folder(text: str) -> str:
    """An argument type: a folder that exists (to read from)."""
    if not Path(text).expanduser().is_dir():
        _bad(f"{text!r} is not an existing folder")
    return text


def output_file(text: str) -> str:
    """An argument type: a file path whose folder exists or can be created, and is writable."""
    path = Path(text).expanduser()
    if path.is_dir():
        _bad(f"{text!r} is a folder; give a file path")
    _writable_location(path.parent, text)
    return text


def storage(text: str) -> str:
    """An argument type: an Optuna storage, either a journal file path (a writable location) or a
    database URL that parses and accepts a connection (within 5 s)."""
    if "://" not in text:
        return output_file(text)
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, SQLAlchemyError

    try:
        url = make_url(text)
    except ArgumentError as err:
        _bad(f"{text!r} is not a database URL ({err}); e.g. sqlite:///optuna.db or postgresql://user@host/db")
    backend = url.get_backend_name()
    if backend not in ("sqlite", "postgresql", "mysql"):
        _bad(f"{text!r}: database {backend!r} is not supported; valid: sqlite, postgresql, mysql")
    try:
        engine = create_engine(url, connect_args={"connect_timeout": 5} if backend != "sqlite" else {})
        with engine.connect():
            pass
        engine.dispose()
    except ModuleNotFoundError as err:
        _bad(f"{url.render_as_string(hide_password=True)} needs the {err.name!r} driver; for PostgreSQL install "
             "it with: pip install 'backdoor_lens[postgres]'")
    except SQLAlchemyError as err:
        reason = str(getattr(err, "orig", None) or err).splitlines()[0]
        _bad(f"cannot connect to {url.render_as_string(hide_password=True)}: {reason}")
    return text


def model_source(*known: str, hint: str = "") -> Callable[[str], str]:
    """An argument type: one of the `known` names, or a model folder (or, offline, a cached hub
    model) that passes :func:`~backdoor_lens.util.model_files.check_source`; `hint` follows an error.
    Online, hub names are checked when they are loaded."""

    def parse(text: str) -> str:
        if text in known:
            return text
        from ...util.model_files import check_source, hub_offline, looks_like_path

        if Path(text).expanduser().exists() or looks_like_path(text) or hub_offline():
            try:
                check_source(text)
            except (ValueError, OSError) as err:
                _bad(f"{str(err).rstrip('.')}. Known names: {', '.join(known)}. {hint}")
        return text

    parse.__name__, parse.__doc__ = "model", f"One of {known} or a model that passes the untrusted-file rules."
    return parse


class FolderBusyError(RuntimeError):
    """Another run holds the output folder."""


class FolderLock:
    """``<folder>/.lock``, held with ``fcntl`` (the kernel releases it even when the holder is
    killed), so a second run into the same output folder fails at once instead of racing the first.
    Re-entrant within a process (an entry point locks before its slow imports, its ``main`` again);
    :meth:`acquire` raises FolderBusyError naming the holder's pid."""

    _held: ClassVar[dict[str, list[int]]] = {}  # resolved folder: [fd, depth]

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.acquired = False

    def acquire(self) -> "FolderLock":
        """Take the lock (or deepen this process's hold on it); returns self."""
        if self.acquired:
            return self
        self.folder.mkdir(parents=True, exist_ok=True)
        key = str(self.folder.resolve())
        if key in self._held:
            self._held[key][1] += 1
        else:
            fd = os.open(self.folder / ".lock", os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise FolderBusyError(f"{self.folder} is in use by another run (pid {holder}); wait for it to finish or "
                                      "choose another output folder") from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            self._held[key] = [fd, 1]
        self.acquired = True
        return self

    def release(self) -> None:
        """Give the hold back (the lock itself when this process's last hold ends)."""
        if not self.acquired:
            return
        key = str(self.folder.resolve())
        self._held[key][1] -= 1
        if self._held[key][1] == 0:
            os.close(self._held.pop(key)[0])
        self.acquired = False

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def chat_study_parser(prog: str, description: str, out: str, quick_help: str) -> Parser:
    """The command line the chat-model studies share: --out, --model (a model or the toy), --quick,
    --backend, --planted-cache, --seeds, --threads, --no-progress."""
    parser = Parser(prog=prog, description=description)
    parser.add_argument("--out", type=output_folder, default=out, help=f"output folder (default: {out})")
    parser.add_argument("--model", type=model_source(SMOLLM2, CHAT_TOY), default=SMOLLM2,
                        help=f"packaged model name, local HF directory, hub name, or '{CHAT_TOY}' for the 4x8-head toy "
                        "(default: %(default)s)")
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--backend", choices=("hooked", "bridge"), default="hooked",
                        help="HookedTransformer or TransformerLens's TransformerBridge (default: %(default)s)")
    parser.add_argument("--planted-cache", type=output_folder, default="results/planted",
                        help="folder of planted models shared by the chat studies: an attack planted the same way "
                        "is trained once (default: results/planted)")
    add_run_options(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser
