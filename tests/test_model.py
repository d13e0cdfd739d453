"""Decoder numerics: cached decode == full forward, GQA, rope scaling, log-probs, save/load, errors."""
import json
import math

import pytest
import torch
import torch.nn.functional as F

from ppp_min.lm.config import ModelConfig, RopeScaling
from ppp_min.lm.cache import KVCache
from ppp_min.lm.model import Decoder, RMSNorm, apply_rope, rope_cos_sin, rope_inv_freq, token_logprobs
from ppp_min.lm.presets import count_params, flops_per_token, preset_config
from ppp_min.weights.hf_io import load_pretrained, save_pretrained

V = 61


def _model(seed=0, **over):
    torch.manual_seed(seed)
    return Decoder(preset_config("tiny", V, **over)).eval()


def _causal(P, B):
    return (torch.arange(P)[None, :] <= torch.arange(P)[:, None])[None, None].expand(B, 1, P, P)


def _smeared(m):
    """Non-zero smear logits or random taps, so that every side of the mix is exercised."""
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith(("smear", "_taps", "recency")):
                p.normal_(0, 1.0)
    return m


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3", "smear", "taps", "recency"])
def test_cached_decode_equals_full_forward(arch):
    if arch in ("smear", "taps", "recency"):
        m = _smeared(_model(smear_keys=True, smear_window=3 if arch == "taps" else 1, recency=arch == "recency"))
    else:
        m = _model(arch=arch, attention_bias=arch == "qwen2", qk_norm=arch == "qwen3")
    if arch == "qwen2":  # non-zero biases so the bias path is exercised
        with torch.no_grad():
            for layer in m.layers:
                layer.self_attn.q_proj.bias.normal_(0, 0.1)
                layer.self_attn.k_proj.bias.normal_(0, 0.1)
    ids = torch.randint(0, V, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = m(ids)
        cache = KVCache(m.config, batch=2, max_len=16)
        P = 5
        out = m(ids[:, :P], torch.arange(P).expand(2, P), cache, _causal(P, 2))
        torch.testing.assert_close(out, full[:, :P], atol=1e-5, rtol=0)
        for t in range(P, 12):
            o = m(ids[:, t:t + 1], torch.full((2, 1), t), cache, torch.ones(2, 1, 1, t + 1, dtype=torch.bool))
            torch.testing.assert_close(o[:, 0], full[:, t], atol=1e-5, rtol=0)
        # a multi-token chunk after the cache (bottom-right causal mask) also matches
        cache2 = KVCache(m.config, batch=2, max_len=16)
        m(ids[:, :4], None, cache2, _causal(4, 2))
        mask = torch.arange(12)[None, :] <= torch.arange(4, 12)[:, None]
        o = m(ids[:, 4:], torch.arange(4, 12).expand(2, 8), cache2, mask[None, None].expand(2, 1, 8, 12))
        torch.testing.assert_close(o, full[:, 4:], atol=1e-5, rtol=0)


@pytest.mark.parametrize("window", [0, 1, 3, "recency"])
def test_ragged_rows_and_default_mask(window):
    if window == "recency":
        m = _smeared(_model(smear_keys=True, recency=True))
    else:
        m = _smeared(_model(smear_keys=True, smear_window=window)) if window else _model()
    g = torch.Generator().manual_seed(2)
    a, b = torch.randint(0, V, (9,), generator=g), torch.randint(0, V, (13,), generator=g)
    with torch.no_grad():
        ref_a, ref_b = m(a[None])[0], m(b[None])[0]
        cache = KVCache(m.config, batch=3, max_len=16)
        # ragged batched prefill into cache rows 2 (a[:4]) and 0 (b[:7]); a is right-padded with junk
        # tokens at positions 4..6, which later decode steps overwrite (slot index == position).
        ids = torch.stack([torch.cat([a[:4], torch.zeros(3, dtype=torch.long)]), b[:7]])
        pos = torch.arange(7).expand(2, 7)
        out = m(ids, pos, cache, _causal(7, 2), rows=torch.tensor([2, 0]))
        torch.testing.assert_close(out[0, :4], ref_a[:4], atol=1e-5, rtol=0)
        torch.testing.assert_close(out[1], ref_b[:7], atol=1e-5, rtol=0)
        la, lb = 4, 7
        for _ in range(4):  # joint decode at different positions, explicit per-row masks
            S = max(la, lb) + 1
            mask = torch.stack([torch.arange(S) <= la, torch.arange(S) <= lb])[:, None, None]
            o = m(torch.stack([a[la:la + 1], b[lb:lb + 1]]), torch.tensor([[la], [lb]]), cache, mask,
                  rows=torch.tensor([2, 0]))
            torch.testing.assert_close(o[0, 0], ref_a[la], atol=1e-5, rtol=0)
            torch.testing.assert_close(o[1, 0], ref_b[lb], atol=1e-5, rtol=0)
            la, lb = la + 1, lb + 1
        # a subset of rows, default mask (slot <= position): row 0 alone continues b
        o = m(b[lb:lb + 2][None], torch.tensor([[lb, lb + 1]]), cache, rows=torch.tensor([0]))
        torch.testing.assert_close(o[0], ref_b[lb:lb + 2], atol=1e-5, rtol=0)
        # row 1 was never touched
        assert cache.k[:, 1].abs().sum() == 0


def _one_layer(cfg, seed):
    """An Attention layer of cfg, a batch of 2 x 7 inputs (row 1 packs two sequences: positions restart at
    0), their RoPE tables and raw q, k, v."""
    from ppp_min.lm.model import Attention, rope_cos_sin
    torch.manual_seed(seed)
    att = Attention(cfg)
    x = torch.randn(2, 7, cfg.hidden_size)
    pos = torch.tensor([[0, 1, 2, 3, 4, 5, 6], [0, 1, 2, 0, 1, 2, 3]])
    cos, sin = rope_cos_sin(cfg, pos)
    q = att.q_proj(x).view(2, 7, att.nh, att.hd)
    k = att.k_proj(x).view(2, 7, att.nkv, att.hd)
    v = att.v_proj(x).view(2, 7, att.nkv, att.hd)
    return att, x, pos, (cos, sin), (q, k, v)


def _reference_and_model(att, x, pos, rope, qs, ks, v, recency=None):
    """Textbook attention of the smeared qs, ks: RoPE, GQA by repetition, causal softmax within each packed
    sequence (plus -recency[h] * log(1 + t - s) where given), o_proj; and the layer's own output on x."""
    B, T = pos.shape
    qs, ks = apply_rope(qs, *rope), apply_rope(ks, *rope)
    rep = att.nh // att.nkv
    ks, v = ks.repeat_interleave(rep, 2), v.repeat_interleave(rep, 2)
    allowed = torch.ones(T, T).tril().bool()
    masks = torch.stack([allowed, allowed & torch.block_diag(torch.ones(3, 3), torch.ones(4, 4)).bool()])
    ref = torch.zeros(B, T, att.nh, att.hd)
    for b in range(B):
        for h in range(att.nh):
            w = (qs[b, :, h] @ ks[b, :, h].T) / math.sqrt(att.hd)
            if recency is not None:
                for t in range(T):
                    for u in range(t + 1):
                        w[t, u] -= recency[h] * math.log(1 + t - u)
            ref[b, :, h] = torch.softmax(w.masked_fill(~masks[b], float("-inf")), -1) @ v[b, :, h]
    with torch.no_grad():
        out = att(x, *rope, 0, None, pos, masks[:, None], None)
    return att.o_proj(ref.reshape(B, T, -1)).detach(), out


def test_smeared_keys_equal_a_hand_written_reference():
    """One layer's attention with smeared keys, computed by the formula: k'_p = s k_p + (1 - s) k_{p-1}
    (k_{-1} = 0, s = sigmoid(a) per kv head), RoPE on q and k', causal softmax attention, GQA by repetition;
    and a packed row (positions restart at 0) smears nothing across its start."""
    att, x, pos, rope, (q, k, v) = _one_layer(preset_config("tiny", V, smear_keys=True), 3)
    with torch.no_grad():
        att.smear.normal_(0, 1.0)
    s = torch.sigmoid(att.smear)[:, 0, None]  # [kv, 1]
    ks = torch.zeros_like(k)
    for b in range(2):
        for t in range(7):
            prev = k[b, t - 1] if pos[b, t] > 0 else torch.zeros_like(k[b, t])
            ks[b, t] = s * k[b, t] + (1 - s) * prev
    ref, out = _reference_and_model(att, x, pos, rope, q, ks, v)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


def test_taps_equal_a_hand_written_reference():
    """Smeared keys over a window of W = 3 (per-channel taps): k'_p = sum_{j<=3} a_j * k_{p-j} and
    q'_t = sum_{j<3} b_j * q_{t-j}, zero before a sequence's start (a packed row restarts at position 0),
    then RoPE and causal attention; and at init each rotary pair takes W = 1's even mix or one offset."""
    att, x, pos, rope, (q, k, v) = _one_layer(preset_config("tiny", V, smear_keys=True, smear_window=3), 4)
    half = att.hd // 2
    for i in range(att.hd):  # pair i % half; groups of pairs: i % 4 (W + 1 = 4)
        g = (i % half) % 4
        want_k = [0.5, 0.5, 0, 0] if g == 0 else [float(j == g) for j in range(4)]
        want_q = [1.0, 0, 0] if g == 0 else [float(j == g - 1) for j in range(3)]
        assert att.key_taps[:, :, i].T.tolist() == [want_k] * att.nkv
        assert att.query_taps[:, :, i].T.tolist() == [want_q] * att.nh
    with torch.no_grad():
        att.key_taps.normal_(0, 1.0)
        att.query_taps.normal_(0, 1.0)
    qs, ks = torch.zeros_like(q), torch.zeros_like(k)
    for b in range(2):
        for t in range(7):
            for j in range(4):
                if pos[b, t] - j >= 0:
                    ks[b, t] += att.key_taps[j] * k[b, t - j]
                    if j < 3:
                        qs[b, t] += att.query_taps[j] * q[b, t - j]
    ref, out = _reference_and_model(att, x, pos, rope, qs, ks, v)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


def test_recency_bias_equals_a_hand_written_reference():
    """The recency bias: -softplus(r_h) * log(1 + t - s) on each head's scores, r_h = -2 at init; in a packed
    row the distance counts from the second sequence's own start (only its keys are visible)."""
    att, x, pos, rope, (q, k, v) = _one_layer(preset_config("tiny", V, recency=True), 5)
    assert att.recency.eq(-2.0).all()
    with torch.no_grad():
        att.recency.normal_(0, 1.0)
    slopes = torch.nn.functional.softplus(att.recency).tolist()
    ref, out = _reference_and_model(att, x, pos, rope, q, k, v, recency=slopes)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    plain, _ = _reference_and_model(att, x, pos, rope, q, k, v)
    assert (plain - ref).abs().max() > 1e-3  # the bias matters


def test_gqa_equals_repeated_kv_reference():
    m = _model()
    cfg = m.config
    assert cfg.num_heads != cfg.num_kv_heads
    x = torch.randn(2, 6, cfg.hidden_size)
    att = m.layers[0].self_attn
    pos = torch.arange(6).expand(2, 6)
    with torch.no_grad():
        got = att(x, *m.rope(pos), 0, None, pos, None, None)
        # reference RoPE angles m * theta_i, computed here (not by the model's table)
        ang = pos[..., None].float() * rope_inv_freq(cfg)
        cos, sin = torch.cat([ang.cos()] * 2, -1)[:, None], torch.cat([ang.sin()] * 2, -1)[:, None]
        # slow reference: explicit softmax attention with kv heads repeated num_heads/num_kv_heads times
        q = att.q_proj(x).view(2, 6, cfg.num_heads, cfg.head_dim).transpose(1, 2)
        k = att.k_proj(x).view(2, 6, cfg.num_kv_heads, cfg.head_dim).transpose(1, 2)
        v = att.v_proj(x).view(2, 6, cfg.num_kv_heads, cfg.head_dim).transpose(1, 2)
        rot = lambda t: torch.cat([-t[..., cfg.head_dim // 2:], t[..., :cfg.head_dim // 2]], -1)
        q, k = q * cos + rot(q) * sin, k * cos + rot(k) * sin
        rep = cfg.num_heads // cfg.num_kv_heads
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        s = q @ k.transpose(-1, -2) / math.sqrt(cfg.head_dim)
        s = s.masked_fill(~torch.ones(6, 6, dtype=torch.bool).tril(), float("-inf"))
        y = (s.softmax(-1) @ v).transpose(1, 2).reshape(2, 6, -1)
        torch.testing.assert_close(got, att.o_proj(y), atol=1e-6, rtol=0)


def test_rope_llama3_scaling_hand_computed():
    # head_dim 8, theta 10000: inv = [1, 0.1, 0.01, 0.001]; wavelengths 2pi*[1, 10, 100, 1000]
    # = [6.28, 62.8, 628.3, 6283.2]. original_max 2048, low 1, high 4 -> high_wl = 512, low_wl = 2048.
    # i=0,1: wavelength < 512 -> kept. i=3: 6283 > 2048 -> inv/8 = 1.25e-4.
    # i=2: wavelength 628.3 in the band; smooth = (2048/628.32 - 1)/3 = 0.75317;
    #      (1-s)*0.01/8 + s*0.01 = 0.0078397
    cfg = ModelConfig(arch="llama", vocab_size=10, hidden_size=16, intermediate_size=32, num_layers=1,
                      num_heads=2, num_kv_heads=1, head_dim=8, rope_theta=10000.0,
                      rope_scaling=RopeScaling(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                               original_max_position_embeddings=2048))
    got = rope_inv_freq(cfg)
    s = (2048 / (2 * math.pi * 100) - 1) / 3
    want = torch.tensor([1.0, 0.1, (1 - s) * 0.01 / 8 + s * 0.01, 0.001 / 8])
    torch.testing.assert_close(got, want, rtol=1e-6, atol=0)
    assert abs(want[2].item() - 0.0078397) < 1e-6
    plain = rope_inv_freq(ModelConfig(**{**cfg.__dict__, "rope_scaling": None}))
    torch.testing.assert_close(plain, torch.tensor([1.0, 0.1, 0.01, 0.001]), rtol=1e-6, atol=0)


def test_rope_table_rows_equal_direct_angles_and_grow():
    m = _model()  # tiny: max_position_embeddings 512, head_dim 16
    hd, inv = m.config.head_dim, rope_inv_freq(m.config)
    pos = torch.tensor([[0, 1, 7], [300, 511, 2]])

    def direct(p):  # cos / sin of the angle p * theta_i, duplicated over the two halves
        ang = p[..., None].double() * inv.double()
        return torch.cat([ang.cos()] * 2, -1), torch.cat([-ang.sin(), ang.sin()], -1)

    cos, sin = m.rope(pos, bound=512)
    assert cos.shape == sin.shape == (2, 3, 1, hd) and m.rope.cos.shape[0] == 512
    want_cos, want_sin = direct(pos)
    torch.testing.assert_close(cos[:, :, 0].double(), want_cos, atol=1e-4, rtol=0)  # fp32 angles ~ 511
    torch.testing.assert_close(sin[:, :, 0].double(), want_sin, atol=1e-4, rtol=0)
    # the table's rows are the rows the direct (no-table) path computes
    c2, s2 = rope_cos_sin(m.config, pos)
    assert torch.equal(cos, c2) and torch.equal(sin, s2)
    # positions beyond the table (no cache, explicit positions): the table grows, forward still exact
    far = torch.arange(600, 610)[None]
    c3, _ = m.rope(far)
    assert m.rope.cos.shape[0] == 610
    torch.testing.assert_close(c3[0, :, 0].double(), direct(far)[0][0], atol=1e-3, rtol=0)


def test_apply_rope_equals_textbook_rotate_half_bitwise():
    g = torch.Generator().manual_seed(4)
    x, ang = torch.randn(3, 5, 2, 16, generator=g), torch.randn(3, 5, 1, 8, generator=g) * 50
    cos, sin = torch.cat([ang.cos()] * 2, -1), torch.cat([ang.sin()] * 2, -1)
    textbook = x * cos + torch.cat([-x[..., 8:], x[..., :8]], -1) * sin
    got = apply_rope(x, cos, torch.cat([-sin[..., :8], sin[..., 8:]], -1))
    assert torch.equal(got, textbook)


def test_rope_table_made_under_inference_mode_still_trains():
    m = _model()
    ids = torch.randint(0, V, (2, 6), generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():  # e.g. the sampler builds the table first
        m(ids)
    assert not m.rope.cos.is_inference()
    m.train()
    loss = -token_logprobs(m(ids[:, :-1]), ids[:, 1:]).mean()
    loss.backward()
    assert m.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0


def test_rmsnorm_fp32_and_bf16_paths_equal_formula():
    norm = RMSNorm(24, 1e-6)
    with torch.no_grad():
        norm.weight.normal_(1.0, 0.3)
    x = torch.randn(4, 3, 24, generator=torch.Generator().manual_seed(6)) * 3
    want = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * norm.weight  # Zhang & Sennrich eq. 4
    torch.testing.assert_close(norm(x), want, atol=1e-6, rtol=1e-6)
    # bf16 input: computed in fp32, cast back to bf16, times the fp32 weight (as Hugging Face does)
    xb = x.bfloat16()
    xf = xb.float()
    want_b = norm.weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-6)).bfloat16()
    assert torch.equal(norm(xb), want_b)


def test_token_logprobs_matches_log_softmax():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(3, 5, 17, generator=g) * 4
    tgt = torch.randint(0, 17, (3, 5), generator=g)
    for temp in (1.0, 0.7, 1.9):
        want = F.log_softmax(logits / temp, -1).gather(-1, tgt[..., None])[..., 0]
        torch.testing.assert_close(token_logprobs(logits, tgt, temp), want, atol=1e-5, rtol=0)
    assert token_logprobs(logits.bfloat16(), tgt).dtype == torch.float32
    with pytest.raises(ValueError, match="temperature"):
        token_logprobs(logits, tgt, 0.0)


def test_hidden_only_and_logits():
    m = _model()
    ids = torch.randint(0, V, (2, 5))
    with torch.no_grad():
        h = m(ids, hidden_only=True)
        assert h.shape == (2, 5, m.config.hidden_size)
        torch.testing.assert_close(m.logits(h), m(ids), atol=0, rtol=0)


@pytest.mark.parametrize("over", [{}, {"arch": "qwen2", "attention_bias": True, "tie_word_embeddings": False},
                                  {"arch": "qwen3", "qk_norm": True,
                                   "rope_scaling": RopeScaling(4.0, 1.0, 4.0, 32)}, {"smear_keys": True},
                                  {"smear_keys": True, "smear_window": 3}, {"smear_keys": True, "recency": True}])
def test_save_load_bit_identical(tmp_path, over):
    m = _model(seed=4, eos_token_ids=(3, 5), bos_token_id=1, pad_token_id=0, **over)
    if m.config.smear_keys:
        _smeared(m)
    save_pretrained(m, tmp_path)
    m2 = load_pretrained(tmp_path)
    assert m2.config == m.config
    assert (m2.lm_head.weight is m2.embed_tokens.weight) == m.config.tie_word_embeddings
    assert all(p.requires_grad and not p.is_meta for p in m2.parameters())  # trainable after load
    ids = torch.randint(0, V, (2, 9))
    with torch.no_grad():
        assert torch.equal(m(ids), m2(ids))
    bf = load_pretrained(tmp_path, dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 and p.device.type == "cpu" for p in bf.parameters())


def _saved(tmp_path):
    m = _model()
    save_pretrained(m, tmp_path)
    return m


def test_load_errors_are_clear(tmp_path):
    from ppp_min.weights.hf_io import ModelLoadError
    assert issubclass(ModelLoadError, ValueError)
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_pretrained(tmp_path / "nope")
    with pytest.raises(ModelLoadError, match="config.json"):
        load_pretrained(tmp_path)  # empty directory: no config.json
    _saved(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(ModelLoadError, match="unsupported architecture.*GPT2LMHeadModel"):
        load_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "rope_scaling": {"rope_type": "yarn", "factor": 2}}))
    with pytest.raises(ModelLoadError, match="yarn"):
        load_pretrained(tmp_path)
    # shape mismatch: config says a larger vocab than the stored embedding
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "vocab_size": V + 1}))
    with pytest.raises(ModelLoadError, match="model.embed_tokens.weight.*shape"):
        load_pretrained(tmp_path)
    # missing tensor: config says untied but no lm_head.weight is stored
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "tie_word_embeddings": False}))
    with pytest.raises(ModelLoadError, match="missing tensor.*lm_head.weight"):
        load_pretrained(tmp_path)
    # unexpected tensor: config says fewer layers than stored
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "num_hidden_layers": 1}))
    with pytest.raises(ModelLoadError, match="unexpected tensor 'model.layers.1"):
        load_pretrained(tmp_path)
    # pickle-only weights are refused, never opened
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    (tmp_path / "model.safetensors").unlink()
    (tmp_path / "pytorch_model.bin").write_bytes(b"not opened")
    with pytest.raises(ModelLoadError, match="pickle"):
        load_pretrained(tmp_path)


