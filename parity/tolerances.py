"""Every parity tolerance, in one place, with its reason.

Errors are relative to the output's magnitude: ``max|y - ref| / max|ref|`` (``rel_error``).
Each bound states the value measured on this project's 2-core x86_64 machine it was set from.
"""

from __future__ import annotations

from lightnets.frameworks import FLOAT32_INSIDE
from lightnets.numerics import abs_error, rel_error  # noqa: F401 -- re-exported for the suite

# Single ops against the float64 numpy reference.
OP_REL = {
    # float64: only summation order differs (im2col vs direct/oneDNN); measured <= 5.3e-16
    # (torch, keras, paddle; 40 op cases).
    "float64": 1e-12,
    # float32: one rounding per accumulation step over <= 7*7*C terms; measured <= 2.6e-7.
    "float32": 1e-5,
}

# Whole networks (logits) against the float64 numpy reference, canonical random weights.
MODEL_REL = {
    # float64: depth ~50-300 ops of summation-order noise; measured <= 2.4e-14 (all ids, 32-64 px).
    # Train mode (batch statistics) at 64 px: measured <= 1.8e-13, stats <= 8.5e-14.
    "float64": 1e-10,
    # float32: rounding compounds with depth; measured <= 1.1e-5 on every id at 32-64 px with the first
    # init, <= 2.4e-5 (shufflenet_v2_200_paddle, torch) with the calibrated BN statistics of weights.init_weights.
    # Train mode at 64 px: measured <= 4.3e-5 (BN over few values amplifies rounding; at 32 px the
    # last BNs see 2 values per channel and errors reach 1e-2, so train parity runs at >= 64 px).
    "float32": 1e-4,
}

# Float32 logits are also held to the graph's own conditioning. A BN normalising few values per channel (train mode:
# 2 x 2 x batch 2 at 64 px) divides by a small batch standard deviation, and a BN of small running variances (eval,
# the calibrated statistics of weights.init_weights) by a small running one, so it multiplies the rounding it
# receives, and a deep multi-branch net compounds that. kappa = the error of the reference forward with every tensor
# stored as float32 and each node computed exactly (reference.run / train_forward(stored_as="float32")): no float32
# implementation can be expected below it. Measured kappa at 64 px, train mode, batch 2: mobileone_s0 1.5e-4 (over
# MODEL_REL alone), efficientnet_lite4 5.9e-5, mobileone_s1 2.5e-5, efficientnet_lite1 2.2e-5, mnasnet_b1_100
# 1.8e-5; the targets' errors over kappa on those five at batch 2, 4 and 8 (15 cases, the runner's seeds): torch
# <= 3.3, paddle <= 2.8, keras <= 7.3 (mobileone_s1 at batch 8; keras' batch norm adds ~3x torch's error per layer:
# 3.4e-7 against 1.0e-7 on mobileone_s0's stem). Eval: mobileone_s4 at 64 px (the parity runner's seed 4) kappa
# 2.6e-4, torch 0.63, keras 1.05 of it (paddle under MODEL_REL), pairs <= 1.2. So a float32 logit (or a pair) that
# misses MODEL_REL is judged against KAPPA_FACTOR * kappa (the runner computes kappa only then).
KAPPA_FACTOR = 16

# Gradients of sum(logits * R) w.r.t. every parameter and the input, backend against backend.
# Only float64 is judged: in float32, rounding flips pre-activations that sit at a ReLU/ReLU6 kink,
# which changes gradients discretely (measured up to 0.27 relative on shufflenet_v1_g1_050 at 64 px,
# between every pair of backends), so float32 gradient errors are reported as information only.
GRAD_REL = {
    "float64": 1e-9,  # summation order only; measured <= 1e-13 (torch, keras on tf, paddle).
}

# Train-mode (batch-statistics BN) feature maps of a backbone case (<id>:features), against the float64 reference.
# Only float64 is judged: float32 train-mode maps are not averaged by a global pool as logits are, and the last
# stage's BNs normalise over 2 x 2 x batch 2 = 8 values per channel at 64 px (18 at 96 px), so float32 rounding
# reaches the maps unaveraged. Measured (runner seeds, batch 2, the quick models): float32 up to 1.05e-4 (torch,
# shufflenet_v2_025_paddle, 64 px) and 1.5e-4 (paddle, mobilenet_v1_025, 96 px) in the stride-32 map, 2e-7..1e-6
# in the stride-2..8 maps; so float32 is reported as information. float64: <= 2.7e-13 (torch, paddle, keras).
TRAIN_FEATURES_REL = {"float64": MODEL_REL["float64"]}

