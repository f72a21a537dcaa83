#!/bin/bash
cd /work/main
CAP="GCL_CPU_ISA=avx2 ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2"
run() { local name=$1; shift; echo "== $name: $*" ; date; "$@" > /tmp/camp/$name.txt 2> /tmp/camp/$name.err; echo "rc=$?"; date; }
run native-before /tmp/gcl-before bench --vs-reference .venv/bin/python --json /tmp/camp/native-before.json
run native-after /tmp/gcl-after bench --vs-reference .venv/bin/python --json /tmp/camp/native-after.json
run avx2-before env $CAP /tmp/gcl-before bench --set run.winograd=false --vs-reference .venv/bin/python --json /tmp/camp/avx2-before.json
run avx2-after /tmp/gcl-after bench --isa avx2 --vs-reference .venv/bin/python --json /tmp/camp/avx2-after.json
