"""A planned measurement (`plan.plan_capture` / `capture_planned`, `SafetyCompassMonitor.plan`) gives the numbers
of the plain path: every prompt run to the deepest requested layer by `capture_last_token`.

The plan runs each prompt only to the deepest layer it is read at, and computes a shared templated prefix once (a KV
cache expanded across the suffix batch). On tiny random-config Llama, Qwen2, Qwen3 and Gemma models (3 blocks,
hidden 64, the embedded tokenizer) the prefix path must be taken and agree to 1e-5; on sliding-window models (Gemma-2,
Mistral) it must fall back to depth batches, say why, and still agree. At the monitor level, `measure()` through the
plan equals `measure()` on the plain path (`use_plan = False`) to 1e-5 in every metric (cosine, both AUROCs, their CIs,
norms, cross-concept cosines), on the unchanged and on a perturbed model, after `setup()` and after
`load_baselines()`. The two-process (DDP) path of the plan, depth batches dealt round-robin, is exercised by
tests/test_multiprocess.py; the embedded model by the capture and monitor notebooks.
"""
import logging

import numpy as np
import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from safety_compass.capture import capture_last_token, decoder_blocks, last_token_only, tokenize_prompts
from safety_compass.plan import capture_planned, plan_capture
from safety_compass.core import SafetyCompassError
from safety_compass.monitor import SafetyCompassMonitor, load_monitor_config
from safety_compass.pairs import conversation
from conftest import ROOT

COMMON = dict(num_hidden_layers=3, hidden_size=64, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128)
ARCHS = {"llama": COMMON, "qwen2": COMMON, "qwen3": {**COMMON, "head_dim": 16}, "gemma": {**COMMON, "head_dim": 16},
         "gemma2": {**COMMON, "head_dim": 16}, "mistral": COMMON}
PREFIX_OK = {"llama", "qwen2", "qwen3", "gemma"}  # the others attend through a sliding window
# every decoder type whose last block `last_token_only` restricts (its output projection and MLP at the last token)
LAST_TOKEN_ARCHS = {**ARCHS, "gemma3_text": {**COMMON, "head_dim": 16}, "olmo": COMMON, "olmo2": COMMON, "phi3": COMMON,
                    "gpt2": dict(n_layer=3, n_embd=64, n_head=4),
                    "gpt_neox": dict(num_hidden_layers=3, hidden_size=64, num_attention_heads=4, intermediate_size=128)}

SYS_A = "You are a careful assistant. Answer the user's question directly, and say so when you do not know."
SYS_B = "You are an AI model deployed to help people with everyday tasks. Keep your answers short."
USERS = ["How do I fix a leaking pipe under the sink?", "Write a haiku about autumn.", "What is 17 times 23?",
         "Name three birds.", "Is the earth flat?", "Summarise Hamlet in one line, please, for a child."]
CONVS = [conversation(SYS_A, u) for u in USERS] + [conversation(SYS_B, u) for u in USERS[:4]] + \
        [conversation(None, u) for u in USERS[:2]]
NEED = [{1}, {3}, {1, 3}, {2}, {1}, {2, 3}, {3}, {1}, {2}, {1, 3}, {3}, set()]

@pytest.fixture(scope="module")
def tok(embedded):
    return embedded[1]

@pytest.fixture(scope="module")
def ids(tok):
    return tokenize_prompts(tok, CONVS)

def tiny(name, tok, **extra):
    torch.manual_seed(0)
    cfg = AutoConfig.for_model(name, vocab_size=len(tok), **{**LAST_TOKEN_ARCHS[name], **extra})
    return AutoModelForCausalLM.from_config(cfg).eval()

def hf_last(model, ids, layers):
    "HF's own `output_hidden_states` at each prompt's last token, one prompt per forward (no padding, none of our hooks)."
    out = {L: [] for L in layers}
    with torch.inference_mode():
        for x in ids:
            hs = model(input_ids=torch.tensor([x]), output_hidden_states=True).hidden_states
            for L in layers: out[L].append(hs[L][0, -1].float().numpy())
    return {L: np.stack(v) for L, v in out.items()}

