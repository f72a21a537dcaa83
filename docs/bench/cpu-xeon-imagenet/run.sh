set -x
cd /tmp/e2e
G=/work/main/target/release/gcl
D=/work/main/docs/bench/cpu-xeon-imagenet
T64='data.train_transform={name="resized-crop",size=64,scale=[0.35,1.0],ratio=[0.75,1.3333333333333333]}'
E64='data.test_transform={name="resize-crop",resize=73,size=64}'
rm -rf r10-fm100
$G train --dataset list --data fm100 --train-list train.txt --val-list val.txt --test-list test.txt --arch resnet10 --epochs 3 --cls-epochs 1 \
  --set "$T64" --set "$E64" --batch-size 128 --set stage1.lr_batch=256 --set stage2.batch_size=128 --out r10-fm100 > $D/train-resnet10-fmnist-jpeg-64px.log 2>&1
rm -rf r152-photos
$G train --preset places-lt --data photos --train-list train.txt --val-list val.txt --test-list test.txt --pretrained resnet152-random.pth \
  --set "$T64" --set "$E64" --epochs 3 --cls-epochs 2 --batch-size 32 --set stage2.batch_size=32 --out r152-photos > $D/train-places-lt-preset-photos-64px.log 2>&1
$G predict --run r152-photos --list photos/test.txt --quiet -o r152-photos/pred.csv
echo done
