"""torchvision's side of the backbone parity tests (tests/backbones.rs).

  backbone_parity.py make OUT        random torchvision weights and their outputs, per architecture
  backbone_parity.py predict OUT     OUT/tv.pth (a ResNet-50 classifier), OUT/images/*.png
                                     (256x256) and OUT/logits.safetensors: torchvision's logits
                                     through Resize(256), CenterCrop(224), ImageNet normalisation
  backbone_parity.py load ARCH CKPT X OUT
                                     loads a gcl checkpoint's backbone into torchvision (the
                                     README's lines) and writes its features for the images X

`make` writes OUT/archs.txt (the architectures and formats below) and, for each architecture, OUT/<arch>.<ext> (the state dict: torch.save zip archive,
the legacy torch.save format, or safetensors, so that all three readers are exercised) and
OUT/<arch>.io.safetensors (input x, pooled features, fc logits; eval mode). Weights are
torchvision's initialisation with BatchNorm made non-trivial: affine parameters drawn at random
and running statistics accumulated over random batches, so that a wrong statistic, eps or
fold shows. Each block's last BatchNorm scale is drawn smaller (0.1-0.5, as in trained
ResNets, whose residual branches are small): with every scale in 0.5-1.5, rounding grows so
fast with depth that torchvision's own fp32 features are 2.4e-4 (ResNet-101) and 6.8e-4
(ResNet-152) from its fp64 ones, and no fp32 computation in another order can agree to 1e-4.
"""
import sys

import torch
import torchvision
from safetensors.torch import load_file, save_file
from torchvision.models.resnet import BasicBlock, ResNet

# (architecture, state-dict format)
ARCHS = [
    ("resnet10", "pth"),
    ("resnet18", "safetensors"),
    ("resnet34", "legacy.pth"),
    ("resnet50", "legacy.pth"),
    ("resnet101", "safetensors"),
    ("resnet152", "pth"),
    ("resnext50_32x4d", "pth"),
]
SIZE = 64  # input side: small keeps the test quick; every layer still runs (stride 32 -> 2x2)


def build(arch):
    if arch == "resnet10":
        # Not in torchvision: its BasicBlock ResNet with one block per stage.
        return ResNet(BasicBlock, [1, 1, 1, 1])
    return getattr(torchvision.models, arch)()


def randomise_batchnorm(model, gen):
    last = {id(getattr(b, "bn3", None) or b.bn2) for b in model.modules() if hasattr(b, "bn2")}
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            with torch.no_grad():
                m.weight.uniform_(*((0.1, 0.5) if id(m) in last else (0.5, 1.5)), generator=gen)
                m.bias.uniform_(-0.2, 0.2, generator=gen)
            m.momentum = None  # cumulative average over the batches below
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(8, 3, SIZE, SIZE, generator=gen))
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = 0.1
    model.eval()


def features(model, x):
    fc, model.fc = model.fc, torch.nn.Identity()
    try:
        return model(x)
    finally:
        model.fc = fc


def make(out):
    for i, (arch, fmt) in enumerate(ARCHS):
        gen = torch.Generator().manual_seed(1000 + i)
        torch.manual_seed(1000 + i)
        model = build(arch)
        randomise_batchnorm(model, gen)
        sd = model.state_dict()
        path = f"{out}/{arch}.{fmt}"
        if fmt == "safetensors":
            save_file({k: v.contiguous() for k, v in sd.items()}, path)
        else:
            torch.save(sd, path, _use_new_zipfile_serialization=(fmt == "pth"))
        x = torch.randn(2, 3, SIZE, SIZE, generator=gen)
        with torch.no_grad():
            f, logits = features(model, x), model(x)
            exact = features(model.double(), x.double())
        save_file({"x": x, "features": f, "logits": logits}, f"{out}/{arch}.io.safetensors")
        err = ((f.double() - exact).abs().max() / exact.abs().max()).item()
        print(f"{arch}: {path}; torchvision fp32 features {err:.1e} from fp64")
    # The index the Rust tests read (one `arch format` per line).
    with open(f"{out}/archs.txt", "w") as f:
        f.writelines(f"{arch} {fmt}\n" for arch, fmt in ARCHS)


def load(arch, ckpt, x_path, out):
    # The README's lines: a gcl run's backbone into torchvision.
    state = load_file(ckpt)
    backbone = {k.removeprefix("model.backbone."): v for k, v in state.items() if k.startswith("model.backbone.")}
    model = build(arch)
    missing, unexpected = model.load_state_dict(backbone, strict=False)
    assert not unexpected, unexpected
    # gcl keeps no num_batches_tracked (nothing reads it when BatchNorm's momentum is set)
    assert all(k.startswith("fc.") or k.endswith("num_batches_tracked") for k in missing), missing
    model.eval()
    x = load_file(x_path)["x"]
    with torch.no_grad():
        save_file({"features": features(model, x)}, out)


def predict(out):
    import os

    import numpy as np
    from PIL import Image
    from torchvision import transforms

    gen = torch.Generator().manual_seed(5)
    torch.manual_seed(5)
    model = torchvision.models.resnet50()
    randomise_batchnorm(model, gen)
    torch.save(model.state_dict(), f"{out}/tv.pth")
    os.makedirs(f"{out}/images", exist_ok=True)
    rng = np.random.default_rng(5)
    tf = transforms.Compose([
        transforms.Resize(256),
        transforms.CenterCrop(224),
        transforms.ToTensor(),
        transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
    ])
    xs = []
    for i in range(4):
        # Smooth colour fields with noise: images with structure at several scales.
        low = rng.uniform(0, 255, (8, 8, 3))
        img = np.kron(low, np.ones((32, 32, 1))) + rng.normal(0, 20, (256, 256, 3))
        path = f"{out}/images/{i:02d}.png"
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path)
        xs.append(tf(Image.open(path).convert("RGB")))
    with torch.no_grad():
        save_file({"logits": model(torch.stack(xs))}, f"{out}/logits.safetensors")


if __name__ == "__main__":
    if sys.argv[1] == "make":
        make(sys.argv[2])
    elif sys.argv[1] == "predict":
        predict(sys.argv[2])
    elif sys.argv[1] == "load":
        load(*sys.argv[2:6])
    else:
        sys.exit(__doc__)
