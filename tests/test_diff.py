"""Model diffing (nbs/13_diff.ipynb): base vs fine-tuned on one model copy.

Exactness on the embedded model (a disabled adapter is the base model, a fresh LoRA and a model against itself give KL
0, padding adds nothing, a LoRA on late blocks leaves earlier layers bit-identical, amplification is `W + alpha·ΔW`,
the weight view's norms are the merged weights' norms), statistics with a planted truth (PCA), the run-directory
format end to end on a tiny model trained by `run_finetune`, two processes against one, and (slow) the code organism.
"""
import copy, dataclasses, json, os, socket, subprocess, sys
from pathlib import Path

import numpy as np
import pytest
import torch
from peft import LoraConfig, get_peft_model

from conftest import ROOT, run_ranks
from safety_compass.core import SafetyCompassError
from safety_compass import diff as D
from safety_compass.layers import lora_modules

TEXTS = ["def add(a, b):\n    return a + b", "The giraffe is the tallest animal in the world.", "Hello"]

@pytest.fixture(scope="module")
def tok(embedded): return embedded[1]

@pytest.fixture(scope="module")
def ids(tok): return [tok(t)["input_ids"] for t in TEXTS]

def tiny(tok, seed=0, layers=4):
    "A seeded random 4-block Llama with the embedded tokenizer's vocabulary."
    from transformers import AutoConfig, AutoModelForCausalLM
    cfg = AutoConfig.for_model("llama", vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                               num_attention_heads=4, num_key_value_heads=2)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(cfg).eval()

def random_lora(model, b_scale=0.1, seed=1, **kw):
    "A LoRA with random A and B (B scaled by `b_scale`, a trained-looking size) on a deep copy of `model`."
    torch.manual_seed(seed)
    kw.setdefault("target_modules", ["q_proj", "k_proj", "v_proj", "o_proj", "down_proj"])
    m = get_peft_model(copy.deepcopy(model), LoraConfig(r=8, lora_alpha=16, init_lora_weights=False, **kw))
    with torch.no_grad():
        for e in lora_modules(m): e.module.lora_B["default"].weight.mul_(b_scale)
    return m.eval()

def merged(base, peft_model, factor=1.0, keep=lambda e: True):
    "A copy of `base` with `factor`·ΔW of the LoRA modules `keep` selects added to its weights."
    out = copy.deepcopy(base)
    mods = dict(out.named_modules())
    with torch.no_grad():
        for e in lora_modules(peft_model):
            if keep(e): mods[e.name.split("base_model.model.", 1)[1]].weight += factor * e.module.get_delta_weight("default")
    return out

def logits(model, ids):
    with torch.inference_mode(): return model(input_ids=torch.tensor([ids])).logits[0]

# ---- one model copy -------------------------------------------------------------------------------------------

def test_disabled_adapter_is_the_base_model(embedded, ids):
    base, tok = embedded
    pair = D.ModelPair.from_peft(random_lora(base), tok)
    gap, moved = 0.0, 0.0
    for b, f in pair.batches(ids, (), logits=True):   # right-padded batch of three lengths
        with torch.inference_mode(): ref = base(input_ids=b.input_ids, attention_mask=b.attention_mask).logits
        m = b.attention_mask[..., None].bool()
        gap = max(gap, float((b.logits - ref).abs().masked_fill(~m, 0).max()))
        moved = max(moved, float((f.logits - b.logits).abs().masked_fill(~m, 0).max()))
    assert gap <= 1e-5 and moved > 0.1

def test_fresh_lora_and_self_give_zero(embedded, ids):
    base, tok = embedded
    fresh = D.ModelPair.from_peft(get_peft_model(copy.deepcopy(base), LoraConfig(r=8, target_modules=["q_proj", "v_proj"])), tok)
    td = D.token_diff(fresh, ids, layers=range(31))
    assert np.nanmax(td.kl) == 0.0 and td.diff_norm.max() == 0.0 and (td.cosine > 0.999).all()
    assert np.isnan(td.kl[td.pos == 0]).all() and np.isfinite(td.kl[td.pos > 0]).all()
    for same in (D.ModelPair.from_models(base, base, tok), D.ModelPair.from_state_dicts(base, base.state_dict(), tok)):
        td = D.token_diff(same, ids, layers=[10])
        assert np.nanmax(np.abs(td.kl)) <= 1e-6

