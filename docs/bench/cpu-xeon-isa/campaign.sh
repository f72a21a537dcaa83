#!/bin/bash
cd /work/main
CAP="GCL_CPU_ISA=avx2 ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2"
D=/tmp/camp2; mkdir -p $D
run() { local name=$1; shift; echo "== $name: $*" ; date; "$@" > $D/$name.txt 2> $D/$name.err; echo "rc=$?"; date; }
run resnet50-before /tmp/gcl-before bench --arch resnet50 --batch-size 16 --rounds 2 --warmup-steps 1 --windows 3 --steps-per-window 2 --vs-reference .venv/bin/python --json $D/resnet50-before.json
run resnet50-final /tmp/gcl-final bench --arch resnet50 --batch-size 16 --rounds 2 --warmup-steps 1 --windows 3 --steps-per-window 2 --vs-reference .venv/bin/python --json $D/resnet50-final.json
run native-before /tmp/gcl-before bench --vs-reference .venv/bin/python --json $D/native-before.json
run native-final /tmp/gcl-final bench --vs-reference .venv/bin/python --json $D/native-final.json
run avx2-before env $CAP /tmp/gcl-before bench --set run.winograd=false --vs-reference .venv/bin/python --json $D/avx2-before.json
run avx2-final /tmp/gcl-final bench --isa avx2 --vs-reference .venv/bin/python --json $D/avx2-final.json
#!/bin/bash
cd /work/main
D=/tmp/camp2
run() { local name=$1; shift; echo "== $name: $*" ; date; "$@" > $D/$name.txt 2> $D/$name.err; echo "rc=$?"; date; }
run native-before /tmp/gcl-before bench --vs-reference .venv/bin/python --json $D/native-before.json
run native-final /tmp/gcl-final bench --vs-reference .venv/bin/python --json $D/native-final.json
