"""PyTorch's own count of a network's FLOPs per image (torch.utils.flop_counter), the check of
gcl's count from the layers (src/model/flops.rs; tests/flops.rs).

  count_flops.py '[{"model": "resnet50", "size": 224, "channels": 3, "classes": 1000}, ...]'

model: a torchvision architecture (its fc replaced by a cosine classifier, as gcl's), or
"reference-resnet32" (shared/reference/train_reference.py's ResNet-32). One image, the whole
network training: prints one JSON line, a list of {"forward": F, "backward": B} in FLOPs.
"""
import json
import os
import sys

import torch
import torch.nn.functional as F
import torchvision
from torch.utils.flop_counter import FlopCounterMode


class Cosine(torch.nn.Module):
    def __init__(self, dim, classes):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(dim, classes))

    def forward(self, x):
        return F.normalize(x, dim=1) @ F.normalize(self.weight, dim=0)


def build(case):
    name, classes = case["model"], case["classes"]
    if name == "reference-resnet32":
        here = os.path.dirname(os.path.abspath(__file__))
        sys.path.insert(0, os.path.join(here, "..", "..", "shared", "reference"))
        from train_reference import ResNet32

        m = ResNet32(case["channels"], classes)
        return lambda x: m.head(m.features(x))
    m = getattr(torchvision.models, name)()
    if hasattr(m, "fc"):
        m.fc = Cosine(m.fc.in_features, classes)
    else:
        m.heads = Cosine(m.hidden_dim, classes)
    return m


def count(case):
    model = build(case)
    x = torch.randn(1, case["channels"], case["size"], case["size"])
    # The math attention (matrix products the counter sees), as gcl counts QK^T and AV.
    with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH):
        with FlopCounterMode(display=False) as fwd:
            loss = model(x).sum()
        with FlopCounterMode(display=False) as bwd:
            loss.backward()
    return {"forward": fwd.get_total_flops(), "backward": bwd.get_total_flops()}


if __name__ == "__main__":
    torch.manual_seed(0)
    print(json.dumps([count(c) for c in json.loads(sys.argv[1])]))
