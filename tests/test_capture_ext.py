"""The hook extensions of `safety_compass.capture`: residual-stream writers, token positions under `generate`, and
per-token / span capture.

- Writers: on tiny random-config models of every supported architecture the writes recorded by `hook_writers` sum to
  `hidden_states[L]` for every `L < n`, and `ablate_direction` leaves no component along the ablated direction in any
  of them; on an untied Llama it equals weight orthogonalisation, while ablating block inputs only does not.
- Positions: a recording hook sees exactly the expected (row, absolute position) pairs under `generate` with left
  padding, with and without a KV cache, in a plain forward, and through a PEFT wrapper; padding is never touched.
- Per-token: `capture_tokens` / `iter_token_batches` equal single-sequence `output_hidden_states` and logits at every
  position, in right-padded batches; span means and last tokens equal the manual computation; batches are
  deterministic; two processes give the same results as one.
"""
import copy, inspect, os, sys

import numpy as np
import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM
from conftest import run_ranks

from safety_compass.capture import (TokenPositions, ablate_direction, capture_tokens, decoder_blocks, final_norm, hook_layers,
                                    hook_writers, iter_token_batches, model_body, num_layers, register_layer_hook,
                                    residual_writers, tokenize_prompts, track_positions)
from safety_compass.templates import token_batches
from safety_compass.core import SafetyCompassError
from safety_compass.pairs import conversation

COMMON = dict(num_hidden_layers=3, hidden_size=64, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128)
ARCHS = {
    "llama": COMMON, "qwen2": COMMON, "qwen3": {**COMMON, "head_dim": 16}, "gemma": {**COMMON, "head_dim": 16},
    "gemma2": {**COMMON, "head_dim": 16}, "gemma3_text": {**COMMON, "head_dim": 16}, "mistral": COMMON,
    "phi3": COMMON, "olmo": COMMON, "olmo2": COMMON,
    "gpt2": dict(n_layer=3, n_embd=64, n_head=4),
    "gpt_neox": dict(num_hidden_layers=3, hidden_size=64, num_attention_heads=4, intermediate_size=128),
    "gpt_neox_serial": dict(num_hidden_layers=3, hidden_size=64, num_attention_heads=4, intermediate_size=128,
                            use_parallel_residual=False),
    "opt": dict(num_hidden_layers=3, hidden_size=64, num_attention_heads=4, ffn_dim=128),
    "opt_project_in": dict(num_hidden_layers=3, hidden_size=64, num_attention_heads=4, ffn_dim=128, word_embed_proj_dim=32),
}
PROMPTS = [("You are a careful assistant.", "How do I fix a leaking pipe under the kitchen sink?"),
           (None, "Hi."),
           ("Answer in one word.", "What colour is the sky on a clear day?")]
_MODELS = {}

def tiny(name, vocab, **extra):
    "A randomly initialised 3-block model of architecture `name`, shared between tests unless `extra` is given."
    if not extra and (name, vocab) in _MODELS: return _MODELS[name, vocab]
    torch.manual_seed(0)
    model_type = name.split("_serial")[0].replace("opt_project_in", "opt")
    cfg = AutoConfig.for_model(model_type, vocab_size=vocab, **{**ARCHS[name], **extra})
    model = AutoModelForCausalLM.from_config(cfg).eval()
    if not extra: _MODELS[name, vocab] = model
    return model

@pytest.fixture(scope="module")
def tok(embedded):
    return embedded[1]

@pytest.fixture(scope="module")
def ids(tok):
    out = tokenize_prompts(tok, [conversation(s, u) for s, u in PROMPTS])
    assert len({len(x) for x in out}) == len(out)
    return out

def right_padded(ids, pad):
    width = max(map(len, ids))
    x = torch.full((len(ids), width), pad, dtype=torch.long); m = torch.zeros_like(x)
    for r, s in enumerate(ids): x[r, :len(s)] = torch.tensor(s); m[r, :len(s)] = 1
    return x, m

def left_padded(ids, pad):
    width = max(map(len, ids))
    x = torch.full((len(ids), width), pad, dtype=torch.long); m = torch.zeros_like(x)
    for r, s in enumerate(ids): x[r, width - len(s):] = torch.tensor(s); m[r, width - len(s):] = 1
    return x, m

