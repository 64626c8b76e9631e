"""`cnncc verify`: run the pipeline pass by pass against the reference interpreter.

After each pass the graph is run on the same seeded inputs; the first pass whose outputs leave the
tolerance is named, with the first value (in execution order) that diverged and the node writing
it. Passes keep the names of the values they rewrite, so intermediate values can be compared by
name across graphs.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .backends import BACKENDS
from .ir import Graph, run_graph
from .passes import PassContext, enabled_passes
from .testing import random_inputs, relative_error


@dataclass
class StepResult:
    name: str                 # pass name, or "target:<name>" for the compiled model
    error: float              # worst relative error over the graph outputs
    ok: bool
    first_bad_value: str | None = None
    first_bad_node: str | None = None


@dataclass
class VerifyReport:
    steps: list[StepResult] = field(default_factory=list)
    tolerance: float = 1e-4

    @property
    def ok(self) -> bool:
        return all(s.ok for s in self.steps)

    @property
    def first_failure(self) -> StepResult | None:
        return next((s for s in self.steps if not s.ok), None)

    def format(self) -> str:
        lines = [f"{'step':<28} {'rel. error':>12}  verdict"]
        for s in self.steps:
            verdict = "ok" if s.ok else "DIVERGES"
            if s.first_bad_value:
                verdict += f" (first at value '{s.first_bad_value}' of node '{s.first_bad_node}')"
            lines.append(f"{s.name:<28} {s.error:>12.3g}  {verdict}")
        bad = self.first_failure
        lines.append(f"all steps agree with the reference within {self.tolerance:g}" if bad is None
                     else f"first divergence after: {bad.name}")
        return "\n".join(lines)


def _worst(outputs: dict[str, np.ndarray], ref: dict[str, np.ndarray], names: list[str]) -> float:
    return max((relative_error(outputs[n], ref[n]) for n in names), default=0.0)


def _first_divergence(graph: Graph, env: dict[str, np.ndarray], ref_env: dict[str, np.ndarray],
                      tol: float) -> tuple[str | None, str | None]:
    for node in graph.nodes:
        for out in node.outputs:
            if out in env and out in ref_env and env[out].shape == ref_env[out].shape \
                    and env[out].dtype.kind == "f":
                if relative_error(env[out], ref_env[out]) > tol:
                    return out, node.name
    return None, None


def verify_pipeline(graph: Graph, opt_level: int = 3, target: str | None = None,
                    tolerance: float = 1e-4, seed: int = 0) -> VerifyReport:
    """Compare the graph after every enabled pass (and, given a target, the compiled model)."""
    feeds = random_inputs(graph, seed)
    ref_env = run_graph(graph, feeds, keep=True)
    report = VerifyReport(tolerance=tolerance)
    # The passes choose for the CPU that target llvm compiles for (the reference target runs
    # the same pipeline when verified).
    ctx = PassContext(opt_level=opt_level, target=target or "reference",
                      machine=BACKENDS["llvm"].machine(None))
    current = graph
    for p in enabled_passes(ctx):
        current = p.run(current, ctx).verify()
        env = run_graph(current, feeds, keep=True)
        err = _worst(env, ref_env, graph.outputs)
        step = StepResult(p.name, err, err <= tolerance)
        if not step.ok:
            step.first_bad_value, step.first_bad_node = _first_divergence(current, env, ref_env,
                                                                          tolerance)
        report.steps.append(step)
        if not step.ok:
            return report
    if target is not None and target != "reference":
        from .driver import compile

        model = compile(graph, target=target, opt_level=opt_level)
        outs = model.run(feeds)
        err = _worst(outs, ref_env, graph.outputs)
        report.steps.append(StepResult(f"target:{target}", err, err <= tolerance))
    return report
