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

echo "== 8. tokenize: text -> token ids with the model's tokenizer (bytes for this model)"
$K tokenize "$out/kjv.h5" --text data/kjv-byte-llama/heldout.txt -o "$out/heldout.bin" --force

echo "== 9. KV-cache compression: full vs SnapKV vs H2O at a quarter of the context"
$K kv-eval "$out/kjv.h5" --data data/kjv-byte-llama/heldout.txt --method full,snapkv,h2o \
    --budget 0.25 --task retrieval,ppl --retrieval-context 512 --retrieval-depth 0.5 \
    --retrieval-samples 2 --ppl-prompt 128 --ppl-continuation 16 --ppl-samples 2 \
    -o "$out/kv.h5" --force

echo "== 10. SLEB removes 2 of 8 blocks; the smaller model still evaluates"
$K prune-blocks "$out/kjv.h5" --calib tests/data/sleb/calib.txt --remove-ratio 0.2 \
    --calib-windows 2 --calib-len 512 --calib-sampling contiguous --dtype float32 \
    -o "$out/kjv-p20.h5" --force
$K eval "$out/kjv-p20.h5" --data data/kjv-byte-llama/heldout.txt --seq-len 1024 --max-windows 4 \
    --dtype float32

echo "== 11. 1-bit weights (BinaryMoS initialisation, packed 8 per byte) and their perplexity"
$K binarize "$out/kjv.h5" --steps 0 -o "$out/kjv.binary.h5" --force
$K eval "$out/kjv.binary.h5" --data data/kjv-byte-llama/heldout.txt --seq-len 1024 --max-windows 4

echo "== 12. Stable Diffusion 2.1 on a phone: delegate check, weight chunks, memory/latency plan"
$K mobile-plan delegate data/diffusion/sd21 --target tflite-gpu
$K mobile-plan chunk data/diffusion/sd21 --cap-mb 1024 --algo apple-bisect
$K mobile-plan plan data/diffusion/sd21 --device snapdragon-8-gen-2 --steps 20 --wbits 8 \
    -o "$out/sd21.mobile-plan.h5" --force
