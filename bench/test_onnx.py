"""ONNX Runtime against flexops eager on two zoo networks exported with flexops.onnx's translations, at
their own benchmarks' settings: SwinIR-M for colour denoising at 1x3x64x64 (test_flexir.py) and
TASNet's deploy form (42 shared maps of 32 channels, task-specific maps of 18) at CResMD's 27 tasks
(test_tasnet.py), on a 240x160 image rather than 480x320: the decomposed graph convolves all 64
channels of every task, about 40 s a call at 480x320 on 2 cores. Random weights, fp32, CPU.

Each network is exported by torch.onnx.export(dynamo=True, custom_translation_table=
flexops.onnx.translations()) at the timed size (static shapes: ONNX Runtime's best case) and run by
ONNX Runtime's CPU execution provider on as many threads as torch uses (its idle threads sleeping
rather than spinning, so that they leave the cores to the eager rounds between them), timed in
interleaved rounds with the eager network in the same process. The decomposed graph computes what
the fused ops skip: masked_conv2d's inactive channels (TASNet: full-width convolutions for every
task) and window_attention's partition and shift copies. Export takes about half a minute per
network, about half of this module's time (estimated 1.5 minutes on 2 quiet cores; 4.5 minutes
under a load of 5).
"""

import time

import pytest
import torch

from harness import compare, note, record

ort = pytest.importorskip("onnxruntime", reason="needs onnxruntime (pip install flexops[onnx])")
pytest.importorskip("onnxscript", reason="needs onnxscript (pip install flexops[onnx])")

import flexops.onnx  # noqa: E402

TABLE = (f"ONNX Runtime {ort.__version__} (CPU EP) vs flexops eager, fp32, CPU ({torch.get_num_threads()} threads): "
         "the zoo's networks exported by flexops.onnx")


def swinir():
    from flexops.models.swinir import SwinIR

    net = SwinIR(img_size=128, window_size=8, depths=[6] * 6, embed_dim=180, num_heads=[6] * 6, mlp_ratio=2,
                 upscale=1, upsampler="")
    return net, (torch.rand(1, 3, 64, 64),)


def tasnet():
    from flexops.models import data
    from flexops.models.cresmd import CResMD
    from flexops.models.tasnet import TASNetDeploy

    return TASNetDeploy.from_widths(CResMD(), 42, 32, 18), (torch.rand(1, 3, 160, 240), data.CRESMD_27_TASKS)


NETWORKS = {"SwinIR-M 1x3x64x64": swinir, "TASNet deploy 1x3x160x240, 27 tasks": tasnet}


def session(program):
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(program.model_proto.SerializeToString(), options, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("name", list(NETWORKS))
def test_onnx_runtime_vs_eager(benchmark, name):
    torch.manual_seed(0)
    model, inputs = NETWORKS[name]()
    model.eval()
    start = time.perf_counter()
    program = torch.onnx.export(model, inputs, dynamo=True, custom_translation_table=flexops.onnx.translations())
    export_seconds = time.perf_counter() - start
    runtime = session(program)
    feeds = {i.name: t.numpy() for i, t in zip(runtime.get_inputs(), inputs)}

    best = compare(benchmark, {"flexops eager": lambda: model(*inputs), "ONNX Runtime": lambda: runtime.run(None, feeds)})
    with torch.inference_mode():
        expected = model(*inputs)
    error = (torch.from_numpy(runtime.run(None, feeds)[0]) - expected).abs().max() / expected.abs().max()
    ratio = best["ONNX Runtime"] / best["flexops eager"]
    record(TABLE, name, "flexops eager ms", f"{1e3 * best['flexops eager']:.0f}", 1e3 * best["flexops eager"])
    record(TABLE, name, "ONNX Runtime ms", f"{1e3 * best['ONNX Runtime']:.0f}", 1e3 * best["ONNX Runtime"])
    record(TABLE, name, "ORT / eager", f"{ratio:.2f}x", ratio)
    record(TABLE, name, "max rel. error", f"{error:.1e}", float(error))
    record(TABLE, name, "export s", f"{export_seconds:.0f}", export_seconds)
    note(TABLE, "ORT / eager: ONNX Runtime's best round over flexops eager's (above 1: eager is faster); the "
                "export is torch.onnx.export's time at the timed (static) size; max rel. error: largest "
                "difference over the output's largest magnitude")
