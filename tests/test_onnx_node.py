"""ONNX's backend node tests (built in memory by onnx's loader) run through CnnccBackend.

Every discovered case is either run (its ops are all in our op table after the frontend's
old-form rewrites, its types are ones we support) or excluded with a stated reason; the
exclusions are counted in the pytest terminal summary. Expected outputs come from ONNX's own
numpy implementations shipped with the test cases.

    python tests/test_onnx_node.py [REGEX]   # prints: discovered / in op set / passed /
                                              # excluded by reason / failures grouped by op

Every included case runs on both targets, "reference" (the numpy op table) and "llvm" (native
code), at the same tolerances; cases that cannot run on llvm are listed in LLVM_EXCLUDED with the
reason (and counted in the summary). CNNCC_ONNX_TARGET=reference|llvm restricts the run (pytest
or the script) to one target.
"""
from __future__ import annotations

import collections
import os
import re
import sys
import warnings

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from cnncc.frontend.opset import RENAMED_OPS
from cnncc.frontend.validate import DEFAULT_DOMAINS, FRONTEND_OPS, MIN_OPSET
from cnncc.ir import OP_TABLE, DType
from cnncc.onnx_backend import CnnccBackend, CnnccBackendRep
from cnncc.testing import made_once_per_run

MIN_CASES = 1800
ALL_TARGETS = ("reference", "llvm", "cuda-emu")
TARGETS = tuple(t for t in ALL_TARGETS if os.environ.get("CNNCC_ONNX_TARGET", t) == t) \
    or (os.environ["CNNCC_ONNX_TARGET"],)

# Cases excluded by name, with the reason (regex -> reason). Everything else that is not run is
# excluded by a rule computed from the model (domain, types, ops), also with its reason.
EXCLUDED = {
    r"^test_batchnorm_.*training_mode": "BatchNormalization in training mode (batch statistics)",
    r"^test_training_dropout": "Dropout with training_mode=True (random mask; training only)",
    r"^test_bernoulli": "random sampling: outputs not comparable",
    r"^test_(randomnormal|randomuniform)": "random sampling: outputs not comparable",
    r"^test_resize_downsample_scales_(linear|cubic)_align_corners$": (
        "align_corners with a fractional output length: cnncc uses the integer output length "
        "(the ONNX spec formula, and onnxruntime's result); onnx's Python reference, which "
        "made the expected data, uses the fractional one"),
    r"^test_attention_4d_causal_fp16_expanded$": (
        "float16 rounding: the expected output is computed in higher precision; onnxruntime "
        "misses it by the same 1 fp16 ulp (4.9e-4) that exceeds atol=1e-5"),
}


EXCLUDED.update({
    r"^test_(de)?quantizelinear_blocked": "blocked quantization (block_size > 0) not supported",
    r"^test_qlinearmatmul_.*_float16": "QLinearMatMul with float16 scales (float32 only)",
})
# Cases run on the reference target but not on the native ones (llvm, cuda-emu) (regex ->
# reason).
LLVM_EXCLUDED: dict[str, str] = {}


def target_exclusion(case, target: str) -> str | None:
    """Why an included ``case`` does not run on ``target``, or None when it does."""
    if target != "reference":
        for pattern, reason in LLVM_EXCLUDED.items():
            if re.search(pattern, case.name):
                return f"reference only: {reason}"
    return None


def _generate_cases() -> list:
    from onnx.backend.test.loader import load_model_tests
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with np.errstate(all="ignore"):
            return load_model_tests(kind="node")


def _load_cases() -> list:
    """ONNX's node cases. onnx makes them by running its export functions (expected outputs from
    its Python reference: ~4 CPU s), so one process of a test run makes them and the others (the
    xdist workers, the summary in the controller) load its pickle."""
    return made_once_per_run(f"onnx-{onnx.__version__}-node-cases", _generate_cases)


CASES = _load_cases()


