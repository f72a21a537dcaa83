"""Times torchvision's input pipeline the way `gcl bench --input` times gcl's.

The files (one absolute path per line in --files) are read with torchvision's ImageFolder
loader (datasets.folder.default_loader: PIL open + convert("RGB")) and the benchmarks'
training transform (RandomResizedCrop + RandomHorizontalFlip [+ ColorJitter] + ToTensor +
Normalize), batched by a DataLoader with --workers worker processes (0: in the main
process). Also times the bare decode (default_loader alone, one process). Prints one JSON
line: images/s per pass for each.
"""
import argparse
import json
import time

import torch
import torchvision
import torchvision.transforms as T
from torchvision.datasets.folder import default_loader


class Files(torch.utils.data.Dataset):
    """ImageFolder's __getitem__ on a fixed list of files."""

    def __init__(self, paths, transform):
        self.paths, self.transform = paths, transform

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        return self.transform(default_loader(self.paths[i])), 0


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--files", required=True)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--scale", type=float, nargs=2, default=(0.08, 1.0))
    p.add_argument("--ratio", type=float, nargs=2, default=(3 / 4, 4 / 3))
    p.add_argument("--jitter", type=float, nargs=3, default=None)
    p.add_argument("--mean", type=float, nargs=3, default=(0.485, 0.456, 0.406))
    p.add_argument("--std", type=float, nargs=3, default=(0.229, 0.224, 0.225))
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--passes", type=int, default=3)
    a = p.parse_args()
    torch.set_num_threads(1)
    paths = [l.strip() for l in open(a.files) if l.strip()]
    tf = [T.RandomResizedCrop(a.size, scale=tuple(a.scale), ratio=tuple(a.ratio)), T.RandomHorizontalFlip()]
    if a.jitter:
        tf.append(T.ColorJitter(*a.jitter))
    tf += [T.ToTensor(), T.Normalize(a.mean, a.std)]
    ds = Files(paths, T.Compose(tf))
    decode = []
    for _ in range(a.passes):
        t = time.perf_counter()
        for path in paths:
            default_loader(path)
        decode.append(len(paths) / (time.perf_counter() - t))
    loader = torch.utils.data.DataLoader(ds, batch_size=a.batch, shuffle=False, num_workers=a.workers, persistent_workers=a.workers > 0)
    full = []
    for k in range(a.passes + 1):
        t = time.perf_counter()
        n = 0
        for x, _ in loader:
            n += x.shape[0]
        if k > 0:  # the first pass starts the worker processes
            full.append(n / (time.perf_counter() - t))
    print(json.dumps({"decode": decode, "pipeline": full, "torchvision": torchvision.__version__}))


if __name__ == "__main__":
    main()