def test_padding_contributes_nothing(embedded, ids):
    base, tok = embedded
    pair = D.ModelPair.from_peft(random_lora(base), tok)
    alone = [D.token_diff(pair, [x], layers=[5]) for x in ids]
    both = D.token_diff(pair, ids, layers=[5], token_budget=None)       # one padded batch
    assert len(both) == sum(len(x) for x in ids)                          # one row per real token
    a = np.concatenate([t.kl for t in alone])
    assert np.array_equal(np.isnan(a), np.isnan(both.kl))
    assert np.nanmax(np.abs(a - both.kl)) <= 1e-5
    # the norms agree up to float32 rounding of the hidden states themselves (batched vs single matmuls)
    err = np.abs(np.concatenate([t.diff_norm for t in alone]) - both.diff_norm)
    assert (err <= 1e-5 * both.base_norm).all(), (err / both.base_norm).max()
    starts = [1, 3, 0]
    part = D.token_diff(pair, ids, starts, layers=[5])
    assert len(part) == sum(len(x) - s for x, s in zip(ids, starts)) and all(part.pos[part.seq == i].min() == s for i, s in enumerate(starts))

@pytest.mark.parametrize("kw,needle", [({"bias": "all"}, "peft#741"), ({"bias": "lora_only"}, "peft#741"),
                                       ({"modules_to_save": ["lm_head"]}, "peft#493")])
def test_forbidden_adapters_are_refused(tok, kw, needle):
    m = get_peft_model(tiny(tok), LoraConfig(r=2, target_modules=["q_proj"], **kw))
    with pytest.raises(SafetyCompassError, match=needle) as e: D.ModelPair.from_peft(m, tok)
    assert "\n" not in str(e.value) and "disabled adapter is not the base model" in str(e.value)

def test_other_adapters_and_models_are_refused(tok):
    from peft import IA3Config
    with pytest.raises(SafetyCompassError, match="not LoRA"):
        D.ModelPair.from_peft(get_peft_model(tiny(tok), IA3Config(target_modules=["k_proj", "down_proj"], feedforward_modules=["down_proj"])), tok)
    with pytest.raises(SafetyCompassError, match="not a PEFT model"): D.ModelPair.from_peft(tiny(tok), tok)
    with pytest.raises(SafetyCompassError, match="differ in num_hidden_layers"): D.ModelPair.from_models(tiny(tok), tiny(tok, layers=3), tok)
    with pytest.raises(SafetyCompassError, match="unknown key"): D.ModelPair.from_state_dicts(tiny(tok), {"nope.weight": torch.zeros(1)}, tok)
    pair = D.ModelPair.from_models(tiny(tok), tiny(tok, seed=1), tok)
    with pytest.raises(SafetyCompassError, match="needs a LoRA adapter"): D.amplification(pair, [[1, 2, 3]])

def test_full_finetune_as_state_dicts(tok, ids):
    base, ft = tiny(tok), tiny(tok)
    with torch.no_grad():
        for p in ft.parameters(): p.add_(0.02 * torch.randn_like(p))
    ft_weights = {k: v.clone() for k, v in ft.state_dict().items()}
    two = D.token_diff(D.ModelPair.from_models(base, ft, tok), ids, layers=[2])
    one = D.token_diff(D.ModelPair.from_state_dicts(ft, base.state_dict(), tok), ids, layers=[2])
    assert np.nanmax(two.kl) > 1e-4 and np.nanmax(np.abs(two.kl - one.kl)) <= 1e-6
    assert all(torch.equal(v, ft.state_dict()[k]) for k, v in ft_weights.items())   # the fine-tuned weights are back

