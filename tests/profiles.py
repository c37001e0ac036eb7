"""The two test profiles, one fact each: ``make test`` (quick) and ``LIGHTNETS_SLOW=1`` (long).

The quick profile runs the every-id checks over the smallest id of each family (or of each variant); the
long profile (and ``make parity``) over every registered id.
"""

import os
import re
from collections.abc import Callable, Iterable

import lightnets

SLOW = os.environ.get("LIGHTNETS_SLOW") == "1"
SMALLEST_OF_EACH_FAMILY = tuple(min(lightnets.list_models(f), key=lambda m: lightnets.get_spec(m).num_params())
                                for f in lightnets.registry.families())


def ids(*more: str) -> list[str]:
    """Every id in the long profile; else the smallest id of each family plus ``more``."""
    return lightnets.list_models() if SLOW else sorted({*SMALLEST_OF_EACH_FAMILY, *more})


def variant(model_id: str) -> str:
    """An id without its width multiplier (``mobilenet_v3_large_075_paddle`` -> ``mobilenet_v3_large_paddle``):
    the ids of one variant have the same graph but for channel counts."""
    return re.sub(r"_\d{3}(?=_|$)", "", model_id)


def smallest_of_each_variant(keys: Iterable, arch: Callable = lambda k: k, source: Callable = lambda k: None) -> list:
    """Every key in the long profile; else, of the keys of one ``source`` and one :func:`variant` of their
    ``arch`` id, the one of fewest parameters (in the order of ``keys``)."""
    keys = list(keys)
    if SLOW:
        return keys
    groups: dict = {}
    for k in keys:
        groups.setdefault((source(k), variant(arch(k))), []).append(k)
    best = {min(g, key=lambda k: lightnets.get_spec(arch(k)).num_params()) for g in groups.values()}
    return [k for k in keys if k in best]
