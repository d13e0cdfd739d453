"""CUDA check: the sampler's numerics and the sampler/trainer log-prob gap on a GPU (not a test: CI has none).

`python scripts/cuda_check.py [--device cuda] [--preset small]` prints a table, then a JSON last line:
- fp32 cached decode vs a full no-cache forward (max |logit diff|, greedy token agreement);
- `extend` then decode vs a full re-forward of the whole conversation (max |logit diff|);
- the log-prob gap between the tokens' sampler log-probs and the trainer's
  `shifted_logprobs` (bf16 autocast on CUDA), for an fp32 sampler and a bf16 (autocast) sampler;
- decode tokens/s of each sampler dtype (batch 64, 128 new tokens).
Exit status 1 when an fp32 equivalence misses its bound (1e-4 on CUDA: TF32 is off, kernels differ).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from ppp_min.lm.model import Decoder
from ppp_min.lm.presets import preset_config
from ppp_min.lm.sampler import Sampler, SamplingParams
from ppp_min.rl.step import shifted_logprobs

V = 4096


def full_logits(model, ids, device):
    with torch.no_grad():
        return model(torch.tensor([ids], device=device))[0].float()


def _model(preset: str, dev):
    torch.manual_seed(0)
    model = Decoder(preset_config(preset, V)).to(dev).eval()
    with torch.no_grad():  # peaked logits (like a trained model) so greedy is not decided by near-ties
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.06)
    return model


def check_decode(model, dev, g, res, rows):
    """1. fp32 cached greedy decode vs full forward, per step; 2. extend (observations) then decode vs a
    full re-forward of the conversation."""
    prompts = [torch.randint(3, V, (n,), generator=g).tolist() for n in (5, 17, 9, 30)]
    s = Sampler(model, len(prompts), 128)
    s.prefill(prompts)
    s.decode(list(range(len(prompts))), SamplingParams(temperature=0.0, max_new_tokens=24), set(),
             torch.Generator(device=dev).manual_seed(0))
    worst, agree = 0.0, True
    for r, p in enumerate(prompts):
        ids = s.transcript(r)[0]
        ref = full_logits(model, ids, dev)
        worst = max(worst, float((s.last_logits(r) - ref[-1]).abs().max()))
        agree &= all(int(ref[i - 1].argmax()) == ids[i] for i in range(len(p), len(ids)))
    res.update(cached_vs_full_max_abs=worst, greedy_agrees=agree)
    rows.append(("fp32 cached decode vs full forward", f"{worst:.2e}", "greedy agrees" if agree else "DIFFERS"))
    obs = [torch.randint(3, V, (n,), generator=g).tolist() for n in (7, 1, 12, 3)]
    s.extend(list(range(len(prompts))), obs)
    s.decode(list(range(len(prompts))), SamplingParams(temperature=0.0, max_new_tokens=8), set(),
             torch.Generator(device=dev).manual_seed(0))
    worst_ext = max(float((s.last_logits(r) - full_logits(model, s.transcript(r)[0], dev)[-1]).abs().max())
                    for r in range(len(prompts)))
    res.update(extend_vs_full_max_abs=worst_ext)
    rows.append(("fp32 extend + decode vs full re-forward", f"{worst_ext:.2e}", ""))
    return worst < 1e-4 and worst_ext < 1e-4 and agree


def check_gap_and_speed(model, dev, g, res, rows, B: int = 64, N: int = 128) -> None:
    """3. sampler/trainer log-prob gap and 4. decode speed, per sampler dtype (T = 1, as in RL)."""
    big = [torch.randint(3, V, (40,), generator=g).tolist() for _ in range(B)]
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        s = Sampler(model, B, 40 + N, dtype=dtype)
        for rep in range(2):  # the first run warms up kernels and the allocator
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            s.prefill(big)
            s.decode(list(range(B)), SamplingParams(max_new_tokens=N), set(),
                     torch.Generator(device=dev).manual_seed(rep))
            if dev.type == "cuda":
                torch.cuda.synchronize()
            sec = time.perf_counter() - t
        ids, sampled, lps = (torch.tensor(x, device=dev) for x in zip(*(s.transcript(r) for r in range(B))))
        old, where = lps[:, 1:], sampled[:, 1:] > 0
        with torch.no_grad():
            logp, _ = shifted_logprobs(model, ids, 1.0, where=where)  # the trainer's (bf16 autocast on CUDA)
        gap = (logp - old)[where].abs()
        res[f"gap_{name}_sampler_mean"], res[f"gap_{name}_sampler_max"] = float(gap.mean()), float(gap.max())
        res[f"decode_{name}_tok_per_s"] = B * N / sec
        rows.append((f"{name} sampler vs trainer log-prob gap", f"{float(gap.mean()):.2e}",
                     f"max {float(gap.max()):.2e}; {B * N / sec:,.0f} tok/s (B={B})"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--preset", default="small")
    args = ap.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("cuda_check: torch sees no CUDA device; run it on a GPU machine", file=sys.stderr)
        return 2
    dev = torch.device(args.device)
    model = _model(args.preset, dev)
    g = torch.Generator().manual_seed(1)
    res, rows = {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
                 "torch": torch.__version__, "preset": args.preset}, []
    ok = check_decode(model, dev, g, res, rows)
    check_gap_and_speed(model, dev, g, res, rows)
    print(f"device: {res['device']}  torch {res['torch']}  preset {args.preset}")
    for a, b, c in rows:
        print(f"{a:<42}{b:>10}  {c}")
    print(json.dumps(res))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