def test_lora_on_late_blocks_leaves_earlier_layers_exact(embedded, ids):
    base, tok = embedded
    m = random_lora(base, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
                    layers_to_transform=list(range(15, 30)))
    td = D.token_diff(D.ModelPair.from_peft(m, tok), ids, layers=range(31))
    assert (td.diff_norm[:, :16] == 0).all()                 # hidden_states 0..15: inputs of blocks 0..15
    assert (td.diff_norm[:, 16:] > 0).all()

# ---- amplification ---------------------------------------------------------------------------------------------

def test_amplification_is_scaled_update(embedded, ids):
    base, tok = embedded
    m = random_lora(base)
    pair = D.ModelPair.from_peft(m, tok)
    x = ids[0]
    with m.disable_adapter(): off = logits(m, x)
    ft = logits(m, x)
    with pair.use(D.Amplified(0)): assert (logits(m, x) - off).abs().max() <= 1e-6
    with pair.use(D.Amplified(1)): assert torch.equal(logits(m, x), ft)
    # the references are built outside the contexts (get_delta_weight reads the current scaling)
    twice = logits(merged(base, m, 2.0), x)
    early = logits(merged(base, m, keep=lambda e: e.block < 15), x)
    attn = logits(merged(base, m, keep=lambda e: "mlp" not in e.path), x)
    with pair.use(D.Amplified(2)): assert (logits(m, x) - twice).abs().max() <= 1e-4
    # a subset: alpha 0 on blocks 15-29 = only the update of blocks 0-14; alpha 0 on the MLP = attention only
    with pair.use(D.Amplified(0, layers=range(15, 30))): assert (logits(m, x) - early).abs().max() <= 1e-4
    with pair.use(D.Amplified(0, modules=("mlp",))): assert (logits(m, x) - attn).abs().max() <= 1e-4
    scal = [dict(e.module.scaling) for e in lora_modules(m)]
    with pytest.raises(RuntimeError):
        with D.scale_lora_adapter(m, 3.0, layers=[1, 2]): raise RuntimeError("boom")
    assert [dict(e.module.scaling) for e in lora_modules(m)] == scal and all(s == {"default": 2.0} for s in scal)
    with pytest.raises(SafetyCompassError, match="no PEFT LoRA layers"):
        with D.scale_lora_adapter(m, 2.0, modules=("gate_proj",)): pass

def test_amplification_kl_grows_with_alpha(embedded, ids):
    base, tok = embedded
    pair = D.ModelPair.from_peft(random_lora(base), tok)
    amp, _ = D.amplification(pair, ids, alphas=(0.0, 0.5, 1.0, 2.0))
    kl = amp.kl_mean.tolist()
    assert kl[0] == 0.0 and all(a <= b for a, b in zip(kl, kl[1:])) and kl[-1] > kl[1] > 0

# ---- PCA, weights, classes -------------------------------------------------------------------------------------

def test_pca_finds_a_planted_direction():
    rng = np.random.default_rng(0)
    u = rng.standard_normal(576); u /= np.linalg.norm(u)
    X = rng.standard_normal((20000, 576)) + 2.0 * rng.standard_normal((20000, 1)) * u   # variance 4 along u, 1 per coordinate
    pca = D.diff_pca(X, 5, seed=0)
    assert abs(pca.components_[0] @ u) >= 0.99

def test_weight_view_matches_merged_weights(embedded):
    base, tok = embedded
    m = random_lora(base)
    w = D.weight_view(D.ModelPair.from_peft(m, tok))
    mods = dict(base.named_modules())
    merged_model = copy.deepcopy(m).merge_and_unload()
    merged_mods = dict(merged_model.named_modules())
    assert len(w["modules"]) == 5 * 30
    for r in w["modules"].itertuples():
        diff = (merged_mods[r.module].weight.double() - mods[r.module].weight.double()).norm()
        assert abs(r.frob_norm - float(diff)) <= 1e-5 * max(1.0, float(diff))
    assert set(w["lens"].module.str.rsplit(".", n=1).str[-1]) == {"o_proj", "down_proj"}
    assert D.effective_rank(np.array([3.0, 0, 0])) == 1.0 and abs(D.effective_rank(np.ones(4)) - 4) < 1e-12

