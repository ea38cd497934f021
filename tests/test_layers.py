"""The model head (nbs/00c_layers.ipynb): every read of a residual state as next-token probabilities goes through
`layers.next_token_logits`, which applies the model's own logit transform after the LM head.

Tiny random-config models of the architectures that transform their logits (Gemma-2 and Gemma-3 text soft-cap them,
Cohere multiplies by `logit_scale`, Granite divides by `logits_scaling`) and Llama as the control without one: the
head's log-probabilities of the final residual equal `log_softmax` of the model's own logits; `diff.logit_lens` of the
last pre-norm residual is the model's own next-token distribution; and outside testing's case 12 (TransformerLens#828,
unsloth-zoo#593: Gemma-2's soft-cap skipped when the lens rebuilds the head) on a tiny Gemma-2 with logits well above
its cap and a LoRA: per-token KL and the lens both agree with the model's own soft-capped logits."""
import copy

import numpy as np
import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoConfig, AutoModelForCausalLM

from safety_compass.core import SafetyCompassError
from safety_compass.layers import (final_norm, head_transform, lm_head, next_token_logits, next_token_logprobs,
                                   next_token_probs, lora_modules)
from safety_compass import diff as D

COMMON = dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128)
ARCHS = {   # model type -> (config extras, the transform the head must apply)
    "llama": ({}, None),
    "gemma2": ({"head_dim": 16, "final_logit_softcapping": 5.0}, ("softcap", 5.0)),
    "gemma3_text": ({"head_dim": 16, "final_logit_softcapping": 5.0}, ("softcap", 5.0)),
    "cohere": ({"logit_scale": 0.5}, ("multiply", 0.5)),
    "granite": ({"logits_scaling": 4.0}, ("divide", 4.0)),
    # the same transforms in other forwards of the table
    "gemma4_text": ({"head_dim": 16, "final_logit_softcapping": 5.0}, ("softcap", 5.0)),
    "vaultgemma": ({"head_dim": 16, "final_logit_softcapping": 5.0}, ("softcap", 5.0)),
    "cohere2": ({"logit_scale": 0.5}, ("multiply", 0.5)),
    "granitemoe": ({"logits_scaling": 4.0, "num_local_experts": 2, "num_experts_per_tok": 1}, ("divide", 4.0)),
}

@pytest.fixture(scope="module")
def tok(embedded): return embedded[1]

def tiny(name, tok, seed=0, **extra):
    """A seeded random 2-block model of `name` with the embedded tokenizer's vocabulary and trained-size weights (so the
    logits reach well beyond a soft-cap of 5)."""
    cfg = AutoConfig.for_model(name, vocab_size=len(tok), pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                               eos_token_id=tok.eos_token_id, **{**COMMON, **ARCHS[name][0], **extra})
    torch.manual_seed(seed)
    m = AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():
        for n, p in m.named_parameters():
            if p.dim() >= 2: p.normal_(0, 0.2 if "emb" in n else 0.08)
        if name.startswith("gemma"): final_norm(m).weight.fill_(3.0)   # Gemma norms scale by (1 + w): logits ~20-40
    return m

def prompt_ids(tok, text="Tell me about cats"):
    return tok(tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True),
               add_special_tokens=False)["input_ids"]

def own_forward(model, ids):
    "(the final norm's input at every position, the model's own output: hidden_states and logits)."
    box = {}
    h = final_norm(model).register_forward_pre_hook(lambda mod, a: box.__setitem__("x", a[0][0].detach().clone()))
    try:
        with torch.no_grad(): out = model(input_ids=torch.tensor([ids]), output_hidden_states=True)
    finally: h.remove()
    return box["x"], out

@pytest.mark.parametrize("name", ARCHS)
def test_head_is_the_models_own_output(name, tok):
    model = tiny(name, tok)
    assert head_transform(model) == ARCHS[name][1]
    pre, out = own_forward(model, prompt_ids(tok))
    own = torch.log_softmax(out.logits[0].float(), -1)
    with torch.no_grad():
        torch.testing.assert_close(next_token_logprobs(model, pre), own, atol=1e-5, rtol=0)
        torch.testing.assert_close(next_token_logprobs(model, out.hidden_states[-1][0], normed=True), own, atol=1e-5, rtol=0)
        torch.testing.assert_close(next_token_logits(model, pre), out.logits[0], atol=1e-4, rtol=1e-5)
    if ARCHS[name][1] is not None:   # the transform matters here: without it the distribution is another one
        with torch.no_grad(): bare = torch.log_softmax(lm_head(model)(final_norm(model)(pre)).float(), -1)
        assert float((bare - own).abs().max()) > 0.1

