"""Export a small network that uses every flexops op and package it with AOTInductor for C++.

    python deploy/export.py OUT_DIR

writes OUT_DIR/model.pt2 (the package), OUT_DIR/inputs.pt (the example inputs, a list of tensors)
and OUT_DIR/expected.pt ([the eager output, the package's output in Python]). deploy/run_model.cpp
loads the package in C++, runs it on the inputs and compares with both. The package calls the
flexops ops by name (flexops::deform_conv2d, ...): the C++ process gets them from libflexops.so.
"""

import argparse
import pathlib
import time

import torch
from torch import nn

import flexops


class TinyRestorer(nn.Module):
    """A controllable restoration network in miniature, one layer per flexops op.

    forward(x [B, 3, H, W], omega [2], task_channels [C] bool, active [B, H/4, W/4] bool): a tunable
    head, a DCNv2 layer, a task-masked convolution, shifted-window attention with early exit and a
    residual output. tests/test_interop.py traces, exports, compiles and packages this same network.
    """

    def __init__(self, channels=8):
        super().__init__()
        self.head = flexops.TunableConv2d(3, channels, 3, num_params=2, padding=1)
        self.deform = flexops.ModulatedDeformConv2d(channels, channels, 3, padding=1)
        nn.init.normal_(self.deform.conv_offset.weight, std=0.1)  # a fresh layer would not deform
        self.task = flexops.MaskedConv2d(channels, channels, 3, padding=1)
        self.attention = flexops.WindowAttention(channels, window_size=4, num_heads=2)
        self.tail = nn.Conv2d(channels, 3, 3, padding=1)

    def forward(self, x, omega, task_channels, active):
        y = torch.relu(self.deform(self.head(x, omega)))
        y = self.task(y, None, task_channels)
        tokens = y.permute(0, 2, 3, 1)
        tokens = tokens + self.attention(tokens, shift_size=2, active=active)
        return x + self.tail(tokens.permute(0, 3, 1, 2))


def example_inputs():
    active = torch.ones(1, 4, 4, dtype=torch.bool)
    active[0, 2:, :2] = False  # a region that has exited: its windows are skipped
    return [torch.rand(1, 3, 16, 16), torch.tensor([0.3, 0.7]), torch.arange(8) % 4 != 3, active]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=pathlib.Path, help="directory for model.pt2, inputs.pt and expected.pt")
    out = parser.parse_args().out
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model, inputs = TinyRestorer().eval(), example_inputs()
    with torch.no_grad():
        eager = model(*inputs)
        program = torch.export.export(model, tuple(inputs))
        start = time.perf_counter()
        package = torch._inductor.aoti_compile_and_package(program, package_path=str(out / "model.pt2"))
        seconds = time.perf_counter() - start
        packaged = torch._inductor.aoti_load_package(package)(*inputs)
    torch.save(inputs, out / "inputs.pt")
    torch.save([eager, packaged], out / "expected.pt")
    print(f"{package}: AOTInductor compile {seconds:.1f} s; in Python, max |package - eager| = "
          f"{(packaged - eager).abs().max().item():.3g}")


if __name__ == "__main__":
    main()
