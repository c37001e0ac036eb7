"""The zoo tables: which torchvision / timm / paddle.vision / keras.applications model is which lightnets id.

One row per zoo model: ``(zoo, name) -> ZooEntry(arch, framework, make, preprocessing, bn_eps,
bn_momentum, padding, classifier_activation, layouts)``. The lightnets ids and the zoo model names
are spelled out literally (grep for either). ``make(num_classes, input_size)`` builds the zoo model
with random weights (never downloads); it is the only place the zoo imports a framework.

``layouts`` names (from :mod:`lightnets.layouts`) how the zoo stores each kind of weight: a conv, a
depthwise conv, a linear, and a linear that the zoo writes as a 1x1 conv (timm ``conv_head``,
keras.applications MobileNet heads). The imported graph always carries the zoo's BN eps/momentum
(IR convention: new = (1-m)·old + m·batch) and outputs logits.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import numpy as np

from ..errors import LightnetsError

IMAGENET = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225), "scale": 1 / 255,
            "channels": "RGB", "layout": "NCHW"}
INCEPTION = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "scale": 1 / 255,
             "channels": "RGB", "layout": "NCHW"}
PADDING = "symmetric (k//2 on every side, as torch/paddle padding=k//2)"
KERAS_PADDING = ("TF 'same' (odd pixel bottom/right) for the stem and stride-1 convs; strided depthwise "
                 "convs ZeroPadding2D + 'valid': correct_pad (MobileNetV2/V3) or ((0, 1), (0, 1)) "
                 "(MobileNet); pads computed from the input size")
# keras.applications.mobilenet(_v2).preprocess_input, mode "tf": x / 127.5 - 1 on RGB 0..255
KERAS_TF = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "scale": 1 / 255, "channels": "RGB",
            "layout": "NHWC", "input_range": (0, 255), "rescale": (1 / 127.5, -1.0),
            "in_model": False, "source": "keras.applications.{mobilenet,mobilenet_v2}.preprocess_input "
                                         "(mode 'tf': x / 127.5 - 1)"}
# keras.applications MobileNetV3: Rescaling(scale=1/127.5, offset=-1) inside the model when
# include_preprocessing=True (the default); the graph has no rescale op, so apply it before the graph
KERAS_V3 = {**KERAS_TF, "in_model": "Rescaling(scale=1/127.5, offset=-1.0) when include_preprocessing=True",
            "source": "keras.applications.MobileNetV3*(include_preprocessing=True) Rescaling layer"}
# keras.applications EfficientNetB0..B7 normalise inside the model: Rescaling(1/255) -> Normalization(axis=-1),
# (x - mean) / max(sqrt(variance), 1e-7), and with weights="imagenet" a third layer Rescaling(1/sqrt(std)): keras'
# imagenet file stores the ImageNet std (0.229, 0.224, 0.225) as the Normalization's *variance*
# (tensorflow#49930), so that layer alone divides by sqrt(std), the third by sqrt(std) again: net
# (x / 255 - mean) / std. weights=None builds neither the third layer nor a set Normalization (mean 0, variance 1:
# x / 255 only); the zoo's twin (KERAS["EfficientNetB*"].make) sets mean and variance = std**2, the imagenet
# model's function. An imported model's card holds the mean/std its own layers compute.
KERAS_EFFICIENTNET = {
    **IMAGENET, "layout": "NHWC", "input_range": (0, 255), "in_model_mean_std": True,
    "in_model": "Rescaling(1/255) -> Normalization(mean, variance) [-> Rescaling(1/sqrt(std)) when built with "
                "weights='imagenet', whose file holds variance = std (0.229, 0.224, 0.225), not std**2]: "
                "(x / 255 - mean) / std; mean/std here are the model's own (a weights=None model: mean 0, std 1)",
    "source": "keras.applications.efficientnet (Rescaling + Normalization layers inside the model; "
              "preprocess_input is the identity)"}
KERAS_EFFICIENTNET_PADDING = ("TF 'same' for stride-1 convs; the stem conv and strided depthwise convs "
                              "ZeroPadding2D(correct_pad) + 'valid', which is TF 'same' at every input size; pads "
                              "computed from the input size")

# how each zoo stores weights: kind -> layout of lightnets.layouts
TORCH_LAYOUTS = {"conv": "id", "depthwise": "id", "linear": "id", "conv_as_linear": "conv1x1"}
PADDLE_LAYOUTS = {**TORCH_LAYOUTS, "linear": "T"}  # paddle.nn.Linear weight is (in, out)
KERAS_LAYOUTS = {"conv": "khwio", "depthwise": "khwcm", "linear": "T", "conv_as_linear": "k11io"}


class ZooEntry(NamedTuple):
    """One zoo model: the lightnets id, how to build the zoo model, and the zoo's conventions.

    ``make(num_classes, input_size)`` builds the zoo model with random weights (never downloads;
    only keras.applications models depend on ``input_size``). ``bn_eps`` and ``bn_momentum`` (IR
    convention) are the zoo's values; the imported graph carries them even where the id's differ.
    ``fixed_input``: the zoo model is built for one input size (probe it at that size).
    ``float64_exact``: the zoo model cast to float64 computes the graph's function up to summation
    order; False where the zoo's float64 kernels keep float32 or decimal constants (the probe then
    bounds its float64 error by the graph's float32 noise, see ``lightnets.zoo.convert``).
    """

    arch: str
    framework: str  # the lightnets backend whose framework runs the zoo model
    make: Callable[..., Any]
    preprocessing: Mapping[str, Any]
    bn_eps: float
    bn_momentum: float
    padding: str = PADDING
    classifier_activation: str = "linear"  # the zoo's default head; the graph always outputs logits
    layouts: Mapping[str, str] = TORCH_LAYOUTS
    fixed_input: bool = False
    float64_exact: bool = True
    # the form of the arch's graph the zoo model holds: "train" (the id's graph), "reparameterize"
    # (lightnets.transforms.reparameterize of it) or "inference" (reparameterize + fold_batch_norm): a twin
    # after timm.utils.model.reparameterize_model (the "<name>_reparam" entries)
    form: str = "train"


def _torchvision(ctor: str, **kw):
    def make(num_classes: int = 1000, input_size: int = 224):
        import torchvision
        return getattr(torchvision.models, ctor)(weights=None, num_classes=num_classes, **kw)
    return make


def _timm(name: str):
    def make(num_classes: int = 1000, input_size: int = 224):
        import timm
        return timm.create_model(name, pretrained=False, num_classes=num_classes)
    return make


def _timm_reparam(name: str):
    def make(num_classes: int = 1000, input_size: int = 224):
        import timm
        from timm.utils.model import reparameterize_model
        return reparameterize_model(timm.create_model(name, pretrained=False, num_classes=num_classes).eval())
    return make


def _tm_rep(arch, name, form):
    """The timm twin ``name`` (train form) and ``<name>_reparam``: it after ``reparameterize_model``, whose graph is
    the ``form`` of ``arch``'s."""
    return {("timm", name): _tm(arch, name),
            ("timm", f"{name}_reparam"): ZooEntry(arch, "torch", _timm_reparam(name), IMAGENET, 1e-5, 0.1, form=form)}


