"""Sampler correctness against no-cache full forwards (docs/design.md#sampler), on tiny fp32 models."""

import math
from types import SimpleNamespace

import pytest
import torch

from ppp_min.lm.model import Decoder, token_logprobs
from ppp_min.lm.presets import preset_config
from ppp_min.lm.sampler import Generated, Sampler, SamplingParams, generate, sample_tokens

V = 97
GREEDY = SamplingParams(temperature=0.0, max_new_tokens=8)


def make_model(seed=0, std=0.12, smear_keys=False, smear_window=1, recency=False):
    """Tiny random model with peaked logits (std 0.12) so greedy choices are not near-ties; with smeared keys,
    random smear logits or taps (every side of the mix matters)."""
    torch.manual_seed(seed)
    m = Decoder(preset_config("tiny", V, smear_keys=smear_keys, smear_window=smear_window, recency=recency)).eval()
    with torch.no_grad():
        for name, p in m.named_parameters():
            smear = name.endswith(("smear", "_taps", "recency"))
            if p.dim() == 2 or smear:
                p.normal_(0.0, 1.0 if smear else std)
    return m


@pytest.fixture(scope="module", params=[0, 1, 3, -1], ids=["plain", "smeared-keys", "taps", "recency"])
def model(request):
    w = request.param
    return make_model(smear_keys=w != 0, smear_window=max(1, w), recency=w == -1)


def full_logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids]))[0]


def gen(seed):
    return torch.Generator().manual_seed(seed)


def greedy_reference(model, prompt, n, stop=()):
    """Slow reference: re-run the whole sequence without a cache for every new token."""
    ids, out = list(prompt), []
    for _ in range(n):
        t = int(full_logits(model, ids)[-1].argmax())
        ids.append(t)
        out.append(t)
        if t in stop:
            break
    return out


def check_logprobs(model, sampler, row, temperature):
    ids, sampled, lps = sampler.transcript(row)
    ref = token_logprobs(full_logits(model, ids)[:-1], torch.tensor(ids[1:]), temperature)
    for i in range(1, len(ids)):
        if sampled[i]:
            assert abs(lps[i] - float(ref[i - 1])) < 1e-5, (row, i)
        else:
            assert lps[i] == 0.0


def test_cached_logits_equal_full_forward_every_step(model):
    s = Sampler(model, 2, 64)
    s.prefill([[5, 6, 7], [1, 2, 3, 4, 5, 6, 7, 8, 9]])
    for _ in range(6):  # one token per decode call: compare the logits after every step
        s.decode([0, 1], SamplingParams(max_new_tokens=1), set(), gen(0))
        for r in (0, 1):
            ids = s.transcript(r)[0]
            assert torch.allclose(s.last_logits(r), full_logits(model, ids)[-1], atol=1e-5)


def test_ragged_batched_greedy_equals_per_row_greedy(model):
    prompts = [[3, 1, 4], [1, 5, 9, 2, 6, 5, 3], [5, 8, 9, 7, 9, 3, 2, 3, 8, 4, 6, 2]]
    refs = [greedy_reference(model, p, 10) for p in prompts]
    stop = {refs[0][2]}  # row 0 stops early: the live set is compacted mid-decode
    refs = [greedy_reference(model, p, 10, stop) for p in prompts]
    s = Sampler(model, 3, 64)
    s.prefill(prompts)
    out = s.decode([0, 1, 2], SamplingParams(temperature=0.0, max_new_tokens=10), stop, gen(0))
    assert [list(o.ids) for o in out] == refs
    assert out[0].stopped and len(out[0].ids) <= 3
    for r, p in enumerate(prompts):  # the cache after compaction still matches a full forward
        assert torch.allclose(s.last_logits(r), full_logits(model, p + refs[r])[-1], atol=1e-5)


def test_extend_then_decode_equals_full_reforward(model):
    s = Sampler(model, 3, 96)
    s.prefill([[1, 2, 3, 4], [9, 8]], group_size=1)
    p = SamplingParams(temperature=0.8, max_new_tokens=5)
    s.decode([0, 1], p, set(), gen(1))
    s.extend([1, 0], [[11, 12, 13, 14, 15, 16, 17, 18, 19], [21, 22, 23]])  # ragged, out of order
    s.decode([0, 1], p, set(), gen(2))
    s.extend([0], [[30, 31]])
    s.decode([0], p, set(), gen(3))
    for r in (0, 1):
        ids = s.transcript(r)[0]
        assert torch.allclose(s.last_logits(r), full_logits(model, ids)[-1], atol=1e-5)
        check_logprobs(model, s, r, 0.8)
    assert s.length(0) == 4 + 5 + 3 + 5 + 2 + 5 and s.length(1) == 2 + 5 + 9 + 5