def n_hooks(m): return sum(len(x._forward_hooks) + len(x._forward_pre_hooks) for x in m.modules())

# ---------------------------------------------------------------------------------------------------------------
# residual writers

def record_writes(model, x, mask):
    "One forward recording every write (name -> tensor (B, T, H)) and HF's hidden_states."
    writes = {}
    def rec(name):
        def fn(w): writes[name] = w.detach().double().clone()
        return fn
    with hook_writers(model, {n: rec(n) for n, _ in residual_writers(model)}):
        with torch.no_grad(): hs = model(input_ids=x, attention_mask=mask, output_hidden_states=True).hidden_states
    return writes, [h.double() for h in hs]

@pytest.mark.parametrize("name", ARCHS)
def test_writes_sum_to_the_residual_stream(name, tok, ids):
    model = tiny(name, len(tok))
    n = num_layers(model)
    names = [w for w, _ in residual_writers(model)]
    embeds = ["embed", "embed_pos"] if name in ("gpt2", "opt", "opt_project_in") else ["embed"]
    assert names == embeds + [f"blocks.{i}.{k}" for i in range(n) for k in ("attn", "mlp")]
    x, mask = right_padded(ids, tok.pad_token_id)
    writes, hs = record_writes(model, x, mask)
    assert set(writes) == set(names)
    total = sum(writes[e] for e in embeds)
    for L in range(n):
        if L: total = total + writes[f"blocks.{L-1}.attn"] + writes[f"blocks.{L-1}.mlp"]
        scale = max(1.0, float(hs[L].abs().max()))
        err = float((total - hs[L]).abs().max())
        assert err < 1e-5 * scale, (name, L, err, scale)
    # the last block's writes too: the final norm (and OPT's project_out) of the full sum is hidden_states[n]
    total = total + writes[f"blocks.{n-1}.attn"] + writes[f"blocks.{n-1}.mlp"]
    last = total.float()
    with torch.no_grad():
        if final_norm(model) is not None: last = final_norm(model)(last)
        if getattr(model_body(model), "project_out", None) is not None: last = model_body(model).project_out(last)
    assert float((last.double() - hs[n]).abs().max()) < 1e-5 * max(1.0, float(hs[n].abs().max())), name

@pytest.mark.parametrize("name", ARCHS)
def test_ablated_direction_is_gone_from_every_layer(name, tok, ids):
    model = tiny(name, len(tok))
    n = num_layers(model)
    x, mask = right_padded(ids, tok.pad_token_id)
    u = torch.randn(64, generator=torch.Generator().manual_seed(1), dtype=torch.float64); u /= u.norm()
    with torch.no_grad():
        base = model(input_ids=x, attention_mask=mask, output_hidden_states=True)
        with ablate_direction(model, u.numpy()):
            abl = model(input_ids=x, attention_mask=mask, output_hidden_states=True)
    real = mask.bool()  # padding is never touched (its state cannot reach a real token)
    for L in range(n):
        before = (base.hidden_states[L].double() @ u)[real].abs().max()
        after = (abl.hidden_states[L].double() @ u)[real].abs().max()
        assert after < 1e-4 and before > 10 * after, (name, L, float(before), float(after))
    assert (abl.logits - base.logits).abs().max() > 1e-4  # the ablation changes the output
    with torch.no_grad(): again = model(input_ids=x, attention_mask=mask).logits
    assert torch.equal(again, base.logits)  # and nothing remains after the context

def test_gemma_embedding_scale_is_in_the_write(tok, ids):
    "Gemma scales the token embedding by sqrt(hidden); the embed write is the scaled vector that block 0 reads."
    model = tiny("gemma", len(tok))
    x, mask = right_padded(ids, tok.pad_token_id)
    writes, hs = record_writes(model, x, mask)
    raw = model.model.embed_tokens.weight.detach().double()[x]
    assert torch.allclose(writes["embed"], raw * 64 ** 0.5, atol=1e-5) and torch.allclose(writes["embed"], hs[0], atol=1e-6)

