"""Model ids -> spec builders: the variants every family of ``lightnets.archs`` declares, plus any registered."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from .archs import FAMILIES
from .errors import SpecError, UnknownModelError
from .graph import Graph


class Entry(NamedTuple):
    """A registered id: the family builder and the keyword arguments that pick the variant."""

    family: str
    builder: Callable[..., Graph]
    kwargs: dict


_REGISTRY: dict[str, Entry] = {}


def register(model_id: str, family: str, builder: Callable[..., Graph], **kwargs) -> None:
    """Register ``model_id``; registering an id twice is a programming error and raises."""
    if model_id in _REGISTRY:
        raise SpecError(f"model id {model_id!r} is already registered (by family {_REGISTRY[model_id].family!r})")
    _REGISTRY[model_id] = Entry(family, builder, kwargs)


for _family in FAMILIES:
    for _id, _kwargs in _family.VARIANTS.items():
        register(_id, _family.FAMILY, _family.build, **_kwargs)


def list_models(family: str | None = None) -> list[str]:
    """Every registered id (optionally of one family), sorted."""
    return sorted(k for k, e in _REGISTRY.items() if family is None or e.family == family)


def families() -> list[str]:
    return sorted({e.family for e in _REGISTRY.values()})


def entry(model_id: str) -> Entry:
    if not isinstance(model_id, str):
        raise SpecError(f"a model id must be a string such as 'mobilenet_v2_100', got {type(model_id).__name__} "
                        f"{model_id!r}; run `lightnets list` to see the registered ids")
    if model_id not in _REGISTRY:
        raise UnknownModelError(model_id, sorted(_REGISTRY))
    return _REGISTRY[model_id]


def get_spec(model_id: str, num_classes: int = 1000, input_size: int = 224, include_top: bool = True,
             **unsupported) -> Graph:
    """The graph of ``model_id`` for the given classifier size and square input size.

    Width, groups and other variant choices are part of the id (``mobilenet_v2_050``,
    ``shufflenet_v1_g8_100``); passing them as keywords raises SpecError listing the family's ids.
    """
    e = entry(model_id)
    if unsupported:
        raise SpecError(f"get_spec({model_id!r}) got unsupported argument(s) {sorted(unsupported)}; width, groups "
                        f"and other variants are chosen by the model id - the {e.family} ids are: "
                        f"{', '.join(list_models(e.family))}")
    if not isinstance(include_top, bool):
        raise SpecError(f"include_top must be True or False, got {include_top!r}")
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise SpecError(f"num_classes must be a positive int, got {num_classes!r}")
    if not isinstance(input_size, int) or isinstance(input_size, bool) or input_size < 32:
        raise SpecError(f"input_size must be an int >= 32, got {input_size!r}; these nets downsample 32x")
    return e.builder(name=model_id, num_classes=num_classes, input_size=input_size,
                     include_top=include_top, **e.kwargs)
