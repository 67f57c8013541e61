#!/usr/bin/env python3
"""The ONNX round trip of `kvlab mobile-plan export` (issue 12), with onnxruntime + numpy only.

  check-onnx-roundtrip.py EXPORT_DIR REFERENCE_NPZ [--components a,b,c] [--json]

EXPORT_DIR is what `kvlab mobile-plan export MODEL --weights MODEL -o EXPORT_DIR` wrote (chunks +
manifest.json); REFERENCE_NPZ holds the inputs and the diffusers/transformers models' own outputs
(tests/data/mobile/roundtrip/reference.npz, made by scripts/make-golden-diffusion.py checkpoint):
"<component>.<input name>" for each pipeline input, "<component>.out" (the unrewritten models,
erf GELU) and "<component>.out_tanh" (the same with GELU(approximate='tanh')).

For each component the chunks run in sequence, in manifest order, with onnxruntime's CPU provider:
chunk k is fed the pipeline inputs and earlier chunks' outputs it lists. The last chunk's output is
compared with both references:
  vs out_tanh: max |diff| <= 1e-4 x max(1, max |ref|)  (fp32 round-off; the export's GELU is the
               tanh form with z clamped to +-5, identical to tanh GELU at these magnitudes)
  vs out:      max |diff| <= 2e-3 x max(1, max |ref|)  (the GELU approximation itself)
Prints one line (or JSON) per component; exits 1 when a tolerance is exceeded, 2 on bad input.
"""
import json
import pathlib
import sys

TOL_TANH = 1e-4
TOL_EXACT = 2e-3


def main(argv):
    args = [a for a in argv if not a.startswith("--")]
    as_json = "--json" in argv
    comps = None
    for i, a in enumerate(argv):
        if a == "--components":
            comps = argv[i + 1].split(",")
            args.remove(argv[i + 1])
    if len(args) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    import numpy as np
    import onnxruntime as ort

    out_dir, ref_path = pathlib.Path(args[0]), pathlib.Path(args[1])
    manifest = json.loads((out_dir / "manifest.json").read_text())
    ref = np.load(ref_path)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    results, ok = {}, True
    for comp, chunks in manifest["components"].items():
        if comps and comp not in comps:
            continue
        env = {k.split(".", 1)[1]: ref[k] for k in ref.files
               if k.startswith(comp + ".") and not k.split(".", 1)[1].startswith("out")}
        for c in chunks:
            missing = [n for n in c["inputs"] if n not in env]
            if missing:
                print(f"{c['file']}: inputs {missing} are neither in {ref_path} nor outputs of "
                      "earlier chunks", file=sys.stderr)
                return 2
            sess = ort.InferenceSession(str(out_dir / c["file"]), so, providers=["CPUExecutionProvider"])
            outs = sess.run(c["outputs"], {n: env[n] for n in c["inputs"]})
            env.update(zip(c["outputs"], outs))
        got = env[chunks[-1]["outputs"][-1]]
        r = {"chunks": len(chunks), "output": chunks[-1]["outputs"][-1], "shape": list(got.shape)}
        for key, tol in (("out_tanh", TOL_TANH), ("out", TOL_EXACT)):
            want = ref[f"{comp}.{key}"]
            if got.shape != want.shape:
                print(f"{comp}: output shape {got.shape} != reference {want.shape}", file=sys.stderr)
                return 1
            scale = max(1.0, float(np.abs(want).max()))
            diff = float(np.abs(got.astype(np.float64) - want).max())
            r[f"max_abs_diff_{key}"] = diff
            r[f"tol_{key}"] = tol * scale
            ok &= diff <= tol * scale
        r["max_abs_ref"] = float(np.abs(ref[f"{comp}.out"]).max())
        results[comp] = r
        if not as_json:
            print(f"{comp}: {r['chunks']} chunk(s), max |ref| {r['max_abs_ref']:.3f}, max |diff| vs tanh-GELU "
                  f"model {r['max_abs_diff_out_tanh']:.2e} (tol {r['tol_out_tanh']:.1e}), vs unrewritten "
                  f"model {r['max_abs_diff_out']:.2e} (tol {r['tol_out']:.1e})")
    if as_json:
        print(json.dumps({"onnxruntime": ort.__version__, "ok": ok, "components": results}, indent=1))
    if not results:
        print("no component checked", file=sys.stderr)
        return 2
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
