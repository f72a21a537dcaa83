"""RIDE's diversity term in PyTorch, for tests/experts.rs.

  diversity_reference.py OUT     writes OUT/diversity.safetensors and OUT/cases.json

Written from RIDELoss.forward of RIDE (Wang et al., ICLR 2021; github.com/frank-xwang/
RIDE-LongTailRecognition, model/loss.py), its diversity part only (the experts' own losses
are GCL's, checked by the loss fixtures):

    for logits_item in extra_info['logits']:              # each expert's logits z_e
        output_dist = F.log_softmax(logits_item / T, dim=1)
        with torch.no_grad():
            mean_output_dist = F.softmax(output_logits / T, dim=1)   # the ensemble's mean logits
        loss += factor * T_mean * T_mean * F.kl_div(output_dist, mean_output_dist, reduction='batchmean')

with T the base temperature, or, with `reweight_factor` r, RIDE's per-class temperatures
T_j = T * w_j / max(w), w_j = C * n_j / sum(n) * r + 1 - r, T_mean = mean_j T_j.
Each case: E experts' logits (B x C, float64), the class counts, the settings, the term and
its gradient with respect to every expert's logits.
"""
import json
import sys

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file


def ride_diversity(logits, counts, factor, temperature, reweight_factor):
    output_logits = torch.stack(logits, dim=1).mean(dim=1)
    if reweight_factor is None:
        diversity_temperature = temperature
        temperature_mean = temperature
    else:
        cls_num_list = np.array(counts) / np.sum(counts)
        C = len(cls_num_list)
        per_cls_weights = C * cls_num_list * reweight_factor + 1 - reweight_factor
        per_cls_weights = per_cls_weights / np.max(per_cls_weights)
        w = torch.tensor(per_cls_weights, dtype=logits[0].dtype)
        diversity_temperature = temperature * w.view((1, -1))
        temperature_mean = diversity_temperature.mean().item()
    loss = 0
    for logits_item in logits:
        output_dist = F.log_softmax(logits_item / diversity_temperature, dim=1)
        with torch.no_grad():
            mean_output_dist = F.softmax(output_logits / diversity_temperature, dim=1)
        loss += factor * temperature_mean * temperature_mean * F.kl_div(output_dist, mean_output_dist, reduction="batchmean")
    return loss


def main(out):
    torch.manual_seed(0)
    cases, tensors = [], {}
    counts = [500, 300, 180, 100, 60, 36, 20, 12, 7, 4]
    settings = [
        # experts, batch, factor, temperature, reweight_factor, logit scale
        (3, 8, -0.2, 1.0, None, 30.0),
        (3, 8, -0.45, 1.5, 0.05, 30.0),
        (2, 5, 0.7, 2.0, 0.5, 10.0),
        (4, 6, -0.2, 1.0, 0.02, 1.0),
    ]
    for i, (e, b, factor, t, r, scale) in enumerate(settings):
        # Cosines in [-1, 1] times the scale, as a cosine head gives.
        logits = [(torch.rand(b, len(counts), dtype=torch.float64) * 2 - 1).mul(scale).requires_grad_() for _ in range(e)]
        loss = ride_diversity(logits, counts, factor, t, r)
        grads = torch.autograd.grad(loss, logits)
        for k in range(e):
            tensors[f"case{i}.logits{k}"] = logits[k].detach()
            tensors[f"case{i}.grad{k}"] = grads[k]
        cases.append({"experts": e, "factor": factor, "temperature": t, "reweight_factor": r, "loss": loss.item()})
    save_file(tensors, f"{out}/diversity.safetensors")
    with open(f"{out}/cases.json", "w") as f:
        json.dump({"counts": counts, "cases": cases}, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
