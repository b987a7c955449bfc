// tests/onnx/ort_check.js: runs an exported ONNX model in ONNX Runtime (onnxruntime-node,
// installed by scripts/ort_setup.sh; NODE_PATH points at it) on IDX images and compares with
// evowidth itself.
//
// usage: node ort_check.js MODEL.onnx IMAGES LABELS [--predict PRED.json] [--eval REPORT.json]
//                          [--tol T] [--same-accuracy]
//   --predict  `evowidth predict --json` output on the same images: every image's ONNX
//              Runtime logits must match within T relative (max |a - b| over the classes,
//              divided by the largest |logit| of that image; default 1e-4)
//   --eval     `evowidth eval --report` output: with --same-accuracy the number of correct
//              test images must be equal, to the last image
// Prints one summary line; exits 1 on any mismatch.
'use strict';
const fs = require('fs');
const zlib = require('zlib');
const ort = require('onnxruntime-node');

function readIdx(path) {
  let b = fs.readFileSync(path);
  if (b[0] === 0x1f && b[1] === 0x8b) b = zlib.gunzipSync(b);
  const nd = b[3], dims = [];
  for (let i = 0; i < nd; i++) dims.push(b.readUInt32BE(4 + 4 * i));
  return { dims, data: b.subarray(4 + 4 * nd) };
}

async function main() {
  const a = process.argv.slice(2);
  const opt = { tol: 1e-4 };
  const pos = [];
  for (let i = 0; i < a.length; i++) {
    if (a[i] === '--predict') opt.predict = a[++i];
    else if (a[i] === '--eval') opt.evalReport = a[++i];
    else if (a[i] === '--tol') opt.tol = Number(a[++i]);
    else if (a[i] === '--same-accuracy') opt.same = true;
    else pos.push(a[i]);
  }
  if (pos.length !== 3) throw new Error('usage: ort_check.js MODEL.onnx IMAGES LABELS [options]');
  const [model, imagesPath, labelsPath] = pos;
  const img = readIdx(imagesPath), lab = readIdx(labelsPath);
  const [n, H, W] = img.dims;
  const s = await ort.InferenceSession.create(model, { intraOpNumThreads: 2, interOpNumThreads: 1 });
  if (s.inputNames.join() !== 'pixels' || s.outputNames.join() !== 'logits')
    throw new Error(`graph inputs ${s.inputNames} / outputs ${s.outputNames}, expected pixels / logits`);
  const logits = [];
  let K = 0, correct = 0;
  const B = 500;
  for (let i = 0; i < n; i += B) {
    const b = Math.min(B, n - i);
    const x = new Float32Array(b * H * W);
    for (let k = 0; k < b * H * W; k++) x[k] = img.data[i * H * W + k]; // raw pixels, 0..255
    const out = await s.run({ pixels: new ort.Tensor('float32', x, [b, 1, H, W]) });
    const y = out.logits;
    K = y.dims[1];
    if (y.dims[0] !== b) throw new Error(`logits dims ${y.dims}`);
    for (let r = 0; r < b; r++) {
      const row = Array.from(y.data.subarray(r * K, (r + 1) * K));
      logits.push(row);
      let best = 0;
      for (let k = 1; k < K; k++) if (row[k] > row[best]) best = k;
      if (best === lab.data[i + r]) correct++;
    }
  }
  let ok = true;
  const msg = [`${model}: ONNX Runtime ${n} images, ${correct} correct (${(100 * correct / n).toFixed(2)}%)`];
  let ties = 0; // images whose class flipped on a tie (below)
  if (opt.predict) {
    const p = JSON.parse(fs.readFileSync(opt.predict, 'utf8'));
    if (p.predictions.length !== n) throw new Error(`predict has ${p.predictions.length} images, not ${n}`);
    // A class may differ only on a tie: where evowidth's logits of the two classes are within
    // twice the tolerance of each other (a rounding-level difference can flip such an image).
    let worst = 0, worstAt = -1, classDiff = 0;
    for (let i = 0; i < n; i++) {
      const e = p.predictions[i].logits, o = logits[i];
      let scale = 0, diff = 0, best = 0;
      for (let k = 0; k < K; k++) {
        scale = Math.max(scale, Math.abs(e[k]));
        diff = Math.max(diff, Math.abs(e[k] - o[k]));
        if (o[k] > o[best]) best = k;
      }
      const rel = diff / Math.max(scale, 1e-30);
      if (rel > worst) { worst = rel; worstAt = i; }
      const ec = p.predictions[i].class;
      if (best !== ec) {
        if (Math.abs(e[ec] - e[best]) <= 2 * opt.tol * Math.max(scale, 1e-30)) ties++;
        else classDiff++;
      }
    }
    msg.push(`logits vs evowidth predict: max relative difference ${worst.toExponential(2)} (image ${worstAt}), ` +
             `${classDiff} images with another class, ${ties} ties flipped`);
    if (classDiff) { ok = false; msg.push('FAIL: a class differs where the logits are not tied'); }
    if (!(worst <= opt.tol)) { ok = false; msg.push(`FAIL: above the tolerance ${opt.tol}`); }
    if (p.correct !== undefined && opt.same && Math.abs(p.correct - correct) > ties) {
      ok = false; msg.push(`FAIL: evowidth predict has ${p.correct} correct`);
    }
  }
  if (opt.evalReport) {
    const r = JSON.parse(fs.readFileSync(opt.evalReport, 'utf8'));
    const ec = Math.round(r.test_accuracy * r.test_samples);
    msg.push(`evowidth eval: ${ec} / ${r.test_samples} correct`);
    if (r.test_samples !== n) { ok = false; msg.push(`FAIL: eval saw ${r.test_samples} images`); }
    if (opt.same && Math.abs(ec - correct) > ties) {
      ok = false;
      msg.push('FAIL: the accuracies differ by more than the flipped ties');
    }
  }
  console.log(msg.join('; '));
  process.exit(ok ? 0 : 1);
}

main().catch((e) => { console.error(`ort_check: ${e.message}`); process.exit(1); });
