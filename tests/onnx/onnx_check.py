#!/usr/bin/python3
"""tests/onnx/onnx_check.py: checks evowidth's ONNX and safetensors exports with Debian's
python3-onnx (run it with /usr/bin/python3, where that package lives).

usage: onnx_check.py MODEL.onnx [--opset 13] [--nodes NAME,...] [--ops OP=N,...]
                     [--safetensors FILE]
  - onnx.checker.check_model(full_check=True) (structure, operator schemas at the stated
    opset, shape inference), the declared opset and IR version, and a graph that reads
    "pixels" [N, C, H, W] and returns "logits" [N, classes];
  - --nodes: nodes that must exist (e.g. "res2/p" for a projection shortcut);
  - --ops: exact counts of operator types (e.g. "Conv=7,Add=3");
  - --safetensors: the file parses as safetensors (header, offsets, F32 sizes, metadata)
    and every tensor of the ONNX file that the safetensors file also has holds the same
    float32 bits; every weight of the ONNX graph is in it.
Prints one line; exits 1 on any failure."""
import json
import sys

import numpy as np
import onnx
from onnx import numpy_helper


def fail(msg):
    print("onnx_check: FAIL: " + msg)
    sys.exit(1)


def read_safetensors(path):
    raw = open(path, "rb").read()
    hl = int.from_bytes(raw[:8], "little")
    if hl % 8 or 8 + hl > len(raw):
        fail(f"{path}: header length {hl} of a {len(raw)}-byte file")
    head = json.loads(raw[8:8 + hl].decode("utf-8"))
    meta = head.pop("__metadata__", {})
    if not all(isinstance(v, str) for v in meta.values()):
        fail(f"{path}: metadata values must be strings")
    data = raw[8 + hl:]
    end = 0
    out = {}
    for name, t in sorted(head.items(), key=lambda kv: kv[1]["data_offsets"][0]):
        a, b = t["data_offsets"]
        if t["dtype"] != "F32" or a != end or b - a != 4 * int(np.prod(t["shape"], dtype=np.int64)):
            fail(f"{path}: tensor {name} {t}")
        out[name] = np.frombuffer(data[a:b], dtype="<f4").reshape(t["shape"])
        end = b
    if end != len(data):
        fail(f"{path}: {len(data) - end} bytes after the last tensor")
    return out, meta


def main():
    args = sys.argv[1:]
    path = args.pop(0)
    opt = {"--opset": "13", "--nodes": "", "--ops": "", "--safetensors": ""}
    while args:
        k = args.pop(0)
        if k not in opt or not args:
            fail(f"bad argument {k}")
        opt[k] = args.pop(0)
    m = onnx.load(path)
    onnx.checker.check_model(m, full_check=True)
    opsets = {o.domain: o.version for o in m.opset_import}
    if opsets != {"": int(opt["--opset"])}:
        fail(f"opset imports {opsets}, expected ai.onnx {opt['--opset']}")
    g = m.graph
    ins = [i.name for i in g.input]
    outs = [o.name for o in g.output]
    if ins != ["pixels"] or outs != ["logits"]:
        fail(f"inputs {ins} outputs {outs}")
    dims = [d.dim_param or d.dim_value for d in g.input[0].type.tensor_type.shape.dim]
    if dims[0] != "N" or len(dims) != 4:
        fail(f"input dims {dims}")
    inferred = onnx.shape_inference.infer_shapes(m, strict_mode=True)
    od = [d.dim_param or d.dim_value for d in inferred.graph.output[0].type.tensor_type.shape.dim]
    names = {n.name for n in g.node}
    for want in filter(None, opt["--nodes"].split(",")):
        if want not in names:
            fail(f"no node named {want} (nodes: {sorted(names)})")
    counts = {}
    for n in g.node:
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
    for kv in filter(None, opt["--ops"].split(",")):
        op, want = kv.split("=")
        if counts.get(op, 0) != int(want):
            fail(f"{counts.get(op, 0)} {op} nodes, expected {want} ({counts})")
    extra = ""
    if opt["--safetensors"]:
        st, meta = read_safetensors(opt["--safetensors"])
        inits = {t.name: numpy_helper.to_array(t) for t in g.initializer}
        same = 0
        for name, a in inits.items():
            if name.startswith("input.") or "+" in name:  # normalisation constants, folded
                continue
            if name not in st:
                fail(f"ONNX initializer {name} is not in {opt['--safetensors']}")
            if a.shape != st[name].shape or a.astype("<f4").tobytes() != st[name].tobytes():
                fail(f"tensor {name} differs between the ONNX and safetensors files")
            same += 1
        layers = json.loads(meta["layers"])
        extra = f"; safetensors: {len(st)} tensors ({same} bit-equal to the ONNX initializers), {len(layers)} layers"
    print(f"onnx_check: {path}: checker ok, opset {opsets['']}, IR {m.ir_version}, "
          f"{len(g.node)} nodes {counts}, output {od}{extra}")


main()