def _value_problem(vi: onnx.ValueInfoProto) -> str | None:
    kind = vi.type.WhichOneof("value")
    if kind is None:
        return None
    if kind != "tensor_type":
        return f"non-tensor values ({kind})"
    elem = vi.type.tensor_type.elem_type
    try:
        DType.from_onnx(elem)
    except TypeError:
        return f"element type {onnx.TensorProto.DataType.Name(elem)} unsupported"
    return None


def _required_ops(model: onnx.ModelProto) -> set[str]:
    opset = next((o.version for o in model.opset_import if o.domain in DEFAULT_DOMAINS), 0)
    ops = set()
    for node in model.graph.node:
        if node.op_type in FRONTEND_OPS:
            continue
        ops.add(RENAMED_OPS.get(node.op_type, node.op_type))
        if node.op_type in ("Softmax", "LogSoftmax", "Hardmax"):
            try:
                since = onnx.defs.get_schema(node.op_type, opset, "").since_version
            except onnx.defs.SchemaError:
                since = 13
            if since < 13:      # coerced-2-D semantics are spelled out with Flatten/Reshape
                ops.update(("Flatten", "Reshape"))
    return ops


def exclusion_reason(case) -> str | None:
    """Why ``case`` is not run, or None when it is."""
    for pattern, reason in EXCLUDED.items():
        if re.search(pattern, case.name):
            return reason
    model = case.model
    domains = sorted({n.domain for n in model.graph.node if n.domain not in DEFAULT_DOMAINS})
    if domains:
        return f"non-default domain ({', '.join(domains)})"
    opset = next((o.version for o in model.opset_import if o.domain in DEFAULT_DOMAINS), 0)
    if opset < MIN_OPSET:
        return f"opset {opset}: below the oldest opset cnncc imports ({MIN_OPSET})"
    if any(vi.type.WhichOneof("value") not in (None, "tensor_type")
           for vi in list(model.graph.input) + list(model.graph.output)):
        return "non-tensor values (sequence/optional/map)"
    for vi in list(model.graph.input) + list(model.graph.output):
        problem = _value_problem(vi)
        if problem:
            return problem
    missing = sorted(_required_ops(model) - set(OP_TABLE))
    if missing:
        return "op not in OP_TABLE: " + ", ".join(missing)
    return None


def _classify() -> tuple[list, dict[str, str]]:
    included, excluded = [], {}
    for case in CASES:
        reason = exclusion_reason(case)
        if reason is None:
            included.append(case)
        else:
            excluded[case.name] = reason
    return included, excluded


INCLUDED, EXCLUDED_CASES = _classify()


def _to_array(value) -> np.ndarray:
    if isinstance(value, onnx.TensorProto):
        return numpy_helper.to_array(value)
    return np.asarray(value)


def run_case(case, target: str, rep: CnnccBackendRep | None = None) -> CnnccBackendRep:
    """Run every data set of ``case`` on ``target`` (with ``rep`` when already prepared) and
    compare with ONNX's expected outputs."""
    rtol, atol = max(case.rtol, 1e-3), max(case.atol, 1e-5)
    if rep is None:
        rep = CnnccBackend.prepare(case.model, device="CPU", target=target)
    for inputs, expected in case.data_sets:
        got = rep.run([_to_array(x) for x in inputs])
        assert len(got) == len(expected), f"{len(got)} outputs, expected {len(expected)}"
        for i, (out, ref) in enumerate(zip(got, expected)):
            ref = _to_array(ref)
            out = np.asarray(out)
            assert out.dtype == ref.dtype, f"output {i}: dtype {out.dtype}, expected {ref.dtype}"
            assert out.shape == ref.shape, f"output {i}: shape {out.shape}, expected {ref.shape}"
            if ref.dtype.kind == "f":
                np.testing.assert_allclose(out, ref, rtol=rtol, atol=atol,
                                           err_msg=f"output {i}")
            else:
                np.testing.assert_array_equal(out, ref, err_msg=f"output {i}")
    return rep


def test_enough_node_cases_discovered():
    assert len(CASES) >= MIN_CASES, (f"only {len(CASES)} ONNX node test cases discovered "
                                     f"(expected >= {MIN_CASES}): is the onnx package complete?")