def agree(got, ref, need, tol=1e-5):
    for L in sorted({L for ls in need for L in ls}):
        rows = [i for i, ls in enumerate(need) if L in ls]
        err = np.abs(got[L][rows] - ref[L][rows]).max() / max(1.0, np.abs(ref[L][rows]).max())
        assert err < tol, (L, err)
        assert np.isnan(got[L][[i for i in range(len(need)) if L not in need[i]]]).all()

@pytest.mark.parametrize("name,attn", [*((n, None) for n in ARCHS), ("llama", "eager"), ("gemma", "eager")])
def test_plan_equals_plain(name, attn, tok, ids, caplog):
    "`attn`: None = the model's default attention (sdpa where supported)."
    model = tiny(name, tok, **({"attn_implementation": attn} if attn else {}))
    with caplog.at_level(logging.INFO, logger="safety_compass.plan"):
        plan = plan_capture(model, tok, ids, NEED, token_budget=200)
    if name in PREFIX_OK:
        assert plan.mode == "prefix" and plan.reason == "", plan.reason
        assert plan.groups and all(len(g.members) > 1 and len(g.tokens) >= 3 for g in plan.groups), [(len(g.tokens), g.members) for g in plan.groups]
        # every suffix batch mixes nothing but rows of one depth; a batch holds rows with and without a prefix somewhere
        assert all(all(plan.depth[i] == b.depth for i in b.rows) for b in plan.batches)
        c = plan.cost()
        assert c["ideal"] <= c["plan"] < c["depth"] < c["plain"], c
    else:
        assert plan.mode == "depth" and "sliding-window" in plan.reason, plan.reason
    assert sum("measurement plan: " + plan.mode in r.getMessage() for r in caplog.records) == 1
    ref = capture_last_token(model, tok, ids, [1, 2, 3])
    agree(ref, hf_last(model, ids, [1, 2, 3]), [{1, 2, 3}] * len(ids))
    agree(capture_planned(model, plan), ref, NEED)
    agree(capture_planned(model, plan_capture(model, tok, ids, NEED, prefix=False)), ref, NEED)

def test_mixed_prefix_lengths_in_one_batch(tok, ids):
    "One suffix batch holding two prefix groups of different lengths and a row without a prefix (the widest layout)."
    model = tiny("llama", tok)
    need = [{3}] * len(ids)
    plan = plan_capture(model, tok, ids, need, token_budget=None, costs=(10_000, 0))  # any forward costs 10k tokens: one batch
    assert plan.mode == "prefix"
    assert len(plan.batches) == 1 and len({g for g in plan.batches[0].groups}) >= 3, plan.batches
    assert len({len(plan.groups[g].tokens) for g in plan.batches[0].groups if g >= 0}) >= 2
    agree(capture_planned(model, plan), capture_last_token(model, tok, ids, [3]), need)

def test_wrappers_and_errors(tok, ids, caplog):
    model = tiny("qwen3", tok)
    plan = plan_capture(model, tok, ids, NEED)
    ref = capture_last_token(model, tok, ids, [1, 2, 3])
    calls = []
    def wrapped(**kw):
        calls.append(kw["input_ids"].shape); return model(**kw)
    with caplog.at_level(logging.INFO, logger="safety_compass.plan"):
        for _ in range(2): agree(capture_planned(model, plan, forward=wrapped), ref, NEED)
    assert calls and sum("a forward= wrapper" in r.getMessage() for r in caplog.records) == 1  # said once
    wrapped.early_exit = False  # a sharded model's wrapper: full forwards, the plain path
    n = len(calls)
    agree(capture_planned(model, plan, forward=wrapped), ref, NEED)
    assert len(calls) > n
    with pytest.raises(SafetyCompassError, match="exactly once"):
        capture_last_token(model, tok, ids, [1], batches=[[0, 1], [1]])

def _monitor(model, tok, layers):
    cfg = load_monitor_config({"name": "plan_test", "concepts": [
        {"name": n, "config_file": str(ROOT / f"configs/concepts/demo/{n}.yaml")} for n in ("refusal", "sycophancy", "deception")],
        "monitor": {"bootstrap_samples": 50, "causal_check": False, "include_cross_concept_cosines": True}})
    for c, L in zip(cfg.concepts, layers): c.best_layer = L
    return SafetyCompassMonitor.from_config(model, tok, cfg)

