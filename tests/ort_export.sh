#!/usr/bin/env bash
# tests/ort_export.sh BUILD_DIR SOURCE_DIR: `evowidth export --format onnx` checked by
# onnx.checker (Debian's python3-onnx) and ONNX Runtime (onnxruntime-node from npm, which
# the ctest fixture ort_setup installs into BUILD_DIR/ort), on Fashion-MNIST models of every
# kind: conv (kernels 1, 2, 3, 5, 7; strides 1, 2; pads 0-3; BN on images and features; no
# bias), an MLP with a factorized layer that factorize-mode shrink surgery narrowed further,
# a residual net (identity, projection and BN-free blocks, GAP) that grow surgery widened,
# and the conv model after `evowidth compress` (factorized conv + dense) and `evowidth thin`
# (select-mode shrink). For each, BN as nodes and folded: the file passes the checker at
# opset 13, the safetensors export holds the same tensors bit for bit, ONNX Runtime's
# logits on the 10,000 test images match `evowidth predict`'s within 1e-4 relative, and
# its test accuracy equals `evowidth eval`'s to the last image. Then the CLI's errors.
set -uo pipefail
B=$(cd "$1" && pwd) S=$(cd "$2" && pwd)
E=$B/evowidth PY=/usr/bin/python3 FM=/usr/share/datasets/fashion-mnist
IMG=$FM/t10k-images-idx3-ubyte.gz LAB=$FM/t10k-labels-idx1-ubyte.gz
export NODE_PATH=$B/ort/node_modules OMP_WAIT_POLICY=passive
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
cd "$TMP" || exit 1
ok() { echo "ok   $*"; }
bad() { echo "FAIL $*"; }
# run DESC CMD...: ok with the command's last line, or FAIL with its output.
run() {
  local d=$1 out
  shift
  if out=$("$@" 2>&1); then ok "$d: ${out##*$'\n'}"; else bad "$d"; echo "$out" | tail -15; fi
}

