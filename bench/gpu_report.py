"""The summary of `make gpu-check`: gpu_report.md + gpu_report.json from what the parts left in the work folder.

    python -m bench.gpu_report versions --out WORK/versions.json   # device, driver, library versions
    python -m bench.gpu_report report --work WORK --out DIR         # the report; run after every part

`report` reads WORK/parts.jsonl (one line per part: rc, seconds, cap, or why it was skipped), versions.json,
correctness.json, e2e.json and WORK/bench/ (kernels.json, train_step_*.json, profile_*.txt). It writes into DIR
gpu_report.md, gpu_report.json, copies of the bench JSONs, and gpu_check_logs.tar.gz (every log and
intermediate file), so that DIR holds five files at most. Exit status: 0 all passed; 1 a correctness part
(setup, data, correctness, e2e) failed, timed out or did not run for lack of time; 3 only a performance part
(kernels, train_step) did. `report` imports nothing heavy: it runs in well under a second.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import time
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GATING = ("setup", "data", "correctness", "e2e")
PACKAGES = ("torch", "triton", "numpy", "numba", "pyarrow", "tokenizers", "safetensors", "click", "tqdm",
            "mwparserfromhell", "zstandard", "transformers")  # fmt: skip


def versions() -> dict:
    """Everything that decides whether and how fast the code runs here."""
    out: dict = {"python": platform.python_version(), "platform": platform.platform(), "cores": os.cpu_count()}
    out["packages"] = {}
    for name in PACKAGES:
        try:
            out["packages"][name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out["packages"][name] = None
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO,
                             timeout=5)  # fmt: skip
        out["git_revision"] = rev.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        out["git_revision"] = None
    import torch

    from spanbert_train.attention import varlen_implementation

    out["torch"] = torch.__version__
    out["torch_cuda"] = torch.version.cuda
    out["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    out["cuda_available"] = torch.cuda.is_available()
    out["varlen_attention"] = varlen_implementation()
    import spanbert_data.cli  # noqa: F401 - the setup part fails here if a runtime dependency is missing
    import spanbert_train.cli
    import spanbert_train.train  # noqa: F401
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        out["device"] = {"name": p.name, "capability": f"{p.major}.{p.minor}", "memory_gib": p.total_memory / 2**30,
                         "multiprocessors": p.multi_processor_count, "count": torch.cuda.device_count()}  # fmt: skip
        try:
            smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=20)  # fmt: skip
            out["driver"] = smi.stdout.strip().splitlines()[0] if smi.returncode == 0 and smi.stdout.strip() else None
        except (OSError, subprocess.SubprocessError):
            out["driver"] = None
    else:
        out["device"] = {"name": "cpu"}
    out["install"] = os.environ.get("GPU_CHECK_INSTALL")
    return out


def load(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def read_parts(work: Path) -> list[dict]:
    parts = {}
    try:
        for line in (work / "parts.jsonl").read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                parts[row["part"]] = row  # a rerun of a part replaces its earlier line
    except OSError:
        pass
    return list(parts.values())


def status(part: dict) -> str:
    if part.get("skipped"):
        return "skipped: " + part["skipped"]
    if part.get("timed_out"):
        return f"TIMED OUT after {part['cap']} s"
    return "ok" if part.get("rc") == 0 else f"FAILED (exit {part.get('rc')})"


def fmt(x, spec: str = ".3g", none: str = "-") -> str:
    return none if x is None else format(x, spec)


def verdict(parts: list[dict]) -> tuple[int, str]:
    bad_gate = [p["part"] for p in parts if p["part"] in GATING and status(p) != "ok"
                and p.get("skipped") != "not selected"]  # fmt: skip
    bad_perf = [p["part"] for p in parts if p["part"] not in GATING and status(p) != "ok"
                and p.get("skipped") != "not selected"]  # fmt: skip
    if bad_gate:
        return 1, f"FAIL: correctness not established ({', '.join(bad_gate)})" + (
            f"; performance parts with problems: {', '.join(bad_perf)}" if bad_perf else "")
    if bad_perf:
        return 3, f"correctness PASSED; performance parts with problems: {', '.join(bad_perf)}"
    return 0, "PASS: every part ran and passed"


def md_sections(r: dict) -> list[str]:
    out = []
    corr = r.get("correctness")
    out += ["", "## 1. Correctness", ""]
    if corr:
        out += [f"Seed {corr.get('seed')}; attention: {corr.get('attention_implementation')}.", "",
                "| check | result | numbers | s |", "|---|---|---|---:|"]  # fmt: skip
        for c in corr["checks"]:
            numbers = (c.get("error") or c.get("summary", "")).replace("|", "/")[:200]
            out.append(f"| {c['name']} | {'pass' if c['passed'] else '**FAIL**'} | {numbers} | {c['seconds']} |")
    else:
        out.append("not run (see the parts table)")
    k = r.get("kernels")
    out += ["", "## 2. Kernels (bench/fused_kernels.py)", ""]
    if k:
        ceil, peaks = k.get("measured_ceilings"), k.get("datasheet_peaks") or {}
        line = f"{k.get('dtype')}, shapes {k.get('shapes')}, median of {k.get('repeats')}"
        if ceil:
            line += (f"; measured ceilings: copy {ceil['copy_bytes_per_s'] / 1e9:,.0f} GB/s, bf16 matmul "
                     f"{ceil['bf16_matmul_flops'] / 1e12:,.0f} TFLOP/s; datasheet: HBM "
                     f"{fmt((peaks.get('hbm_bytes_per_s') or 0) / 1e9, ',.0f')} GB/s, bf16 "
                     f"{fmt((peaks.get('bf16_flops') or 0) / 1e12, ',.0f')} TFLOP/s")  # fmt: skip
        out.append(line + ".")
        out += ["", "| op | impl | fwd ms | fwd+bwd ms | throughput | of datasheet peak | of measured | vs reference |",
                "|---|---|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
        for row in k.get("rows", []):
            if "fwd_bwd" not in row:
                out.append(f"| {row['op']} | {row['impl']} | {row.get('error') or row.get('skipped')} | | | | | |")
                continue
            out.append(f"| {row['op']} | {row['impl']} | {row['fwd']['median_s'] * 1e3:.3f} | "
                       f"{row['fwd_bwd']['median_s'] * 1e3:.3f} | {row['throughput']:.2f} {row['unit']} | "
                       f"{fmt(row.get('fraction_of_peak'), '.0%')} | {fmt(row.get('fraction_of_measured'), '.0%')} | "
                       f"{fmt(row.get('speedup_vs_reference'), '.2f')}x |")  # fmt: skip
    else:
        out.append("not run or no result (see the parts table)")
    t = r.get("train_step")
    out += ["", "## 3. Train step (bench/train_step.py)", ""]
    if t:
        out += [f"{t.get('device')}, {t.get('precision')}, batch {t.get('batch')} x {t.get('seq_len')} x accum "
                f"{t.get('accum')}, {t.get('steps')} timed steps; peak "
                f"{fmt(t['peak_flops'] / 1e12 if t.get('peak_flops') else None, '.0f')} TFLOP/s.", "",
                "| model | impl | tokens/s | seq/s | ms/step | MFU | peak GiB |",
                "|---|---|---:|---:|---:|---:|---:|"]  # fmt: skip
        for row in t.get("rows", []):
            if "impl" not in row:
                continue
            if "tokens_per_s" not in row:
                out.append(f"| {row['model']} | {row['impl']} | {row.get('error') or row.get('skipped')} | | | | |")
                continue
            out.append(f"| {row['model']} | {row['impl']} | {row['tokens_per_s']:,.0f} | "
                       f"{row['sequences_per_s']:.1f} | {row['step_s'] * 1e3:.1f} | {fmt(row.get('mfu'), '.1%')} | "
                       f"{fmt(row.get('peak_memory_gib'), '.1f')} |")  # fmt: skip
        out += [""] + [f"- {row['model']}: {row['speedup']} = **{row['ratio']:.2f}x**"
                       for row in t.get("rows", []) if "speedup" in row]  # fmt: skip
        for row in t.get("rows", []):
            prof = row.get("profile")
            if prof:
                out += ["", f"Profile of {row['model']} {row['impl']} ({prof['what']}): wall "
                        f"{prof['wall_ms_per_step']:.1f} ms/step, busy {prof['busy_ms_per_step']:.1f} ms.", "",
                        "| group | ms/step | share |", "|---|---:|---:|"]  # fmt: skip
                out += [f"| {g['group']} | {g['ms_per_step']:.2f} | {g['share']:.1%} |" for g in prof["groups"]]
                out += ["", "| ms/step | share | calls | kernel |", "|---:|---:|---:|---|"]
                out += [f"| {k['ms_per_step']:.3f} | {k['share']:.1%} | {k['calls_per_step']:.0f} | "
                        f"`{k['name'][:90]}` |" for k in prof["top"][:12]]  # fmt: skip
    else:
        out.append("not run or no result (see the parts table)")
    e = r.get("e2e")
    out += ["", "## 4. End to end (bench/gpu_e2e.py)", ""]
    if e:
        out += [f"`{' '.join(e['command'][e['command'].index('--nproc-per-node') - 2:])}`", "",
                f"- {'pass' if e['passed'] else '**FAIL**: ' + '; '.join(e['why'])}",
                f"- {e['logged_steps']} logged steps up to step {e['last_step']} in {e['wall_s']:.0f} s (first logged "
                f"step after {fmt(e.get('startup_s'), '.0f')} s); stopped by "
                f"{e['stopped_by']} (torchrun's exit status {e['exit_status']}: it exits 1 when it gets SIGTERM "
                f"itself); latest checkpoint step {e['latest_checkpoint']}",
                f"- loss (mean of first 3 logged -> last 3): {fmt(e['loss_first3_mean'], '.3f')} -> "
                f"{fmt(e['loss_last3_mean'], '.3f')}",
                f"- {fmt(e['tokens_per_s_median'], ',.0f')} tokens/s (median), "
                f"MFU ~ {fmt(e['mfu_approx'], '.1%')}"]  # fmt: skip
    else:
        out.append("not run or no result (see the parts table)")
    return out


def report(work: Path, out_dir: Path) -> int:
    parts = read_parts(work)
    bench = work / "bench"
    steps = sorted(bench.glob("train_step_*.json"))
    r = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "dry": os.environ.get("GPU_CHECK_DRY") == "1",
         "versions": load(work / "versions.json"), "parts": parts, "correctness": load(work / "correctness.json"),
         "kernels": load(bench / "kernels.json"), "train_step": load(steps[-1]) if steps else None,
         "e2e": load(work / "e2e.json")}  # fmt: skip
    code, line = verdict(parts)
    r["verdict"] = {"exit_status": code, "summary": line}
    v = r["versions"] or {}
    device = (v.get("device") or {}).get("name", "unknown device")
    md = [f"# GPU check{' (DRY RUN on CPU)' if r['dry'] else ''}: {device}, {r['date']}", "", f"**{line}**", ""]
    pk = v.get("packages") or {}
    md += [f"torch {v.get('torch')} (CUDA {v.get('torch_cuda')}, cuDNN {v.get('cudnn')}), triton {pk.get('triton')}, "
           f"transformers {pk.get('transformers')}, numpy {pk.get('numpy')}, Python {v.get('python')}, driver "
           f"{v.get('driver')}, git {v.get('git_revision')}; project installed by: {v.get('install')}. "
           f"Packages: {', '.join(f'{n} {pk[n]}' for n in pk)}.", "", "| part | status | s | cap s |",
           "|---|---|---:|---:|"]  # fmt: skip
    md += [f"| {p['part']} | {status(p)} | {fmt(p.get('seconds'), '.0f')} | {fmt(p.get('cap'))} |" for p in parts]
    md += md_sections(r)
    out_dir.mkdir(parents=True, exist_ok=True)
    for src in [bench / "kernels.json", *steps]:
        if src.exists():
            shutil.copy2(src, out_dir / src.name)
    tmp = out_dir / "gpu_report.md.tmp"
    tmp.write_text("\n".join(md) + "\n")
    os.replace(tmp, out_dir / "gpu_report.md")
    tmp = out_dir / "gpu_report.json.tmp"
    tmp.write_text(json.dumps(r, indent=1) + "\n")
    os.replace(tmp, out_dir / "gpu_report.json")
    tmp = out_dir / "gpu_check_logs.tar.gz.tmp"
    with tarfile.open(tmp, "w:gz") as tar:
        for path in sorted(work.rglob("*")):
            rel = path.relative_to(work)
            keep = rel.parts[0] in ("logs", "bench") or (rel.parts[0] == "e2e" and path.suffix in (".jsonl", ".json"))
            if path.is_file() and (len(rel.parts) == 1 or keep) and "checkpoints" not in rel.parts:
                tar.add(path, arcname=str(rel))
    os.replace(tmp, out_dir / "gpu_check_logs.tar.gz")
    return code


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("versions")
    v.add_argument("--out", type=Path, required=True)
    rp = sub.add_parser("report")
    rp.add_argument("--work", type=Path, required=True)
    rp.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    if args.cmd == "versions":
        info = versions()
        args.out.write_text(json.dumps(info, indent=1) + "\n")
        print(json.dumps(info))
        return
    sys.exit(report(args.work, args.out))


if __name__ == "__main__":
    main()