def test_post_ln_opt_and_unknown_architectures_are_refused(tok):
    post_ln = tiny("opt", len(tok), do_layer_norm_before=False)
    with pytest.raises(SafetyCompassError, match="post-LN"): residual_writers(post_ln)
    torch.manual_seed(0)
    falcon = AutoModelForCausalLM.from_config(AutoConfig.for_model("falcon", vocab_size=64, num_hidden_layers=1,
                                                                   hidden_size=32, num_attention_heads=4))
    with pytest.raises(SafetyCompassError, match="model type 'falcon' is not supported"): residual_writers(falcon)
    llama = tiny("llama", len(tok))
    with pytest.raises(SafetyCompassError, match="unknown writer 'blocks.9.mlp'"):
        with hook_writers(llama, {"blocks.9.mlp": lambda w: w}): pass
    with pytest.raises(SafetyCompassError, match="positions: must be one of"):
        with hook_writers(llama, lambda w: w, positions="response"): pass
    with pytest.raises(SafetyCompassError, match="zero"):
        with ablate_direction(llama, np.zeros(64)): pass

def orthogonalised(model, u):
    "A copy of a Llama-like model with `u` projected out of W_E, every o_proj and every down_proj (untied LM head)."
    m = copy.deepcopy(model)
    with torch.no_grad():
        m.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())  # keep the unembedding as it was
        E = m.model.embed_tokens.weight; E -= (E @ u)[:, None] * u[None]
        for block in decoder_blocks(m):
            for W in (block.self_attn.o_proj.weight, block.mlp.down_proj.weight): W -= u[:, None] * (u @ W)[None]
    return m

def test_ablation_equals_weight_orthogonalisation(tok, ids):
    model = tiny("llama", len(tok))
    x, mask = right_padded(ids, tok.pad_token_id)
    u = torch.randn(64, generator=torch.Generator().manual_seed(2)); u /= u.norm()
    orth = orthogonalised(model, u)
    with torch.no_grad():
        ref = orth(input_ids=x, attention_mask=mask).logits
        with ablate_direction(model, u): writes = model(input_ids=x, attention_mask=mask).logits
        proj = lambda h: h - (h @ u)[..., None] * u
        with hook_layers(model, {L: proj for L in range(num_layers(model))}):
            inputs_only = model(input_ids=x, attention_mask=mask).logits
    real = mask.bool()
    assert (writes - ref)[real].abs().max() < 1e-5
    assert (inputs_only - ref)[real].abs().max() > 1e-4  # ablating block inputs only is not the same model

# ---------------------------------------------------------------------------------------------------------------
# token positions under generate

MARK = 1234.5

def touched(model, mode, run, layer=1, writers=False):
    """(row, absolute position) pairs where a hook with `positions=mode` replaced the state, seen by an observer
    registered after it: the replacement writes MARK into channel 0."""
    seen = set()
    def mark(h):
        h = h.clone(); h[..., 0] = MARK; return h
    def observe(h):
        cur = tracker.current
        hit = (h[..., 0] == MARK) if not writers else (h[..., 0] > MARK / 2)
        for b, t in hit.nonzero().tolist(): seen.add((b, int(cur.position[b, t])))
    with track_positions(model) as tracker:
        if writers:
            with hook_writers(model, {"embed": mark}, positions=mode), hook_layers(model, {layer: observe}): run()
        else:
            with hook_layers(model, {layer: mark}, positions=mode), hook_layers(model, {layer: observe}): run()
    return seen

PROMPT_LENS = (5, 2, 7)

@pytest.fixture(scope="module")
def gen_batch():
    rng = np.random.default_rng(0)
    seqs = [rng.integers(10, 500, size=k).tolist() for k in PROMPT_LENS]
    x, mask = left_padded(seqs, 0)
    return x, mask

def expected_sets(new_tokens):
    W = max(PROMPT_LENS)
    pads = {(b, p) for b, k in enumerate(PROMPT_LENS) for p in range(W - k)}
    prompt = {(b, p) for b, k in enumerate(PROMPT_LENS) for p in range(W - k, W)}
    # the last generated token is returned, never fed back: generated states exist at W .. W + new_tokens - 2
    generated = {(b, p) for b in range(len(PROMPT_LENS)) for p in range(W, W + new_tokens - 1)}
    return pads, prompt, generated

