"""Compile MobileNetV2 from the cnncc model zoo (random weights), time it, export it to ONNX.

    python examples/zoo_mobilenet_v2.py [--target llvm] [--onnx mobilenet_v2.onnx]
"""
from __future__ import annotations

import argparse
import time

import numpy as np

import cnncc
from cnncc.dsl import zoo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default=None, help="cnncc target (default: cnncc's default)")
    parser.add_argument("--onnx", default=None, help="also write the net to this ONNX file")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    net = zoo.mobilenet_v2(seed=0)
    print(repr(net))
    t0 = time.perf_counter()
    model = cnncc.compile(net, target=args.target)
    print(f"compiled for {model.target} in {time.perf_counter() - t0:.2f} s")
    x = net.example_inputs(seed=0)[0]
    times = []
    for _ in range(args.runs):
        t0 = time.perf_counter()
        logits = model(x)
        times.append(time.perf_counter() - t0)
    print(f"best of {args.runs}: {min(times) * 1e3:.1f} ms; top-5 classes "
          f"{np.argsort(logits[0])[::-1][:5].tolist()}")
    if args.onnx:
        net.to_onnx(args.onnx)
        print(f"wrote {args.onnx}")


if __name__ == "__main__":
    main()
