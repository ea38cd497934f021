"""Layer L is `output_hidden_states[L]` and `logits=True` is the model's own output, on every supported architecture.

Tiny random-config models (3 blocks, hidden 64, the embedded SmolLM2 tokenizer's vocabulary) of each architecture
family; prompts of different lengths share one right-padded batch and are compared with unpadded single-prompt
forwards of the same model. What each family needs from `safety_compass.capture`:

- llama, qwen2, qwen3, mistral, phi3, olmo, olmo2: rotary positions inside the blocks; layer 0 is the token embedding.
- gemma, gemma2: the embedding is scaled by sqrt(hidden) inside the model body, before block 0, so a pre-hook on
  block 0 sees it; gemma2 also soft-caps its logits behind the LM head (`final_logit_softcapping`).
- gpt2: learned absolute position embeddings added before block 0 (`wpe`); final norm `transformer.ln_f`.
- gpt_neox: blocks under `gpt_neox.layers`, final norm `gpt_neox.final_layer_norm`, LM head `embed_out`.
- opt: learned positions (offset 2) before block 0; OPT-350m style `project_in`/`project_out` with no final norm, so
  layer n lives in the `word_embed_proj_dim` space; the causal LM calls `model.decoder` directly.
"""
import numpy as np
import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from safety_compass.capture import (add_to_layer, capture_last_token, decoder_blocks, hook_layers, num_layers,
                                    register_layer_hook, tokenize_prompts)
from safety_compass.pairs import conversation

COMMON = dict(num_hidden_layers=3, hidden_size=64, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128)
ARCHS = {
    "llama": COMMON,
    "qwen2": COMMON,
    "qwen3": {**COMMON, "head_dim": 16},
    "gemma": {**COMMON, "head_dim": 16},
    "gemma2": {**COMMON, "head_dim": 16},
    "mistral": COMMON,
    "phi3": COMMON,
    "olmo": COMMON,
    "olmo2": COMMON,
    "gpt2": dict(n_layer=3, n_embd=64, n_head=4),
    "gpt_neox": dict(num_hidden_layers=3, hidden_size=64, num_attention_heads=4, intermediate_size=128),
    "opt": dict(num_hidden_layers=3, hidden_size=64, num_attention_heads=4, ffn_dim=128),
    "opt_project": dict(num_hidden_layers=3, hidden_size=64, num_attention_heads=4, ffn_dim=128,
                        word_embed_proj_dim=32, do_layer_norm_before=False),
}
PROMPTS = [("You are a careful assistant.", "How do I fix a leaking pipe under the kitchen sink?"),
           (None, "Hi."),
           ("Answer in one word.", "What colour is the sky on a clear day?")]

@pytest.fixture(scope="module")
def tok(embedded):
    return embedded[1]

@pytest.fixture(scope="module")
def ids(tok):
    out = tokenize_prompts(tok, [conversation(s, u) for s, u in PROMPTS])
    assert len({len(x) for x in out}) == len(out)  # different lengths: the batch is right-padded
    return out

_MODELS = {}

def tiny(name, tok, cached=True, **extra):
    "A randomly initialised 3-block model of architecture `name` (shared between tests unless `cached=False` or `extra`)."
    if cached and not extra and name in _MODELS: return _MODELS[name]
    torch.manual_seed(0)
    model_type = "opt" if name.startswith("opt") else name
    cfg = AutoConfig.for_model(model_type, vocab_size=len(tok), **{**ARCHS[name], **extra})
    model = AutoModelForCausalLM.from_config(cfg).eval()
    if cached and not extra: _MODELS[name] = model
    return model

def reference(model, x):
    "Unpadded single-prompt forward: (hidden_states at the last token per layer, last-token logits)."
    with torch.no_grad(): out = model(torch.tensor([x]), output_hidden_states=True)
    return [h[0, -1].double().numpy() for h in out.hidden_states], out.logits[0, -1].double()

@pytest.mark.parametrize("name", ARCHS)
def test_every_layer_is_hidden_states(name, tok, ids):
    model = tiny(name, tok)
    n = num_layers(model)
    assert n == 3
    ours = capture_last_token(model, tok, ids, range(n + 1), token_budget=None)
    for i, x in enumerate(ids):
        hs, _ = reference(model, x)
        assert len(hs) == n + 1
        for L in range(n + 1):
            assert ours[L][i].shape == hs[L].shape, (name, L)
            assert np.abs(ours[L][i] - hs[L]).max() < 1e-5, (name, i, L, np.abs(ours[L][i] - hs[L]).max())
    if name.startswith(("gpt2", "opt")):  # layer 0 carries the learned position embedding, not the token embedding only
        emb = model.get_input_embeddings().weight[ids[0][-1]].detach().numpy()
        if name == "opt_project": emb = model.model.decoder.project_in.weight.detach().numpy() @ emb
        assert np.abs(ours[0][0] - emb).max() > 1e-3

@pytest.mark.parametrize("name", ARCHS)
def test_early_exit_reads_before_the_block_runs(name, tok, ids):
    model = tiny(name, tok)
    ran = []
    handles = [b.register_forward_hook(lambda m, a, o, k=k: ran.append(k)) for k, b in enumerate(decoder_blocks(model))]
    handles.append(model.get_output_embeddings().register_forward_hook(lambda m, a, o: ran.append("head")))
    try:
        for L, want in ((0, []), (2, [0, 1]), (3, [0, 1, 2])):
            ran.clear()
            got = capture_last_token(model, tok, ids[:1], [L])[L]
            assert ran == want, (name, L, ran)
            assert np.abs(got[0] - reference(model, ids[0])[0][L]).max() < 1e-5
    finally:
        for h in handles: h.remove()