def test_extend_near_max_len_with_ragged_chunks(model):
    """A long row next to a long chunk: padding would overflow max_len, so the batch must split."""
    s = Sampler(model, 2, 40)
    s.prefill([list(range(1, 31)), [4, 5]])
    s.extend([0, 1], [[7, 8, 9], list(range(40, 70))])
    assert s.length(0) == 33 and s.length(1) == 32
    for r in (0, 1):
        assert torch.allclose(s.last_logits(r), full_logits(model, s.transcript(r)[0])[-1], atol=1e-5)


def test_group_prefill_equals_repeated_prompts(model):
    a, b = [1, 2, 3, 4, 5, 6], [7, 8, 9]
    s1, s2 = Sampler(model, 6, 32), Sampler(model, 6, 32)
    s1.prefill([a, b], group_size=3)
    s2.prefill([a, a, a, b, b, b])
    for r in range(6):
        n = s1.length(r)
        assert s1.transcript(r) == s2.transcript(r)
        assert torch.allclose(s1.last_logits(r), s2.last_logits(r), atol=1e-6)
        assert torch.allclose(s1.cache.k[:, r, :, :n], s2.cache.k[:, r, :, :n], atol=1e-6)
        assert torch.allclose(s1.cache.v[:, r, :, :n], s2.cache.v[:, r, :, :n], atol=1e-6)
    o1 = s1.decode(list(range(6)), GREEDY, set(), gen(0))  # consecutive rows: cache-view path
    order = [5, 0, 3, 1, 4, 2]  # scattered rows: gathered-rows path
    o2 = [o for _, o in sorted(zip(order, s2.decode(order, GREEDY, set(), gen(0))))]
    assert [o.ids for o in o1] == [o.ids for o in o2]
    assert torch.allclose(torch.tensor([o.logprobs for o in o1]), torch.tensor([o.logprobs for o in o2]),
                          atol=1e-5)


def test_forked_rows_draw_first_tokens_independently():
    m = make_model()
    with torch.no_grad():
        m.lm_head.weight.zero_()  # tied: all-zero logits, i.e. the uniform distribution
    s = Sampler(m, 8, 16)
    s.prefill([[1, 2, 3]], group_size=8)
    first = [o.ids[0] for o in s.decode(list(range(8)), SamplingParams(max_new_tokens=1), set(), gen(0))]
    assert len(set(first)) > 1  # P(all 8 equal | uniform over 97) = 97^-7
    assert all(abs(o - (-math.log(V))) < 1e-5 for o in s.transcript(0)[2][3:])


def test_seeds(model):
    p = SamplingParams(temperature=1.5, max_new_tokens=12)
    runs = {}
    for seed in (0, 0, 1):
        s = Sampler(model, 4, 32)
        s.prefill([[1, 2], [3, 4, 5]], group_size=2)
        runs.setdefault(seed, []).append([o.ids for o in s.decode([0, 1, 2, 3], p, set(), gen(seed))])
    assert runs[0][0] == runs[0][1]
    assert runs[0][0] != runs[1][0]
    assert runs[0][0][0] != runs[0][0][1]  # forked rows diverge


def test_transcript_mask_and_logprobs(model):
    s = Sampler(model, 2, 64)
    prompt = [1, 2, 3, 4, 5]
    s.prefill([prompt], group_size=2)
    p = SamplingParams(temperature=0.7, max_new_tokens=6)
    out = s.decode([0, 1], p, set(), gen(5))
    s.extend([0, 1], [[40, 41, 42], [43]])
    # stop on whatever row 0 would sample first: the stop token is sampled and must be in the mask
    stop_tok = int(sample_tokens(s.last_logits(0)[None], p, gen(9))[0])
    out2 = s.decode([0], p, {stop_tok}, gen(9))[0]
    assert out2 == Generated(out2.ids, out2.logprobs, True) and out2.ids == (stop_tok,)
    ids, sampled, lps = s.transcript(0)
    assert ids == prompt + list(out[0].ids) + [40, 41, 42, stop_tok]
    assert sampled == [0] * 5 + [1] * 6 + [0] * 3 + [1]
    assert lps[5:11] == list(out[0].logprobs) and lps[-1] == out2.logprobs[0]
    check_logprobs(model, s, 0, 0.7)
    check_logprobs(model, s, 1, 0.7)


def test_topk1_and_tiny_top_p_equal_greedy(model):
    outs = []
    for params in (GREEDY, SamplingParams(temperature=1.0, top_k=1, max_new_tokens=8),
                   SamplingParams(temperature=2.0, top_p=1e-6, max_new_tokens=8)):
        s = Sampler(model, 2, 32)
        s.prefill([[1, 2, 3], [4, 5, 6, 7]])
        o = s.decode([0, 1], params, set(), gen(3))
        outs.append([x.ids for x in o])
        if params.temperature > 0:  # a one-token support: every logprob is log 1 = 0
            assert all(abs(lp) < 1e-6 for x in o for lp in x.logprobs)
    assert outs[0] == outs[1] == outs[2]


