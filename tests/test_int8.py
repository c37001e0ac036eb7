"""The per-layer int8 locator (lightnets.int8 on backends/tflite_int8.py): planted mapping errors are named at exactly
the node they touch, and nowhere else (each node's local error is computed from its int8 inputs, so an error does
not propagate into the nodes after it); every other node's error is int8 rounding.

Weights with BN statistics from data (``init_weights`` calibrates them on random images); 8 calibration images,
probed on 2 of them. mobilenet_v2_035 in `make test`; mobilenet_v3_small_075 and ghostnet_050 with LIGHTNETS_SLOW=1.
"""

import numpy as np
import pytest
from keras_apps import TFLITE_CONVERTER
from profiles import SLOW

import lightnets
from lightnets import int8
from lightnets import weights as W

pytestmark = TFLITE_CONVERTER
MODELS = ["mobilenet_v2_035"] + (["mobilenet_v3_small_075", "ghostnet_050"] if SLOW else [])
SIZE = 64


def _locate(model_id: str, planted=()):
    """The locator's rows for an int8 export of ``model_id`` whose weights have ``planted`` errors (the reference
    keeps the clean weights), and the graph."""
    from lightnets.backends import tflite as TL
    from lightnets.backends import tflite_int8 as TI

    graph = lightnets.get_spec(model_id, input_size=SIZE, num_classes=10)
    clean = W.init_weights(graph, seed=1)
    filed = {k: v.astype(np.float32) for k, v in clean.items()}
    for kind, node in planted:
        w = filed[f"{node}.weight"]
        if kind == "scale":  # one output channel's weights 25 % too large (a per-channel scale error)
            w[0] *= 1.25
        else:  # two depthwise channels' filters swapped
            w[[0, 1]] = w[[1, 0]]
    calibration = np.random.default_rng(0).standard_normal((8, 3, SIZE, SIZE)).astype(np.float32)
    flat = TL.convert(graph, filed, quantize="int8", calibration=calibration, static_hw=True)
    x = calibration[:2]
    return int8.locate(graph, clean, x, TI.node_tensors(flat, graph, x)), graph


def _plants(graph):
    """A pointwise conv to scale and a depthwise conv to swap, both mid-network, the scaled one first."""
    convs = [n for n in graph.nodes if n.op == "conv2d" and n.attrs["kernel"] == (1, 1) and n.attrs["groups"] == 1]
    dws = [n for n in graph.nodes if n.op == "conv2d" and 1 < n.attrs["groups"] == n.attrs["out_channels"]]
    scaled = convs[len(convs) // 3]
    swapped = next(n for n in dws[len(dws) // 2:] if graph.nodes.index(n) > graph.nodes.index(scaled))
    return scaled.name, swapped.name


def _fused_with(row, conv: str) -> bool:
    return conv in row.fused


@pytest.mark.parametrize("model_id", MODELS)
def test_planted_errors_are_named_at_the_nodes_they_touch_and_nowhere_else(model_id):
    """One export with a per-channel weight scale error and, later, a depthwise channel swap: exactly the two
    tensors those convs write jump (the first is the first jump); every other node's error is int8 rounding."""
    graph = lightnets.get_spec(model_id, input_size=SIZE, num_classes=10)
    scaled, swapped = _plants(graph)
    report, _ = _locate(model_id, [("scale", scaled), ("swap", swapped)])
    rows = report["rows"]
    assert len(rows) >= len(graph.nodes) // 3  # the fused conv/bn/act tensors, adds, pools... mapped onto nodes
    jumped = [r for r in rows if int8.jumps(r)]
    assert len(jumped) == 2 and _fused_with(jumped[0], scaled) and _fused_with(jumped[1], swapped), jumped
    assert report["first_jump"] == jumped[0] and "weights or their mapping differ" in report["reason"]
    assert jumped[1].local_steps >= 5 * int8.JUMP_STEPS  # a swapped depthwise filter is far from rounding
    clean = [r for r in rows if r not in jumped]
    assert max(r.local_steps for r in clean) < int8.JUMP_STEPS / 2
    assert max(r.gain_error for r in clean) < int8.JUMP_GAIN / 1.5
    assert rows[-1].rel_error > 0.01  # the error accumulated along depth (the curve) is int8's, not zero


def test_reasons_name_saturation_and_a_coarse_per_tensor_scale():
    row = int8.NodeError("n", "conv2d", ("n",), 0.3, 20.0, 0.0, 0.01, 0.05, 1.0, 4096)
    assert int8.jumps(row) and int8.reason(row).startswith("saturated: 5.0 %")
    row = row._replace(clipped=0.0, channel_spread=40.0)
    assert int8.reason(row).startswith("per-tensor scale too coarse")
    assert not int8.jumps(row._replace(local_steps=2.0))
    assert not int8.jumps(row._replace(local_steps=2.0, clipped=0.02, values=96))  # 2 clipped values: too few


def test_cli_int8_prints_the_table_and_writes_the_curve(tmp_path, capsys):
    import json

    from lightnets import cli

    args = ["int8", "mobilenet_v1_025", "--size", "32", "--images", "1", "--calibration", "4", "--out", str(tmp_path)]
    assert cli.main(args) == 0
    printed = capsys.readouterr().out
    assert "int8 vs the float64 reference, node by node: mobilenet_v1_025" in printed and "blocks.12.pw.act" in printed
    assert "no jump" in printed  # a clean export
    report = json.loads((tmp_path / "int8.json").read_text())
    assert report["first_jump"] is None and len(report["rows"]) >= 27
    assert (tmp_path / "int8.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_locator_refuses_a_float32_model():
    from lightnets.backends import tflite as TL
    from lightnets.backends import tflite_int8 as TI
    from lightnets.errors import LightnetsError

    model = TL.TFLiteModel(lightnets.get_spec("mobilenet_v1_025", input_size=32))
    with pytest.raises(LightnetsError, match="not an int8 model.*quantize='int8'"):
        TI.locate_model(model, np.zeros((1, 3, 32, 32), np.float32))


def _image_folder(root, sizes=((40, 50), (64, 32), (33, 33), (100, 80), (48, 48))):
    """A folder of PNG images of assorted sizes (random RGB) beside a file that is not an image."""
    from PIL import Image

    root.mkdir()
    rng = np.random.default_rng(3)
    for i, (w, h) in enumerate(sizes):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / f"img{i}.png")
    (root / "notes.txt").write_text("not an image")
    return root


def test_calibration_from_a_folder_of_images_is_recorded_in_the_card(tmp_path):
    from lightnets import formats
    from lightnets.export import export_tflite, folder_images

    folder = _image_folder(tmp_path / "images")
    graph = lightnets.get_spec("mobilenet_v1_025", input_size=32)
    images = folder_images(folder, graph)
    assert images.shape == (5, 3, 32, 32) and images.dtype == np.float32
    # ImageNet normalisation of 0..255 pixels (the id's card names no preprocessing)
    assert -2.2 < images.min() < -1.9 and 2.5 < images.max() < 2.7
    path, rep = export_tflite("mobilenet_v1_025", tmp_path / "q.tflite", quantize="int8", calibration=folder,
                              input_size=32, check=False)
    q = formats.describe(path)["card"]["int8"]
    assert q["calibration_images"] == 5 and str(folder.resolve()) in q["calibration"] == rep["calibration"]
    assert q["ranges"]["input"] == pytest.approx([images.min(), images.max()], abs=0.05)