@pytest.mark.parametrize("name", ARCHS)
def test_replacement_is_the_layer_state(name, tok, ids):
    "A vector added at layer L moves hidden_states[L] by exactly that vector and reaches every later layer and the logits."
    model = tiny(name, tok)
    n = num_layers(model)
    base = capture_last_token(model, tok, ids, range(n + 1), logits=True)
    for L in range(n + 1):
        v = np.random.default_rng(L).normal(size=base[L].shape[1]).astype(np.float32)
        with add_to_layer(model, L, v): steered = capture_last_token(model, tok, ids, range(n + 1), logits=True)
        assert np.abs(steered[L] - base[L] - v).max() < 1e-4, (name, L)
        for later in range(L + 1, n + 1): assert np.abs(steered[later] - base[later]).max() > 1e-3, (name, L, later)
        assert np.abs(steered["logits"] - base["logits"]).max() > 1e-4, (name, L)
        for k in range(L): assert np.abs(steered[k] - base[k]).max() == 0, (name, L, k)
    after = capture_last_token(model, tok, ids, range(n + 1), logits=True)
    for k in base: assert np.array_equal(after[k], base[k]), k

@pytest.mark.parametrize("name", ["llama", "gpt2", "gpt_neox", "opt_project", "gemma2"])
def test_logits_are_the_models_own(name, tok, ids):
    model = tiny(name, tok)
    got = capture_last_token(model, tok, ids, [1], logits=True, token_budget=None)
    assert got["logits"].shape == (len(ids), model.config.vocab_size) and got["logits"].dtype == np.float32
    for i, x in enumerate(ids):
        ref = reference(model, x)[1]
        ours = torch.log_softmax(torch.tensor(got["logits"][i], dtype=torch.float64), -1)
        assert (ours - torch.log_softmax(ref, -1)).abs().max() < 1e-5, (name, i)

def test_gemma2_softcapped_logits(tok, ids):
    "Random weights scaled so raw logits reach the hundreds: `hidden @ W_U` would be wrong, the model's own output is not."
    model = tiny("gemma2", tok, final_logit_softcapping=30.0).double()  # float64: 1e-5 measures the method, not rounding
    with torch.no_grad(): model.model.norm.weight.fill_(300.0)  # Gemma norms scale by (1 + w)
    n = num_layers(model)
    got = capture_last_token(model, tok, ids, [n], logits=True, token_budget=None)
    for i, x in enumerate(ids):
        ref = reference(model, x)[1]
        ours = torch.log_softmax(torch.tensor(got["logits"][i], dtype=torch.float64), -1)
        assert (ours - torch.log_softmax(ref, -1)).abs().max() < 1e-5, i
        raw = torch.tensor(got[n][i], dtype=torch.float64) @ model.lm_head.weight.detach().T
        assert raw.abs().max() > 100 and np.abs(got["logits"][i]).max() <= 30
        assert (torch.log_softmax(raw, -1) - torch.log_softmax(ref, -1)).abs().max() > 1.0  # the cap matters here

def test_block_called_with_keyword_hidden_states(tok, ids):
    "A block called as block(hidden_states=...) is read and replaced through the keyword."
    model = tiny("llama", tok, cached=False)
    block = decoder_blocks(model)[1]
    class KeywordCall(torch.nn.Module):  # stands in for an architecture that passes the residual stream by keyword
        def __init__(self): super().__init__(); self.inner = block
        def forward(self, hidden_states, **kw): return self.inner(hidden_states, **kw)
        def __call__(self, *args, **kw):
            assert len(args) == 1
            return super().__call__(hidden_states=args[0], **kw)
    base = capture_last_token(model, tok, ids, [1, 2])
    decoder_blocks(model)[1] = KeywordCall()
    v = np.ones(64, dtype=np.float32)
    got = capture_last_token(model, tok, ids, [1, 2])
    with add_to_layer(model, 1, v): steered = capture_last_token(model, tok, ids, [1, 2])
    for L in (1, 2): assert np.abs(got[L] - base[L]).max() < 1e-6
    assert np.abs(steered[1] - base[1] - v).max() < 1e-5 and np.abs(steered[2] - base[2]).max() > 1e-3

def test_register_layer_hook_persists_until_removed(tok, ids):
    model = tiny("gpt2", tok)
    seen = []
    h = register_layer_hook(model, 0, lambda x: seen.append(x.shape))
    try:
        with torch.no_grad(): model(torch.tensor([ids[0]])); model(torch.tensor([ids[1]]))
    finally: h.remove()
    with torch.no_grad(): model(torch.tensor([ids[0]]))
    assert seen == [(1, len(ids[0]), 64), (1, len(ids[1]), 64)]
    with hook_layers(model, {3: lambda x: seen.append("n")}): model(torch.tensor([ids[0]]))
    assert seen[-1] == "n"

def test_embedded_smollm2(embedded, ids):
    "The embedded SmolLM2 (30-layer Llama, tied embeddings) at a few layers, logits in the same forward."
    model, tok = embedded
    layers = [0, 1, 15, 29, 30]
    got = capture_last_token(model, tok, ids, layers, logits=True, token_budget=None)
    for i, x in enumerate(ids):
        hs, ref = reference(model, x)
        for L in layers:
            assert np.abs(got[L][i] - hs[L]).max() < 1e-4 * max(1.0, np.abs(hs[L]).max()), (i, L)
        ours = torch.log_softmax(torch.tensor(got["logits"][i], dtype=torch.float64), -1)
        assert (ours - torch.log_softmax(ref, -1)).abs().max() < 1e-4, i
