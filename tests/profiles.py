"""The two test profiles, one fact each: ``make test`` (quick) and ``LIGHTNETS_SLOW=1`` (long).

The quick profile runs the every-id checks over the smallest id of each family (or of each variant); the
long profile (and ``make parity``) over every registered id.
"""

import os
import re
from collections.abc import Callable, Iterable

import lightnets

SLOW = os.environ.get("LIGHTNETS_SLOW") == "1"
# The families whose every-zoo-entry tests run in full in the quick profile and whose smallest id runs in the quick
# parity matrix. A family added since (issue 23: MNASNet, LCNet, ...) runs there the smallest zoo entry of each
# variant (every one in the long profile): `make test` is at its 15 minute budget.
FULL_FAMILIES = ("mobilenet_v1", "mobilenet_v2", "mobilenet_v3", "shufflenet_v1", "shufflenet_v2", "ghostnet")
SMALLEST_OF_EACH_FAMILY = tuple(min(lightnets.list_models(f), key=lambda m: lightnets.get_spec(m).num_params())
                                for f in lightnets.registry.families())
# The quick parity matrix (every target, float32/float64, train mode) runs the smallest id of each of FULL_FAMILIES
# (every family with LIGHTNETS_SLOW=1 and in `make parity`). A family added since adds no op to it that the matrix's
# op cases do not run in every target; its smallest id of each variant runs in the every-id test (torch, paddle).
# (EfficientNet-Lite0 and MixNet-S alone cost ~110 s in the matrix, measured under load.)
MATRIX_MODELS = tuple(m for m in SMALLEST_OF_EACH_FAMILY if SLOW or lightnets.registry.entry(m).family in FULL_FAMILIES)


def ids(*more: str) -> list[str]:
    """Every id in the long profile; else the smallest id of each family plus ``more``."""
    return lightnets.list_models() if SLOW else sorted({*SMALLEST_OF_EACH_FAMILY, *more})


def full_ids(*more: str) -> list[str]:
    """Every id in the long profile; else the smallest id of each of FULL_FAMILIES plus ``more`` (for the checks
    whose per-id cost is a keras build: a family added since adds no weight kind the op cases do not cover)."""
    return lightnets.list_models() if SLOW else sorted({*MATRIX_MODELS, *more})


def input_size(model_id: str, size: int) -> int:
    """``size``, or the next size the model takes: GhostNetV2's DFC attention pools its stride-32 map 2x2 (timm's too:
    torch refuses a 2x2 pool of a 1x1 map), so ghostnet_v2_* need >= 33 px where the other families run at 32."""
    for s in range(size, size + 64):
        try:
            lightnets.get_spec(model_id, input_size=s)
            return s
        except lightnets.errors.SpecError:
            continue
    raise AssertionError(f"{model_id} builds at no input size in [{size}, {size + 64})")


def train_size(model_id: str, size: int = 64) -> int:
    """``size``, or the next multiple of 32 at which every batch norm of the id sees a map of >= 2x2 (8 values per
    channel at batch 2): float32 train-mode statistics over 2 values per channel measured up to 3.3e-4 against the
    1e-4 bound (GhostNetV2's DFC BNs, 1x1 maps at 64 px: it runs at 128)."""
    s = size
    # a BN of a pooled map (MobileNetV4's head) is 1x1 at every size: parity.cases.case_batch gives it a batch of 4
    big = lightnets.get_spec(model_id, input_size=4 * size)
    pooled = {n.name for n in big.nodes if n.op == "batch_norm" and big.shapes[n.inputs[0]][1:] == (1, 1)}
    while True:
        g = lightnets.get_spec(model_id, input_size=s)
        if all(g.shapes[n.inputs[0]][1] * g.shapes[n.inputs[0]][2] >= 4 for n in g.nodes
               if n.op == "batch_norm" and n.name not in pooled):
            return s
        s += 32


def variant(model_id: str) -> str:
    """An id without its width multiplier (``mobilenet_v3_large_075_paddle`` -> ``mobilenet_v3_large_paddle``) or its
    compound-scaling index (``efficientnet_lite3_tf`` -> ``efficientnet_lite_tf``; ``mixnet_l``, MixNet-M at width
    1.3, -> ``mixnet_m``) or its size (``mobileone_s3`` -> ``mobileone``; MobileNetV4 ``conv_large`` ->
    ``conv_medium``, whose block kinds it has): the ids of one variant have the same kinds of blocks but for channel
    counts (and repeats per stage, kernel sizes, branch counts, which blocks have SE). MobileNetV4's conv small and
    medium stay two variants. (conv_large cost ~65 s in test_zoo and ~59 s in test_zoo_calibrated here, measured
    under load.)"""
    model_id = re.sub(r"^(efficientnet_(?:b|lite))\d(?=_|$)", r"\1", re.sub(r"_\d{3}(?=_|$)", "", model_id))
    model_id = re.sub(r"^(mobileone)_s\d(?=_|$)", r"\1", model_id)
    model_id = re.sub(r"^mobilenet_v4_conv_large(?=_|$)", "mobilenet_v4_conv_medium", model_id)
    return re.sub(r"^mixnet_l(?=_|$)", "mixnet_m", model_id)


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


def _full(model_id: str) -> bool:
    return lightnets.registry.entry(model_id).family in FULL_FAMILIES


def every_id() -> list[str]:
    """The ids of the every-id parity test: the smallest id of each :func:`variant` (every id in the long profile;
    86 -> 39 ids in the quick one, whose 15 minutes the new families filled). The ids of one variant differ in
    channel counts only, and every width is still checked in `make test`: params against the twins
    (test_archs) and, for FULL_FAMILIES, every zoo entry run against its zoo model (test_zoo)."""
    return sorted(smallest_of_each_variant(lightnets.list_models()))


def every_zoo_key(keys: Iterable, arch: Callable) -> list:
    """Zoo keys ``(zoo, name)`` of the every-entry tests, in the order of ``keys``: every key whose ``arch`` id is of
    ``FULL_FAMILIES``, of another family the smallest entry of each zoo and variant (every key in the long profile)."""
    keys = list(keys)
    quick = smallest_of_each_variant([k for k in keys if not _full(arch(k))], arch=arch, source=lambda k: k[0])
    return [k for k in keys if _full(arch(k)) or k in quick]
