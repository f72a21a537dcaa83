"""Times the 31 convolutions of ResNet-32's forward pass alone (28x28 images, batch 64,
channels-last, 2 threads): the ceiling for a frozen-backbone pass (stage 2, evaluation) on
libtorch's CPU convolutions. Usage: .venv/bin/python scripts/conv_ceiling.py [--bf16]"""
import sys
import time

import torch
import torch.nn.functional as F

torch.set_num_threads(2)
torch.manual_seed(0)
dtype = torch.bfloat16 if "--bf16" in sys.argv else torch.float32
B = 64
specs = [(1, 16, 28, 1)] + [(16, 16, 28, 1)] * 10 + [(16, 32, 28, 2)] + [(32, 32, 14, 1)] * 9 \
    + [(32, 64, 14, 2)] + [(64, 64, 7, 1)] * 9
layers = []
for cin, cout, hw, stride in specs:
    w = (torch.randn(cout, cin, 3, 3) * 0.1).to(dtype).contiguous(memory_format=torch.channels_last)
    b = (torch.randn(cout) * 0.1).to(dtype)
    x = torch.randn(B, cin, hw, hw).to(dtype).contiguous(memory_format=torch.channels_last)
    layers.append((x, w, b, stride))
flops = sum(2 * B * co * ((hw - 1) // s + 1) ** 2 * ci * 9 for ci, co, hw, s in specs)


def convs():
    for x, w, b, s in layers:
        F.conv2d(x, w, b, s, 1)


with torch.inference_mode():
    for _ in range(5):
        convs()
    times = []
    for _ in range(15):
        t = time.perf_counter()
        for _ in range(5):
            convs()
        times.append((time.perf_counter() - t) / 5)
times.sort()
t = times[len(times) // 2]
print(f"{dtype}: {len(specs)} convolutions, batch {B}: {t * 1e3:.2f} ms (median), "
      f"{B / t:.0f} images/s, {flops / t / 1e9:.0f} GFLOP/s")