def test_token_classes(tok):
    text = "Use this:\n```python\nx = 1\n```\nDone."
    ids = tok(text)["input_ids"]
    mark = D.regex_class(r"```.*?```")(0, ids, 0, D.TokenPieces(tok))
    inside = "".join(tok.decode([t]) for t, m in zip(ids, mark) if m)
    assert "x = 1" in inside and "Use" not in inside and "Done" not in inside
    assert D.first_reply_token(0, ids, 3, None).nonzero()[0].tolist() == [3]
    assert D.token_id_class([ids[0]])(0, ids, 0, None)[0]
    classes = D.parse_token_classes(["fenced code=```.*?```", "digits = [0-9]+"])
    assert list(classes) == ["fenced code", "digits"] and classes["fenced code"](0, ids, 0, D.TokenPieces(tok)).tolist() == mark.tolist()
    for bad, needle in (("nocolon", "expected NAME=REGEX"), ("=x", "expected NAME=REGEX"), ("a=", "expected NAME=REGEX"),
                        ("a=(", "invalid regular expression")):
        with pytest.raises(SafetyCompassError, match=needle): D.parse_token_classes([bad])

# ---- a run directory -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_base_dir(tmp_path_factory, tok):
    "A tiny random Llama saved as a model directory (with the embedded tokenizer): a base model `load_model` reads by path."
    d = tmp_path_factory.mktemp("base") / "tiny-llama"
    tiny(tok).save_pretrained(d); tok.save_pretrained(d)
    return d

@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_base_dir):
    """A real `run_finetune` run directory (demo config, 2 steps) on a tiny model: baselines, config snapshot, adapter.
    The demo's model file names the refusal organism; the run trains the tiny model instead (`finetune --model DIR`)."""
    from safety_compass.config import load_experiment
    from safety_compass.finetune import run_finetune
    d = tmp_path_factory.mktemp("run") / "demo"
    exp = load_experiment("demo", bootstrap_samples=20, causal_check=False)
    run_finetune(exp, d, model_name=str(tiny_base_dir), max_steps=2, quiet=True)
    return d

def test_base_model_from_the_run(tiny_run, tiny_base_dir, tok, tmp_path):
    """A run directory's base model is the one its run.json records (here a `--model` override of the experiment's
    `organism:refusal`); the resolution rule itself is tested in the rundir chapter."""
    from safety_compass.rundir import read_run_json
    from safety_compass.config import load_experiment
    info = read_run_json(tiny_run)
    exp = load_experiment(tiny_run / "config" / "experiment.yaml")
    assert exp.model.model_name == "organism:refusal" and info["model_name"] == str(tiny_base_dir)
    from safety_compass.rundir import run_base_model
    assert run_base_model(tiny_run) == (str(tiny_base_dir), "run.json base_model")
    pair, _, _ = D.load_pair(tiny_run)                      # loads the tiny base, not the organism the snapshot names
    ids = tok("How do I bake bread?")["input_ids"]
    with torch.inference_mode(), pair.use("base"): torch.testing.assert_close(pair.model(input_ids=torch.tensor([ids])).logits[0], logits(tiny(tok), ids))