{
# ---- the models -------------------------------------------------------------------------
# Independent pipelines run side by side (one thread each), each logging to its own file;
# the verdict counts the ok / FAIL lines of all of them.
train() {
  local m=$1
  run "train $m" "$E" train "$S/tests/onnx/$m.json" --threads 1 --quiet -o $m.evow --report $m.rep.json
}
for m in fm_conv fm_mlp_factorize fm_res_grow; do train $m >train_$m.log 2>&1 & done
wait
cat train_*.log
# Surgery really happened: the MLP shrank (factorize mode), the residual net grew.
run "fm_mlp_factorize was narrowed by shrink surgery" $PY -c "
import json; r = json.load(open('fm_mlp_factorize.rep.json'))
assert r['adaptations'] and r['params'] < r['initial_params'], (r['params'], r['initial_params'])
print(r['initial_params'], '->', r['params'], 'parameters')"
run "fm_res_grow was widened by grow surgery" $PY -c "
import json; r = json.load(open('fm_res_grow.rep.json'))
assert r['adaptations'] and r['params'] > r['initial_params'], (r['params'], r['initial_params'])
print(r['initial_params'], '->', r['params'], 'parameters')"
run "compress fm_conv (conv3, dense1 at rank 4)" "$E" compress fm_conv.evow --layer conv3 --layer dense1 --rank 4 --threads 1 -o fm_conv_svd.evow
run "thin fm_conv to 3/4 width" "$E" thin fm_conv.evow --ratio 0.75 --threads 1 -o fm_conv_thin.evow

# Expected graph contents (onnx_check.py --ops / --nodes), BN as nodes | BN folded.
declare -A OPS=(
  [fm_conv]="Conv=5,BatchNormalization=4,MaxPool=2,Flatten=1,Gemm=2|Conv=5,BatchNormalization=0,Gemm=2"
  [fm_mlp_factorize]="BatchNormalization=1|BatchNormalization=0"
  [fm_res_grow]="Add=3,BatchNormalization=6,GlobalAveragePool=1,Conv=8|Add=3,BatchNormalization=0,Conv=8"
  [fm_conv_svd]="Conv=6,Gemm=3|Conv=6,Gemm=3"
  [fm_conv_thin]="Conv=5,BatchNormalization=4|Conv=5,BatchNormalization=0")
declare -A NODES=(
  [fm_conv]="conv3,bn2" [fm_mlp_factorize]="dense2/v,dense2,bn1"
  [fm_res_grow]="res1/add,res2/p,res2/bnp,res3/c2" [fm_conv_svd]="conv3/v,dense1/v"
  [fm_conv_thin]="conv2")

check_model() {
  local m=$1 ops=${OPS[$1]}
  [ -f $m.evow ] || { bad "$m: no model"; return; }
  run "$m: export onnx" "$E" export $m.evow --format onnx -o $m.onnx
  run "$m: export onnx --fold-bn" "$E" export $m.evow --format onnx --fold-bn -o $m.fold.onnx
  run "$m: export safetensors" "$E" export $m.evow --format safetensors -o $m.safetensors
  run "$m.onnx: onnx.checker" $PY "$S/tests/onnx/onnx_check.py" $m.onnx --ops "${ops%|*}" \
    --nodes "${NODES[$m]}" --safetensors $m.safetensors
  run "$m.fold.onnx: onnx.checker" $PY "$S/tests/onnx/onnx_check.py" $m.fold.onnx \
    --ops "${ops#*|}" --safetensors $m.safetensors
  run "$m: evowidth predict" "$E" predict $m.evow "$IMG" --labels "$LAB" --threads 1 --json -o $m.pred.json
  run "$m: evowidth eval" "$E" eval $m.evow --report $m.eval.json
  run "$m.onnx: ONNX Runtime" node "$S/tests/onnx/ort_check.js" $m.onnx "$IMG" "$LAB" \
    --predict $m.pred.json --eval $m.eval.json --tol 1e-4 --same-accuracy
  run "$m.fold.onnx: ONNX Runtime" node "$S/tests/onnx/ort_check.js" $m.fold.onnx "$IMG" "$LAB" \
    --predict $m.pred.json --eval $m.eval.json --tol 1e-4
}
MODELS="fm_conv fm_mlp_factorize fm_res_grow fm_conv_svd fm_conv_thin"
for m in $MODELS; do check_model $m >check_$m.log 2>&1 & done
wait
for m in $MODELS; do cat check_$m.log; done

# ---- predict's other outputs ------------------------------------------------------------
# (the same --limit for both: a smaller batch may round the last bits differently)
"$E" predict fm_conv.evow "$IMG" --labels "$LAB" --csv --limit 7 >p.csv 2>&1
"$E" predict fm_conv.evow "$IMG" --labels "$LAB" --json --limit 7 >p7.json 2>&1
run "predict --csv: a header and 7 rows of image,class,prob,label,p0..p9,logit0..logit9" $PY -c "
import csv, json
rows = list(csv.reader(open('p.csv')))
j = json.load(open('p7.json'))['predictions']
assert rows[0][:4] == ['image', 'class', 'prob', 'label'] and len(rows[0]) == 24, rows[0]
assert len(rows) == 8
for r, e in zip(rows[1:], j):
    assert int(r[1]) == e['class'] and int(r[3]) == e['label']
    assert all(abs(float(a) - b) <= 1e-8 * abs(b) for a, b in zip(r[14:], e['logits']))
print('ok')"
tab=$("$E" predict fm_conv.evow "$IMG" --labels "$LAB" 2>&1 | tail -1)
want=$($PY -c "import json; r = json.load(open('fm_conv.eval.json')); print(round(r['test_accuracy'] * 10000))")
[[ "$tab" == "accuracy "*"($want / 10000)" ]] && ok "predict table: $tab" || bad "predict table ends with '$tab', eval has $want correct"

# ---- README's ONNX Runtime snippet, as written there, on test image 0 --------------------
$PY -c "
import gzip, json, struct
raw = gzip.open('$IMG').read()[16:16 + 784]
open('one.idx', 'wb').write(struct.pack('>IIII', 0x803, 1, 28, 28) + raw)
print('const pixels = new Float32Array(%s);' % json.dumps(list(raw)))" >"$B/ort/readme_snippet.mjs"
awk '/ONNX Runtime snippet/ {f = 1} f && /^```js/ {c = 1; next} c && /^```/ {exit} c' "$S/README.md" |
  sed "s|'default.onnx'|'$TMP/fm_conv.onnx'|" >>"$B/ort/readme_snippet.mjs"
node "$B/ort/readme_snippet.mjs" >snippet.out 2>&1
"$E" predict fm_conv.evow one.idx --json >one.json 2>&1
run "README's snippet loads the model in ONNX Runtime: logits of image 0 = evowidth predict's" $PY -c "
import json, re
got = [float(v) for v in re.findall(r'-?[0-9.]+(?:e[-+]?[0-9]+)?', open('snippet.out').read().split('[', 1)[1])]
want = json.load(open('one.json'))['predictions'][0]['logits']
assert len(got) == 10 and max(abs(a - b) for a, b in zip(got, want)) <= 1e-4 * max(map(abs, want)), (got, want)
print('ok')"

# ---- errors -----------------------------------------------------------------------------
echo keep >target.onnx
out=$("$E" export missing.evow --format onnx -o target.onnx 2>&1); rc=$?
[ $rc -eq 1 ] && [[ "$out" == *missing.evow* ]] && [ "$(cat target.onnx)" = keep ] &&
  [ -z "$(ls | grep '\.tmp')" ] && ok "a missing model: exit 1, named, the old target untouched" ||
  bad "missing model: rc $rc, '$out', target now '$(head -c 20 target.onnx)'"
out=$("$E" export fm_conv.evow --format onnx -o /nonexistent-dir/x.onnx 2>&1); rc=$?
[ $rc -eq 1 ] && [[ "$out" == */nonexistent-dir/x.onnx* ]] && ok "an unwritable target: exit 1, named" ||
  bad "unwritable target: rc $rc, '$out'"
out=$("$E" export fm_conv.evow --format onnx 2>&1); rc=$?
[ $rc -eq 2 ] && [[ "$out" == *"-o FILE is required"* ]] && ok "no -o: usage" || bad "no -o: rc $rc '$out'"
out=$("$E" export fm_conv.evow --format tflite -o x 2>&1); rc=$?
[ $rc -eq 2 ] && [[ "$out" == *tflite* ]] && [ ! -e x ] && ok "an unknown format: exit 2, named" || bad "format: rc $rc '$out'"
out=$("$E" export fm_conv.evow --format onnx --kmeans 16 -o x 2>&1); rc=$?
[ $rc -eq 2 ] && [ ! -e x ] && ok "an EVWZ option with --format onnx: exit 2" || bad "kmeans+onnx: rc $rc '$out'"
$PY -c "
import gzip, struct
open('small.idx', 'wb').write(struct.pack('>IIII', 0x803, 2, 8, 8) + bytes(128))"
out=$("$E" predict fm_conv.evow small.idx 2>&1); rc=$?
[ $rc -eq 1 ] && [[ "$out" == *small.idx*"1x8x8"*"1x28x28"* ]] && ok "predict on 8x8 images: $out" || bad "8x8: rc $rc '$out'"
out=$("$E" predict fm_conv.evow "$LAB" 2>&1); rc=$?
[ $rc -eq 1 ] && [[ "$out" == *t10k-labels* ]] && ok "predict on a label file: exit 1, named" || bad "labels as images: rc $rc '$out'"
"$E" export fm_conv.evow --format evwz --fp16 -o c.evwz >/dev/null 2>&1 &&
  run "--format evwz is the compressed file, which predict reads" "$E" predict c.evwz "$IMG" --limit 3

} >"$TMP/all.log" 2>&1
cat "$TMP/all.log"
# The pipelines ran in subshells, so the verdict counts the lines, not the counters.
n_ok=$(grep -c '^ok ' "$TMP/all.log") n_bad=$(grep -c '^FAIL ' "$TMP/all.log")
echo "$n_ok passed, $n_bad failed"
[ "$n_bad" -eq 0 ] && [ "$n_ok" -gt 0 ]