def test_exclusions_have_reasons():
    assert len(INCLUDED) + len(EXCLUDED_CASES) == len(CASES)
    assert all(reason.strip() for reason in EXCLUDED_CASES.values())


# Ops of the op table that no ONNX node case exercises on its own (tested elsewhere).
NOT_COVERED_BY_NODE_CASES = {
    "Constant": "the frontend imports Constant nodes as parameters; the op is for graphs built "
                "in Python (tests/test_ops_tensor.py)",
    "GlobalLpPool": "ONNX ships no node case for it; tests/test_ops_nn.py compares it with "
                    "onnxruntime",
    "FusedConv": "internal op made by the fuse_epilogue pass; tests/test_fuse_epilogue.py",
    "FusedConvTranspose": "internal op made by the fuse_epilogue pass; "
                          "tests/test_fuse_epilogue.py",
    "FusedGemm": "internal op made by the fuse_epilogue pass; tests/test_fuse_epilogue.py",
    "ToNCHWc": "internal op of alter_layout_nchwc; tests/test_alter_layout.py, "
               "tests/test_nchwc_kernels.py",
    "FromNCHWc": "internal op of alter_layout_nchwc; tests/test_alter_layout.py, "
                 "tests/test_nchwc_kernels.py",
    "ConvNCHWc": "internal op of alter_layout_nchwc; tests/test_nchwc_kernels.py",
    "PoolNCHWc": "internal op of alter_layout_nchwc; tests/test_nchwc_kernels.py",
    "ChannelGather": "internal op made by the fold_channel_shuffle pass; "
                     "tests/test_zoo_blocks.py",
    "DwPwConvNCHWc": "internal op made by the depthwise_separable pass; "
                     "tests/test_depthwise_separable.py",
    "QConv": "internal op made by the fuse_quantized pass; tests/test_quant.py",
    "ShiftBytes": "internal op of alter_layout_int8; tests/test_quant_blocked.py",
    "QConvNCHWc": "internal op made by the alter_layout_int8 pass; tests/test_quant_blocked.py",
    "QLinearAdd": "com.microsoft op (ONNX ships no node case); tests/test_quant_ops.py compares it "
                  "with onnxruntime",
    "QLinearGlobalAveragePool": "com.microsoft op (ONNX ships no node case); "
                                "tests/test_quant_ops.py compares it with onnxruntime",
    "QLinearAveragePool": "com.microsoft op (ONNX ships no node case); "
                          "tests/test_quant_ops.py compares it with onnxruntime",
    "QGemm": "com.microsoft op (ONNX ships no node case); tests/test_quant_ops.py compares it "
             "with onnxruntime",
    "LocallyConnected2d": "cnncc-domain op (no ONNX op); tests/test_catalogue.py",
    "TiledConv2d": "cnncc-domain op (no ONNX op); tests/test_catalogue.py",
    "Maxout": "cnncc-domain op (no ONNX op); tests/test_catalogue.py",
    "ChannelLayerNorm": "internal op made by lift_channels_last / recognize_layer_norm; "
                        "tests/test_channels_last.py",
}


def test_every_op_is_exercised_by_some_case():
    covered = set()
    for case in INCLUDED:
        covered |= _required_ops(case.model)
    missing = sorted(set(OP_TABLE) - covered - set(NOT_COVERED_BY_NODE_CASES))
    assert not missing, f"ops with no included node case: {missing}"


RUNS = [(case, target) for target in TARGETS for case in INCLUDED
        if target_exclusion(case, target) is None]
TARGET_EXCLUDED = {(case.name, target): target_exclusion(case, target) for target in TARGETS
                   for case in INCLUDED if target_exclusion(case, target) is not None}


def test_llvm_exclusions_are_current():
    """Every llvm-only exclusion names some included case (stale entries are removed)."""
    names = [c.name for c in INCLUDED]
    stale = [p for p in LLVM_EXCLUDED if not any(re.search(p, n) for n in names)]
    assert not stale, f"LLVM_EXCLUDED patterns matching no included case: {stale}"