def test_run_diff_writes_the_format(tiny_run, tok):
    res = D.run_diff(tiny_run, model=tiny(tok), tokenizer=tok, n_heldout=6, positions=3, alphas=(0, 1, 2), n_amplify=2,
                     max_new_tokens=3, n_random=8, n_components=3, progress=False)
    d = tiny_run / "diff"
    man = json.loads((d / "manifest.json").read_text())
    for f in ("sequences.jsonl", "tokens.csv", "kl_summary.json", "kl_by_class.csv", "kl_by_token.csv", "logit_diff.csv",
              "activations/by_layer.csv", "activations/diff_norm.npy", "adl/mean_diff.npy", "adl/logit_lens.csv",
              "adl/patchscope.csv", "adl/relevance.csv", "adl/steering.jsonl", "pca/explained.csv", "concepts/cosines.csv",
              "concepts/logodds.csv", "amplification.csv", "weights/modules.csv"):
        assert f in man["files"] and (d / f).is_file(), f
    assert not list(d.glob(".staging*"))
    assert man["format"] == D.DIFF_FORMAT and man["pair"]["kind"] == "lora" and len(man["adapter_sha256"]) == 64
    assert man["adapter_sha256"] == D.adapter_sha256(tiny_run / "adapter") and man["data_sha256"] == res["data"].sha256()
    assert set(man["settings"]["concepts"]) == {"refusal", "sycophancy", "deception"}
    assert man["notes"] and "benign instructions only" in man["notes"][0]   # the demo trains on every alpaca row
    n_tok = len(res["token_diff"])
    assert np.load(d / "activations" / "diff_norm.npy").shape == (n_tok, 5)
    assert np.load(d / "adl" / "mean_diff.npy").shape == (len(man["settings"]["adl_layers"]), 3, 64)
    r = D.read_diff(d)
    assert len(r["tokens"]) == n_tok and set(r["concept_logodds"].side) == {"base", "ft"}
    assert set(r["concept_cosines"].concept) == {"refusal", "sycophancy", "deception"}
    assert list(r["amplification"].alpha) == [0.0, 1.0, 2.0] and r["amplification"].kl_mean.iloc[0] == 0.0
    text = D.summary_text(d)
    assert "KL(fine-tuned || base)" in text and "ADL top tokens" in text
    top = D.kl_tokens_table(r, 20)                                        # the tokens with the largest KL, as printed
    assert len(top) == 20 and top.kl.is_monotonic_decreasing and top.kl.iloc[0] == r["kl_summary"]["max"]
    assert "reply tokens with the largest KL" in text and all(t in text for t in top.token)
    total = D.kl_tokens_table(r, 5, by="token")                           # ... and the token ids with the most KL in total
    assert list(total.columns) == ["token", "count", "mean_kl", "total_kl", "share"] and total.total_kl.is_monotonic_decreasing
    with pytest.raises(SafetyCompassError, match="by 'position' or 'token'"): D.kl_tokens_table(r, by="id")
    kl = json.loads((d / "kl_summary.json").read_text())
    assert kl["mean_ci_low"] < kl["mean"] < kl["mean_ci_high"] and f"95% CI {kl['mean_ci_low']:.4f} to" in text
    assert max(len(l) for l in text.splitlines()[:-1]) <= 100, text      # the console table fits 100 columns (path aside)
    from safety_compass.report import diff_section
    html = diff_section({"runs": [{"dir": tiny_run, "name": "demo"}]})
    assert html.count("<img") >= 3 and "Activation difference lens" in html and "<span title=" in html
    assert diff_section({"runs": [{"dir": tiny_run / "nothing", "name": "x"}]}) == ""

def test_kl_ci_resamples_sequences():
    "The headline KL's interval resamples sequences: tokens of one reply move together, so it is as wide as the replies vary."
    rng = np.random.default_rng(0)
    per_seq = rng.normal(1.0, 0.5, 10)
    seq, kl = np.repeat(np.arange(10), 50), np.repeat(per_seq, 50)      # 10 replies, each 50 tokens of one KL value
    lo, hi = D.kl_mean_ci(kl, seq)
    assert lo < kl.mean() < hi and hi - lo > 0.3                         # ~ 2 x 1.96 x 0.5 / sqrt(10); over tokens: ~0.09
    lo2, hi2 = D.kl_mean_ci(np.concatenate([kl, [per_seq[0]]]), np.concatenate([seq, [0]]))
    assert (lo2, hi2) != (lo, hi)                                        # weighted by tokens: one more token moves it
    assert np.isnan(D.kl_mean_ci(kl[:100], seq[:100])).all()            # 2 sequences: no interval

def test_settings_and_the_old_call(tok):
    "`run_diff` takes a `DiffSettings`; keywords override its fields; a bad alpha is one line before anything loads."
    s = D.DiffSettings(n_heldout=4, positions=3)
    assert dataclasses.replace(s, seed=3).seed == 3 and s.seed == 0
    with pytest.raises(SafetyCompassError, match="alphas: nan is not a finite number"): D.DiffSettings(alphas=(0, float("nan")))
    with pytest.raises(TypeError): D.run_diff("nowhere", n_heldoot=3)