def test_truncated_distribution_is_renormalised():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).repeat(400, 1)
    tok, lp = sample_tokens(logits, SamplingParams(top_p=0.7), gen(0))  # keeps {0, 1}: mass 0.8
    assert set(tok.tolist()) == {0, 1}
    want = torch.log(torch.tensor([0.5, 0.3]) / 0.8)
    assert torch.allclose(lp, want[tok], atol=1e-6)
    tok, lp = sample_tokens(logits, SamplingParams(top_k=3, temperature=0.5), gen(0))
    z = torch.log(torch.tensor([0.5, 0.3, 0.15])) / 0.5
    assert set(tok.tolist()) == {0, 1, 2}
    assert torch.allclose(lp, torch.log_softmax(z, -1)[tok], atol=1e-6)


def test_sampled_frequencies_match_the_distribution():
    probs = torch.tensor([0.5, 0.0, 0.3, 0.15, 0.05, 0.0])
    logits = torch.log(probs).repeat(40000, 1)  # -inf on the two impossible tokens
    tok, lp = sample_tokens(logits, SamplingParams(), gen(0))
    freq = torch.bincount(tok, minlength=6).float() / len(tok)
    assert freq[1] == 0 and freq[5] == 0
    assert torch.allclose(freq, probs, atol=0.01)  # 4 sigma of a binomial(40000, 0.5) is 0.01
    assert torch.allclose(lp, torch.log(probs)[tok], atol=1e-6)
    hot = sample_tokens(logits, SamplingParams(temperature=2.0), gen(1))[0]
    want = torch.softmax(torch.log(probs) / 2.0, -1)
    assert torch.allclose(torch.bincount(hot, minlength=6).float() / len(hot), want, atol=0.01)


def test_stop_ids_per_row_and_max_new_tokens(model):
    prompts = [[1, 2, 3], [9, 9, 9, 9]]
    refs = [greedy_reference(model, p, 6) for p in prompts]
    stop = {refs[1][3]}
    s = Sampler(model, 2, 32)
    s.prefill(prompts)
    out = s.decode([0, 1], SamplingParams(temperature=0.0, max_new_tokens=6), stop, gen(0))
    for o, ref in zip(out, refs):
        cut = next((i + 1 for i, t in enumerate(ref) if t in stop), None)
        assert list(o.ids) == ref[:cut]  # stops exactly at (and includes) the first stop id
        assert o.stopped == (cut is not None)
        assert len(o.ids) == len(o.logprobs) <= 6
    assert not out[0].stopped or out[0].ids[-1] in stop
    # the budget is exact; a row decoded again continues where it stopped
    again = s.decode([1], SamplingParams(temperature=0.0, max_new_tokens=3), set(), gen(0))[0]
    assert len(again.ids) == 3 and not again.stopped
    assert list(again.ids) == greedy_reference(model, prompts[1] + list(out[1].ids), 3)


def test_generate_matches_sampler(model):
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8]]
    p = SamplingParams(temperature=0.9, max_new_tokens=5)
    s = Sampler(model, 2, 10)
    s.prefill(prompts)
    assert generate(model, prompts, p, set(), seed=4) == s.decode([0, 1], p, set(), gen(4))


def test_clear_errors(model):
    s = Sampler(model, 2, 16)
    with pytest.raises(ValueError, match="empty"):
        s.prefill([[1], []])
    with pytest.raises(ValueError, match="batch_rows"):
        s.prefill([[1], [2], [3]])
    s.prefill([[1, 2, 3]])
    with pytest.raises(ValueError, match="not a live row"):
        s.decode([1], GREEDY, set(), gen(0))
    with pytest.raises(ValueError, match="not a live row"):
        s.extend([5], [[1]])
    with pytest.raises(ValueError, match="not a live row"):
        s.length("0")
    with pytest.raises(ValueError, match="distinct"):
        s.decode([0, 0], GREEDY, set(), gen(0))
    with pytest.raises(ValueError, match="2 chunks"):
        s.extend([0], [[1], [2]])
    with pytest.raises(ValueError, match="max_len"):
        s.decode([0], SamplingParams(max_new_tokens=14), set(), gen(0))
    with pytest.raises(ValueError, match="max_len"):
        s.extend([0], [list(range(14))])
    with pytest.raises(ValueError, match="max_len"):
        s.prefill([list(range(17))])
    for bad in (dict(temperature=-1), dict(top_p=0), dict(top_k=-2), dict(max_new_tokens=0)):
        with pytest.raises(ValueError):
            SamplingParams(**bad)
    with pytest.raises(ValueError, match="generator"):
        s.decode([0], GREEDY, set(), SimpleNamespace(device=torch.device("cuda")))  # a CUDA generator
    with pytest.raises(ValueError, match="float16"):
        Sampler(model, 1, 8, dtype=torch.float16)
