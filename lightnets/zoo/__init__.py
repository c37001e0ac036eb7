"""Zoo checkpoint importers: torchvision, timm, paddle.vision and keras.applications models <-> canonical weights.

- :mod:`.entries`: the zoo tables (``ZOO``, ``ZOOS``, :func:`entry`, :func:`list_zoo`): which zoo model
  is which lightnets id, with the zoo's BN eps/momentum, preprocessing, padding and weight layouts;
- :mod:`.matcher`: the one positional name matcher (:func:`match`, :func:`name_map`, templates);
- :mod:`.convert`: :func:`import_zoo` (with the float64 probe), :func:`export_zoo`, :func:`load_native`,
  :func:`read_checkpoint` (zoo checkpoint files, for ``lightnets.port``) and :func:`detect`.

Every framework step goes through the backend object of the zoo's framework; numpy only at import
time, frameworks are imported inside the entries' constructors and the backends.
"""

from .convert import (  # noqa: F401
    FLOAT32_FLOOR,
    FLOAT32_NOISE_FACTOR,
    INEXACT_FLOAT64_FACTOR,
    PROBE_FLOAT64,
    PROBE_SEED,
    PROBE_SIZE,
    detect,
    detect_file,
    export_zoo,
    import_zoo,
    keras_state_dict,
    load_native,
    probe,
    read_checkpoint,
    zoo_forward,
)
from .entries import (  # noqa: F401
    FRAMEWORKS,
    IMAGENET,
    INCEPTION,
    KERAS,
    KERAS_PADDING,
    KERAS_TF,
    KERAS_V3,
    PADDING,
    PADDLE,
    TIMM,
    TORCHVISION,
    ZOO,
    ZOOS,
    ZooEntry,
    entry,
    list_zoo,
    parse_zoo_name,
)
from .matcher import (  # noqa: F401
    classifier_param,
    match,
    name_map,
    template,
    with_bn,
    zoo_graph,
)