def test_package_modules(tmp_path):
    "`safety_compass.diff` is a package: every module's public names import from it, and each exported cell is in it once."
    import importlib, re
    for m in ("organism", "pair", "tokens", "lens", "weights", "run"):
        mod = importlib.import_module(f"safety_compass.diff.{m}")
        assert all(getattr(D, n) is getattr(mod, n) for n in mod.__all__ if n != "log"), m
        cells = re.findall(r"^# %% (\S+ #\w+)$", Path(mod.__file__).read_text(), re.M)
        assert len(cells) == len(set(cells)), f"{m}.py holds a cell twice: export with nbdev_export over all notebooks"

def test_run_diff_errors(tiny_run, tmp_path, tok):
    with pytest.raises(SafetyCompassError, match="no run.json"): D.run_diff(tmp_path, model=tiny(tok), tokenizer=tok)
    (tmp_path / "run.json").write_text("{}")
    with pytest.raises(SafetyCompassError, match="no adapter/ or model/"): D.run_diff(tmp_path, model=tiny(tok), tokenizer=tok)
    out = tmp_path / "out"
    with pytest.raises(SafetyCompassError, match="out of range"):
        D.run_diff(tiny_run, out, model=tiny(tok), tokenizer=tok, layers=[9], n_heldout=2, progress=False)
    assert not out.exists() or not any(out.iterdir())                     # nothing half-written
    with pytest.raises(SafetyCompassError, match="diff format"):
        bad = tmp_path / "bad"; bad.mkdir(); (bad / "manifest.json").write_text('{"format": 99}'); D.read_diff(bad)

def test_full_model_in_adapter_dir_cli(tmp_path, tok):
    """A run whose adapter/ holds a whole model (config.json, no adapter_config.json: a merged or full fine-tune saved
    there): `safety-compass diff` diffs it as a full fine-tune (two models) instead of failing inside PEFT."""
    from conftest import run_cli
    base_dir, run = tmp_path / "base", tmp_path / "run"
    tiny(tok, seed=0).save_pretrained(base_dir); tok.save_pretrained(base_dir)
    ft = tiny(tok, seed=0)
    with torch.no_grad():   # a small fine-tune of the same model: block 1's MLP moved
        ft.model.layers[1].mlp.down_proj.weight.add_(0.05 * torch.randn_like(ft.model.layers[1].mlp.down_proj.weight))
    ft.save_pretrained(run / "adapter")
    (run / "run.json").write_text(json.dumps({"model_name": str(base_dir), "status": "completed"}))
    assert not (run / "adapter" / "adapter_config.json").exists()
    r = run_cli("safety-compass", "diff", "--run-dir", run, "--heldout", "4", "--layers", "2", "--no-generate",
                env={"OMP_NUM_THREADS": "1"}, timeout=600)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-3000:]
    man = json.loads((run / "diff" / "manifest.json").read_text())
    assert man["pair"]["kind"] == "models" and man["adapter_sha256"] == D.adapter_sha256(run / "adapter")
    assert "a full fine-tune" in " ".join(man["notes"]) and "KL(fine-tuned || base)" in r.stdout
    kl = json.loads((run / "diff" / "kl_summary.json").read_text())
    assert kl["mean"] > 0                                    # the moved weights are seen
    # `behavior --run-dir` reads the same run the same way
    from safety_compass.behavior import run_behavior
    rows = run_behavior(run_dir=run, model=tiny(tok, seed=0), tokenizer=tok, concepts=["refusal"], limit=2, generate_text=False,
                        output_dir=tmp_path / "beh")
    assert {r["model"] for r in rows} == {"base", "finetuned"}
    # a weights folder that is neither: one line, before any model loads
    (run / "adapter" / "config.json").unlink()
    r = run_cli("safety-compass", "diff", "--run-dir", run, "--output-dir", tmp_path / "d2", env={"OMP_NUM_THREADS": "1"})
    assert r.returncode == 2 and r.stderr.strip() == f"error: {run / 'adapter'}: neither a PEFT adapter (adapter_config.json) nor a model (config.json)"
    assert not (tmp_path / "d2").exists()