def _paddle(ctor: str, **kw):
    def make(num_classes: int = 1000, input_size: int = 224):
        import paddle.vision.models as pm
        return getattr(pm, ctor)(pretrained=False, num_classes=num_classes, **kw)
    return make


def _keras(ctor: str, **kw):
    def make(num_classes: int = 1000, input_size: int = 224):
        import keras
        extra = {"include_preprocessing": False} if ctor.startswith("MobileNetV3") else {}
        model = getattr(keras.applications, ctor)(weights=None, classes=num_classes, classifier_activation=None,
                                                  input_shape=(input_size, input_size, 3), **extra, **kw)
        if ctor.startswith("EfficientNet"):  # the imagenet model's in-model normalisation (KERAS_EFFICIENTNET)
            norm = next(la for la in model.layers if isinstance(la, keras.layers.Normalization))
            norm.set_weights([np.asarray(IMAGENET["mean"]), np.square(IMAGENET["std"]), np.asarray(0)])
            norm.finalize_state()  # the layer computes with the values taken at build (or load) time
        return model
    return make


def _tv(arch, ctor, eps=1e-5, momentum=0.1, **kw):
    return ZooEntry(arch, "torch", _torchvision(ctor, **kw), IMAGENET, eps, momentum)


def _tm(arch, name, pre=IMAGENET, **kw):
    return ZooEntry(arch, "torch", _timm(name), pre, 1e-5, 0.1, **kw)