@pytest.mark.parametrize("cache", ["dynamic", "none", "static"])
@pytest.mark.parametrize("writers", [False, True])
def test_positions_under_generate(cache, writers, gen_batch):
    "Left-padded batch, greedy generate: dynamic KV cache, no cache (every step reruns all), static cache (4-D mask)."
    model = tiny("llama", 500)
    x, mask = gen_batch
    kw = {"dynamic": {}, "none": {"use_cache": False}, "static": {"cache_implementation": "static"}}[cache]
    def run():
        out = model.generate(input_ids=x, attention_mask=mask, max_new_tokens=4, min_new_tokens=4, do_sample=False,
                             pad_token_id=0, **kw)
        assert out.shape == (3, x.shape[1] + 4)
    pads, prompt, generated = expected_sets(4)
    got = {mode: touched(model, mode, run, writers=writers) for mode in ("all", "prompt", "generated")}
    assert got["prompt"] == prompt
    assert got["generated"] == generated
    assert got["all"] == prompt | generated
    assert not any(got[m] & pads for m in got)

def test_positions_in_a_plain_forward(gen_batch, tok, ids):
    model = tiny("llama", 500)
    x, mask = gen_batch
    run = lambda: model(input_ids=x, attention_mask=mask)
    pads, prompt, _ = expected_sets(4)
    assert touched(model, "prompt", run) == prompt == touched(model, "all", run)
    assert touched(model, "generated", run) == set()
    # right padding: pads at the end are never touched either
    big = tiny("llama", len(tok))
    xr, mr = right_padded(ids, tok.pad_token_id)
    want = {(b, p) for b, s in enumerate(ids) for p in range(len(s))}
    assert touched(big, "all", lambda: big(input_ids=xr, attention_mask=mr)) == want

def test_positions_through_peft_and_a_manual_decode_loop(gen_batch):
    from peft import LoraConfig, get_peft_model
    x, mask = gen_batch
    peft = get_peft_model(copy.deepcopy(tiny("llama", 500)), LoraConfig(r=2, target_modules=["q_proj"]))
    run = lambda: peft.generate(input_ids=x, attention_mask=mask, max_new_tokens=3, min_new_tokens=3, do_sample=False, pad_token_id=0)
    _, prompt, generated = expected_sets(3)
    assert touched(peft, "generated", run) == generated and touched(peft, "prompt", run) == prompt
    # a hand-written decode loop with a KV cache outside generate: the prefill is the prompt, later steps are generated
    model = tiny("llama", 500)
    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"  # transformers 5 / 4
    def loop():
        with torch.no_grad():
            out = model(input_ids=x, attention_mask=mask, use_cache=True)
            m = mask
            for _ in range(2):
                nxt = out.logits[:, -1].argmax(-1, keepdim=True)
                m = torch.cat([m, torch.ones_like(nxt)], 1)
                out = model(input_ids=nxt, attention_mask=m, use_cache=True, **{name: getattr(out, name)})
    _, prompt, generated = expected_sets(3)
    assert touched(model, "generated", loop) == generated and touched(model, "prompt", loop) == prompt

@pytest.mark.parametrize("mode", ["prompt", "generated", "all"])
def test_cache_does_not_change_position_steering(mode, gen_batch):
    "Steering at prompt or generated tokens gives the same continuation with and without a KV cache."
    model = tiny("llama", 500)
    x, mask = gen_batch
    v = torch.randn(64, generator=torch.Generator().manual_seed(3)) * 2.0
    outs = {}
    for uc in (True, False):
        with hook_layers(model, {1: lambda h: h + v}, positions=mode):
            outs[uc] = model.generate(input_ids=x, attention_mask=mask, max_new_tokens=6, do_sample=False, use_cache=uc,
                                      pad_token_id=0, output_scores=True, return_dict_in_generate=True)
    assert torch.equal(outs[True].sequences, outs[False].sequences)
    for a, b in zip(outs[True].scores, outs[False].scores): assert (a - b).abs().max() < 1e-4
    plain = model.generate(input_ids=x, attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0)
    if mode != "generated": assert not torch.equal(plain, outs[True].sequences)  # the steering did something

