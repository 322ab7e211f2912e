"""Did the backdoor take? One check that the demo toys, the studies and :func:`~backdoor_lens.lab.plant.plant_backdoor` share:
it warns (or, with ``strict=True``, raises) when a planted backdoor is weaker than asked, so a study
never silently analyses a model with nothing in it."""

from __future__ import annotations

import warnings
from collections.abc import Mapping


class BackdoorNotPlantedWarning(UserWarning):
    """A planted backdoor is weaker than the planting check asks."""


class BackdoorNotPlantedError(RuntimeError):
    """A planted backdoor is weaker than the planting check asks, and the check was strict."""


def check_planted(
    what: str,
    measured: Mapping[str, float],
    at_least: Mapping[str, float] | None = None,
    at_most: Mapping[str, float] | None = None,
    strict: bool = False,
) -> list[str]:
    """Compare `measured` rates (e.g. ``{"p+t": 0.9, "p+p": 0.0}`` or ``{"asr": 0.8}``) with their
    bounds; returns the failures (empty when the backdoor took), after warning about them, or raising
    :class:`BackdoorNotPlantedError` when `strict`. `what` names the model in the message."""
    failures = []
    for bounds, compare, word in ((at_least or {}, float.__ge__, ">="), (at_most or {}, float.__le__, "<=")):
        for name, bound in bounds.items():
            if name not in measured:
                raise ValueError(f"the planting check needs {name!r}; measured has {sorted(measured)}")
            if not compare(float(measured[name]), float(bound)):
                failures.append(f"{name} = {measured[name]:.3f} (wanted {word} {bound})")
    if failures:
        message = (f"{what}: the backdoor did not take as asked: {'; '.join(failures)}. Train longer, poison more rows "
                   "or raise the learning rate; results on this model say little about a backdoor.")
        if strict:
            raise BackdoorNotPlantedError(message)
        warnings.warn(message, BackdoorNotPlantedWarning, stacklevel=2)
    return failures