# timm tf_* ports of TF checkpoints: BN eps 1e-3 (BN_EPS_TF_DEFAULT; momentum stays 0.1), the pretrained_cfg's
# mean/std (inception's for tf_efficientnet_lite*, imagenet's for tf_efficientnet_b* / tf_mixnet_*) and pad_type
# "same" (Conv2dSame: TF "same" resolved from the input size, the odd pixel bottom/right)
TIMM_TF_PADDING = "TF 'same' on every conv (timm Conv2dSame / static same pads), pads computed from the input size"


def _tm_tf(arch, name, pre=INCEPTION):
    return ZooEntry(arch, "torch", _timm(name), pre, 1e-3, 0.1, TIMM_TF_PADDING)


# paddle.vision in float64 is not exact: paddle's batch_norm takes epsilon as a float32 attribute (measured:
# mobilenet_v1 with data-calibrated BN, float64 vs the reference 2.2e-9; 2.2e-15 with eps rounded to float32)
# and nn.Hardsigmoid/Hardswish use slope 0.1666667 (MobileNetV3: up to 1.2e-5 with calibrated BN)
def _pd(arch, ctor, eps=1e-5, momentum=0.1, **kw):  # paddle momentum 0.9 (0.99) = IR 0.1 (0.01)
    return ZooEntry(arch, "paddle", _paddle(ctor, **kw), IMAGENET, eps, momentum, layouts=PADDLE_LAYOUTS,
                    float64_exact=False)


def _ka(arch, ctor, momentum, pre=KERAS_TF, **kw):  # keras momentum 0.99 (0.999) = IR 0.01 (0.001)
    return ZooEntry(arch, "keras", _keras(ctor, **kw), pre, 1e-3, momentum, KERAS_PADDING, "softmax",
                    KERAS_LAYOUTS, fixed_input=True)


