"""Fixtures for tests/transforms.rs: what torchvision (PIL backend) makes of a few images.

    .venv/bin/python scripts/gen_transform_fixtures.py [OUT]   (default tests/fixtures/transforms)

The inputs are generated here (smooth colour fields with edges and noise, a greyscale one,
sizes odd and even), written as PNG; every expected output is written as PNG too (lossless),
and cases.json says which operation with which parameters turns which input into which
output. JPEG cases store the file PIL encoded and the pixels PIL (libjpeg-turbo) decodes.
"""
import json
import os
import sys

import numpy as np
import torch
import torchvision
import torchvision.transforms.functional as F
from PIL import Image
from torchvision.transforms import InterpolationMode

out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "transforms")
os.makedirs(out, exist_ok=True)
rng = np.random.default_rng(0)


def field(h, w, channels):
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    planes = []
    for c in range(channels):
        f = 128 + 60 * np.sin(x / (7 + 3 * c) + y / (11 - 2 * c)) + 40 * np.cos((x - y) / 17.0)
        f += np.where((x // 13 + y // 9 + c) % 5 == 0, 50, 0)  # hard edges
        f += rng.normal(0, 8, size=(h, w))
        planes.append(f)
    a = np.clip(np.stack(planes, -1), 0, 255).astype(np.uint8)
    return a[:, :, 0] if channels == 1 else a


def save(img, name):
    img.save(os.path.join(out, name))
    return name


inputs = {
    "rgb_97x131.png": Image.fromarray(field(97, 131, 3), "RGB"),
    "rgb_300x200.png": Image.fromarray(field(300, 200, 3), "RGB"),
    "grey_64x80.png": Image.fromarray(field(64, 80, 1), "L"),
}
for name, img in inputs.items():
    save(img, name)

cases = []


def case(op, inp, params, result):
    name = f"out_{len(cases):03d}.png"
    save(result, name)
    cases.append({"op": op, "input": inp, "params": params, "expected": name})


for inp, img in inputs.items():
    w, h = img.size
    # RandomResizedCrop with a given box: F.resized_crop (crop, then PIL bilinear resize).
    boxes = [(0, 0, h, w, 32), (3, 5, h // 2, w // 3, 24), (h // 4, w // 5, h // 2 + 1, w // 2, 56), (1, 2, 7, 9, 40)]
    for top, left, bh, bw, size in boxes:
        r = F.resized_crop(img, top, left, bh, bw, [size, size], InterpolationMode.BILINEAR, antialias=True)
        case("resized_crop", inp, {"top": top, "left": left, "h": bh, "w": bw, "size": size}, r)
    # The test transform: Resize(resize) then CenterCrop(size), also with padding.
    for resize, size in [(40, 32), (37, 37), (24, 30), (64, 57)]:
        r = F.center_crop(F.resize(img, resize, InterpolationMode.BILINEAR, antialias=True), [size, size])
        case("resize_center_crop", inp, {"resize": resize, "size": size}, r)
    # ColorJitter's three enhancements, each with factors below and above 1.
    # (on a 48x48 version of the input, stored so that the test starts from the same pixels)
    base = F.resized_crop(img, 0, 0, h, w, [48, 48], InterpolationMode.BILINEAR, antialias=True)
    base_name = save(base, "base_" + inp)
    for kind, fn in [("brightness", F.adjust_brightness), ("contrast", F.adjust_contrast), ("saturation", F.adjust_saturation)]:
        for factor in [0.6, 0.93, 1.37]:
            case("enhance", base_name, {"kind": kind, "factor": factor}, fn(base, factor))
    if w * h < 20000:
        case("hflip", inp, {}, F.hflip(img))

# JPEG decoding: PIL's pixels (RGB, as ImageFolder's loader converts) for JPEGs PIL wrote.
jpegs = []
src = inputs["rgb_300x200.png"].crop((0, 0, 147, 101))  # odd sizes: partial MCUs
for name, kwargs, mode in [
    ("baseline_420.jpg", {"quality": 90}, "RGB"),
    ("progressive.jpg", {"quality": 85, "progressive": True}, "RGB"),
    ("baseline_444.jpg", {"quality": 95, "subsampling": 0}, "RGB"),
    ("grey.jpg", {"quality": 90}, "L"),
    ("cmyk.jpg", {"quality": 92}, "CMYK"),
]:
    path = os.path.join(out, name)
    src.convert(mode).save(path, **kwargs)
    with open(path, "rb") as f:
        decoded = Image.open(f).convert("RGB")
    jpegs.append({"file": name, "expected": save(decoded, "decoded_" + name.replace(".jpg", ".png"))})

with open(os.path.join(out, "cases.json"), "w") as f:
    json.dump({"torch": torch.__version__, "torchvision": torchvision.__version__, "pillow": Image.__version__, "cases": cases, "jpegs": jpegs}, f, indent=1)
print(f"{len(cases)} transform cases, {len(jpegs)} JPEG files -> {out}")
