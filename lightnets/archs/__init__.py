"""Architectures as paper tables plus one builder per family.

Each family module defines ``FAMILY``, ``build(name, num_classes, input_size, include_top, **variant)``
and ``VARIANTS`` (model id -> the variant's keyword arguments); the registry reads them. ``FEATURES`` (a
``common.FeaturePoint`` tuple), or ``features(meta)`` where the taps depend on the variant (the graph's meta -> its
tuple), mark where each stage ends: the backbone outputs of ``lightnets.build(..., features=True)``
(``lightnets.features``).
"""

from . import (
    efficientnet,
    ghostnet,
    ghostnet_v2,
    lcnet,
    mixnet,
    mnasnet,
    mobilenet_v1,
    mobilenet_v2,
    mobilenet_v3,
    mobilenet_v4,
    mobileone,
    repghost,
    shufflenet_v1,
    shufflenet_v2,
)

FAMILIES = (mobilenet_v1, mobilenet_v2, mobilenet_v3, shufflenet_v1, shufflenet_v2, ghostnet, mnasnet, lcnet,
            efficientnet, mixnet, mobilenet_v4, mobileone, repghost, ghostnet_v2)
