"""cnncc.ray on a local Ray runtime started here (2 CPUs, shut down after the module): the
Predictor in Dataset.map_batches, and `cnncc infer --ray` over 200 images giving the rows of the
run without Ray, also when stopped halfway and resumed."""
from __future__ import annotations

import numpy as np
import pytest

import cnncc
from cnncc.cli import main
from cnncc.dsl.zoo import ZOO

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'cnncc[ray]')")
pq = pytest.importorskip("pyarrow.parquet", reason="cnncc infer needs pyarrow (cnncc[ray])")
pytest.importorskip("PIL.Image", reason="reading images needs Pillow (cnncc[images])")

from test_infer import write_pngs  # noqa: E402  (after the skips: it needs Pillow)

import cnncc.ray as cnncc_ray  # noqa: E402

pytestmark = pytest.mark.xdist_group("ray")


@pytest.fixture(scope="module")
def runtime():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lib")
    cnncc.export(ZOO["tiny_cnn"](), folder, name="tiny", threads=1)
    return folder


def test_predictor_in_map_batches(runtime, library):
    model = cnncc.load(library)
    x = np.random.default_rng(0).standard_normal((24,) + model.input_shapes[0][1:]).astype(
        np.float32)
    ds = ray.data.from_items([{"id": i, "image": x[i]} for i in range(len(x))])
    ds = ds.map_batches(cnncc_ray.Predictor, batch_size=8, batch_format="numpy",
                        fn_constructor_kwargs={"model": cnncc_ray.pack_library(library)},
                        compute=ray.data.ActorPoolStrategy(size=1), num_cpus=2)
    rows = sorted(ds.take_all(), key=lambda r: r["id"])
    got = np.stack([r["output"] for r in rows])
    assert np.array_equal(got, model(x))


def test_infer_on_ray_equals_local_and_resumes(runtime, library, tmp_path):
    write_pngs(tmp_path / "img", 200)
    common = ["infer", str(library), "--input", str(tmp_path / "img" / "*.png"), "--batch", "16"]
    local, on_ray = tmp_path / "local.parquet", tmp_path / "ray.parquet"
    assert main([*common, "--output", str(local)]) == 0
    assert main([*common, "--output", str(on_ray), "--ray"]) == 0
    expect = pq.read_table(local)
    assert expect.num_rows == 200 and pq.read_table(on_ray).equals(expect)
    # Stopped after 96 images, then resumed: the same 200 rows.
    resumed = tmp_path / "resumed.parquet"
    assert main([*common, "--output", str(resumed), "--ray", "--stop-after", "96"]) == 3
    written = sorted((tmp_path / "resumed.parquet.parts").glob("part-*.parquet"))
    assert 6 <= len(written) < 13
    assert main([*common, "--output", str(resumed), "--ray"]) == 0
    assert pq.read_table(resumed).equals(expect)