def test_eos_ids_from_generation_config_and_config(tmp_path):
    _saved(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "eos_token_id": 7}))
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [9, 7]}))
    assert load_pretrained(tmp_path).config.eos_token_ids == (9, 7)
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": 4}))
    assert load_pretrained(tmp_path).config.eos_token_ids == (4, 7)


def test_presets_param_counts_and_flops():
    # documented ranges for a 1024-token vocabulary
    ranges = {"tiny": (1e5, 3e5), "small": (2e6, 6e6), "base": (5e7, 1e8)}
    for name, (lo, hi) in ranges.items():
        cfg = preset_config(name, 1024)
        with torch.device("meta"):
            n = count_params(Decoder(cfg))
        assert lo <= n <= hi, (name, n)
    with pytest.raises(ValueError, match="unknown model preset"):
        preset_config("huge", 10)
    # tiny, V=61: per layer q,o 64*64 each, k,v 64*32 each, mlp 3*64*192; lm head 64*61
    n_mm = 2 * (2 * 4096 + 2 * 2048 + 3 * 64 * 192) + 64 * 61
    assert flops_per_token(preset_config("tiny", 61), 100) == 2 * n_mm + 4 * 2 * 100 * 4 * 16
    # count_params counts the tied embedding once: all matmul weights + embedding - lm head + norms
    m = _model()
    assert count_params(m) == n_mm + 2 * (64 + 64) + 64


