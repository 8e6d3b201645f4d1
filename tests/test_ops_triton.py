"""The Triton kernel (interpreter on CPU tensors) against the C++ op; run in a subprocess so that
TRITON_INTERPRET=1 is set before triton is imported, without touching this pytest process."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mcfast import ops

pytestmark = pytest.mark.skipif(not ops.available(), reason="mcfast._C is not built")

SCRIPT = textwrap.dedent(r"""
    import os, sys
    os.environ["TRITON_INTERPRET"] = "1"
    sys.path.insert(0, sys.argv[1])
    import torch
    from mcfast import ops
    ops.load()
    from mcfast.ops import triton_kernels as tk
    from _ops_helpers import packed_args

    # 1) the generators: raw words bitwise equal, normals to the last bits of log/sin/cos
    for seed, offset, stream, start in ((0, 0, 0, 0), (2 ** 40 + 17, 123, 5, 1000), (-5, 7, 3, 2 ** 33)):
        a = tk.philox_bits(64, seed, offset, stream, start, "cpu")
        b = torch.empty(64, 4, dtype=torch.int32)
        torch.ops.mcfast.philox_bits_(b, seed, offset, stream, start)
        assert torch.equal(a, b), (seed, offset, stream, start)
    n1 = tk.philox_normal_(torch.empty(1001), 7, 3, 2, 5)
    n2 = torch.empty(1001)
    torch.ops.mcfast.philox_normal_(n2, 7, 3, 2, 5)
    torch.testing.assert_close(n1, n2, rtol=1e-5, atol=1e-6)

    # 2) the fused step: passed noise and in-kernel noise, fp32 and bf16, against the C++ kernel
    for kw, learned, clip in ((dict(), True, True), (dict(noise=False), True, False),
                              (dict(learned=False, H=48, W=32), False, True), (dict(dtype=torch.bfloat16), True, True)):
        args = packed_args(**kw)
        want = torch.ops.mcfast.guided_step(*args, 11, 4, learned, clip)
        got = tk.guided_step_triton(*args, 11, 4, learned, clip)
        tol = 1e-5 if args[0].dtype == torch.float32 else 2 ** -7
        torch.testing.assert_close(got.float(), want.float(), rtol=tol, atol=tol)
    print("TRITON-OK")
""")


def test_triton_interpreter_matches_cpp():
    tests_dir = Path(__file__).resolve().parent
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tests_dir)], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0 and "TRITON-OK" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]
