"""Running test code in a child process whose code generator targets another ISA."""
from __future__ import annotations

import json
import os
import subprocess
import sys


def run_for_features(code: str, features: str, timeout: float) -> dict:
    """The JSON object the last line of ``code``'s output holds, ``code`` run by this Python in
    a child with CNNCC_FEATURES=``features`` (no CNNCC_CPU, no compile cache); the child's
    stderr tail is the assertion message when it fails."""
    env = dict(os.environ, CNNCC_FEATURES=features, CNNCC_CACHE="0")
    env.pop("CNNCC_CPU", None)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=timeout)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])