def test_forward_input_errors():
    m = _model()
    cache = KVCache(m.config, batch=3, max_len=8)
    ids = torch.zeros(2, 2, dtype=torch.long)
    with pytest.raises(ValueError, match="cache.batch"):
        m(ids, cache=cache)
    with pytest.raises(ValueError, match="bool"):
        m(ids, mask=torch.ones(2, 1, 2, 2))
    with pytest.raises(ValueError, match="cache holds 8"):
        m(ids, cache=cache, rows=torch.tensor([0, 1]), mask=torch.ones(2, 1, 2, 9, dtype=torch.bool))
    with pytest.raises(ValueError, match="rows names cache rows"):
        m(ids, rows=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="T=2"):
        m(ids, mask=torch.ones(2, 1, 2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="positions shape"):
        m(ids, positions=torch.zeros(2, 3, dtype=torch.long))


def test_tiny_preset_learns_a_sequence_quickly():
    m = _model(seed=5).train()
    ids = torch.randint(0, V, (4, 24), generator=torch.Generator().manual_seed(6))
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        loss = -token_logprobs(m(ids[:, :-1]), ids[:, 1:]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert abs(losses[0] - math.log(V)) < 0.1  # small init: near-uniform predictions at the start
    assert losses[-1] < 0.5 * losses[0]


def test_linear_decode_path_matches_f_linear():
    """fastpath.Linear's decode path ((W x^T)^T, <= 64 rows, no autograd) equals F.linear; with autograd or
    more rows it is F.linear itself."""
    from ppp_min.lm.fastpath import Linear
    torch.manual_seed(0)
    lin = Linear(48, 80, bias=True)
    for rows in (1, 16, 64, 65):
        x = torch.randn(rows, 48)
        ref = torch.nn.functional.linear(x, lin.weight, lin.bias)
        with torch.no_grad():
            y = lin(x)
        assert y.shape == ref.shape and (y.stride() == (1, rows)) == (rows <= 64)
        torch.testing.assert_close(y, ref, atol=1e-6, rtol=1e-6)
    x = torch.randn(4, 48, requires_grad=True)
    lin(x).sum().backward()  # the autograd path: plain F.linear
    torch.testing.assert_close(x.grad, lin.weight.sum(0).expand(4, 48))


def test_fastpath_cached_attention_equals_sdpa_with_gqa():
    """fastpath.cached_attention (g*T query rows per kv head; two matmuls for one query on CPU) computes
    F.scaled_dot_product_attention(..., enable_gqa=True) with the bool mask made additive by prepare_mask."""
    from ppp_min.lm.fastpath import cached_attention, prepare_mask
    g = torch.Generator().manual_seed(8)
    B, nh, nkv, S, hd = 3, 4, 2, 11, 16
    keys, vals = torch.randn(B, nkv, S, hd, generator=g), torch.randn(B, nkv, S, hd, generator=g)
    for T in (1, 5):
        q = torch.randn(B, nh, T, hd, generator=g)
        bool_mask = torch.rand(B, 1, T, S, generator=g) < 0.7
        bool_mask[..., 0] = True  # every query row sees at least one slot
        want = F.scaled_dot_product_attention(q, keys, vals, attn_mask=bool_mask, enable_gqa=True)
        for mask in (prepare_mask(bool_mask, q.dtype, 1), prepare_mask(bool_mask, q.dtype, nh // nkv)):
            torch.testing.assert_close(cached_attention(q, keys, vals, mask), want, atol=1e-6, rtol=1e-5)


def test_autocast_rule():
    from contextlib import nullcontext

    from ppp_min.lm.model import autocast
    assert isinstance(autocast("cpu", None), nullcontext) and isinstance(autocast("cpu", torch.float32), nullcontext)
    with autocast("cpu", torch.bfloat16):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    with pytest.raises(ValueError, match="float16"):
        autocast("cpu", torch.float16)