# Targets that cannot compute in float64 are held to the bounds of the precision they really use.
# keras 3.15.1 on KERAS_BACKEND=torch: `result_type` demotes float64 to float32 on every backend but
# tensorflow (keras-team/keras#23223, #23704), so BatchNormalization, ops.mean and Dense run in
# float32 inside a float64 model; measured 1e-7..1e-5 on float64 cases with those layers.
# onnxruntime 1.32 (CPU provider) has no double kernel for Conv, AveragePool, GlobalAveragePool, HardSigmoid or
# HardSwish (NOT_IMPLEMENTED; tests/test_onnx.py checks it). The float64 ONNX graph runs Conv and AveragePool in
# float32 between Casts and writes the others with double ops (backends/onnx_export.py), so a case with a conv or an
# avg pool is float32-accurate. Measured (onnxruntime target, batch 2, runner seeds): float64 conv/avg-pool op
# cases <= 1.7e-7, the other 26 op cases <= 3.2e-16 (BN, activations, max/global pools, linear: double
# kernels); every id <= 2.1e-5 at 64 px (mobilenet_v1_075_keras), <= 2.6e-5 at 32 px (mobilenet_v1_100).
# float32 (bounds unchanged): op cases <= 1.7e-7; every id <= 1.9e-5 at 64 px (mobilenet_v2_075), <= 3.2e-5
# at 32 px (shufflenet_v2_050). --mode inference (BN folded) at 64 px: float32 and float64 <= 1.7e-5.
# tflite (tensorflow 2.21 converter, ai-edge-litert 2.3.0 interpreter): flat buffers are float32 and LiteRT has no
# float64 kernels, so a float64 case computes in float32 (backends/tflite.py) and is held to the float32 bounds.
# Measured (`lightnets parity --backends tflite --size 64`, batch 2, runner seeds, XNNPACK float32 kernels): op cases
# <= 2.6e-7 (44 cases); every id (68) <= 1.4e-5 at 64 px (shufflenet_v2_200; mobilenet_v1_075_keras 1.4e-5).
# keras 3.15.1 on KERAS_BACKEND=jax (jax/jaxlib 0.10.2 CPU, JAX_ENABLE_X64=1): the same demotion as keras-torch.
# Measured (keras-jax target, batch 2, runner seeds, 64 px): float64 op cases conv/pools/activations/add/concat/
# slice/shuffle <= 7.6e-16 (double), batch_norm 8.3e-8 / 1.0e-7 (eps 1e-3), global_avg_pool 1.2e-7, linear 1.5e-7,
# flatten 6.4e-8, mul_se_scale 1.7e-8 (float32 inside); the smallest id of every family float64 <= 7.4e-6
# (mobilenet_v2_035), their backbones <= 1.2e-5, train-mode logits <= 1.5e-5, stats <= 3.1e-6; float32 op cases
# <= 2.6e-7, models <= 1.8e-5 (mobilenet_v1_025), backbones <= 1.7e-5 (shufflenet_v2_025_paddle), train-mode
# logits <= 2.2e-5, stats <= 4.5e-6. Gradients (keras-jax~torch, float32 effective): <= 3.2e-5, information only.
# Every id (69) and its backbone at 32 px, eval: float64 <= 2.9e-5 (mobilenet_v2_100), backbones <= 2.1e-5
# (mobilenet_v2_050); float32 <= 4.8e-5 (mobilenet_v2_130_keras), backbones <= 2.4e-5 (mobilenet_v1_100_timm).
EFFECTIVE_DTYPE: dict[tuple[str, str], str] = {(t, "float64"): "float32" for t in FLOAT32_INSIDE}


def effective_dtype(target: str, dtype: str) -> str:
    """The precision whose bounds apply to ``target`` at ``dtype`` (a pair: the coarser of the two)."""
    dtypes = [EFFECTIVE_DTYPE.get((t, dtype), dtype) for t in target.split("~")]
    return "float32" if "float32" in dtypes else dtype


# Known divergences: (case, target, dtype) -> reason. A listed case that passes fails the run,
# so this list can only shrink.
EXPECTED_FAILURES: dict[tuple[str, str, str], str] = {}

# int8 TFLite exports are judged by top-1 agreement with the float64 reference (no error bound: int8 logits are
# not float logits): (id, input size) -> the floor. Measured (lightnets.export.export_tflite defaults: 1000 classes,
# init seed 0, 32 N(0, 1) calibration images seed 1, 64 agreement images seed 2; tensorflow 2.21 converter,
# ai-edge-litert 2.3.0 XNNPACK int8 kernels): mobilenet_v2_050 at 96 px agrees on 33/64 = 51.6%; floor 29/64.
# Random-weight nets amplify the int8 rounding with depth (per-node error 1.4% after the stem, O(1) by block 12)
# and 1000 random logits have small top-1 margins: the same net with 10 classes agrees on 63/64.
INT8_TOP1_FLOOR: dict[tuple[str, int], float] = {("mobilenet_v2_050", 96): 29 / 64}