@pytest.mark.parametrize("name", ARCHS)
def test_logit_lens_at_the_last_layer_is_the_models_output(name, tok):
    model = tiny(name, tok)
    ids = prompt_ids(tok)
    pre, out = own_forward(model, ids)
    pair = D.ModelPair.from_models(model, model, tok)
    probs, top = D.logit_lens(pair, pre[-1].numpy(), top_k=5)
    own = torch.softmax(out.logits[0, -1].double(), -1).numpy()
    np.testing.assert_allclose(probs[0], own[top[0]], atol=1e-5)
    assert list(top[0]) == list(np.argsort(-own, kind="stable")[:5])

def test_gemma2_softcap_kl_and_lens(tok):
    "Outside testing's case 12: token KL and the lens on a LoRA'd tiny Gemma-2 match the model's own soft-capped logits."
    pm = get_peft_model(tiny("gemma2", tok), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]))
    torch.manual_seed(1)
    with torch.no_grad():
        for e in lora_modules(pm): e.module.lora_B["default"].weight.normal_(0, 0.3)
    pm.eval()
    ids = [prompt_ids(tok, q) + tok("Sure.", add_special_tokens=False)["input_ids"] for q in ("Hi", "Tell me about cats")]
    pair = D.ModelPair.from_peft(pm, tok)
    td = D.token_diff(pair, ids, kl=True)
    for i, x in enumerate(ids):
        t = torch.tensor([x])
        with torch.no_grad():
            lf = torch.log_softmax(pm(input_ids=t).logits[0].double(), -1)
            with pm.disable_adapter(): lb = torch.log_softmax(pm(input_ids=t).logits[0].double(), -1)
        ref = (lf.exp() * (lf - lb)).sum(-1)[:-1].numpy()   # the prediction at p scores token p + 1
        got = td.kl[td.seq == i][np.argsort(td.pos[td.seq == i])][1:]
        np.testing.assert_allclose(got, ref, atol=1e-4)
    pre, out = own_forward(pm, ids[0])
    own = torch.softmax(out.logits[0, -1].double(), -1).numpy()
    probs, top = D.logit_lens(pair, pre[-1].numpy(), top_k=1)
    assert abs(float(probs[0, 0]) - own[int(top[0, 0])]) < 1e-4, (float(probs[0, 0]), own[int(top[0, 0])])
    assert own.max() < 0.5   # the soft-cap flattens this model's distribution: the case is not vacuous

def test_unknown_transform_is_refused(tok):
    model = tiny("llama", tok)
    model.config.final_logit_softcapping = 30.0   # a llama with a soft-cap it never applies: not ours to guess
    with pytest.raises(SafetyCompassError, match="final_logit_softcapping=30.0"): next_token_probs(model, torch.zeros(64))

def test_gemma3_conditional_generation_follows_its_forward(tok):
    """`Gemma3ForConditionalGeneration` (model type `gemma3`) carries `final_logit_softcapping` in its text config, but its
    forward in transformers 5 does not apply it (only the text-only `Gemma3ForCausalLM` does): the head follows the
    forward, and this test fails on a transformers whose forward differs."""
    text = {**COMMON, "vocab_size": len(tok), "head_dim": 16, "final_logit_softcapping": 5.0}
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=28, patch_size=14)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model("gemma3", text_config=text, vision_config=vision)).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.dim() >= 2: p.normal_(0, 0.2 if "emb" in n else 0.08)
        final_norm(model).weight.fill_(3.0)
    assert head_transform(model) is None
    pre, out = own_forward(model, prompt_ids(tok))
    with torch.no_grad():
        torch.testing.assert_close(next_token_logprobs(model, pre), torch.log_softmax(out.logits[0].float(), -1), atol=1e-5, rtol=0)