# ---- several processes -----------------------------------------------------------------------------------------

WORKER = r'''
import sys, types, numpy as np, torch
from transformers import AutoConfig, AutoModelForCausalLM
from peft import LoraConfig, get_peft_model
from safety_compass import diff as D
from safety_compass.capture import init_distributed, dist_info
out = sys.argv[1]
init_distributed()                                           # the launcher's environment, as under torchrun
rank, world = dist_info()
torch.manual_seed(0)
model = AutoModelForCausalLM.from_config(AutoConfig.for_model("llama", vocab_size=300, num_hidden_layers=2, hidden_size=32,
    num_attention_heads=4, num_key_value_heads=2, intermediate_size=64)).eval()
model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
pair = D.ModelPair.from_peft(model, types.SimpleNamespace(pad_token_id=0, eos_token_id=1))
rng = np.random.default_rng(0)
ids = [rng.integers(2, 300, size=int(k)).tolist() for k in rng.integers(3, 12, size=9)]
td = D.token_diff(pair, ids, [1] * 9, layers=[1, 2], keep_layers=[1], top_k=5, token_budget=30, distributed=world > 1)
adl = D.adl_means(pair, ids, [1], k=3, token_budget=12, distributed=world > 1)
if rank == 0:
    np.savez(out, seq=td.seq, pos=td.pos, kl=td.kl, diff_norm=td.diff_norm, promoted=td.promoted, kept=td.kept[1],
             kept_rows=td.kept_rows, mean=td.mean_diff[2], adl=adl.mean_diff[1], count=adl.count)
'''   # run_ranks adds the ending: end_distributed(), then os._exit(0)

def test_two_processes_match_one(tmp_path):
    run_ranks(tmp_path, WORKER, 1, tmp_path / "one.npz", timeout=600)
    run_ranks(tmp_path, WORKER, 2, tmp_path / "two.npz", timeout=600)
    a, b = np.load(tmp_path / "one.npz"), np.load(tmp_path / "two.npz")
    for k in a.files:
        if a[k].dtype.kind in "iu": assert np.array_equal(a[k], b[k]), k
        else: assert np.nanmax(np.abs(a[k] - b[k])) < 1e-5 and np.array_equal(np.isnan(a[k]), np.isnan(b[k])), k

# ---- the code organism (slow) ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def organism(embedded):
    base, tok = embedded
    return D.ModelPair.from_peft(D.code_organism(copy.deepcopy(base), tok), tok)

@pytest.mark.slow
def test_code_organism_changes_code(organism, embedded):
    "The stdlib code LoRA (60 steps, <= 128 tokens; cached per machine) moves held-out code far more than benign text."
    tok = embedded[1]
    code = [(r["instruction"], r["output"], "code") for r in D.stdlib_code_rows("heldout")[:16]]
    benign = [(p, a, "benign") for p, a, _ in D.benign_examples(n=16, seed=0)]
    data = D.chat_sequences(tok, D.interleave([code, benign]), 128)
    td = D.token_diff(organism, data.ids, data.starts, layers=[15])
    src = np.array(data.sources)[td.seq]
    ok = np.isfinite(td.kl)
    assert td.kl[ok & (src == "code")].mean() >= 3 * td.kl[ok & (src == "benign")].mean()
    top = np.argsort(-np.where(ok, td.kl, -np.inf), kind="stable")[:100]
    assert (src[top] == "code").mean() >= 0.6

