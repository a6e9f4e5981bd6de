#!/usr/bin/env bash
# demo.sh — the main job from a fresh machine: set up, build, tokenize the bundled corpus (the
# King James Bible from Debian's bible-kjv), train a small GPT on 2 MPI ranks with ZeRO stage 2
# for a few minutes, and print a sample from it. Outputs: data/kjv/ (tokenizer and shards),
# runs/demo/ (metrics.jsonl, model.safetensors).
set -euo pipefail
source "$(dirname "$0")/env.sh"
"$SHARDTRAIN_ROOT/scripts/setup.sh"
"$SHARDTRAIN_ROOT/scripts/build.sh"
cd "$SHARDTRAIN_ROOT"
st="$BUILD_DIR/bin/shardtrain"

mkdir -p data runs/demo
[[ -s data/kjv.txt ]] || bible Gen1:1-Rev22:21 > data/kjv.txt
[[ -s data/kjv/train_000.bin ]] || "$st" tokenize --input data/kjv.txt --vocab-size 4096 --out data/kjv

# Unbound, the two ranks split the machine's CPUs between them (Open MPI would bind each of
# two ranks to a single core, and train runs as many threads as its rank's CPUs).
mpirun --allow-run-as-root --oversubscribe --bind-to none -np 2 "$st" train --config configs/demo.pbtxt \
  --metrics runs/demo/metrics.jsonl --export-final runs/demo/model.safetensors

echo
echo "sample:"
"$st" sample --ckpt runs/demo/model.safetensors --tokenizer data/kjv/tokenizer.bpe \
  --prompt "And God said" --tokens 120 --seed 7
