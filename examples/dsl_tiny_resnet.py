"""Define a small residual CNN in the cnncc DSL, compile it, run it, export it to ONNX.

    python examples/dsl_tiny_resnet.py [out.onnx]
"""
from __future__ import annotations

import sys

import numpy as np

import cnncc
from cnncc import dsl


def block(x: dsl.Tensor, channels: int, stride: int) -> dsl.Tensor:
    """A ResNet basic block: two conv-BN(-ReLU) layers plus a (projected) skip connection."""
    y = dsl.relu(dsl.batch_norm(dsl.conv2d(x, channels, 3, stride, padding=1, bias=False)))
    y = dsl.batch_norm(dsl.conv2d(y, channels, 3, padding=1, bias=False))
    if stride != 1 or x.shape[1] != channels:
        x = dsl.batch_norm(dsl.conv2d(x, channels, 1, stride, bias=False))
    return dsl.relu(y + x)


@dsl.net(input_shape=(1, 3, 32, 32), name="example_resnet", seed=0)
def example_resnet(x: dsl.Tensor, num_classes: int = 10) -> dsl.Tensor:
    y = dsl.relu(dsl.batch_norm(dsl.conv2d(x, 16, 3, padding=1, bias=False)))
    with dsl.scope("stage1"):
        y = block(y, 16, 1)
    with dsl.scope("stage2"):
        y = block(y, 32, 2)
    y = dsl.flatten(dsl.global_avg_pool(y))
    return dsl.softmax(dsl.dense(y, num_classes))


def main() -> None:
    net = example_resnet()
    print(repr(net))
    x = np.random.default_rng(0).standard_normal(net.input_shapes[0]).astype(np.float32)

    model = cnncc.compile(net)                              # the default target
    reference = cnncc.compile(net, target="reference")      # the numpy oracle
    y, y_ref = model(x), reference(x)
    print(f"target {model.target}: top class {int(y.argmax())}, "
          f"max |diff| vs reference {float(np.abs(y - y_ref).max()):.2e}")

    path = sys.argv[1] if len(sys.argv) > 1 else "example_resnet.onnx"
    net.to_onnx(path)
    print(f"wrote {path}")
    try:
        import onnxruntime as ort
    except ImportError:
        return
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    y_ort = sess.run(None, {net.input_names[0]: x})[0]
    print(f"onnxruntime: max |diff| vs reference {float(np.abs(y_ort - y_ref).max()):.2e}")


if __name__ == "__main__":
    main()
