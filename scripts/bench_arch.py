"""PyTorch + torchvision's side of `gcl bench --arch` (src/bench/arch.rs): the same case, timed
the same way, printed as one JSON line.

  bench_arch.py '{"arch": "resnet50", "size": 224, "batch": 16, "classes": 1000,
                  "precision": "fp32", "device": "cpu", "threads": 0, "warmup_steps": 2,
                  "windows": 3, "steps_per_window": 2, "eval_batches": 4}'

The network is torchvision's with its fc replaced by a cosine classifier; the loss is GCL-E
(cos - noise_mul * |clamp(e, -1, 1)| * c_j, e ~ N(0, 1/3), CE(s * z)); SGD with momentum 0.9 and
weight decay 5e-4; channels-last on the CPU; torch.autocast(bfloat16) for bf16. Evaluation is
model.eval() under torch.no_grad(), as users run torchvision models.
"""
import json
import math
import resource
import sys
import time

import torch
import torch.nn.functional as F
import torchvision
from torchvision.models.resnet import BasicBlock, ResNet


def counts(classes):
    return [max(1, math.floor(1280 * 0.01 ** (i / max(classes - 1, 1)))) for i in range(classes)]


class Cosine(torch.nn.Module):
    def __init__(self, dim, classes):
        super().__init__()
        self.weight = torch.nn.Parameter(F.normalize(torch.empty(dim, classes).uniform_(-1, 1), dim=0))

    def forward(self, x):
        return F.normalize(x, dim=1) @ F.normalize(self.weight, dim=0)


def main(case):
    torch.manual_seed(0)
    if case["threads"]:
        torch.set_num_threads(case["threads"])
    device = torch.device("cuda" if case["device"].startswith("cuda") else "cpu")
    arch = case["arch"]
    model = ResNet(BasicBlock, [1, 1, 1, 1]) if arch == "resnet10" else getattr(torchvision.models, arch)()
    if arch.startswith("vit_"):
        model.heads = Cosine(model.heads.head.in_features, case["classes"])
    else:
        model.fc = Cosine(model.fc.in_features, case["classes"])
    model = model.to(device)
    cpu = device.type == "cpu"
    fmt = torch.channels_last if cpu else torch.contiguous_format
    model = model.to(memory_format=fmt)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    n = torch.tensor(counts(case["classes"]), dtype=torch.float, device=device)
    cloud = (n.max().log() - n.log()) / (n.max().log() - n.min().log())
    b, s = case["batch"], case["size"]
    x = torch.randn(b, 3, s, s, device=device).contiguous(memory_format=fmt)
    y = torch.randint(case["classes"], (b,), device=device)
    bf16 = case["precision"] == "bf16"
    autocast = lambda: torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    sync = (lambda: torch.cuda.synchronize()) if device.type == "cuda" else (lambda: None)

    def step():
        with autocast():
            cos = model(x)
        e = torch.randn_like(cos, dtype=torch.float) / math.sqrt(3)
        z = cos.float() - 0.5 * e.clamp(-1, 1).abs() * cloud
        loss = F.cross_entropy(30 * z, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()

    model.train()
    for _ in range(case["warmup_steps"]):
        step()
    train = []
    for _ in range(case["windows"]):
        t = time.perf_counter()
        for _ in range(case["steps_per_window"]):
            v = step()
            assert math.isfinite(v), f"loss {v}"
        train.append(b * case["steps_per_window"] / (time.perf_counter() - t))
    model.eval()

    def evaluate():
        with torch.no_grad(), autocast():
            return model(x).float().sum().item()

    evaluate()
    ev = []
    for _ in range(case["eval_batches"]):
        t = time.perf_counter()
        evaluate()
        sync()
        ev.append(b / (time.perf_counter() - t))
    out = {"stage1": train, "stage2": [], "eval": ev, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device.type == "cuda":
        out["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
    print(json.dumps(out))


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
