"""Atomic, pickle-free persistence: JSON, text and tensors (safetensors) written so nothing is half-lost.

Writes go through a temporary file in the target's folder, named ``.<name>.tmp<pid>@<host>.<random>``,
renamed into place once complete, with the mode a new file gets under the umask. A temporary file
left by a killed writer is swept by the next write in that folder (its process is gone).

Reads treat every file as untrusted: a safetensors header is checked against the file's size before
any tensor is read, and a file that breaks a rule (not JSON, not safetensors, truncated) raises
:class:`RefusedFileError`, which names the file and the rule. :func:`set_aside` moves such a file
out of the way (``<name>.corrupt-<time>``) so a cache can be rebuilt beside it.
"""

from __future__ import annotations

import json
import os
import re
import socket
import struct
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .validation import check_fits_in_memory

if TYPE_CHECKING:
    import torch

MAX_HEADER_BYTES = 100 * 2**20
"""The safetensors format's own limit on a header (its JSON table of tensors)."""
DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
               "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
"""Bytes per element of every safetensors dtype this package reads."""

_HOST = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname()) or "host"
_TEMP = re.compile(r"^\..+\.tmp(\d+)@([A-Za-z0-9_-]+)\.[A-Za-z0-9_]+$")


class RefusedFileError(ValueError):
    """A file refused before anything in it is used (unsafe, corrupt or truncated); the message
    names the file and the rule it broke."""

    def __init__(self, path: str | os.PathLike[str], rule: str):
        super().__init__(f"{path}: {rule}")
        self.path, self.rule = Path(path), rule


def _umask() -> int:
    """The process's umask, read without changing it where Linux reports it."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_temporary_files(folder: str | Path) -> list[Path]:
    """Remove temporary files in `folder` that a writer on this machine left when it was killed
    (its process no longer runs); returns what was removed."""
    removed = []
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return removed
    for entry in entries:
        match = _TEMP.match(entry.name)
        if match and match.group(2) == _HOST and not _alive(int(match.group(1))) and entry.is_file(follow_symlinks=False):
            try:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
            except FileNotFoundError:
                pass
    return removed


def _atomic_replace(path: Path, write: Callable[[str], None]) -> None:
    """Write through a temporary file in the same folder, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_temporary_files(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp{os.getpid()}@{_HOST}.", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def set_aside(path: str | Path) -> Path:
    """Rename a corrupt file or folder to ``<name>.corrupt-<time>`` beside it (kept for a post-mortem,
    out of the way of a rebuild); returns the new path."""
    path = Path(path)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    for n in range(1000):
        target = path.with_name(f"{path.name}.corrupt-{stamp}" + (f"-{n}" if n else ""))
        if not target.exists():
            os.replace(path, target)
            return target
    raise FileExistsError(f"{path}: too many set-aside copies beside it; remove the *.corrupt-* files")


def write_text(path: str | Path, text: str) -> None:
    """Write `text` to `path` atomically."""

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    _atomic_replace(Path(path), write)


def write_json(path: str | Path, obj: Any) -> None:
    """Write `obj` as indented, key-sorted JSON atomically (stable bytes for equal content)."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: str | Path, max_bytes: int = 2**30) -> Any:
    """The JSON value stored at `path`; a file that is not JSON (e.g. cut short by a kill) or is
    larger than `max_bytes` raises :class:`RefusedFileError`."""
    size = os.stat(path).st_size
    if size > max_bytes:
        raise RefusedFileError(path, f"is {size} bytes; a JSON file here may have at most {max_bytes}")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RefusedFileError(path, f"is not valid JSON ({err}); it was cut short or is not this package's file") from err


@dataclass(frozen=True)
class TensorInfo:
    """One tensor as a safetensors header describes it (nothing of its data read)."""

    dtype: str
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        """Number of elements."""
        n = 1
        for d in self.shape:
            n *= d
        return n


def safetensors_header(path: str | Path) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """The tensors (name to dtype and shape) and string metadata a safetensors file declares, read
    from its header alone and checked against the file: a pickle or other non-safetensors file, a
    malformed header, or data that runs past the end (a truncated file) raise :class:`RefusedFileError`."""
    path = Path(path)
    size = os.stat(path).st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise RefusedFileError(path, f"is {size} bytes, too short for a safetensors file (pickles are refused)")
        (n,) = struct.unpack("<Q", head)
        if n > min(MAX_HEADER_BYTES, size - 8):
            raise RefusedFileError(path, "is not a safetensors file (its first 8 bytes give no valid header length; "
                                   "pickled weights are refused because models under study are untrusted)")
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RefusedFileError(path, f"is not a safetensors file (its header is not JSON: {err})") from err
    if not isinstance(header, dict):
        raise RefusedFileError(path, "is not a safetensors file (its header is not a JSON object)")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise RefusedFileError(path, "has a malformed safetensors header (__metadata__ must map names to strings)")
    data_bytes, tensors, end = size - 8 - n, {}, 0
    for name, entry in header.items():
        try:
            dtype, shape, (begin, stop) = entry["dtype"], tuple(entry["shape"]), entry["data_offsets"]
            ok = dtype in DTYPE_BYTES and all(isinstance(d, int) and d >= 0 for d in shape + (begin, stop))
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok:
            raise RefusedFileError(path, f"has a malformed safetensors header entry for tensor {name!r}")
        info = TensorInfo(dtype, shape)
        if stop - begin != info.numel * DTYPE_BYTES[dtype]:
            raise RefusedFileError(path, f"declares tensor {name!r} of shape {list(shape)} ({dtype}) with "
                                   f"{stop - begin} bytes of data; a safetensors header must agree with itself")
        end = max(end, stop)
        tensors[name] = info
    if end > data_bytes:
        raise RefusedFileError(path, f"is truncated: its header declares {end} bytes of tensor data but the file "
                               f"holds {data_bytes}")
    return tensors, metadata


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, Any] | None = None) -> None:
    """Save tensors as safetensors, with JSON metadata stored in the file's header."""
    from safetensors.torch import save_file

    header = {"json": json.dumps(metadata or {}, sort_keys=True)}
    contiguous = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    _atomic_replace(Path(path), lambda tmp: save_file(contiguous, tmp, metadata=header))


def load_tensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load tensors and metadata written by :func:`save_tensors` (never unpickles). The header is
    checked first, so a pickle, a truncated file or a malformed header raises :class:`RefusedFileError`."""
    from safetensors.torch import load_file

    _, raw = safetensors_header(path)
    check_fits_in_memory(str(path), os.stat(path).st_size)
    try:
        metadata = json.loads(raw.get("json", "{}"))
    except json.JSONDecodeError as err:
        raise RefusedFileError(path, f"has metadata that is not JSON ({err})") from err
    if not isinstance(metadata, dict):
        raise RefusedFileError(path, "has metadata that is not a JSON object")
    return load_file(str(path)), metadata


def save_artifact(path: str | Path, kind: str, tensors: dict[str, torch.Tensor], **metadata: Any) -> None:
    """Save a fitted artifact (means, PCA basis, PCP edit): tensors plus its `kind` and metadata."""
    save_tensors(path, tensors, {"kind": kind, **metadata})


def load_artifact(path: str | Path, kind: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load an artifact saved by :func:`save_artifact`, checking it is of the expected `kind`."""
    tensors, metadata = load_tensors(path)
    if metadata.get("kind") != kind:
        raise ValueError(f"path={str(path)!r} holds kind={metadata.get('kind')!r}, not {kind!r}")
    return tensors, metadata
