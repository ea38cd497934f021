"""SFT example construction (prompt/response boundary, end-of-turn in the labels, formatter fields), atomic_open
permissions, and model loading (GGUF forms, the de-quantized cache keyed by transformers major version)."""
import copy, json, logging, os, shutil, stat
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from safety_compass import models
from safety_compass.core import SafetyCompassError, atomic_write_text, atomic_open, current_umask, sha256_file
from safety_compass.capture import render_prompt
from safety_compass.pairs import conversation
from safety_compass.sft_data import (alpaca_format, dolly_format, code_alpaca_format, load_rows, sft_features,
                                     DatasetRows)
from safety_compass.templates import sft_example, render_sft
from safety_compass.models import (load_model, load_default_model, embedded_gguf_path, default_cache_path,
                                   rope_settings, transformers_major)
from conftest import run_cli

# Templates under test. BLANK_LINE: the generation prompt ends in "\n\n", which SmolLM2's byte-level BPE merges into one
# token alone but splits in the full text. GEMMA: Gemma-2's template (system-role check left out), whose turn ends
# with <end_of_turn> while eos is <eos>.
BLANK_LINE = ("{% for m in messages %}### {{ m['role'] }}:\n\n{{ m['content'] }}"
              "{% if m['role']=='assistant' %}{{ eos_token }}{% else %}\n\n{% endif %}{% endfor %}"
              "{% if add_generation_prompt %}### assistant:\n\n{% endif %}")
GEMMA = ("{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'assistant') %}{% set role = 'model' %}"
         "{% else %}{% set role = message['role'] %}{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim "
         "+ '<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}")
ROWS = [("Say hi.", "Hi there!"), ("List two colours.\n\n", "Red\n\nand blue."), ("Café?", "naïve   "),
        ("Write code", "```python\nprint(1)\n```")]


def _variant(tok, template, gemma=False):
    t = copy.deepcopy(tok)
    if gemma:
        t.add_special_tokens({"bos_token": "<bos>", "eos_token": "<eos>",
                              "additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"]})
    t.chat_template = template
    return t


@pytest.fixture(scope="module")
def tok(embedded):
    return embedded[1]


@pytest.mark.parametrize("name,eot", [("blank_line", "<|im_end|>"), ("smollm2", "<|im_end|>"), ("no_template", "<|im_end|>"),
                                      ("gemma", "<end_of_turn>")])
def test_boundary_prompt_is_generations_and_loss_starts_at_reply(tok, name, eot):
    t = {"blank_line": lambda: _variant(tok, BLANK_LINE), "smollm2": lambda: tok,
         "no_template": lambda: _variant(tok, None), "gemma": lambda: _variant(tok, GEMMA, gemma=True)}[name]()
    for prompt, reply in ROWS:
        feats = sft_features([{"instruction": prompt, "output": reply}], t, "alpaca", 256)
        f = feats[0]
        n = next(i for i, l in enumerate(f["labels"]) if l != -100)
        assert all(l != -100 for l in f["labels"][n:])
        assert f["labels"][n:] == f["input_ids"][n:]
        # (a) the prompt ids are exactly what generation feeds the model
        if t.chat_template:
            gen = t(render_prompt(t, conversation(None, prompt.strip())), add_special_tokens=False)["input_ids"]
        else:
            gen = t(f"{prompt.strip()}\n\n", add_special_tokens=False)["input_ids"]
        assert f["input_ids"][:n] == gen
        # (b) the first trained token is the reply's first token
        assert f["input_ids"][n] == t(reply.strip(), add_special_tokens=False)["input_ids"][0]
        # the example spells the whole templated conversation, and the end-of-turn token is trained
        assert t.decode(f["input_ids"]) == render_sft(t, prompt.strip(), reply.strip())[1]
        assert t.convert_tokens_to_ids(eot) in f["labels"][n:]


def test_blank_line_case_old_prefix_assumption_was_wrong(tok):
    "The input that exposed the bug: tokenized alone the prompt is NOT a token prefix of the full text."
    t = _variant(tok, BLANK_LINE)
    p_text, full = render_sft(t, "Say hi.", "Hi there!")
    alone = t(p_text, add_special_tokens=False)["input_ids"]
    whole = t(full, add_special_tokens=False)["input_ids"]
    assert whole[:len(alone)] != alone                       # the merge differs: the old code trained a prompt "\n"
    f = sft_features([{"instruction": "Say hi.", "input": "", "output": "Hi there!"}], t, "alpaca", 64)[0]
    n = sum(l == -100 for l in f["labels"])
    assert t.convert_ids_to_tokens(f["input_ids"][n:n + 2]) == ["Hi", "Ġthere"]
    assert t.convert_ids_to_tokens(f["input_ids"][n - 1]) == "ĊĊ"  # generation's merged blank line stays in the prompt