@pytest.fixture(scope="module")
def emu_reps(request) -> dict:
    """Every cuda-emu case prepared up front and its programs built together, 40 per g++ run
    at -O0 (one build per case would take a g++ start and the emulation header each time)."""
    from cnncc.backends.cuda.model import build_deferred, deferred_builds

    selected = {item.callspec.params["case"].name for item in request.session.items
                if getattr(item, "originalname", "") == "test_node"
                and item.callspec.params["target"] == "cuda-emu"}
    reps = {}
    with deferred_builds() as models:
        for case, target in RUNS:
            if target == "cuda-emu" and case.name in selected:
                try:
                    rep = CnnccBackend.prepare(case.model, device="CPU", target=target)
                    # Models compiled for their first data set's values build here too.
                    rep.specialize([_to_array(x) for x in case.data_sets[0][0]])
                    reps[case.name] = rep
                except Exception:       # noqa: BLE001 - the case's own test reports it
                    pass
    build_deferred(models, quick=True)
    return reps


# Under pytest-xdist (--dist loadgroup) the cuda-emu cases stay on one worker: their programs
# are built together there (emu_reps), not once per worker.
PARAMS = [pytest.param(c, t, id=f"{c.name}-{t}", marks=[pytest.mark.xdist_group("cuda-emu")]
                       if t == "cuda-emu" else []) for c, t in RUNS]


@pytest.mark.parametrize("case,target", PARAMS)
def test_node(case, target, request):
    rep = request.getfixturevalue("emu_reps").get(case.name) if target == "cuda-emu" else None
    run_case(case, target, rep)


def summary_lines() -> list[str]:
    """Counts for the pytest terminal summary (see tests/conftest.py)."""
    by_reason = collections.Counter(EXCLUDED_CASES.values())
    lines = [f"ONNX node tests (targets {', '.join(TARGETS)}): {len(CASES)} discovered, "
             f"{len(INCLUDED)} in our op set, {len(EXCLUDED_CASES)} excluded:"]
    for reason, count in by_reason.most_common():
        lines.append(f"  {count:5d}  {reason}")
    for target in TARGETS:
        skipped = collections.Counter(r for (_, t), r in TARGET_EXCLUDED.items() if t == target)
        lines.append(f"  on {target}: {len(INCLUDED) - sum(skipped.values())} of "
                     f"{len(INCLUDED)} included cases run")
        for reason, count in skipped.most_common():
            lines.append(f"  {count:5d}  {reason}")
    return lines


TERMINAL_SUMMARY = summary_lines


def _main() -> int:
    import traceback
    failures: dict[str, list[str]] = collections.defaultdict(list)
    passed = 0
    bound = collections.Counter()
    pattern = sys.argv[1] if len(sys.argv) > 1 else ""
    selected = [(c, t) for c, t in RUNS if re.search(pattern, c.name)]
    for case, target in selected:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                rep = run_case(case, target)
            passed += 1
            if rep.error is not None:
                bound["inputs bound as constants" if rep._bound else "shapes from run"] += 1
        except Exception as e:  # noqa: BLE001 - the script reports every kind of failure
            ops = ",".join(sorted({n.op_type for n in case.model.graph.node}))
            msg = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
            if not isinstance(e, (AssertionError, ValueError)):
                msg = f"{type(e).__name__}: {msg} @ {traceback.extract_tb(e.__traceback__)[-1]}"
            failures[ops].append(f"{case.name} [{target}]: {msg}")
    print("\n".join(summary_lines()))
    print(f"selected {len(selected)}, passed {passed}, failed {len(selected) - passed}")
    print(f"passed only after specializing at the first run: {dict(bound)}")
    for ops, items in sorted(failures.items(), key=lambda kv: -len(kv[1])):
        print(f"-- {ops}: {len(items)} failing")
        for item in items:
            print("     " + item)
    return 0


if __name__ == "__main__":
    sys.exit(_main())