def rows_close(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert (x["concept"], x["layer"]) == (y["concept"], y["layer"])
        assert x["drifted"] == y["drifted"]
        for k, v in x.items():
            if isinstance(v, float) and k != "epoch": assert abs(v - y[k]) <= 1e-5 * max(1.0, abs(y[k])), (x["concept"], k, v, y[k])

@pytest.mark.parametrize("name", ["llama", "qwen3"])
def test_monitor_measure_equals_plain(name, tok, tmp_path):
    model = tiny(name, tok)
    mon = _monitor(model, tok, [1, 3, 2])  # three depths
    mon.setup(progress=False)
    assert mon.plan is not None and mon.plan.mode == "prefix" and sorted(mon.plan.classes) == [1, 2, 3]
    def both(step):
        planned = mon.measure(step)
        mon.use_plan = False
        try: plain = mon.measure(step)
        finally: mon.use_plan = True
        rows_close(planned, plain)
        return planned
    assert all(abs(r["cosine_to_baseline"] - 1) < 1e-5 for r in both(1))
    w = model.model.layers[0].mlp.down_proj.weight
    saved = w.detach().clone()
    with torch.no_grad(): w.add_(torch.randn_like(w, generator=torch.Generator().manual_seed(0)) * w.std() * 3)
    try:
        moved = both(2)
        assert all(r["cosine_to_baseline"] < 0.9999 for r in moved), [r["cosine_to_baseline"] for r in moved]
        mon.save_baselines(tmp_path)
        mon2 = _monitor(model, tok, [1, 3, 2])
        mon2.load_baselines(tmp_path)  # makes its own plan
        assert mon2.plan is not None and mon2.plan.mode == "prefix"
        rows_close(mon2.measure(3), moved)
    finally:
        with torch.no_grad(): w.copy_(saved)

def test_plan_through_peft_lora(tok, ids):
    "A LoRA-wrapped model (what the callback measures during a fine-tune) takes the prefix path and agrees."
    from peft import LoraConfig, get_peft_model
    model = get_peft_model(tiny("llama", tok), LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    plan = plan_capture(model, tok, ids, NEED)
    assert plan.mode == "prefix", plan.reason
    agree(capture_planned(model, plan), capture_last_token(model, tok, ids, [1, 2, 3]), NEED)

@pytest.mark.parametrize("name", sorted(LAST_TOKEN_ARCHS))
def test_last_block_at_last_token_only(name, tok, ids):
    """`last_token_only`: the last block's output projection and MLP run at each row's last token only. The restricted
    forward is right there and wrong elsewhere (so the restriction acts), and capture_last_token, which restricts the
    deepest block it runs, equals HF's own hidden states at every depth and the model's own logits."""
    model = tiny(name, tok)
    n = len(decoder_blocks(model))
    some = ids[:4]
    x = torch.full((len(some), max(map(len, some))), 0, dtype=torch.long)
    m = torch.zeros_like(x)
    for r, t in enumerate(some): x[r, :len(t)] = torch.tensor(t); m[r, :len(t)] = 1
    last = m.sum(1) - 1
    with torch.inference_mode():
        full = model(input_ids=x, attention_mask=m, output_hidden_states=True).hidden_states[n]
        with last_token_only(model, n - 1, last) as paths:
            cut = model(input_ids=x, attention_mask=m, output_hidden_states=True).hidden_states[n]
    assert len(paths) == 2 and paths[-1] == "mlp", paths
    rows = torch.arange(len(some))
    torch.testing.assert_close(cut[rows, last], full[rows, last], atol=1e-5, rtol=1e-5)
    assert (cut[rows, last - 1] - full[rows, last - 1]).abs().max() > 1e-3  # the other positions are not computed
    for d in range(1, n + 1):
        agree(capture_last_token(model, tok, ids, [d], token_budget=200), hf_last(model, ids, [d]), [{d}] * len(ids))
    got = capture_last_token(model, tok, ids, [1], logits=True, token_budget=200)["logits"]
    with torch.inference_mode():
        want = np.stack([model(input_ids=torch.tensor([t])).logits[0, -1].float().numpy() for t in ids])
    assert np.abs(got - want).max() / max(1.0, np.abs(want).max()) < 1e-5

def test_last_token_only_leaves_hooked_blocks_whole(tok, ids):
    """Anyone else's hook that could see the positions `last_token_only` does not compute turns it off: on the block or
    any module inside it, and for the last block on the final norm or the model body's output. Hooks elsewhere (an
    earlier block) and the position tracker do not; a hooked block still gives the right numbers, whole."""
    from safety_compass.capture import final_norm, model_body, track_positions
    model = tiny("llama", tok)
    blocks, last = decoder_blocks(model), torch.tensor([3])
    both = ["self_attn.o_proj", "mlp"]
    for where, block in [(blocks[2].mlp, 2), (blocks[2].mlp.down_proj, 2), (blocks[2], 2), (blocks[1].self_attn, 1),
                         (final_norm(model), 2)]:
        h = where.register_forward_hook(lambda mod, a, out: None)
        try:
            with last_token_only(model, block, last) as paths: assert paths == [], (type(where).__name__, paths)
            if where is blocks[2].mlp.down_proj:  # a position-dependent edit inside the MLP: the numbers stay HF's
                h.remove()
                h = where.register_forward_hook(lambda mod, a, out: out + torch.arange(out.shape[1])[None, :, None] * 0.1)
                agree(capture_last_token(model, tok, ids, [3], token_budget=200), hf_last(model, ids, [3]), [{3}] * len(ids))
        finally: h.remove()
    h = model_body(model).register_forward_hook(lambda mod, a, out: None)
    try:
        with last_token_only(model, 2, last) as paths: assert paths == []
        with last_token_only(model, 1, last) as paths: assert paths == both  # not the last block: the body's output is not its own
    finally: h.remove()
    h = blocks[0].mlp.register_forward_hook(lambda mod, a, out: None)
    try:
        with track_positions(model), last_token_only(model, 2, last) as paths: assert paths == both
    finally: h.remove()
    with last_token_only(model, -1, last) as paths: assert paths == []
    with last_token_only(model, 3, last) as paths: assert paths == []
    from safety_compass.capture import _hooked
    assert not _hooked(blocks[2])  # ours are removed on exit (transformers' own output-capturing hooks may remain)

@pytest.mark.parametrize("fresh", [True, False])
def test_step0_reuse_after_lora_wrap(fresh, tok):
    """setup(), then the model wrapped in a new LoRA (as a fine-tune does after setting up the monitor): with PEFT's
    default initialisation (lora_B = 0) the model computes exactly what it did, so measure(0) reuses setup()'s
    activations (no forward); with nonzero lora_B it must measure, and the directions have moved."""
    from peft import LoraConfig, get_peft_model
    model = tiny("llama", tok)
    mon = _monitor(model, tok, [1, 3, 2])
    mon.setup(progress=False)
    calls, orig = [], mon._measure_capture
    mon._measure_capture = lambda: calls.append(1) or orig()
    get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=fresh))
    rows = mon.measure(0)
    assert calls == ([] if fresh else [1])
    cos = [r["cosine_to_baseline"] for r in rows]
    assert all(abs(c - 1) < 1e-6 for c in cos) if fresh else any(c < 0.9999 for c in cos), cos
    mon.measure(0)  # reuse happens once: the next measurement always runs
    assert len(calls) == (1 if fresh else 2)

def test_step0_measures_after_a_sum_preserving_edit(tok):
    "Swapping two weights keeps every sum: the step-0 reuse must still see the edit and measure (found by a fresh-clone check)."
    model = tiny("llama", tok)
    mon = _monitor(model, tok, [1, 3, 2])
    mon.setup(progress=False)
    calls, orig = [], mon._measure_capture
    mon._measure_capture = lambda: calls.append(1) or orig()
    w = model.model.layers[0].mlp.down_proj.weight
    with torch.no_grad():
        a, b = w[0, 0].item(), w[0, 1].item()
        w[0, 0], w[0, 1] = b, a
    mon.measure(0)
    assert calls == [1]
