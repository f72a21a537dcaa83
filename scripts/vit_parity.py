"""torchvision's side of the ViT parity tests (tests/backbones.rs).

  vit_parity.py OUT   writes, for a small torchvision VisionTransformer (32 px images, 4 px
                      patches, 2 blocks of width 48, 3 heads, MLP 96) with random weights:
                      OUT/vit.pth (its state dict, classifier included), OUT/vit.io.safetensors
                      (x: 3 images; features: the class token after the last LayerNorm;
                      logits: the classifier's; x48 and features48: 48 px images through
                      torchvision's model made for 48 px with interpolate_embeddings), and
                      OUT/names.json: every state-dict name and shape of vit_b_16, vit_b_32,
                      vit_l_16 and vit_l_32 (made on the meta device: no weights).
"""
import json
import sys

import torch
from safetensors.torch import save_file
from torchvision.models import vision_transformer as tv


def main(out):
    g = torch.Generator().manual_seed(0)
    m = tv.VisionTransformer(image_size=32, patch_size=4, num_layers=2, num_heads=3, hidden_dim=48, mlp_dim=96, num_classes=5)
    # Every parameter drawn at random (LayerNorms, class token and biases are constants at
    # initialisation, which would hide a wrong eps, order or bias).
    with torch.no_grad():
        for name, p in m.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.5 if p.dim() > 1 else 0.2) + (1.0 if name.endswith("ln_1.weight") or name.endswith("ln_2.weight") or name.endswith("ln.weight") else 0.0))
        m.encoder.pos_embedding.mul_(0.2)
        for name, p in m.named_parameters():
            if p.dim() == 2 and "pos" not in name:
                p.mul_(1.0 / p.shape[1] ** 0.5)
    m.eval()
    x = torch.randn(3, 3, 32, 32, generator=g)
    with torch.no_grad():
        logits = m(x)
        heads = m.heads
        m.heads = torch.nn.Identity()
        feats = m(x)
        m.heads = heads
    torch.save(m.state_dict(), f"{out}/vit.pth")
    # The same weights for 48 px images, as torchvision adapts them.
    sd = tv.interpolate_embeddings(48, 4, m.state_dict(), interpolation_mode="bicubic")
    m48 = tv.VisionTransformer(image_size=48, patch_size=4, num_layers=2, num_heads=3, hidden_dim=48, mlp_dim=96, num_classes=5)
    m48.load_state_dict(sd)
    m48.heads = torch.nn.Identity()
    m48.eval()
    x48 = torch.randn(2, 3, 48, 48, generator=g)
    with torch.no_grad():
        f48 = m48(x48)
    save_file({k: v.contiguous() for k, v in {"x": x, "features": feats, "logits": logits, "x48": x48, "features48": f48}.items()}, f"{out}/vit.io.safetensors")
    names = {}
    for arch in ["vit_b_16", "vit_b_32", "vit_l_16", "vit_l_32"]:
        with torch.device("meta"):
            big = getattr(tv, arch)()
        names[arch] = {k: list(v.shape) for k, v in big.state_dict().items()}
    with open(f"{out}/names.json", "w") as f:
        json.dump(names, f)


if __name__ == "__main__":
    main(sys.argv[1])
