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