TORCHVISION = {
    ("torchvision", "mobilenet_v2"): _tv("mobilenet_v2_100", "mobilenet_v2"),
    ("torchvision", "mobilenet_v3_large"): _tv("mobilenet_v3_large_100", "mobilenet_v3_large", 1e-3, 0.01),
    ("torchvision", "mobilenet_v3_small"): _tv("mobilenet_v3_small_100", "mobilenet_v3_small", 1e-3, 0.01),
    # torchvision's width_mult rounds every table width on its own, like paddle.vision
    ("torchvision", "mobilenet_v3_large_075"): _tv("mobilenet_v3_large_075_paddle", "mobilenet_v3_large",
                                                   1e-3, 0.01, width_mult=0.75),
    ("torchvision", "mobilenet_v3_small_075"): _tv("mobilenet_v3_small_075_paddle", "mobilenet_v3_small",
                                                   1e-3, 0.01, width_mult=0.75),
    ("torchvision", "shufflenet_v2_x0_5"): _tv("shufflenet_v2_050", "shufflenet_v2_x0_5"),
    ("torchvision", "shufflenet_v2_x1_0"): _tv("shufflenet_v2_100", "shufflenet_v2_x1_0"),
    ("torchvision", "shufflenet_v2_x1_5"): _tv("shufflenet_v2_150", "shufflenet_v2_x1_5"),
    ("torchvision", "shufflenet_v2_x2_0"): _tv("shufflenet_v2_200", "shufflenet_v2_x2_0"),
    # MNASNet-B1; BN momentum 1 - 0.9997 (torchvision's _BN_MOMENTUM)
    ("torchvision", "mnasnet0_5"): _tv("mnasnet_b1_050", "mnasnet0_5", 1e-5, 1 - 0.9997),
    ("torchvision", "mnasnet0_75"): _tv("mnasnet_b1_075", "mnasnet0_75", 1e-5, 1 - 0.9997),
    ("torchvision", "mnasnet1_0"): _tv("mnasnet_b1_100", "mnasnet1_0", 1e-5, 1 - 0.9997),
    ("torchvision", "mnasnet1_3"): _tv("mnasnet_b1_130", "mnasnet1_3", 1e-5, 1 - 0.9997),
    # EfficientNet B0-B3: torchvision's BN is nn.BatchNorm2d's default (eps 1e-5, momentum 0.1)
    ("torchvision", "efficientnet_b0"): _tv("efficientnet_b0", "efficientnet_b0"),
    ("torchvision", "efficientnet_b1"): _tv("efficientnet_b1", "efficientnet_b1"),
    ("torchvision", "efficientnet_b2"): _tv("efficientnet_b2", "efficientnet_b2"),
    ("torchvision", "efficientnet_b3"): _tv("efficientnet_b3", "efficientnet_b3"),
}
TIMM = {  # timm builds every BN with eps 1e-5 (lightnets' MobileNetV3 ids default to 1e-3)
    ("timm", "ghostnet_050"): _tm("ghostnet_050", "ghostnet_050"),
    ("timm", "ghostnet_100"): _tm("ghostnet_100", "ghostnet_100"),
    ("timm", "ghostnet_130"): _tm("ghostnet_130", "ghostnet_130"),
    ("timm", "ghostnetv2_100"): _tm("ghostnet_v2_100", "ghostnetv2_100"),
    ("timm", "ghostnetv2_130"): _tm("ghostnet_v2_130", "ghostnetv2_130"),
    ("timm", "ghostnetv2_160"): _tm("ghostnet_v2_160", "ghostnetv2_160"),
    ("timm", "mobilenetv1_100"): _tm("mobilenet_v1_100_timm", "mobilenetv1_100", INCEPTION),
    ("timm", "mobilenetv2_035"): _tm("mobilenet_v2_035", "mobilenetv2_035"),
    ("timm", "mobilenetv2_050"): _tm("mobilenet_v2_050", "mobilenetv2_050"),
    ("timm", "mobilenetv2_075"): _tm("mobilenet_v2_075", "mobilenetv2_075"),
    ("timm", "mobilenetv2_100"): _tm("mobilenet_v2_100", "mobilenetv2_100"),
    ("timm", "mobilenetv2_140"): _tm("mobilenet_v2_140", "mobilenetv2_140"),
    # conv_head (1x1 conv with bias, after the global pool) = the graph's head.hidden linear
    ("timm", "mobilenetv3_large_075"): _tm("mobilenet_v3_large_075", "mobilenetv3_large_075"),
    ("timm", "mobilenetv3_large_100"): _tm("mobilenet_v3_large_100", "mobilenetv3_large_100"),
    ("timm", "mobilenetv3_small_075"): _tm("mobilenet_v3_small_075", "mobilenetv3_small_075"),
    ("timm", "mobilenetv3_small_100"): _tm("mobilenet_v3_small_100", "mobilenetv3_small_100"),
    # MNASNet: mnasnet_* is B1 (torchvision's graph), semnasnet_* is A1 (SE), mnasnet_small the TF "mnasnet-small"
    ("timm", "mnasnet_050"): _tm("mnasnet_b1_050", "mnasnet_050"),
    ("timm", "mnasnet_075"): _tm("mnasnet_b1_075", "mnasnet_075"),
    ("timm", "mnasnet_100"): _tm("mnasnet_b1_100", "mnasnet_100"),
    ("timm", "mnasnet_140"): _tm("mnasnet_b1_140", "mnasnet_140"),
    ("timm", "semnasnet_050"): _tm("mnasnet_a1_050", "semnasnet_050"),
    ("timm", "semnasnet_075"): _tm("mnasnet_a1_075", "semnasnet_075"),
    ("timm", "semnasnet_100"): _tm("mnasnet_a1_100", "semnasnet_100"),
    ("timm", "semnasnet_140"): _tm("mnasnet_a1_140", "semnasnet_140"),
    ("timm", "mnasnet_small"): _tm("mnasnet_small_100", "mnasnet_small"),
    # PP-LCNet (timm _gen_lcnet); conv_head (1x1 conv with bias, after the global pool) = head.hidden
    ("timm", "lcnet_035"): _tm("lcnet_035", "lcnet_035"),
    ("timm", "lcnet_050"): _tm("lcnet_050", "lcnet_050"),
    ("timm", "lcnet_075"): _tm("lcnet_075", "lcnet_075"),
    ("timm", "lcnet_100"): _tm("lcnet_100", "lcnet_100"),
    ("timm", "lcnet_150"): _tm("lcnet_150", "lcnet_150"),
    # EfficientNet: efficientnet_b0..b3 is torchvision's graph (efficientnet_b1's pretrained_cfg is inception's
    # mean/std), efficientnet_lite0..4 the Lite graph; tf_efficientnet_lite0..4 (ports of the TF checkpoints) have
    # TF "same" padding and BN eps 1e-3 (the _tf ids)
    ("timm", "efficientnet_b0"): _tm("efficientnet_b0", "efficientnet_b0"),
    ("timm", "efficientnet_b1"): _tm("efficientnet_b1", "efficientnet_b1", INCEPTION),
    ("timm", "efficientnet_b2"): _tm("efficientnet_b2", "efficientnet_b2"),
    ("timm", "efficientnet_b3"): _tm("efficientnet_b3", "efficientnet_b3"),
    ("timm", "efficientnet_lite0"): _tm("efficientnet_lite0", "efficientnet_lite0"),
    ("timm", "efficientnet_lite1"): _tm("efficientnet_lite1", "efficientnet_lite1"),
    ("timm", "efficientnet_lite2"): _tm("efficientnet_lite2", "efficientnet_lite2"),
    ("timm", "efficientnet_lite3"): _tm("efficientnet_lite3", "efficientnet_lite3"),
    ("timm", "efficientnet_lite4"): _tm("efficientnet_lite4", "efficientnet_lite4"),
    ("timm", "tf_efficientnet_b0"): _tm_tf("efficientnet_b0_tf", "tf_efficientnet_b0", IMAGENET),
    ("timm", "tf_efficientnet_b1"): _tm_tf("efficientnet_b1_tf", "tf_efficientnet_b1", IMAGENET),
    ("timm", "tf_efficientnet_b2"): _tm_tf("efficientnet_b2_tf", "tf_efficientnet_b2", IMAGENET),
    ("timm", "tf_efficientnet_b3"): _tm_tf("efficientnet_b3_tf", "tf_efficientnet_b3", IMAGENET),
    ("timm", "tf_efficientnet_lite0"): _tm_tf("efficientnet_lite0_tf", "tf_efficientnet_lite0"),
    ("timm", "tf_efficientnet_lite1"): _tm_tf("efficientnet_lite1_tf", "tf_efficientnet_lite1"),
    ("timm", "tf_efficientnet_lite2"): _tm_tf("efficientnet_lite2_tf", "tf_efficientnet_lite2"),
    ("timm", "tf_efficientnet_lite3"): _tm_tf("efficientnet_lite3_tf", "tf_efficientnet_lite3"),
    ("timm", "tf_efficientnet_lite4"): _tm_tf("efficientnet_lite4_tf", "tf_efficientnet_lite4"),
    # MixNet: mixnet_l is mixnet_m at width 1.3; tf_mixnet_* (TF checkpoints) have TF "same" padding and eps 1e-3
    ("timm", "mixnet_s"): _tm("mixnet_s", "mixnet_s"),
    ("timm", "mixnet_m"): _tm("mixnet_m", "mixnet_m"),
    ("timm", "mixnet_l"): _tm("mixnet_l", "mixnet_l"),
    ("timm", "tf_mixnet_s"): _tm_tf("mixnet_s_tf", "tf_mixnet_s", IMAGENET),
    ("timm", "tf_mixnet_m"): _tm_tf("mixnet_m_tf", "tf_mixnet_m", IMAGENET),
    ("timm", "tf_mixnet_l"): _tm_tf("mixnet_l_tf", "tf_mixnet_l", IMAGENET),
    # MobileNetV4 conv (timm _gen_mobilenet_v4): conv_head (1x1 conv, no bias, on the pooled map) + norm_head is
    # head.conv; the pretrained_cfg of the 0.35 / 0.5 widths is inception's mean/std, of the others imagenet's
    ("timm", "mobilenetv4_conv_small_035"): _tm("mobilenet_v4_conv_small_035", "mobilenetv4_conv_small_035", INCEPTION),
    ("timm", "mobilenetv4_conv_small_050"): _tm("mobilenet_v4_conv_small_050", "mobilenetv4_conv_small_050", INCEPTION),
    ("timm", "mobilenetv4_conv_small"): _tm("mobilenet_v4_conv_small_100", "mobilenetv4_conv_small"),
    ("timm", "mobilenetv4_conv_medium"): _tm("mobilenet_v4_conv_medium_100", "mobilenetv4_conv_medium"),
    ("timm", "mobilenetv4_conv_large"): _tm("mobilenet_v4_conv_large_100", "mobilenetv4_conv_large"),
}
# Reparameterisable nets: timm's reparameterize_model folds every MobileOne block (= lightnets' inference form:
# reparameterize + fold_batch_norm) and only RepGhost's cheap + fusion branches (= reparameterize; its other BNs stay)
TIMM.update({k: v for i in ("s0", "s1", "s2", "s3", "s4")
             for k, v in _tm_rep(f"mobileone_{i}", f"mobileone_{i}", "inference").items()})
