"""`make gpu-check` cannot rot between GPU sessions: its CPU dry run goes end to end here, and its checks can fail.

The dry run (GPU_CHECK_DRY=1) runs the very script a GPU session runs, with tiny shapes, the CPU attention path and
the Triton kernels in the interpreter. The other tests show that the report's verdict follows the parts and that
the correctness checks catch a wrong kernel and attention leaking across packed examples.
"""

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

from bench import gpu_correctness, gpu_report
from spanbert_train.attention import PackedLayout
from spanbert_train.kernels import Ops, get_ops

REPO = Path(__file__).resolve().parents[2]


def test_dry_run_end_to_end(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # the script sets it where it is needed
    env |= {"GPU_CHECK_DRY": "1", "GPU_CHECK_OUT": str(tmp_path / "out"), "GPU_CHECK_WORK": str(tmp_path / "work"),
            "GPU_CHECK_PYTHON": sys.executable}  # fmt: skip
    proc = subprocess.run(["bash", "bench/gpu_check.sh"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    out = tmp_path / "out"
    # few files, so that the device tool brings all of them back (at most 8)
    assert sorted(p.name for p in out.iterdir()) == [
        "gpu_check_logs.tar.gz", "gpu_report.json", "gpu_report.md", "kernels.json", "train_step_cpu_tiny.json"]
    report = json.loads((out / "gpu_report.json").read_text())
    assert report["verdict"]["exit_status"] == 0 and report["dry"] is True
    assert [(p["part"], p["rc"]) for p in report["parts"]] == [
        ("setup", 0), ("data", 0), ("correctness", 0), ("kernels", 0), ("train_step", 0), ("e2e", 0)]
    checks = {c["name"]: c for c in report["correctness"]["checks"]}
    assert set(checks) == {
        "varlen_packed_vs_unpacked", "varlen_dropout_replay", "kernel_bias_gelu_float32",
        "kernel_residual_dropout_layernorm_float32", "kernel_linear_cross_entropy_float32",
        "train_triton_vs_reference", "checkpoint_resume"}  # fmt: skip
    assert all(c["passed"] for c in checks.values())
    assert checks["checkpoint_resume"]["weights_optimizer_equal"] and checks["train_triton_vs_reference"]["steps"] == 3
    assert {(r["op"], r["impl"]) for r in report["kernels"]["rows"] if "throughput" in r} == {
        ("bias_gelu", "reference"), ("residual_dropout_layernorm", "reference"), ("linear_cross_entropy", "reference")}
    rows = {r["impl"]: r for r in report["train_step"]["rows"] if "impl" in r}
    assert rows["ours/reference"]["tokens_per_s"] > 0 and rows["hf"]["tokens_per_s"] > 0
    assert rows["ours/reference"]["profile"]["top"], "the profiler summary is empty"
    e2e = report["e2e"]
    assert e2e["passed"] and e2e["stopped_by"] == "SIGTERM" and e2e["latest_checkpoint"] == e2e["last_step"]
    assert e2e["loss_last3_mean"] < e2e["loss_first3_mean"] and e2e["tokens_per_s_median"] > 0
    assert report["versions"]["packages"]["torch"] and report["versions"]["varlen_attention"]
    md = (out / "gpu_report.md").read_text()
    assert "PASS: every part ran and passed" in md and "## 4. End to end" in md
    with tarfile.open(out / "gpu_check_logs.tar.gz") as tar:
        names = set(tar.getnames())
    assert {"logs/correctness.log", "logs/e2e.log", "correctness.json", "parts.jsonl", "e2e/metrics.jsonl"} <= names
    assert "PASS: every part ran and passed" in proc.stdout  # the report is printed last


def write_parts(work: Path, rows: list[dict]) -> None:
    work.mkdir(parents=True, exist_ok=True)
    base = {"rc": 0, "seconds": 1, "cap": 60, "timed_out": False, "skipped": None}
    (work / "parts.jsonl").write_text("".join(json.dumps(base | r) + "\n" for r in rows))


@pytest.mark.parametrize(
    "rows, code",
    [
        ([{"part": "setup"}, {"part": "correctness"}, {"part": "kernels"}], 0),
        ([{"part": "setup"}, {"part": "correctness", "rc": 1}, {"part": "kernels"}], 1),
        ([{"part": "setup"}, {"part": "correctness"}, {"part": "kernels", "rc": 1}], 3),
        ([{"part": "correctness"}, {"part": "e2e", "rc": 124, "timed_out": True}], 1),
        ([{"part": "correctness"}, {"part": "e2e", "rc": None, "skipped": "time budget spent"}], 1),
        ([{"part": "correctness"}, {"part": "e2e", "rc": None, "skipped": "not selected"}], 0),
    ],
)
def test_report_verdict_follows_the_parts(tmp_path, rows, code):
    write_parts(tmp_path / "work", rows)
    assert gpu_report.report(tmp_path / "work", tmp_path / "out") == code
    md = (tmp_path / "out" / "gpu_report.md").read_text()
    assert md.splitlines()[2].startswith("**FAIL") == (code == 1)  # the verdict line
    assert json.loads((tmp_path / "out" / "gpu_report.json").read_text())["verdict"]["exit_status"] == code


def test_correctness_checks_catch_a_wrong_kernel(monkeypatch):
    s, cpu = gpu_correctness.DRY, torch.device("cpu")
    assert gpu_correctness.check_kernel("bias_gelu", torch.float32, s, cpu, seed=3)["passed"]
    ref = get_ops("reference")

    def tanh_gelu(x, bias):  # a plausible bug: the tanh approximation instead of erf
        return torch.nn.functional.gelu(x + bias, approximate="tanh")

    broken = Ops("triton", ref.linear_cross_entropy, tanh_gelu, ref.residual_dropout_layernorm)
    monkeypatch.setattr(gpu_correctness, "get_ops", lambda kind: broken if kind == "triton" else ref)
    result = gpu_correctness.check_kernel("bias_gelu", torch.float32, s, cpu, seed=3)
    assert not result["passed"] and result["errors"]["y"]["error"] > result["errors"]["y"]["limit"]


def test_correctness_checks_catch_attention_leaking_across_examples(monkeypatch):
    s, cpu = gpu_correctness.DRY, torch.device("cpu")
    assert gpu_correctness.check_varlen(s, torch.float32, cpu, seed=4)["passed"]

    def leaky(backend, example_ids, cu_seqlens, max_seqlen, dtype):  # one row's examples see each other
        B, T = example_ids.shape
        return PackedLayout("sdpa", cu_seqlens, max_seqlen, torch.ones(B, 1, T, T, dtype=torch.bool))

    monkeypatch.setattr(gpu_correctness, "build_layout", leaky)
    assert not gpu_correctness.check_varlen(s, torch.float32, cpu, seed=4)["passed"]


def test_profile_groups_name_the_kernels_of_a_step():
    from bench.profiling import group_of

    assert group_of("void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<64, 128>>") == "flash attention"
    assert group_of("void flash_bwd_dq_dk_dv_loop_seqk_parallel_kernel<...>") == "flash attention"
    for ours in ("_fwd_kernel", "_bwd_kernel", "_ce_rows_kernel", "_bias_gelu_bwd_kernel"):
        assert group_of(ours) == "triton (ours)"
    assert group_of("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64") == "gemm"
    assert group_of("nvjet_hsh_256x128_64x4_1x2_h_bz_coopA_NTN") == group_of("aten::mm") == "gemm"
    assert group_of("void at::native::(anonymous namespace)::multi_tensor_apply_kernel<...FusedAdam...>") == "optimizer"
    assert group_of("triton_poi_fused_add_0") == "triton (other)"
    assert group_of("void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<float>>") == (
        "elementwise")
