"""Utilities every layer uses: atomic, pickle-free files; argument checks with clear errors;
fingerprints that key saved results; files that ship inside packages."""

from .fingerprint import fingerprint, tensor_digest, weights_digest
from .io import load_artifact, load_tensors, read_json, save_artifact, save_tensors, write_json, write_text
from .packages import package_dir, package_file
from .validation import check_choice, check_finite, check_last_dim, check_names, check_nonempty, check_range

__all__ = [
    "fingerprint", "tensor_digest", "weights_digest",
    "load_artifact", "load_tensors", "read_json", "save_artifact", "save_tensors", "write_json", "write_text",
    "package_dir", "package_file",
    "check_choice", "check_finite", "check_last_dim", "check_names", "check_nonempty", "check_range",
]
