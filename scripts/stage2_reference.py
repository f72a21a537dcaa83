"""classifier-balancing's LWS and NCM (Kang et al., ICLR 2020) in PyTorch, on given features:
the reference gcl's stage-2 methods are tested against (tests/stage2.rs).

  stage2_reference.py lws FEATURES.json STAGE1.safetensors LRS MOMENTUM WD OUT.json
  stage2_reference.py ncm TRAIN.json TEST.json OUT.json

FEATURES.json: [{"features": [...], "label": k}, ...] (what `gcl predict --features` gives,
labels added). LWS: logits f * (W x + b) with W, b the stage-1 classifier frozen and f = 1 at
the start, full-batch cross-entropy, torch.optim.SGD with one step per learning rate in LRS
(comma-separated); writes f. NCM: the mean of each class's L2-normalised training features,
normalised; writes those means and each test image's nearest mean by cosine.
"""
import json
import sys

import torch
import torch.nn.functional as F
from safetensors.torch import load_file


def load(path):
    rows = json.load(open(path))
    x = torch.tensor([r["features"] for r in rows], dtype=torch.float64)
    y = torch.tensor([r["label"] for r in rows])
    return x, y


def lws(feats, ckpt, lrs, momentum, wd, out):
    x, y = load(feats)
    sd = load_file(ckpt)
    w, b = sd["model.head.weight"].double(), sd["model.head.bias"].double()
    f = torch.ones(w.shape[0], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.SGD([f], lr=0.0, momentum=momentum, weight_decay=wd)
    for lr in lrs:
        for g in opt.param_groups:
            g["lr"] = lr
        opt.zero_grad()
        loss = F.cross_entropy(f * (x @ w.T + b), y)
        loss.backward()
        opt.step()
    json.dump({"scales": f.detach().tolist()}, open(out, "w"))


def ncm(train, test, out):
    x, y = load(train)
    xt, _ = load(test)
    classes = int(y.max()) + 1
    means = torch.stack([F.normalize(x[y == c], dim=1).mean(0) for c in range(classes)])
    means = F.normalize(means, dim=1)
    pred = (F.normalize(xt, dim=1) @ means.T).argmax(1)
    json.dump({"means": means.tolist(), "pred": pred.tolist()}, open(out, "w"))


if __name__ == "__main__":
    if sys.argv[1] == "lws":
        lws(sys.argv[2], sys.argv[3], [float(v) for v in sys.argv[4].split(",")], float(sys.argv[5]), float(sys.argv[6]), sys.argv[7])
    else:
        ncm(sys.argv[2], sys.argv[3], sys.argv[4])