def test_template_without_end_token_gets_eos(tok):
    t = _variant(tok, "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                      "{% if add_generation_prompt %}assistant: {% endif %}")
    p_ids, r_ids, eot = sft_example(t, "Say hi.", "Hi there!")
    assert eot == t.eos_token_id and r_ids[-1] == t.eos_token_id
    # the prompt ends in a space that BPE would glue to the reply ("ĠHi") in the full text; generation's "Ġ" is kept
    assert t.convert_ids_to_tokens(p_ids[-1]) == "Ġ" and t.convert_ids_to_tokens(r_ids[0]) == "Hi"


def _metaspace_tokenizer(texts):
    "A SentencePiece-style tokenizer that prepends a space to every text it encodes (Llama-2/Mistral legacy behaviour)."
    from tokenizers import Tokenizer, models as tm, trainers, pre_tokenizers, decoders
    from transformers import PreTrainedTokenizerFast
    t = Tokenizer(tm.BPE(unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    t.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    t.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False))
    tok = PreTrainedTokenizerFast(tokenizer_object=t, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    # Mistral-style: the reply follows "[/INST]" with no space
    tok.chat_template = ("{% for m in messages %}{% if m['role'] == 'user' %}{{ bos_token }}[INST] {{ m['content'] }} [/INST]"
                         "{% else %}{{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}")
    return tok


def test_dummy_prefix_tokenizer_uses_offsets():
    tok = _metaspace_tokenizer(["[INST] Say hi. [/INST] Hi there!", "Hello my friend, say hi there to everyone."] * 5)
    p_text, full = render_sft(tok, "Say hi.", "Hi there!")
    alone = tok(full[len(p_text):], add_special_tokens=False)["input_ids"]
    assert tok.convert_ids_to_tokens(alone[0]).startswith("▁")     # encoded alone the reply gains a space
    p_ids, r_ids, eot = sft_example(tok, "Say hi.", "Hi there!")
    assert p_ids == tok(p_text, add_special_tokens=False)["input_ids"]
    assert not tok.convert_ids_to_tokens(r_ids[0]).startswith("▁")  # in context it has none, as generation produces it
    assert tok.decode(p_ids + r_ids) == tok.decode(tok(full, add_special_tokens=False)["input_ids"])
    assert r_ids[-1] == eot == tok.eos_token_id


def test_unsplittable_example_is_a_one_line_error():
    # "[/INST]Hi" is one token in this vocabulary, so no token boundary exists where the prompt ends
    tok = _metaspace_tokenizer(["[INST] Say hi. [/INST]Hi there!"] * 50)
    p_text, full = render_sft(tok, "Say hi.", "Hi there!")
    assert "▁[/INST]Hi" in tok.convert_ids_to_tokens(tok(full, add_special_tokens=False)["input_ids"])
    with pytest.raises(SafetyCompassError, match=r"^d.jsonl:4: tokenizer .* cannot split this example at the end of the prompt"):
        sft_features(DatasetRows([{"instruction": "Say hi.", "output": "Hi there!"}], ["d.jsonl:4"]), tok, "alpaca")


def test_truncation_before_end_of_turn_is_logged(tok, caplog):
    rows = [{"instruction": "Say hi.", "output": "Hi there, how are you doing today, my good old friend?"},
            {"instruction": "Say hi.", "output": "Hi."}]
    n_prompt = len(tok(render_prompt(tok, conversation(None, "Say hi.")), add_special_tokens=False)["input_ids"])
    with caplog.at_level(logging.WARNING, logger="safety_compass.sft_data"):
        feats = sft_features(rows, tok, "alpaca", n_prompt + 6, source="x.json")
    assert [len(f["input_ids"]) for f in feats] == [n_prompt + 6, n_prompt + 4]
    assert "x.json: 1 of 2 examples are cut by max_seq_length" in caplog.text
    with pytest.raises(SafetyCompassError, match="no trainable examples"):
        sft_features(rows, tok, "alpaca", n_prompt)


# ---- formatters: optional fields optional, required ones named with file:row


def test_optional_fields():
    assert alpaca_format({"instruction": "Add 2 and 3", "output": "5"}) == ("Add 2 and 3", "5")
    assert alpaca_format({"instruction": "Add", "input": None, "output": "5"}) == ("Add", "5")
    assert code_alpaca_format({"instruction": "Print 1", "output": "print(1)"}) == ("Print 1", "print(1)")
    assert dolly_format({"instruction": "Q?", "response": "A"}) == ("Q?", "A")
    assert dolly_format({"instruction": "Q?", "context": "C", "response": "A"}) == ("Q?\n\nContext: C", "A")


@pytest.mark.parametrize("kind", ["jsonl", "json", "parquet"])
def test_missing_required_field_names_file_row_and_field(tok, tmp_path, kind):
    rows = [{"instruction": "a", "output": "b"}, {"instruction": "c", "input": "x"}]
    p = tmp_path / f"d.{kind}"
    if kind == "jsonl": p.write_text(json.dumps(rows[0]) + "\n\n" + json.dumps(rows[1]) + "\n")
    elif kind == "json": p.write_text(json.dumps(rows))
    else:
        import pandas as pd
        pd.DataFrame(rows).to_parquet(p)
    where = f"{p}:3" if kind == "jsonl" else f"{p}: row 2"
    with pytest.raises(SafetyCompassError) as e:
        sft_features(load_rows(str(p)), tok, "alpaca")
    assert str(e.value) == f"{where}: missing field 'output' (format 'alpaca' needs instruction, output; input optional)"
    # a row without `input` (parquet: a missing value) is accepted
    assert len(sft_features(load_rows(str(p))[:1], tok, "alpaca")) == 1


def test_dolly_missing_response_and_non_object_row(tok, tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text('{"instruction": "q", "response": "a"}\n{"instruction": "q", "context": "c"}\n')
    with pytest.raises(SafetyCompassError, match=rf"^{p}:2: missing field 'response' \(format 'dolly' needs instruction, response; context optional\)$"):
        sft_features(load_rows(str(p)), tok, "dolly")
    p.write_text('{"instruction": "q", "response": "a"}\n["q", "a"]\n')
    with pytest.raises(SafetyCompassError, match=rf"^{p}:2: expected an object with fields instruction, response, got list$"):
        sft_features(load_rows(str(p)), tok, "dolly")


def test_subset_keeps_row_locations(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text("".join(json.dumps({"instruction": f"i{k}", "output": f"o{k}"}) + "\n" for k in range(20)))
    sub = load_rows(str(p), subset_size=5, seed=7)
    assert [f"{p}:{int(r['instruction'][1:]) + 1}" for r in sub] == sub.where


# ---- atomic_open permissions


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_atomic_open_mode_follows_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        assert current_umask() == umask
        atomic_write_text(tmp_path / "a.txt", "x")
        with atomic_open(tmp_path / "b.bin", "wb") as f: f.write(b"x")
        with open(tmp_path / "plain.txt", "w") as f: f.write("x")
        modes = {n: stat.S_IMODE(os.stat(tmp_path / n).st_mode) for n in ("a.txt", "b.bin", "plain.txt")}
        assert modes == dict.fromkeys(modes, 0o666 & ~umask)
        os.chmod(tmp_path / "a.txt", 0o644)
        atomic_write_text(tmp_path / "a.txt", "y")      # replacing keeps the file's mode, as open("w") does
        assert stat.S_IMODE(os.stat(tmp_path / "a.txt").st_mode) == 0o644
    finally:
        os.umask(old)


# ---- the de-quantized cache: keyed by transformers major version, config checked against the GGUF


def test_rope_settings_same_form_across_versions(embedded):
    model = embedded[0]
    assert rope_settings(model.config) == {"rope_theta": 100000.0, "rope_type": "default"}
    assert rope_settings(SimpleNamespace(rope_theta=100000.0, rope_scaling=None)) == rope_settings(model.config)
    assert rope_settings(SimpleNamespace(rope_theta=10000.0, rope_scaling=None)) != rope_settings(model.config)


def _link_or_copy(a, b):
    try: os.link(a, b)
    except OSError: shutil.copy2(a, b)  # another filesystem


@pytest.fixture
def cheap_cache(embedded, tmp_path, monkeypatch):
    """A private cache whose `_build_cache` restores a hard-linked copy of the real one (standing in for the 20 s
    de-quantization); `state["calls"]` counts rebuilds and `state["tamper"]`, if set, is applied after each."""
    sha = sha256_file(embedded_gguf_path())
    src = default_cache_path(sha)
    monkeypatch.setenv("SAFETY_COMPASS_CACHE", str(tmp_path / "cache"))
    dest = default_cache_path(sha)
    assert dest != src
    state = {"calls": 0, "tamper": None, "dest": dest, "sha": sha}

    def build(gguf, gguf_sha, d):
        state["calls"] += 1
        if d.exists(): shutil.rmtree(d)
        shutil.copytree(src, d, copy_function=_link_or_copy)
        if state["tamper"]: state["tamper"](d)
    monkeypatch.setattr(models, "_build_cache", build)
    build(None, sha, dest); state["calls"] = 0
    return state


def _theta_10000(d):
    "What transformers 4.57 effectively reads from a config.json written by 5.x: rope_theta 10000 (same file size)."
    cfg = d / "config.json"
    text = cfg.read_text()
    assert '"rope_theta": 100000.0' in text
    cfg.unlink()  # the file is a hard link into the real cache: replace it, never write through it
    cfg.write_text(text.replace('"rope_theta": 100000.0', '"rope_theta": 10000.00'))


def test_cache_with_wrong_rope_is_rebuilt(cheap_cache):
    _theta_10000(cheap_cache["dest"])
    assert models._cache_ok(cheap_cache["dest"], cheap_cache["sha"])    # the size manifest alone cannot see it
    model, _ = load_default_model()
    assert cheap_cache["calls"] == 1
    assert rope_settings(model.config)["rope_theta"] == 100000.0


def test_cache_whose_rope_stays_wrong_is_a_one_line_error(cheap_cache):
    cheap_cache["tamper"] = _theta_10000
    _theta_10000(cheap_cache["dest"])
    with pytest.raises(SafetyCompassError, match=r"reads the cached model config unlike the GGUF \(rope: got .*10000\.0.*expected .*100000\.0"):
        load_default_model()
    assert cheap_cache["calls"] == 1


def test_manifest_from_another_major_version_is_rebuilt(cheap_cache):
    d = cheap_cache["dest"]
    man_path = d / "safety_compass_cache.json"
    man = json.loads(man_path.read_text())
    assert man["transformers_major"] == transformers_major() and man["transformers_version"]
    man_path.unlink(); man_path.write_text(json.dumps({**man, "transformers_major": transformers_major() - 1}))
    load_default_model()
    assert cheap_cache["calls"] == 1
    assert d.name.endswith(f"-transformers{transformers_major()}")


# ---- GGUF loading


def test_gguf_argument_errors(tmp_path):
    g = embedded_gguf_path()
    with pytest.raises(SafetyCompassError, match=rf"^{g.parent}/nope.gguf: GGUF file not found$"):
        load_model(str(g.parent), gguf_file="nope.gguf")
    with pytest.raises(SafetyCompassError, match="GGUF file not found"):
        load_model(str(tmp_path / "m.gguf"))
    bad = tmp_path / "bad.gguf"; bad.write_bytes(b"not a gguf file at all")
    with pytest.raises(SafetyCompassError, match=rf"^{bad}: cannot load GGUF \("):
        load_model(str(bad))


def test_cli_gguf_error_is_one_line(tmp_path):
    bad = tmp_path / "bad.gguf"; bad.write_bytes(b"not a gguf file at all")
    r = run_cli("safety-compass-extract", "--experiment-config", "demo", "--output-dir", tmp_path / "o", "--model", bad)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith(f"error: {bad}: cannot load GGUF (")
    assert "Traceback" not in r.stderr


@pytest.mark.slow
@pytest.mark.parametrize("form", ["directory+gguf_file", "path to .gguf"])
def test_load_model_gguf_forms(embedded, form, tmp_path):
    ref_model, ref_tok = embedded
    g = embedded_gguf_path()
    model, tok = load_model(str(g.parent), gguf_file=g.name) if form == "directory+gguf_file" else load_model(str(g))
    assert getattr(model, "hf_quantizer", None) is None and not hasattr(model.config, "quantization_config")
    ref = ref_model.state_dict()
    got = model.state_dict()
    assert set(got) == set(ref) and all(torch.equal(got[k], ref[k]) for k in ref)
    assert model.lm_head.weight is model.model.embed_tokens.weight   # still tied, so training updates one matrix
    assert rope_settings(model.config) == rope_settings(ref_model.config)
    assert tok.chat_template == ref_tok.chat_template
    text = ref_tok.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True, tokenize=False)
    assert tok(text)["input_ids"] == ref_tok(text)["input_ids"]
    if form == "path to .gguf":
        model.save_pretrained(tmp_path / "saved")   # refused while the GGUF quantizer is attached
        assert (tmp_path / "saved" / "model.safetensors").exists()
