"""Parity with the `transformers` reference implementations (test-only dependency), in both directions:
HF-saved tiny random models load in ppp_min with the same logits and greedy text, and ppp_min-saved
models load in transformers with the same logits."""
import pytest
import torch

transformers = pytest.importorskip("transformers")

from ppp_min.lm.config import RopeScaling  # noqa: E402
from ppp_min.lm.model import Decoder  # noqa: E402
from ppp_min.lm.presets import preset_config  # noqa: E402
from ppp_min.weights.hf_io import load_pretrained, save_pretrained  # noqa: E402

V = 97
LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 4.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 32}
COMMON = dict(vocab_size=V, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-6, bos_token_id=1,
              eos_token_id=2, pad_token_id=0)
CASES = {
    "llama": ("LlamaConfig", dict(tie_word_embeddings=True, rope_parameters={"rope_type": "default",
                                                                             "rope_theta": 10000.0})),
    "llama3-rope-untied": ("LlamaConfig", dict(tie_word_embeddings=False, rope_parameters=LLAMA3_ROPE)),
    "qwen2": ("Qwen2Config", dict(tie_word_embeddings=True, rope_parameters={"rope_type": "default",
                                                                             "rope_theta": 1e6})),
    "qwen3": ("Qwen3Config", dict(tie_word_embeddings=False, head_dim=24,
                                  rope_parameters={"rope_type": "default", "rope_theta": 1e6})),
}


def _greedy(forward, ids, n):
    for _ in range(n):  # repeated full forward: slow but obviously right
        nxt = forward(ids)[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat([ids, nxt], dim=1)
    return ids


@pytest.mark.parametrize("case", sorted(CASES))
def test_hf_model_loads_in_ppp_min(tmp_path, case):
    cls_name, extra = CASES[case]
    torch.manual_seed(0)
    cfg = getattr(transformers, cls_name)(**COMMON, **extra)
    hf = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()
    with torch.no_grad():  # perturb every tensor (norm weights, biases too) so each path matters
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    hf.generation_config.eos_token_id = [2, 5]
    shard = "30KB" if case == "qwen3" else "50GB"  # one sharded directory (index.json) among the cases
    hf.save_pretrained(tmp_path, max_shard_size=shard)
    if case == "qwen3":
        assert (tmp_path / "model.safetensors.index.json").is_file()
    m = load_pretrained(tmp_path)
    assert m.config.eos_token_ids == (2, 5)
    assert (m.lm_head.weight is m.embed_tokens.weight) == extra["tie_word_embeddings"]
    if case == "llama3-rope-untied":
        assert m.config.rope_scaling == RopeScaling(4.0, 1.0, 4.0, 32)
    ids = torch.randint(3, V, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = hf(ids).logits
        torch.testing.assert_close(m(ids), ref, atol=1e-4, rtol=0)
        prompt = ids[:, :6]
        assert torch.equal(_greedy(m, prompt, 8), _greedy(lambda x: hf(x).logits, prompt, 8))


@pytest.mark.parametrize("over", [{}, {"tie_word_embeddings": False, "rope_scaling": RopeScaling(4.0, 1.0, 4.0, 32)},
                                  {"arch": "qwen2", "attention_bias": True},
                                  {"arch": "qwen3", "qk_norm": True, "tie_word_embeddings": False}])
def test_ppp_min_model_loads_in_transformers(tmp_path, over):
    torch.manual_seed(0)
    m = Decoder(preset_config("tiny", V, eos_token_ids=(2,), bos_token_id=1, **over)).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    save_pretrained(m, tmp_path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    assert type(hf).__name__ == {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM",
                                 "qwen3": "Qwen3ForCausalLM"}[m.config.arch]
    assert hf.dtype == torch.float32
    ids = torch.randint(0, V, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, m(ids), atol=1e-4, rtol=0)