def test_prompt_ablation_under_generate_reaches_only_prompt_positions(gen_batch):
    model = tiny("llama", 500)
    x, mask = gen_batch
    u = torch.randn(64, generator=torch.Generator().manual_seed(4)); u /= u.norm()
    proj = {}
    def read(h):
        cur = tracker.current
        for b, t in cur.real.nonzero().tolist(): proj[(b, int(cur.position[b, t]))] = float((h[b, t] @ u).abs())
    with ablate_direction(model, u, positions="prompt") as tracker, hook_layers(model, {2: read}):
        model.generate(input_ids=x, attention_mask=mask, max_new_tokens=4, min_new_tokens=4, do_sample=False, pad_token_id=0)
    _, prompt, generated = expected_sets(4)
    assert set(proj) == prompt | generated
    assert max(proj[k] for k in prompt) < 1e-5 and min(proj[k] for k in generated) > 1e-4

def test_trackers_and_generate_are_restored(gen_batch):
    model = tiny("llama", 500)
    before = n_hooks(model)
    assert "generate" not in vars(model)
    h1 = register_layer_hook(model, 1, lambda h: h, positions="prompt")
    with hook_writers(model, lambda w: None, positions="generated"):
        assert "generate" in vars(model) and n_hooks(model) > before
    h1.remove(); h1.remove()  # idempotent
    with track_positions(model):
        twin = copy.deepcopy(model)  # a copy made while tracked generates with its own weights
    with torch.no_grad(): twin.lm_head.weight.mul_(-1)
    x, mask = gen_batch
    kw = dict(input_ids=x, attention_mask=mask, max_new_tokens=2, do_sample=False, pad_token_id=0)
    assert not torch.equal(twin.generate(**kw), model.generate(**kw))
    assert "generate" not in vars(model) and n_hooks(model) == before
    with pytest.raises(SafetyCompassError, match="positions: must be one of"):
        register_layer_hook(model, 1, lambda h: h, positions="reply")
    assert "generate" not in vars(model) and n_hooks(model) == before

def test_token_positions_callable_and_select():
    pos = torch.tensor([[0, 1, 2, 3], [0, 1, 2, 3]])
    real = torch.tensor([[False, True, True, True], [True, True, True, True]])
    tp = TokenPositions(pos, real, prompt_end=3, generating=True)
    assert tp.select("prompt").tolist() == [[False, True, True, False], [True, True, True, False]]
    assert tp.select("generated").tolist() == [[False, False, False, True], [False, False, False, True]]
    last_prompt_and_after = lambda t: t.position >= t.prompt_end - 1
    assert tp.select(last_prompt_and_after).tolist() == [[False, False, True, True], [False, False, True, True]]
    assert tp.select(lambda t: torch.ones_like(t.real)).tolist() == real.tolist()  # padding never selected

# ---------------------------------------------------------------------------------------------------------------
# per-token and span capture

def reference(model, seq):
    with torch.no_grad(): out = model(torch.tensor([seq]), output_hidden_states=True)
    return [h[0].double() for h in out.hidden_states], torch.log_softmax(out.logits[0].double(), -1)

def check_per_token(model, tok, seqs, layers, budget, tol):
    got = capture_tokens(model, tok, seqs, layers, logits=True, token_budget=budget)
    assert len(got) == len(seqs)
    for i, s in enumerate(seqs):
        hs, lp = reference(model, s)
        assert sorted(got[i], key=str) == sorted([*layers, "logits"], key=str)
        for L in layers:
            assert got[i][L].shape == (len(s), hs[L].shape[-1]) and got[i][L].dtype == np.float32
            scale = max(1.0, float(hs[L].abs().max()))
            assert np.abs(got[i][L] - hs[L].numpy()).max() < tol * scale, (i, L)
        ours = torch.log_softmax(torch.tensor(got[i]["logits"], dtype=torch.float64), -1)
        assert (ours - lp).abs().max() < tol, i
    return got

@pytest.mark.parametrize("name", ["llama", "gpt2", "opt_project_in", "gemma2"])
def test_per_token_equals_single_sequence_forward(name, tok, ids):
    model = tiny(name, len(tok))
    n = num_layers(model)
    seqs = ids + [ids[1] + ids[0][:7]]
    width = max(map(len, seqs))
    batches = token_batches([len(s) for s in seqs], 3 * width)
    assert max(len(b) for b in batches) > 1  # right-padded batches of different lengths
    check_per_token(model, tok, seqs, range(n + 1), 3 * width, 1e-5)

