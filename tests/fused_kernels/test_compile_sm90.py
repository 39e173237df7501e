"""Every Triton kernel compiles for an H100 (sm_90) down to a cubin, without a GPU.

The interpreter the other kernel tests use runs kernels as NumPy and does not enforce the compiler's rules
(constexpr-only globals, loop-carried types, ...). Triton's wheel ships ptxas, so the real compiler can run
here; it needs a process where TRITON_INTERPRET is unset, hence the subprocess.
"""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SCRIPT = textwrap.dedent(
    """
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from spanbert_train.kernels import bias_gelu, linear_cross_entropy, residual_dropout_layernorm as rdln

    # pointer element types that differ from the activation dtype; fp32 parameters under bf16 autocast
    POINTERS = {
        "b_ptr": "*fp32", "w_ptr": "*fp32", "lnb_ptr": "*fp32", "mean_ptr": "*fp32", "rstd_ptr": "*fp32",
        "db_part_ptr": "*fp32", "dbias_part_ptr": "*fp32", "dw_part_ptr": "*fp32", "dlnb_part_ptr": "*fp32",
        "loss_ptr": "*fp32", "correct_ptr": "*i32", "labels_ptr": "*i64", "out_ptr": "*i8",
    }
    FLOATS = {"p", "scale", "eps"}
    KERNELS = [
        (bias_gelu._bias_gelu_fwd_kernel, {"BLOCK_M": 32, "BLOCK_F": 128}),
        (bias_gelu._bias_gelu_bwd_kernel, {"BLOCK_M": 32, "BLOCK_F": 128}),
        (rdln._fwd_kernel, {"HAS_DROPOUT": True, "BLOCK_M": 4, "BLOCK_H": 1024}),
        (rdln._fwd_kernel, {"HAS_DROPOUT": False, "BLOCK_M": 4, "BLOCK_H": 1024}),
        (rdln._bwd_kernel, {"HAS_DROPOUT": True, "BLOCK_M": 4, "BLOCK_H": 1024}),
        (rdln._mask_kernel, {"BLOCK": 4096}),
        (linear_cross_entropy._ce_rows_kernel, {"WRITE_GRAD": True, "BLOCK_V": 4096}),
        (linear_cross_entropy._ce_rows_kernel, {"WRITE_GRAD": False, "BLOCK_V": 4096}),
    ]
    target = GPUTarget("cuda", 90, 32)
    for kernel, constexprs in KERNELS:
        for act in ("bf16", "fp32"):
            signature = {}
            for name in kernel.arg_names:
                if name in constexprs:
                    signature[name] = "constexpr"
                elif name.endswith("_ptr"):
                    signature[name] = POINTERS.get(name, "*" + act)
                else:
                    signature[name] = "fp32" if name in FLOATS else "i32"
            options = {"num_warps": 8}  # as the launchers use for these tile sizes
            compiled = triton.compile(ASTSource(kernel, signature, constexprs), target=target, options=options)
            assert compiled.asm["cubin"], kernel.fn.__name__
            print("compiled", kernel.fn.__name__, act, constexprs)
    """
)


def test_kernels_compile_for_sm90():
    triton = pytest.importorskip("triton")
    if not (Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas").exists():
        pytest.skip("this triton build ships no ptxas")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"  # silence triton 3.9's default-change warning
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("compiled") == 16
