#!/usr/bin/env bash
# Installs everything gcl needs on a fresh Debian machine with Rust:
#   - the Fashion-MNIST data (Debian package dataset-fashion-mnist),
#   - a Python venv with torch==2.11.0 (its libtorch is what tch links against), the
#     matching torchvision==0.26.0 (the image-transform fixtures and `gcl bench --input
#     --vs-reference`) and numpy,
#   - Debian's libturbojpeg0-dev: libjpeg-turbo, which gcl links statically to decode JPEG,
#   - Debian's fonts-dejavu-core: the font of `gcl report`'s PNG figures,
#   - Debian's libgloo-dev: gloo's headers (only the headers: the gloo code is libtorch's),
#     which gcl's data-parallel shim on c10d compiles against,
#   - with torch's CUDA build, the header wheels nvidia-cuda-crt and nvidia-cuda-cccl, which
#     the NCCL side of that shim compiles against,
#   - Debian's mate-backgrounds: real photos that `gcl data make --from photos` crops into
#     a JPEG benchmark set.
# Safe to run again: whatever is already there is reused.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${GCL_VENV:-$root/.venv}"
torch_version="2.11.0"
torchvision_version="0.26.0"

say() { printf '\033[1mgcl setup:\033[0m %s\n' "$*" >&2; }

sudo_if_needed() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] \
   && [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte ]; then
  say "installing Fashion-MNIST (apt package dataset-fashion-mnist)..."
  sudo_if_needed apt-get update -qq
  sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null
fi

need=()
[ -f /usr/lib/x86_64-linux-gnu/libturbojpeg.a ] || need+=(libturbojpeg0-dev)
[ -d /usr/share/backgrounds/mate ] || need+=(mate-backgrounds)
[ -f /usr/include/gloo/context.h ] || need+=(libgloo-dev)
[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || need+=(fonts-dejavu-core)
if [ ${#need[@]} -gt 0 ]; then
  say "installing ${need[*]} (apt: libjpeg-turbo, linked into gcl; photos for the JPEG benchmark; gloo's headers)..."
  sudo_if_needed apt-get update -qq
  sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

if ! "$venv/bin/python" -c "import torch, torchvision, numpy, safetensors, tensorboard, timm, open_clip, sys; sys.exit(torch.__version__.split('+')[0] != '$torch_version' or torchvision.__version__.split('+')[0] != '$torchvision_version')" 2>/dev/null; then
  if [ ! -x "$venv/bin/python" ]; then
    if ! python3 -c "import ensurepip, venv" 2>/dev/null; then
      # Debian ships venv's pip bootstrap separately.
      say "installing python3-venv (apt)..."
      sudo_if_needed apt-get update -qq
      sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    fi
    say "creating the Python venv $venv ..."
    python3 -m venv "$venv"
  fi
  say "installing torch==$torch_version, torchvision==$torchvision_version, numpy, safetensors, tensorboard, timm and open_clip_torch into $venv (a 4-5 GB download, a few minutes; reused on later runs)..."
  "$venv/bin/python" -m pip install -q --upgrade pip
  # timm and open_clip_torch: the ViT parity tests (DINOv2's and CLIP's layouts) build their models.
  "$venv/bin/python" -m pip install -q "torch==$torch_version" "torchvision==$torchvision_version" numpy safetensors tensorboard "timm==1.0.31" "open_clip_torch==3.3.0"
fi
# NCCL's side of csrc/dist.cpp includes CUDA headers that torch's own nvidia wheels lack.
nvidia="$("$venv/bin/python" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "..", "nvidia"))')"
if [ -f "$nvidia/../torch/lib/libtorch_cuda.so" ] && [ ! -f "$nvidia/cu13/include/crt/host_config.h" -o ! -d "$nvidia/cu13/include/cccl" ]; then
  say "installing CUDA's headers for NCCL (nvidia-cuda-crt, nvidia-cuda-cccl; small)..."
  "$venv/bin/python" -m pip install -q "nvidia-cuda-crt==13.0.88" "nvidia-cuda-cccl==13.0.85"
fi
say "ready: venv $venv ($("$venv/bin/python" -c 'import torch, torchvision; print("torch", torch.__version__, "torchvision", torchvision.__version__)'))"
