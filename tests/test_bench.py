"""Smoke test of the sampler benchmark: it runs, prints a table, and ends with a JSON line of ratios."""

import json

from ppp_min.bench.sampler import main


def test_sampler_bench_quick_prints_a_json_last_line(capsys):
    assert main(["--quick", "--threads", "1", "--batch", "2", "--conv-prompt-len", "8"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    res = json.loads(lines[-1])
    for key in ("cached_vs_naive", "extend_vs_reprefill", "extend_vs_reprefill_context_only"):
        assert res[key] > 0, key
    assert res["conv_prompt_len"] == 8 and res["batch"] == 2
    assert any("extend" in line for line in lines[:-1])  # the table came first


def test_cuda_check_script_runs_on_cpu(capsys):
    """scripts/cuda_check.py (the GPU device check) also runs on the CPU: its fp32 equivalences hold, and the
    fp32 sampler's log-probs equal the trainer's there (both fp32), so the script cannot rot unnoticed."""
    import importlib.util
    import pathlib
    path = pathlib.Path(__file__).resolve().parents[1] / "scripts" / "cuda_check.py"
    spec = importlib.util.spec_from_file_location("cuda_check", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--device", "cpu", "--preset", "tiny"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["greedy_agrees"] and res["cached_vs_full_max_abs"] < 1e-4
    assert res["gap_fp32_sampler_max"] < 1e-4 < res["gap_bf16_sampler_mean"]  # bf16 cache: a real gap
