"""Architectures as paper tables plus one builder per family; importing this registers them all."""

from . import ghostnet, mobilenet_v1, mobilenet_v2, mobilenet_v3, shufflenet_v1, shufflenet_v2  # noqa: F401