TIMM.update({k: v for w in ("050", "058", "080", "100", "111", "130", "150", "200")
             for k, v in _tm_rep(f"repghostnet_{w}", f"repghostnet_{w}", "reparameterize").items()})
PADDLE = {
    ("paddle", "mobilenet_v1"): _pd("mobilenet_v1_100", "mobilenet_v1"),
    ("paddle", "mobilenet_v1_x0_75"): _pd("mobilenet_v1_075", "mobilenet_v1", scale=0.75),
    ("paddle", "mobilenet_v1_x0_5"): _pd("mobilenet_v1_050", "mobilenet_v1", scale=0.5),
    ("paddle", "mobilenet_v1_x0_25"): _pd("mobilenet_v1_025", "mobilenet_v1", scale=0.25),
    ("paddle", "mobilenet_v2"): _pd("mobilenet_v2_100", "mobilenet_v2"),
    ("paddle", "mobilenet_v2_x0_75"): _pd("mobilenet_v2_075", "mobilenet_v2", scale=0.75),
    ("paddle", "mobilenet_v2_x0_5"): _pd("mobilenet_v2_050", "mobilenet_v2", scale=0.5),
    ("paddle", "mobilenet_v3_large"): _pd("mobilenet_v3_large_100", "mobilenet_v3_large", 1e-3, 0.01),
    ("paddle", "mobilenet_v3_small"): _pd("mobilenet_v3_small_100", "mobilenet_v3_small", 1e-3, 0.01),
    ("paddle", "mobilenet_v3_large_x0_75"): _pd("mobilenet_v3_large_075_paddle", "mobilenet_v3_large",
                                                1e-3, 0.01, scale=0.75),
    ("paddle", "mobilenet_v3_small_x0_75"): _pd("mobilenet_v3_small_075_paddle", "mobilenet_v3_small",
                                                1e-3, 0.01, scale=0.75),
    ("paddle", "shufflenet_v2_x0_25"): _pd("shufflenet_v2_025_paddle", "shufflenet_v2_x0_25"),
    ("paddle", "shufflenet_v2_x0_33"): _pd("shufflenet_v2_033_paddle", "shufflenet_v2_x0_33"),
    ("paddle", "shufflenet_v2_x0_5"): _pd("shufflenet_v2_050", "shufflenet_v2_x0_5"),
    ("paddle", "shufflenet_v2_x1_0"): _pd("shufflenet_v2_100", "shufflenet_v2_x1_0"),
    ("paddle", "shufflenet_v2_x1_5"): _pd("shufflenet_v2_150", "shufflenet_v2_x1_5"),
    ("paddle", "shufflenet_v2_x2_0"): _pd("shufflenet_v2_200_paddle", "shufflenet_v2_x2_0"),
    ("paddle", "shufflenet_v2_swish"): _pd("shufflenet_v2_swish_100_paddle", "shufflenet_v2_swish"),
}
KERAS = {  # names are "<constructor>" at alpha 1.0, "<constructor>_<alpha>" otherwise
    ("keras", "MobileNet"): _ka("mobilenet_v1_100_keras", "MobileNet", 0.01),
    ("keras", "MobileNet_0.75"): _ka("mobilenet_v1_075_keras", "MobileNet", 0.01, alpha=0.75),
    ("keras", "MobileNet_0.5"): _ka("mobilenet_v1_050_keras", "MobileNet", 0.01, alpha=0.5),
    ("keras", "MobileNet_0.25"): _ka("mobilenet_v1_025_keras", "MobileNet", 0.01, alpha=0.25),
    ("keras", "MobileNetV2"): _ka("mobilenet_v2_100_keras", "MobileNetV2", 0.001),
    ("keras", "MobileNetV2_0.35"): _ka("mobilenet_v2_035_keras", "MobileNetV2", 0.001, alpha=0.35),
    ("keras", "MobileNetV2_0.5"): _ka("mobilenet_v2_050_keras", "MobileNetV2", 0.001, alpha=0.5),
    ("keras", "MobileNetV2_0.75"): _ka("mobilenet_v2_075_keras", "MobileNetV2", 0.001, alpha=0.75),
    ("keras", "MobileNetV2_1.3"): _ka("mobilenet_v2_130_keras", "MobileNetV2", 0.001, alpha=1.3),
    ("keras", "MobileNetV2_1.4"): _ka("mobilenet_v2_140_keras", "MobileNetV2", 0.001, alpha=1.4),
    ("keras", "MobileNetV3Large"): _ka("mobilenet_v3_large_100_keras", "MobileNetV3Large", 0.001, KERAS_V3),
    ("keras", "MobileNetV3Large_0.75"): _ka("mobilenet_v3_large_075_keras", "MobileNetV3Large", 0.001,
                                            KERAS_V3, alpha=0.75),
    ("keras", "MobileNetV3Small"): _ka("mobilenet_v3_small_100_keras", "MobileNetV3Small", 0.001, KERAS_V3),
    ("keras", "MobileNetV3Small_0.75"): _ka("mobilenet_v3_small_075_keras", "MobileNetV3Small", 0.001,
                                            KERAS_V3, alpha=0.75),
    # EfficientNet B0-B3 = the _tf ids (timm tf_efficientnet_b*'s graph: TF "same", eps 1e-3); keras momentum 0.99
    **{("keras", f"EfficientNetB{i}"): _ka(f"efficientnet_b{i}_tf", f"EfficientNetB{i}", 0.01, KERAS_EFFICIENTNET)
       ._replace(padding=KERAS_EFFICIENTNET_PADDING) for i in range(4)},
}
ZOO: dict[tuple[str, str], ZooEntry] = {**TORCHVISION, **TIMM, **PADDLE, **KERAS}
# the zoo names ("<zoo>:<name>" in port's from_format and the CLI's --from-format), in table order
ZOOS: tuple[str, ...] = tuple(dict.fromkeys(z for z, _ in ZOO))
# zoo -> the framework (lightnets backend name) its models run in
FRAMEWORKS: dict[str, str] = {z: e.framework for (z, _), e in ZOO.items()}


