"""`capture.logits_with_additions` (the causal gate's forwards): the blocks below the steered layer run once per batch
and several vectors share each forward above it; the logits equal the plain path's (one `add_to_layer` forward per
vector) to float rounding on every architecture of `test_architectures`, with padding, under PEFT, and it falls back
to the plain path (saying why) where it cannot be sure."""
import logging
import numpy as np
import pytest
import torch

import safety_compass.capture as capture
from safety_compass.capture import (add_to_layer, decoder_blocks, logits_with_additions, num_layers, tokenize_prompts,
                                    register_layer_hook)
from safety_compass.directions import causal_gate
from safety_compass.pairs import conversation
from test_architectures import ARCHS, COMMON, PROMPTS, tiny

CASES = {**{name: {} for name in ARCHS},
         # Gemma-3 (text): sliding and global attention alternate per block; a window shorter than the prompts
         "gemma3_text": {**COMMON, "head_dim": 16, "sliding_window": 4,
                         "layer_types": ["sliding_attention", "full_attention", "sliding_attention"]}}

@pytest.fixture(scope="module")
def tok(embedded): return embedded[1]

@pytest.fixture(scope="module")
def ids(tok):
    return tokenize_prompts(tok, [conversation(s, u) for s, u in PROMPTS])  # three lengths: one right-padded batch

def make(name, tok):
    if name in ARCHS: return tiny(name, tok)
    from transformers import AutoConfig, AutoModelForCausalLM
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(AutoConfig.for_model(name, vocab_size=len(tok), **CASES[name])).eval()

def vectors(model, k=5, seed=0):
    return list(np.random.default_rng(seed).normal(size=(k, model.config.hidden_size)) * 3)

def agree(a, b, rel=1e-5):
    err = float(np.abs(a - b).max()) / max(1.0, float(np.abs(b).max()))
    assert err <= rel, err
    return err

def counting(monkeypatch, model):
    "Record the batch size of every call of a decoder block's forward (patched on its class: no hooks on the model)."
    cls, seen = type(decoder_blocks(model)[0]), []
    orig = cls.forward
    def fwd(self, *args, **kwargs):
        h = args[0] if args else kwargs["hidden_states"]
        seen.append((self, h.shape[0])); return orig(self, *args, **kwargs)
    monkeypatch.setattr(cls, "forward", fwd)
    return seen

@pytest.mark.parametrize("name", CASES)
def test_reuse_equals_plain(name, tok, ids, caplog):
    model = make(name, tok)
    vecs = vectors(model)
    for L in range(num_layers(model)):
        for budget in (None, 60):  # every vector in one forward; one vector per forward (the ops of the plain path)
            with caplog.at_level(logging.INFO, "safety_compass.capture"):
                caplog.clear()
                b0, s0 = logits_with_additions(model, tok, ids, L, vecs, reuse=False, token_budget=budget)
                b1, s1 = logits_with_additions(model, tok, ids, L, vecs, token_budget=budget)
            assert [r.getMessage() for r in caplog.records] == ["logits_with_additions: the plain path (not requested)"]
            assert s1.shape == (len(vecs), len(ids), len(tok))
            np.testing.assert_array_equal(b0, b1)  # the unsteered forward is the plain path's own
            agree(s1, s0)
            if budget == 60: np.testing.assert_array_equal(s0, s1)  # one vector per forward: the same operations
        assert np.abs(s0 - b0).max() > 1e-2  # the vectors change the logits

def test_blocks_below_run_once(tok, ids, monkeypatch):
    model = tiny("llama", tok)
    blocks = decoder_blocks(model)
    seen = counting(monkeypatch, model)
    vecs = vectors(model, 4)
    logits_with_additions(model, tok, ids, 2, vecs, token_budget=None)
    rows = {i: [b for m, b in seen if m is blk] for i, blk in enumerate(blocks)}
    assert rows[0] == rows[1] == [3]                    # the one full forward
    assert rows[2] == [3, 3 * 5]                        # then the zero vector and four vectors stacked in one replay
    seen.clear()
    logits_with_additions(model, tok, ids, 2, vecs, token_budget=None, reuse=False)
    assert [b for m, b in seen if m is blocks[0]] == [3] * 5

def test_peft_lora(tok, ids):
    from peft import LoraConfig, get_peft_model
    torch.manual_seed(0)
    model = get_peft_model(tiny("qwen2", tok, cached=False), LoraConfig(r=4, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)).eval()
    vecs = vectors(model.get_base_model())
    b0, s0 = logits_with_additions(model, tok, ids, 1, vecs, reuse=False)
    b1, s1 = logits_with_additions(model, tok, ids, 1, vecs)
    np.testing.assert_array_equal(b0, b1); agree(s1, s0)
    with model.disable_adapter(): b2, _ = logits_with_additions(model, tok, ids, 1, vecs[:1])
    assert np.abs(b2 - b1).max() > 1e-3  # the adapter is in the numbers

def test_causal_gate_reuse(tok, ids):
    model = tiny("gemma2", tok)
    unit = vectors(model, 1)[0]
    args = (model, tok, ids, 1, unit, 5.0, ["I cannot", "Sorry"], ["Sure", "Here"])
    plain, reuse = causal_gate(*args, n_random=4, reuse=False), causal_gate(*args, n_random=4)
    test = {k: v for k, v in plain.items() if k not in ("causal_passes", "causal_reason", "causal_scale")}
    for k in test: agree(np.asarray(reuse[k]), np.asarray(plain[k]))
    assert plain["logodds_before"] == reuse["logodds_before"]

def test_falls_back_where_unsure(tok, ids, caplog, monkeypatch):
    model = tiny("llama", tok)
    vecs = vectors(model, 2)
    b0, s0 = logits_with_additions(model, tok, ids, 3, vecs, reuse=False)
    def reason(**kw):
        with caplog.at_level(logging.INFO, "safety_compass.capture"):
            caplog.clear()
            got = logits_with_additions(model, tok, ids, kw.pop("layer", 1), vecs, **kw)
        return got, " ".join(r.getMessage() for r in caplog.records)
    (b, s), why = reason(layer=3)   # after the final norm: no block to start from
    assert "layer 3 is not a block input" in why
    np.testing.assert_array_equal(s, s0)
    assert "a forward= wrapper" in reason(forward=lambda **kw: model(**kw))[1]
    assert "capture keywords ['batches']" in reason(batches=[[0, 1, 2]])[1]
    h = register_layer_hook(model, 0, lambda x: None)
    try: assert "hooks on the model" in reason()[1]
    finally: h.remove()
    with add_to_layer(model, 0, vecs[0]): assert "hooks on the model" in reason()[1]
    # a replay that does not reproduce the plain forward (here: its logits off by 0.1) is caught by the zero vector
    p0 = logits_with_additions(model, tok, ids, 2, vecs, reuse=False)
    real = capture._last_logits
    def off(*args, trim_first, **kw):
        lg = real(*args, trim_first=trim_first, **kw)
        return lg if trim_first else lg + 0.1
    monkeypatch.setattr(capture, "_last_logits", off)
    (b, s), why = reason(layer=2)
    assert "the zero-vector replay differs" in why
    np.testing.assert_array_equal(s, p0[1]); np.testing.assert_array_equal(b, p0[0])
