"""The two test profiles, one fact each: ``make test`` (quick) and ``LIGHTNETS_SLOW=1`` (long).

The quick profile runs the every-id checks over the smallest id of each family; the long profile
(and ``make parity``) over every registered id.
"""

import os

import lightnets

SLOW = os.environ.get("LIGHTNETS_SLOW") == "1"
SMALLEST_OF_EACH_FAMILY = tuple(min(lightnets.list_models(f), key=lambda m: lightnets.get_spec(m).num_params())
                                for f in lightnets.registry.families())


def ids(*more: str) -> list[str]:
    """Every id in the long profile; else the smallest id of each family plus ``more``."""
    return lightnets.list_models() if SLOW else sorted({*SMALLEST_OF_EACH_FAMILY, *more})