def _check_zoo(zoo: str) -> None:
    if zoo not in ZOOS:
        raise LightnetsError(f"unknown zoo {zoo!r}; zoos are {', '.join(ZOOS)}")


def entry(zoo: str, name: str) -> ZooEntry:
    """The table row of ``(zoo, name)``; an unknown one raises LightnetsError listing that zoo's names."""
    if (zoo, name) not in ZOO:
        known = sorted(n for z, n in ZOO if z == zoo)
        raise LightnetsError(f"no importer for {zoo!r} model {name!r}; zoos are {', '.join(ZOOS)}"
                             + (f", {zoo} models are {known}" if known else ""))
    return ZOO[(zoo, name)]


def parse_zoo_name(text: str) -> tuple[str, str] | None:
    """``"keras:MobileNetV2"`` -> ``("keras", "MobileNetV2")`` (checked against the table); text
    without a ``:`` -> None (not a zoo name)."""
    if ":" not in text:
        return None
    zoo, name = text.split(":", 1)
    _check_zoo(zoo)
    entry(zoo, name)
    return zoo, name


def list_zoo(zoo: str | None = None) -> list[tuple[str, str]]:
    """The ``(zoo, name)`` keys of one zoo; with ``zoo=None`` those of the torch and paddle zoos only.

    keras.applications entries are listed by ``list_zoo("keras")`` alone: they need tensorflow, and
    tensorflow imported before paddle in one process segfaults (DESIGN §2), so a loop over "every
    zoo" must not mix them with the paddle ones.
    """
    if zoo is None:
        return sorted(k for k, e in ZOO.items() if e.framework != "keras")
    _check_zoo(zoo)
    return sorted(k for k in ZOO if k[0] == zoo)
