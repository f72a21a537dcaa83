"""PyTorch + torchvision's side of `gcl bench --arch` (src/bench/arch.rs): the same case, timed
the same way, printed as one JSON line.

  bench_arch.py '{"arch": "resnet50", "size": 224, "batch": 16, "classes": 1000,
                  "precision": "fp32", "device": "cpu", "threads": 0, "warmup_steps": 2,
                  "windows": 3, "steps_per_window": 2, "eval_batches": 4}'

The network is torchvision's (OpenCLIP's image tower for clip_vit_*, timm's for dinov2_*) with
its classifier replaced by a cosine one, and the case's tuning mode (full, linear, bitfit,
adaptformer) applied as LIFT places it; the loss is GCL-E
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


def library_vit(arch):
    """OpenCLIP's image tower or timm's DINOv2, random weights: (module, feature width, blocks)."""
    if arch.startswith("clip_vit_"):
        import open_clip
        base = arch.removesuffix("_quickgelu")
        name = {"clip_vit_b_16": "ViT-B-16", "clip_vit_b_32": "ViT-B-32", "clip_vit_l_14": "ViT-L-14"}[base]
        visual = open_clip.create_model(name + ("-quickgelu" if arch != base else ""), pretrained=None).visual
        return visual, visual.output_dim, list(visual.transformer.resblocks)
    import timm
    name = {"dinov2_vit_s_14": "vit_small_patch14_dinov2", "dinov2_vit_b_14": "vit_base_patch14_dinov2", "dinov2_vit_l_14": "vit_large_patch14_dinov2"}[arch]
    m = timm.create_model(name, pretrained=False, num_classes=0, dynamic_img_size=True)
    return m, m.num_features, list(m.blocks)


class AdaptFormer(torch.nn.Module):
    """LIFT's placement: beside the MLP, from its input x: scale * up(relu(down(LN(x))))."""

    def __init__(self, d, w):
        super().__init__()
        self.ln = torch.nn.LayerNorm(d)
        self.down = torch.nn.Linear(d, w)
        self.up = torch.nn.Linear(w, d)
        self.scale = torch.nn.Parameter(torch.ones(1))
        torch.nn.init.zeros_(self.up.weight)
        torch.nn.init.zeros_(self.up.bias)

    def forward(self, x):
        return self.up(torch.relu(self.down(self.ln(x)))) * self.scale


def tune(trunk, blocks, t, classes):
    """model.tune on a library's ViT: full, linear, bitfit or adaptformer (what gcl's has)."""
    name = t["name"]
    if name == "full":
        return
    if name not in ("linear", "bitfit", "adaptformer"):
        sys.exit(f"bench_arch.py: the PyTorch peer has tune = full, linear, bitfit, adaptformer, not {name}")
    for p in trunk.parameters():
        p.requires_grad_(False)
    if name == "bitfit":
        for b in blocks:
            for n, p in b.named_parameters():
                if n.endswith("bias"):
                    p.requires_grad_(True)
    if name == "adaptformer":
        # The block's second LayerNorm sees x; the adapter's output joins the block's.
        ln2 = lambda b: getattr(b, "ln_2", None) or getattr(b, "norm2")
        d = ln2(blocks[0]).normalized_shape[0]
        w = t.get("width", 0) or 2 ** max(0, math.floor(math.log2(classes / (2 * len(blocks)))))
        for b in blocks:
            b.adaptformer = AdaptFormer(d, w)
            seen = {}
            ln2(b).register_forward_pre_hook(lambda m, args, seen=seen: seen.__setitem__("x", args[0]))
            b.register_forward_hook(lambda m, args, out, seen=seen: out + m.adaptformer(seen.pop("x")))


def main(case):
    torch.manual_seed(0)
    if case["threads"]:
        torch.set_num_threads(case["threads"])
    device = torch.device("cuda" if case["device"].startswith("cuda") else "cpu")
    arch = case["arch"]
    if arch.startswith("clip_vit_") or arch.startswith("dinov2_"):
        trunk, dim, blocks = library_vit(arch)
        tune(trunk, blocks, case.get("tune", {"name": "full"}), case["classes"])
        model = torch.nn.Sequential(trunk, Cosine(dim, case["classes"]))
    else:
        model = ResNet(BasicBlock, [1, 1, 1, 1]) if arch == "resnet10" else getattr(torchvision.models, arch)()
        if arch.startswith("vit_"):
            tune(model, [l for l in model.encoder.layers], case.get("tune", {"name": "full"}), case["classes"])
            model.heads = Cosine(model.heads.head.in_features, case["classes"])
        else:
            model.fc = Cosine(model.fc.in_features, case["classes"])
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    model = model.to(device)
    cpu = device.type == "cpu"
    fmt = torch.channels_last if cpu else torch.contiguous_format
    model = model.to(memory_format=fmt)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9, weight_decay=5e-4)
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
    out = {"stage1": train, "stage2": [], "eval": ev, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "trainable": trainable}
    if device.type == "cuda":
        out["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
    print(json.dumps(out))


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
