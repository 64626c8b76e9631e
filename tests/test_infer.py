"""`cnncc infer` without Ray: images and .npy files to parquet, checked against the model run on
inputs prepared here with numpy, and a run killed with SIGKILL that resumes without recomputing
or losing rows. (tests/test_infer_ray.py runs the same on a local Ray runtime.)"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import cnncc
from cnncc.cli import main
from cnncc.dsl.zoo import ZOO

pq = pytest.importorskip("pyarrow.parquet", reason="cnncc infer needs pyarrow (cnncc[ray])")
Image = pytest.importorskip("PIL.Image", reason="reading images needs Pillow (cnncc[images])")

MEAN = np.array([0.485, 0.456, 0.406], np.float32)[:, None, None]
STD = np.array([0.229, 0.224, 0.225], np.float32)[:, None, None]


def write_pngs(folder, count, seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        size = (int(rng.integers(10, 40)), int(rng.integers(10, 40)), 3)
        Image.fromarray(rng.integers(0, 256, size, dtype=np.uint8)).save(folder / f"{i:04d}.png")
    return sorted(str(p) for p in folder.glob("*.png"))


def prepared(path, shape):
    """The model input of one image, made here: RGB, bilinear resize, [0, 1], ImageNet mean/std."""
    with Image.open(path) as img:
        img = img.convert("RGB").resize((shape[3], shape[2]), Image.Resampling.BILINEAR)
        pixels = np.asarray(img, np.float32).transpose(2, 0, 1) / np.float32(255)
    return (pixels - MEAN) / STD


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lib")
    cnncc.export(ZOO["tiny_cnn"](), folder, name="tiny", threads=1)
    return folder


def test_images_to_parquet(tmp_path, library, capsys):
    paths = write_pngs(tmp_path / "img", 10)
    out = tmp_path / "out.parquet"
    assert main(["infer", str(library), "--input", str(tmp_path / "img"), "--output", str(out),
                 "--batch", "4"]) == 0
    table = pq.read_table(out).to_pydict()
    assert table["path"] == paths and table["index"] == list(range(10))
    model = cnncc.load(library)
    x = np.stack([prepared(p, model.input_shapes[0]) for p in paths])
    expect = model(x)
    got = np.array(table["output"], np.float32)
    assert np.abs(got - expect).max() <= 1e-5 * np.abs(expect).max()
    assert table["top1"] == expect.argmax(1).tolist()
    assert not os.path.exists(str(out) + ".parts")


def test_npy_inputs_and_bad_ones(tmp_path, library):
    model = cnncc.load(library)
    shape = model.input_shapes[0]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5,) + shape[1:]).astype(np.float32)
    (tmp_path / "in").mkdir()
    for i, image in enumerate(x):
        np.save(tmp_path / "in" / f"{i}.npy", image if i % 2 else image[None])
    out = tmp_path / "o.parquet"
    assert main(["infer", str(library), "--input", str(tmp_path / "in" / "*.npy"),
                 "--output", str(out), "--batch", "2"]) == 0
    got = np.array(pq.read_table(out).to_pydict()["output"], np.float32)
    assert np.array_equal(got, model(x))
    np.save(tmp_path / "in" / "9.npy", np.zeros((2, 2), np.float32))
    assert main(["infer", str(library), "--input", str(tmp_path / "in"),
                 "--output", str(tmp_path / "p.parquet")]) == 1
    assert main(["infer", str(library), "--input", str(tmp_path / "none"),
                 "--output", str(out)]) == 1


def test_killed_run_resumes_without_recomputing(tmp_path):
    # A model slow enough (~10 ms an image) that the kill lands mid-run.
    library = tmp_path / "lib"
    cnncc.export(ZOO["tiny_resnet"](input_size=96), library, name="slow", threads=1)
    paths = write_pngs(tmp_path / "img", 200)
    out = tmp_path / "out.parquet"
    parts = tmp_path / "out.parquet.parts"
    args = ["infer", str(library), "--input", str(tmp_path / "img"), "--output", str(out),
            "--batch", "4", "--threads", "1"]
    proc = subprocess.Popen([sys.executable, "-m", "cnncc", *args], stderr=subprocess.PIPE,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    deadline = time.monotonic() + 120
    while len(list(parts.glob("part-*.parquet"))) < 5 and proc.poll() is None \
            and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    done = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in parts.glob("part-*.parquet")}
    assert len(done) >= 5 and not out.exists()
    # One more chunk, then stop: the parts written before the kill are kept as they were.
    assert main([*args, "--stop-after", "1"]) == 3
    after = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in parts.glob("part-*.parquet")}
    assert {k: after[k] for k in done} == done and len(after) == len(done) + 1
    assert main(args) == 0
    table = pq.read_table(out).to_pydict()
    assert table["index"] == list(range(200)) and table["path"] == paths
    model = cnncc.load(library)
    shape = model.input_shapes[0]
    expect = np.concatenate([model(np.stack([prepared(p, shape) for p in paths[i:i + 50]]))
                             for i in (0, 50, 100, 150)])
    got = np.array(table["output"], np.float32)
    assert np.abs(got - expect).max() <= 1e-5 * np.abs(expect).max()
