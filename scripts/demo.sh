#!/usr/bin/env bash
# The README's first command: installs what is missing, builds, and runs the demo pipeline on the
# bundled data (the tiny trained KJV model in data/, Fashion-MNIST from Debian). Re-runnable:
# installs and builds are incremental, outputs are overwritten (--force).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh
K="build/bin/kvlab --progress none"
out=build/demo
mkdir -p "$out"

echo "== 1. this build, its BLAS and its speed"
$K selfcheck -o "$out/selfcheck.h5" --force

echo "== 2. import the bundled byte-level Llama (HF safetensors -> model artifact) and check it"
$K import-hf data/kjv-byte-llama -o "$out/kjv.h5" --force
$K inspect --validate "$out/kjv.h5" | grep -E "artifact|valid"

echo "== 3. held-out perplexity (Colossians..Revelation, never trained on; uniform would be 256)"
$K eval "$out/kjv.h5" --data data/kjv-byte-llama/heldout.txt --seq-len 1024 --max-windows 8 \
    -o "$out/kjv.eval.h5" --force

echo "== 4. generation, and pass-key retrieval from a 1 kB context"
$K generate "$out/kjv.h5" -p "In the beginning God created" -n 60
hay=$(head -c 700 data/kjv-byte-llama/heldout.txt | tr '\n' ' ')
$K generate "$out/kjv.h5" -n 6 -p "${hay:0:450} The pass key is 48151. Remember it. 48151 is the pass key. ${hay:450:250}
What is the pass key? The pass key is "

echo "== 5. a binary neural network on Fashion-MNIST (short CPU run)"
$K --threads 1 --seed 1 bnn-train --arch reactnet --width 8 --stages 3 --epochs 2 \
    --train-limit 3000 --batch-size 64 --lr 2e-3 -o "$out/bnn.h5" --force

echo "== 6. a spiking network with ANTLR on Fashion-MNIST (short CPU run)"
$K --threads 1 --seed 1 snn-train --hidden 100 --time-steps 40 --epochs 1 \
    --train-limit 1600 --test-limit 500 -o "$out/snn.h5" --force

echo "== 7. VGG16 on a crossbar PIM chip too small for it (COMPASS partitioning)"
$K pim-compile --net vgg16 --hw data/hw/compass-small.json --compare layerwise,greedy,ga \
    -o "$out/vgg16.plan.h5" --force
