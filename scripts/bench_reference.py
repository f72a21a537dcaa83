"""Times shared/reference/train_reference.py the way `gcl bench` times gcl.

It imports the reference module and calls its own functions: `run_epochs` (stage 1 and 2,
limited to N steps per call via --limit-steps, so every window is the reference's real
training loop) and `evaluate`. Prints one JSON line: images/s per window and peak RSS.
"""
import argparse
import json
import os
import resource
import sys
import time


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--reference-dir", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--format", default="idx")
    p.add_argument("--split", required=True)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup-steps", type=int, default=10)
    p.add_argument("--windows", type=int, default=5)
    p.add_argument("--steps-per-window", type=int, default=20)
    p.add_argument("--eval-passes", type=int, default=2)
    p.add_argument("--no-flip", action="store_true")
    p.add_argument("--no-mixup", action="store_true")
    p.add_argument("--loss", default="gcl", choices=["gcl", "ce"], help="gcl: cosine classifier, GCL-E; ce: linear, cross-entropy")
    p.add_argument("--device", default="cpu", help="cpu or cuda: model and data are moved there")
    a = p.parse_args()
    sys.path.insert(0, os.path.abspath(a.reference_dir))
    import numpy as np
    import torch
    import train_reference as T

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    np.random.seed(0)
    if a.format == "idx":
        xtr, ytr = T.load_idx(a.data, True)
        xte, yte = T.load_idx(a.data, False)
    else:
        c = 10 if a.format == "cifar10" else 100
        xtr, ytr = T.load_cifar(a.data, True, c)
        xte, yte = T.load_cifar(a.data, False, c)
    keep = T.longtail_indices(ytr, 100, a.split)
    x, y = torch.from_numpy(xtr[keep].copy()), torch.from_numpy(ytr[keep].copy())
    classes = int(ytr.max()) + 1
    counts = [int((y == c).sum()) for c in range(classes)]
    dev = torch.device(a.device)
    model = T.ResNet32(x.shape[1], classes, cosine=(a.loss == "gcl")).to(dev)
    x, y = x.to(dev), y.to(dev)
    mean, std = x.float().mean() / 255.0, x.float().std() / 255.0
    xte_t, yte_t = torch.from_numpy(xte.copy()).to(dev), torch.from_numpy(yte.copy()).to(dev)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def args(steps):
        return argparse.Namespace(lr=0.1, cls_lr=0.02, batch=a.batch, loss=a.loss, no_flip=a.no_flip,
                                  no_mixup=a.no_mixup, limit_steps=steps)

    def windows(params, stage):
        T.run_epochs(model, params, x, y, counts, args(a.warmup_steps), stage, 1)
        out = []
        for _ in range(a.windows):
            sync()
            t = time.perf_counter()
            T.run_epochs(model, params, x, y, counts, args(a.steps_per_window), stage, 1)
            sync()
            out.append(a.steps_per_window * a.batch / (time.perf_counter() - t))
        return out

    model.train()
    stage1 = windows(list(model.parameters()), 1)
    model.eval()
    # Stage 2 re-trains the classifier: GCL's cosine weights, or (CE) the linear layer as cRT.
    stage2 = windows([model.weight] if a.loss == "gcl" else list(model.fc.parameters()), 2)
    T.evaluate(model, xte_t, yte_t, mean, std, counts)
    ev = []
    for _ in range(a.eval_passes):
        t = time.perf_counter()
        T.evaluate(model, xte_t, yte_t, mean, std, counts)
        ev.append(len(yte) / (time.perf_counter() - t))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    res = {"stage1": stage1, "stage2": stage2, "eval": ev, "peak_rss_mib": peak}
    if dev.type == "cuda":
        res["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
    print(json.dumps(res))


if __name__ == "__main__":
    main()
