"""Runs a trained MobileNetV2 PIPNet graph at another input size, unchanged otherwise: how well
it does there before any fine-tuning (docs/experiments.md, "The default fine-tuned to 192").

    python tools/resize_graph.py IN.onnx SIZE OUT.onnx [--stride16]

The graph is convolutions only, so only the declared shapes and `pipnet.input_size` change.
`--stride16` also sets the first convolution of the 160-channel stage (`features.14`) to
stride 1, as `last_stage_stride = 1` does in training (total stride 16).
"""
import sys

import onnx


def main(src, size, out, stride16=False):
    model = onnx.load(src)
    stride = 16 if stride16 else 32
    if size % stride:
        sys.exit(f"{size} is not a multiple of the stride {stride}")
    if stride16:
        for node in model.graph.node:
            if node.op_type == "Conv" and node.name.startswith("features.14"):
                for a in node.attribute:
                    if a.name == "strides" and list(a.ints) == [2, 2]:
                        a.ints[:] = [1, 1]
    shape = model.graph.input[0].type.tensor_type.shape
    shape.dim[2].dim_value = shape.dim[3].dim_value = size
    for output in model.graph.output:
        dims = output.type.tensor_type.shape.dim
        dims[2].dim_value = dims[3].dim_value = size // stride
    for prop in model.metadata_props:
        if prop.key == "pipnet.input_size":
            prop.value = str(size)
        if prop.key == "pipnet.stride":
            prop.value = str(stride)
    onnx.checker.check_model(model)
    onnx.save(model, out)


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--stride16"]
    if len(args) != 3:
        sys.exit(__doc__)
    main(args[0], int(args[1]), args[2], "--stride16" in sys.argv)