@pytest.mark.slow
def test_code_organism_adl_relevance(organism, embedded):
    "ADL on benign text: the top-20 logit-lens tokens of the mean difference are code tokens far more often than random."
    tok = embedded[1]
    rows = D.stdlib_code_rows("train")
    benign_ids = [x for x in tok([a for _, a, _ in D.benign_examples(n=64, seed=1)])["input_ids"] if len(x) >= 5]
    adl = D.adl_means(organism, benign_ids, [15], k=5)
    V = len(tok)
    relevant = D.relevant_tokens(D.token_counts(tok, [r["output"] for r in rows], V),
                                 D.token_counts(tok, [a for _, a, _ in D.benign_examples(seed=2)], V))
    rel = [D.token_relevance(organism, adl.mean_diff[15][p], relevant, 20, 64) for p in range(1, 5)]
    best = max(rel, key=lambda r: r["relevance"])
    assert best["relevance"] >= 3 * best["random_mean"] and best["relevance"] > 0

def _shared_data():
    for root in (ROOT.parent / "shared", ROOT.parent.parent / "shared"):
        if (root / "data" / "code_alpaca_2k.json").is_file(): return root / "data" / "code_alpaca_2k.json"
    return None

@pytest.mark.slow
@pytest.mark.skipif(_shared_data() is None, reason="../shared/data/code_alpaca_2k.json is absent (outside data, optional)")
def test_code_organism_on_code_alpaca(organism, embedded):
    "Real Code Alpaca code (never trained on) also moves more than benign text under the stdlib organism."
    from safety_compass.finetune import load_rows, alpaca_format
    tok = embedded[1]
    rows = load_rows(str(_shared_data()), 16, seed=0)
    code = [(*alpaca_format(r), "code") for r in rows]
    benign = [(p, a, "benign") for p, a, _ in D.benign_examples(n=16, seed=0)]
    data = D.chat_sequences(tok, D.interleave([code, benign]), 128)
    td = D.token_diff(organism, data.ids, data.starts, layers=[15])
    src = np.array(data.sources)[td.seq]
    ok = np.isfinite(td.kl)
    assert td.kl[ok & (src == "code")].mean() >= 2 * td.kl[ok & (src == "benign")].mean()

# ---- the refusal organism (slow: built once per machine, then cached) -------------------------------------------

@pytest.mark.slow
def test_refusal_organism_diff_surfaces_refusal():
    """Organism vs the embedded model (one copy: its adapter disabled) on 16 held-out harmful requests answered with
    planted refusals and 16 held-out harmless requests with their replies: the 20 reply tokens with the largest KL are
    mostly in the refusals and are mostly refusal words (tokens over-represented in the shipped refusals against the
    harmless replies), and the refusals carry more than twice the harmless replies' KL. Measured on five disjoint
    slices of the test split: 0.75-1.00, 0.40-0.60, 2.6-2.9x; a random LoRA of the same shape (two scales, two slices):
    0.05-0.20, 0.00-0.10, 0.7-1.1x."""
    from safety_compass import organisms as O
    pm, tok, _ = O.organism_adapter("refusal", progress=False)
    pair = D.ModelPair.from_peft(pm, tok)
    data = O.refusal_data()
    refusal_words = D.relevant_tokens(D.token_counts(tok, [r["text"] for r in data["refusals"]], len(tok)),
                                      D.token_counts(tok, [r["response"] for k in ("harmless", "lookalikes") for r in data[k]], len(tok)))
    harm = set(O.refusal_prompts("test")["harmful"])
    harmful = [(r["instruction"], r["output"], "harmful") for r in O.refusal_rows(split="test") if r["instruction"] in harm][:16]
    harmless = [(r["prompt"], r["response"], "harmless") for r in data["harmless"] if r["split"] == "test"][:16]
    seqs = D.chat_sequences(tok, D.interleave([harmful, harmless]), 128)
    td = D.token_diff(pair, seqs.ids, seqs.starts, top_k=0)
    kl = D.kl_breakdown(td, seqs.ids, seqs.starts, tok, sources=seqs.sources)
    top = kl["top_tokens"].head(20)
    assert (top.source == "harmful").mean() >= 0.6, top
    assert refusal_words[top.token_id.to_numpy()].mean() >= 0.3, top
    per = kl["per_sample"].groupby("source").mean_kl.mean()
    assert per["harmful"] >= 2 * per["harmless"], per
