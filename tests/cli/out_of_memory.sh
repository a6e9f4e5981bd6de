#!/usr/bin/env bash
# out_of_memory.sh SHARDTRAIN: a layout too big for the machine is a user error. Under an
# address-space limit (ulimit -v, 3 GB here, so the test never needs that much) a GPT whose
# logits alone take 4.2 GB (micro-batch 2000 x 64 tokens x 8192 fp32 vocabulary columns) must
# end with exit 2 and one line naming the buffer, its category and size, what the rank holds,
# and what to change — one process alone, and on every rank of `mpirun -np 2`, promptly.
set -u
st=$1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for i in $(seq 1 400); do echo "line $i of a small corpus, with words that repeat: the of and to"; done >"$tmp/text.txt"
"$st" tokenize --input "$tmp/text.txt" --vocab-size 300 --out "$tmp/data" >/dev/null || exit 1
sets=(--set "data.train=$tmp/data/train_*.bin" --set data.val= --set model.vocab_size=8192
      --set data.micro_batch=2000 --set train.eval_every=0 --set train.steps=2)
pattern="^shardtrain: error: \[rank [01]\] out of memory: no host memory for 4194304000 bytes \(activations 'logits'\) with [0-9]+ bytes held by this rank; \`shardtrain memplan\` predicts"
fail=0

(ulimit -v 3000000; exec "$st" train --config "$2" "${sets[@]}") >/dev/null 2>"$tmp/err1"
code=$?
if [[ $code -ne 2 || $(wc -l <"$tmp/err1") -ne 1 ]] || ! grep -Eq "$pattern" "$tmp/err1"; then
  echo "one process: exit $code, stderr:"; cat "$tmp/err1"; fail=1
else
  echo "one process: exit 2, $(cat "$tmp/err1")"
fi

start=$(date +%s)
(ulimit -v 3000000; exec timeout 120 mpirun --allow-run-as-root --oversubscribe -np 2 "$st" train \
  --config "$2" "${sets[@]}") >/dev/null 2>"$tmp/err2"
code=$?
took=$(($(date +%s) - start))
if [[ $code -ne 2 ]] || ! grep -Eq "$pattern" "$tmp/err2" || [[ $took -gt 60 ]]; then
  echo "mpirun -np 2: exit $code after ${took} s, stderr:"; cat "$tmp/err2"; fail=1
else
  echo "mpirun -np 2: exit 2 after ${took} s"
fi
exit $fail