def test_per_token_on_the_embedded_model(embedded, ids):
    model, tok = embedded
    check_per_token(model, tok, ids, [0, 12, 30], None, 1e-4)

def test_spans_mean_and_last(tok, ids):
    model = tiny("llama", len(tok))
    spans = [(3, len(ids[0])), (0, 1), (len(ids[2]) - 4, len(ids[2]) - 1)]
    full = capture_tokens(model, tok, ids, [0, 2, 3], logits=True)
    both = capture_tokens(model, tok, ids, [0, 2, 3], logits=True, reduce=("mean", "last"), spans=spans, token_budget=60)
    mean = capture_tokens(model, tok, ids, [2], reduce="mean", spans=spans)
    last = capture_tokens(model, tok, ids, [2], reduce="last", spans=spans, batch_size=1)
    assert set(both) == {"mean", "last"} and sorted(mean) == [2]
    for key in (0, 2, 3, "logits"):
        want_mean = np.stack([full[i][key][s:e].astype(np.float64).mean(0) for i, (s, e) in enumerate(spans)])
        want_last = np.stack([full[i][key][e - 1] for i, (s, e) in enumerate(spans)])
        assert both["mean"][key].shape == want_mean.shape
        assert np.abs(both["mean"][key] - want_mean).max() < 1e-5 * max(1, np.abs(want_mean).max())
        assert np.abs(both["last"][key] - want_last).max() < 1e-5 * max(1, np.abs(want_last).max())
    assert np.abs(mean[2] - both["mean"][2]).max() < 1e-6 and np.abs(last[2] - both["last"][2]).max() < 1e-5
    whole = capture_tokens(model, tok, ids, [2], reduce="last")  # no spans: the whole sequence
    assert np.abs(whole[2] - np.stack([f[2][-1] for f in full])).max() < 1e-5

def test_iter_token_batches_is_deterministic_and_within_budget(tok, ids):
    model = tiny("gpt2", len(tok))
    seqs = ids * 3
    runs = [list(iter_token_batches(model, tok, seqs, [1, 3], logits=True, token_budget=100)) for _ in range(2)]
    assert [b.index for b in runs[0]] == [b.index for b in runs[1]]
    assert sorted(i for b in runs[0] for i in b.index) == list(range(len(seqs)))
    for a, b in zip(*runs):
        assert a.input_ids.shape[0] * a.input_ids.shape[1] <= 100 or len(a.index) == 1
        assert torch.equal(a.attention_mask, b.attention_mask) and torch.equal(a.logits, b.logits)
        assert a["hidden"][3].shape == (*a.input_ids.shape, 64) and a.logits.shape == (*a.input_ids.shape, len(tok))
        assert a.lengths == [len(seqs[i]) for i in a.index]
        for r, i in enumerate(a.index): assert a.input_ids[r, :len(seqs[i])].tolist() == seqs[i]
    # hidden only: the forward stops after the deepest layer, the LM head never runs
    ran = []
    h = model.lm_head.register_forward_hook(lambda m, a, o: ran.append(1))
    try: assert all(b.logits is None for b in iter_token_batches(model, tok, seqs, [2], logits=False))
    finally: h.remove()
    assert ran == []

