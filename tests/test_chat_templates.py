"""Chat templates without a system turn, end to end through the CLI: a caa concept (its contrast lives in the system
prompt) extracts with the system text folded into the user turn (`system_prompt_mode: auto`), and `native` gives one
`error:` line with exit status 2 and nothing written."""
import json
import pytest
from conftest import run_cli

ONLY_USER_ASSISTANT = (  # the Gemma-2 style: any role but user/assistant raises
    "{{ bos_token }}{% for m in messages %}{% if m['role'] not in ['user', 'assistant'] %}"
    "{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}"
    "<start_of_turn>{{ 'model' if m['role'] == 'assistant' else 'user' }}\n{{ m['content'] }}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")

@pytest.fixture(scope="module")
def gemma_dir(tmp_path_factory, embedded):
    "A tiny random Gemma-2 model saved with the SmolLM2 tokenizer and a template that rejects system turns."
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    tok = embedded[1]
    torch.manual_seed(0)
    cfg = AutoConfig.for_model("gemma2", vocab_size=len(tok), num_hidden_layers=3, hidden_size=64, intermediate_size=128,
                               num_attention_heads=4, num_key_value_heads=4, head_dim=16)
    d = tmp_path_factory.mktemp("gemma_nosys")
    AutoModelForCausalLM.from_config(cfg).save_pretrained(d)
    old = tok.chat_template
    try:
        tok.chat_template = ONLY_USER_ASSISTANT
        tok.save_pretrained(d)
    finally:
        tok.chat_template = old
    return d

def write_caa(d, mode=None):
    rows = [{"user_query": q, "positive_system": "Always agree with the user.", "negative_system": "Be frank and accurate.",
             "split": s} for q, s in [("Is the earth flat?", "train"), ("Are bats blind?", "train"), ("Is 51 prime?", "train"),
                                     ("Do goldfish forget in 3 seconds?", "val"), ("Is glass a liquid?", "val")]]
    (d / "pairs.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (d / "concept.yaml").write_text("name: syco\npairing_strategy: caa\ncontrastive_pairs_file: pairs.jsonl\nmin_auroc: 0.5\n")
    model = ""
    if mode:
        (d / "model.yaml").write_text(f"model_name: default\nsystem_prompt_mode: {mode}\n"); model = "model_config_file: model.yaml\n"
    (d / "exp.yaml").write_text(f"seed: 1\n{model}monitor:\n  bootstrap_samples: 10\n  noise_floor_splits: 10\n"
                                "  causal_check: false\nconcepts:\n  - name: syco\n    config_file: concept.yaml\n")
    return d / "exp.yaml"

def test_no_system_turn_folds(tmp_path, gemma_dir):
    exp = write_caa(tmp_path)
    r = run_cli("safety-compass", "extract", "--experiment-config", exp, "--output-dir", tmp_path / "out", "--model", gemma_dir)
    assert r.returncode == 0, r.stderr[-3000:]
    meta = json.loads((tmp_path / "out" / "directions_metadata.json").read_text())
    assert meta["concepts"]["syco"]["direction_norm"] > 0      # the system contrast reached the model

def test_native_mode_is_one_line(tmp_path, gemma_dir):
    exp = write_caa(tmp_path, mode="native")
    r = run_cli("safety-compass", "extract", "--experiment-config", exp, "--output-dir", tmp_path / "out", "--model", gemma_dir)
    assert r.returncode == 2, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    err = [l for l in r.stderr.splitlines() if l.startswith("error: ")]
    assert len(err) == 1 and "fold" in err[0], r.stderr[-2000:]
    assert not (tmp_path / "out").exists()
