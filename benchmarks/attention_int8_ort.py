"""Would an INT8 attention core make merged INT8 models faster on ONNX Runtime's CPU kernels?

One attention of a merged vit_small block (batch 32, ``--tokens`` tokens, 6 heads of 64, the size bias of token
merging) two ways, on random inputs, in interleaved rounds:

- ``mha_fp32``: ``com.microsoft::MultiHeadAttention`` with the bias as ``attention_bias`` (what the merged graphs run);
- ``int8_ops``: q, k, v and the softmax quantized (``QuantizeLinear``), q kᵀ and p v as
  ``com.microsoft::MatMulIntegerToFloat``, with the transposes that split and merge the heads.

Usage:  python benchmarks/attention_int8_ort.py [--tokens 155] [--rounds 8] [--threads 2]
Writes: benchmarks/results/attention_int8_ort_cpu.json (hardware and command inside).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from records import write_record

from vitcompress.export.onnx_runtime import ort_session
from vitcompress.timing import TimingMethod, compare, local_timer, ratio

BATCH, HEADS, HEAD_DIM, SCALE = 32, 6, 64, 0.125


def session(nodes: list, inputs: dict[str, list[int]], constants: dict[str, np.ndarray], threads: int) -> Any:
    """The graph of ``nodes`` in a session made as vitcompress makes every session (:func:`ort_session`)."""
    graph = helper.make_graph(nodes, "attention", [helper.make_tensor_value_info(n, TensorProto.FLOAT, s)
                                                   for n, s in inputs.items()],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
                              initializer=[numpy_helper.from_array(v, n) for n, v in constants.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "attention.onnx"
        onnx.save(model, path)
        return ort_session(path, threads=threads)


def mha_fp32(tokens: int, threads: int) -> Any:
    width = HEADS * HEAD_DIM
    node = helper.make_node("MultiHeadAttention", ["q", "k", "v", "", "", "bias"], ["out"], domain="com.microsoft",
                            num_heads=HEADS, scale=SCALE)
    shapes = {"q": [BATCH, tokens, width], "k": [BATCH, tokens, width], "v": [BATCH, tokens, width],
              "bias": [BATCH, 1, tokens, tokens]}
    return session([node], shapes, {}, threads)


def int8_ops(tokens: int, threads: int, amax: float = 4.0) -> Any:
    """The same attention from ONNX Runtime's INT8 ops; q carries the attention scale in its dequantization scale."""
    width, scale = HEADS * HEAD_DIM, np.float32(amax / 127)
    constants = {"s": np.array(scale), "sq": np.array(scale * SCALE, np.float32), "sp": np.array(1 / 255, np.float32),
                 "z128": np.array(128, np.uint8), "z0": np.array(0, np.int8), "zu0": np.array(0, np.uint8),
                 "heads": np.array([BATCH, tokens, HEADS, HEAD_DIM], np.int64),
                 "merged": np.array([BATCH, tokens, width], np.int64)}
    n = helper.make_node
    nodes = [n("QuantizeLinear", ["q", "s", "z128"], ["q8"]), n("Reshape", ["q8", "heads"], ["qh"]),
             n("Transpose", ["qh"], ["qt"], perm=[0, 2, 1, 3]),
             n("QuantizeLinear", ["k", "s", "z0"], ["k8"]), n("Reshape", ["k8", "heads"], ["kh"]),
             n("Transpose", ["kh"], ["kt"], perm=[0, 2, 3, 1]),
             n("MatMulIntegerToFloat", ["qt", "kt", "sq", "s", "z128", "z0"], ["scores"], domain="com.microsoft"),
             n("Add", ["scores", "bias"], ["biased"]), n("Softmax", ["biased"], ["p"], axis=-1),
             n("QuantizeLinear", ["p", "sp", "zu0"], ["p8"]),
             n("QuantizeLinear", ["v", "s", "z0"], ["v8"]), n("Reshape", ["v8", "heads"], ["vh"]),
             n("Transpose", ["vh"], ["vt"], perm=[0, 2, 1, 3]),
             n("MatMulIntegerToFloat", ["p8", "vt", "sp", "s", "zu0", "z0"], ["ctx"], domain="com.microsoft"),
             n("Transpose", ["ctx"], ["ct"], perm=[0, 2, 1, 3]), n("Reshape", ["ct", "merged"], ["out"])]
    shapes = {"q": [BATCH, tokens, width], "k": [BATCH, tokens, width], "v": [BATCH, tokens, width],
              "bias": [BATCH, 1, 1, tokens]}
    return session(nodes, shapes, constants, threads)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=155, help="tokens in the block (155: block 4 of --keep 0.4)")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((BATCH, args.tokens, HEADS * HEAD_DIM)).astype(np.float32) for _ in range(3))
    bias = np.log(rng.integers(1, 4, (BATCH, 1, 1, args.tokens))).astype(np.float32)
    mha, int8 = mha_fp32(args.tokens, args.threads), int8_ops(args.tokens, args.threads)
    tiled = np.ascontiguousarray(np.broadcast_to(bias, (BATCH, 1, args.tokens, args.tokens)))  # the kernel's form
    calls = {"mha_fp32": lambda: mha.run(None, {"q": q, "k": k, "v": v, "bias": tiled})[0],
             "int8_ops": lambda: int8.run(None, {"q": q, "k": k, "v": v, "bias": bias})[0]}
    error = float(np.abs(calls["mha_fp32"]() - calls["int8_ops"]()).max())
    timing = compare({name: local_timer({BATCH: call}) for name, call in calls.items()}, ["mha_fp32"], [BATCH],
                     TimingMethod(rounds=args.rounds))
    ms = {name: v["median_ms"][str(BATCH)] for name, v in timing["variants"].items()}
    print(f"MultiHeadAttention FP32 {ms['mha_fp32']:.1f} ms, INT8 ops {ms['int8_ops']:.1f} ms "
          f"({ratio(timing, 'int8_ops', 'mha_fp32', BATCH):.2f}x), largest difference {error:.3f}")
    out = write_record("attention_int8_ort_cpu", {
        "threads": args.threads, "shape": {"batch": BATCH, "tokens": args.tokens, "heads": HEADS, "head_dim": HEAD_DIM},
        "timing": timing, "largest_output_difference": error})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