def test_two_forwards_batch_by_batch_with_an_adapter(tok, ids):
    "The diffing pattern: the same batches with a LoRA adapter disabled and enabled, compared batch by batch."
    from peft import LoraConfig, get_peft_model
    base = tiny("llama", len(tok))
    peft = get_peft_model(copy.deepcopy(base), LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    def without_adapter(**kw):
        with peft.disable_adapter(): return peft(**kw)
    pairs = zip(iter_token_batches(peft, tok, ids, [2], forward=without_adapter, token_budget=80),
                iter_token_batches(peft, tok, ids, [2], token_budget=80))
    kls = []
    for a, b in pairs:
        assert a.index == b.index
        ref = base(input_ids=a.input_ids, attention_mask=a.attention_mask).logits
        assert (a.logits - ref).abs().max() < 1e-5  # disabled adapter = the base model
        lp, lq = torch.log_softmax(a.logits.double(), -1), torch.log_softmax(b.logits.double(), -1)
        kl = (lp.exp() * (lp - lq)).sum(-1)[a.attention_mask.bool()]
        kls.append(kl)
    assert torch.cat(kls).min() >= -1e-9 and torch.cat(kls).max() > 1e-6

def test_capture_tokens_errors(tok, ids):
    model = tiny("llama", len(tok))
    with pytest.raises(SafetyCompassError, match=r"spans\[1\]"): capture_tokens(model, tok, ids, [1], reduce="mean", spans=[(0, 2), (0, 99), (0, 1)])
    with pytest.raises(SafetyCompassError, match=r"spans\[0\]"): capture_tokens(model, tok, ids, [1], reduce="mean", spans=[(2, 2), (0, 1), (0, 1)])
    with pytest.raises(SafetyCompassError, match="3 sequences"): capture_tokens(model, tok, ids, [1], reduce="last", spans=[(0, 1)])
    with pytest.raises(SafetyCompassError, match="without reduce"): capture_tokens(model, tok, ids, [1], spans=[(0, 1)] * 3)
    with pytest.raises(SafetyCompassError, match="reduce: must be one of"): capture_tokens(model, tok, ids, [1], reduce="max")
    with pytest.raises(SafetyCompassError, match=r"ids\[1\]: empty"): capture_tokens(model, tok, [ids[0], []], [1])
    with pytest.raises(SafetyCompassError, match="layer 4 out of range"): capture_tokens(model, tok, ids, [4])
    assert capture_tokens(model, tok, [], [1]) == []
    assert capture_tokens(model, tok, [], [1], reduce="mean")[1].shape == (0, 64)

# ---------------------------------------------------------------------------------------------------------------
# two processes (gloo): the batches are shared, every rank gets every result

WORKER = r'''
import sys, types, numpy as np, torch
from transformers import AutoConfig, AutoModelForCausalLM
from safety_compass.capture import capture_tokens, iter_token_batches, init_distributed, dist_info
out = sys.argv[1]
init_distributed()                                           # the launcher's environment, as under torchrun
rank, world = dist_info()
torch.manual_seed(0)
model = AutoModelForCausalLM.from_config(AutoConfig.for_model("llama", vocab_size=300, num_hidden_layers=2, hidden_size=32,
    num_attention_heads=4, num_key_value_heads=2, intermediate_size=64)).eval()
tok = types.SimpleNamespace(pad_token_id=0, eos_token_id=1)
rng = np.random.default_rng(0)
ids = [rng.integers(2, 300, size=int(k)).tolist() for k in rng.integers(3, 12, size=9)]
per = capture_tokens(model, tok, ids, [1, 2], logits=True, token_budget=30)
red = capture_tokens(model, tok, ids, [2], reduce=("mean", "last"), spans=[(1, len(x)) for x in ids], token_budget=30)
seen = sorted(i for b in iter_token_batches(model, tok, ids, [2], logits=False, token_budget=30, distributed=True) for i in b.index)
if rank == 0 or world == 1:
    np.savez(out, **{f"p{i}_{k}": v for i, d in enumerate(per) for k, v in d.items()},
             mean=red["mean"][2], last=red["last"][2], seen=np.array(seen))
if world > 1:
    np.save(out + f".seen{rank}.npy", np.array(seen))
'''   # run_ranks adds the ending: end_distributed(), then os._exit(0)

def test_two_processes_match_one(tmp_path):
    run_ranks(tmp_path, WORKER, 1, tmp_path / "one.npz", timeout=600)
    run_ranks(tmp_path, WORKER, 2, tmp_path / "two.npz", timeout=600)
    a, b = np.load(tmp_path / "one.npz"), np.load(tmp_path / "two.npz")
    assert sorted(a.files) == sorted(b.files)
    for k in a.files:
        if k != "seen": assert np.abs(a[k] - b[k]).max() < 1e-5, k
    shares = [np.load(tmp_path / f"two.npz.seen{r}.npy").tolist() for r in range(2)]
    assert sorted(shares[0] + shares[1]) == list(range(9)) and shares[0] and shares[1]  # each rank saw its share only
