"""The hub round trip: torchvision .pt -> lightnets -> .onnx -> lightnets -> .tflite -> lightnets -> .pdparams.

Every hop imports the file the previous one wrote WITHOUT its sidecar (as a file shared alone travels), so
each hop goes through the foreign-file importer, and each is checked against the runtime of the file it
read: the torchvision model, ONNX Runtime, LiteRT. One subprocess (paddle is imported before tensorflow).
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("torchvision")
pytest.importorskip("onnxruntime")
pytest.importorskip("paddle")
pytest.importorskip("ai_edge_litert")

SCRIPT = textwrap.dedent('''
    import json, sys
    from pathlib import Path
    import paddle  # before tensorflow (the reverse segfaults)
    import numpy as np, torch, torchvision
    import lightnets
    from lightnets.numerics import rel_error

    out, size = Path(sys.argv[1]), 64
    torch.manual_seed(0)
    tv = torchvision.models.shufflenet_v2_x0_5()
    for m in tv.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = 1.0
    tv.train()
    with torch.no_grad():
        tv(torch.randn(8, 3, size, size))  # BN statistics from data
    tv.eval()
    torch.save(tv.state_dict(), out / "tv.pt")
    x = np.random.default_rng(1).standard_normal((2, 3, size, size)).astype(np.float32)
    hops = {}

    def alone(path):  # the file without its sidecar
        for side in out.glob(path.name + ".lightnets.json"):
            side.unlink()
        return path

    with torch.no_grad():
        want = tv(torch.from_numpy(x)).numpy()
    m1 = lightnets.port(out / "tv.pt", to="torch", from_format="torchvision:shufflenet_v2_x0_5", input_size=size)
    hops["torchvision .pt -> torch"] = rel_error(lightnets.run(m1, x), want)

    onnx_file = alone(lightnets.export(m1, to="onnx", path=out / "m.onnx"))
    m2 = lightnets.port(onnx_file, to="keras", input_size=size)
    want = lightnets.load_backend("onnxruntime").forward(str(onnx_file), x)
    hops[".onnx -> keras"] = rel_error(lightnets.run(m2, x), want)

    tfl = alone(lightnets.export(m2, to="tflite", path=out / "m.tflite", input_size=size))
    m3, info = lightnets.port(tfl, to="paddle", return_info=True)
    want = lightnets.load_backend("tflite").forward(str(tfl), x)
    hops[".tflite -> paddle"] = rel_error(lightnets.run(m3, x), want)
    lightnets.save_weights(m3, out / "m.pdparams")
    m4 = lightnets.build(out / "m.pdparams", backend="paddle")
    hops[".pdparams -> paddle"] = rel_error(lightnets.run(m4, x), lightnets.run(m3, x))
    print(json.dumps({"hops": hops, "arch": info["arch"]}))
''')


def test_torchvision_to_onnx_to_tflite_to_pdparams_keeps_the_logits(tmp_path):
    env = {**os.environ, "KERAS_BACKEND": "tensorflow"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True, text=True, env=env,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["arch"] == "shufflenet_v2_050"
    print(result["hops"])
    # float32 at every hop (float32 runtimes on both sides), BN statistics from data
    assert all(err <= 1e-4 for err in result["hops"].values()), result["hops"]
