"""The libraries' side of the ViT parity tests (tests/vit.rs): torchvision, OpenCLIP, timm.

  vit_parity.py preprocess OUT IMAGE...
                      OpenCLIP's evaluation preprocessing (bicubic resize to 224, center
                      crop, OpenAI's mean and std) of each image, into OUT.

  vit_parity.py check-export EXPORTED IO
                      loads `gcl export`'s state dict into torchvision's VisionTransformer
                      (28 px images, 4 px patches, 2 blocks of width 32, 2 heads, MLP 64) and
                      checks its features of IO's x against IO's features (gcl's, LoRA
                      unmerged) to 1e-4 relative; exits 1 otherwise.

  vit_parity.py OUT   writes, for a small torchvision VisionTransformer (32 px images, 4 px
                      patches, 2 blocks of width 48, 3 heads, MLP 96) with random weights:
                      OUT/vit.pth (its state dict, classifier included), OUT/vit.io.safetensors
                      (x: 3 images; features: the class token after the last LayerNorm;
                      logits: the classifier's; x48 and features48: 48 px images through
                      torchvision's model made for 48 px with interpolate_embeddings), and
                      OUT/names.json: every state-dict name and shape of vit_b_16, vit_b_32,
                      vit_l_16 and vit_l_32, of OpenCLIP's ViT-B-16, ViT-B-32 and ViT-L-14
                      image towers and of timm's DINOv2 S/B/L-14 (made on the meta device);
                      OUT/clip.pth, OUT/clip.io.safetensors: a small OpenCLIP model with
                      QuickGELU (a whole CLIP state dict, text tower of CLIP's
                      vocabulary and context included; x, features = encode_image, tokens =
                      open_clip.tokenize of PROMPTS, text_features = encode_text; the prompts
                      in OUT/prompts.json), and OUT/dinov2.pth, OUT/dinov2.io.safetensors: a small
                      timm DINOv2-style ViT (layer scales; features = the class token after
                      the last norm), both with every parameter random.
"""
import json
import sys

import open_clip
import timm
import torch
from safetensors.torch import save_file
from torchvision.models import vision_transformer as tv


def randomise(model, gen):
    """Every parameter random (LayerNorms, tokens, biases and layer scales start constant,
    which would hide a wrong eps, order or bias), scaled so that activations stay O(1)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2 and "pos" not in name and "embedding" not in name:
                p.copy_(torch.randn(p.shape, generator=gen) / p[0].numel() ** 0.5)
            elif name.endswith("gamma"):
                p.copy_(torch.rand(p.shape, generator=gen) * 0.5 + 0.5)
            elif any(name.endswith(f"{n}.weight") for n in ["ln_1", "ln_2", "ln_pre", "ln_post", "norm1", "norm2", "norm", "ln_final"]):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.2 * torch.randn(p.shape, generator=gen))
    model.eval()


def small_clip(out, gen):
    vision = {"layers": 2, "width": 48, "head_width": 16, "mlp_ratio": 2.0, "patch_size": 4, "image_size": 32}
    # The text tower has CLIP's vocabulary and context, so that the real tokenizer feeds it.
    text = {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}
    m = open_clip.model.CLIP(embed_dim=24, vision_cfg=vision, text_cfg=text, quick_gelu=True)
    randomise(m, gen)
    x = torch.randn(3, 3, 32, 32, generator=gen)
    tokens = open_clip.tokenize(PROMPTS)
    with torch.no_grad():
        f = m.encode_image(x)
        t = m.encode_text(tokens)
    torch.save(m.state_dict(), f"{out}/clip.pth")
    save_file({"x": x.contiguous(), "features": f.contiguous(), "tokens": tokens.contiguous(), "text_features": t.contiguous()}, f"{out}/clip.io.safetensors")
    with open(f"{out}/prompts.json", "w") as fp:
        json.dump(PROMPTS, fp)


# Texts that exercise the tokenizer: punctuation, contractions, digits, case and whitespace,
# accents, curly quotes, HTML entities, other scripts and emoji, a special token, folder-style
# names, and a text longer than the context.
PROMPTS = [
    "a photo of a T-shirt/top.",
    "a photo of a great white shark.",
    "Hello, World! It's 2024; we'll see... they'd've",
    "  Mixed   CASE\tand\nwhitespace ",
    "café naïve façade — “quotes” ‘single’",
    "Tom &amp;amp; Jerry &lt;3 &#39;x&#39;",
    "日本語のテキスト and emoji 🐈‍⬛ ok",
    "<start_of_text> inside",
    "n01440764 airplane_cabin 3.14159 100% e=mc^2 #tag @user",
    " ".join(["antidisestablishmentarianism"] * 40),
]


def small_dinov2(out, gen):
    from timm.models.vision_transformer import VisionTransformer
    m = VisionTransformer(img_size=32, patch_size=4, embed_dim=48, depth=2, num_heads=3, mlp_ratio=2.0, init_values=1e-5, num_classes=0)
    randomise(m, gen)
    x = torch.randn(3, 3, 32, 32, generator=gen)
    with torch.no_grad():
        f = m(x)
    torch.save(m.state_dict(), f"{out}/dinov2.pth")
    save_file({"x": x.contiguous(), "features": f.contiguous()}, f"{out}/dinov2.io.safetensors")


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
    for arch, name in [("clip_vit_b_16", "ViT-B-16"), ("clip_vit_b_32", "ViT-B-32"), ("clip_vit_l_14", "ViT-L-14")]:
        cfg = open_clip.get_model_config(name)
        with torch.device("meta"):
            visual = open_clip.model._build_vision_tower(cfg["embed_dim"], cfg["vision_cfg"])
        names[arch] = {f"visual.{k}": list(v.shape) for k, v in visual.state_dict().items()}
    for arch, name in [("dinov2_vit_s_14", "vit_small_patch14_dinov2"), ("dinov2_vit_b_14", "vit_base_patch14_dinov2"), ("dinov2_vit_l_14", "vit_large_patch14_dinov2")]:
        with torch.device("meta"):
            d = timm.create_model(name, pretrained=False, num_classes=0)
        names[arch] = {k: list(v.shape) for k, v in d.state_dict().items()}
    small_clip(out, g)
    small_dinov2(out, g)
    with open(f"{out}/names.json", "w") as f:
        json.dump(names, f)


def check_export(exported, io):
    from safetensors.torch import load_file
    m = tv.VisionTransformer(image_size=28, patch_size=4, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64)
    missing, unexpected = m.load_state_dict(load_file(exported), strict=False)
    assert not unexpected and all(k.startswith("heads.") for k in missing), (missing, unexpected)
    m.heads = torch.nn.Identity()
    m.eval()
    t = load_file(io)
    with torch.no_grad():
        f = m(t["x"])
    err = ((f - t["features"]).norm() / t["features"].norm()).item()
    print(f"exported backbone in torchvision: relative error {err:.2e}")
    sys.exit(0 if err < 1e-4 else 1)


def preprocess(out, images):
    """OpenCLIP's evaluation preprocessing (224 px) of each image, as OUT (safetensors: one
    3 x 224 x 224 tensor per image, named by its index)."""
    from PIL import Image
    t = open_clip.image_transform(224, is_train=False)
    save_file({str(i): t(Image.open(p)).contiguous() for i, p in enumerate(images)}, out)


if __name__ == "__main__":
    if sys.argv[1] == "preprocess":
        preprocess(sys.argv[2], sys.argv[3:])
    elif sys.argv[1] == "check-export":
        check_export(sys.argv[2], sys.argv[3])
    else:
        main(sys.argv[1])
