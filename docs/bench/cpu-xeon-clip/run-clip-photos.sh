#!/bin/bash
# After run.sh: CLIP ViT-B/16 (random weights, whole CLIP state dict) on the photo set through
# train, predict and report; then the benchmark on a quiet machine.
cd /tmp/e2e
while pgrep -f run.sh > /dev/null; do sleep 10; done
G=/work/main/target/release/gcl-e2e2
set -x
[ -f clip-b16.safetensors ] || /work/main/.venv/bin/python -c "
import open_clip, torch
from safetensors.torch import save_file
torch.manual_seed(0)
m = open_clip.create_model('ViT-B-16', pretrained=None)
save_file({k: v.contiguous() for k, v in m.state_dict().items()}, 'clip-b16.safetensors')
"
[ -d photos ] || $G data make --from photos --out photos --max-per-class 20 --val-per-class 0 --test-per-class 5
time $G train --dataset folder --data photos --arch clip_vit_b_16 --pretrained clip-b16.safetensors \
  --set model.tune.name=adaptformer --set model.head_init=text --set data.test_transform.name=clip \
  --set stage1.epochs=1 --set stage2.epochs=1 --batch-size 8 --set stage2.batch_size=8 --set stage1.lr=0.01 --set stage2.lr=0.01 \
  --out clip-photos --overwrite > clip-photos.log 2>&1
ls -la clip-photos >> clip-photos.log
time $G predict --run clip-photos --top-k 3 photos/test -o clip-pred.csv > clip-predict.log 2>&1
time $G predict --arch clip_vit_b_16 --pretrained clip-b16.safetensors --features photos/test -o clip-feat.csv >> clip-predict.log 2>&1
time $G report clip-photos --out clip-report > clip-report.log 2>&1
cd /work/main && time $G bench --arch clip_vit_b_16 --batch-size 8 --tunes full,adaptformer --rounds 1 --warmup-steps 1 --windows 2 --steps-per-window 2 --eval-batches 2 --vs-reference .venv/bin/python --json /tmp/e2e/bench-clip.json > /tmp/e2e/bench-clip.log 2>&1
