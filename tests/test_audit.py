"""The preference-data audit (nbs/14_audit.ipynb) from the outside: every input format from files, one-line errors
before a model loads, the command-line arguments end to end (audit, filter, inoculate, rerun), two processes against
one, and the real HH harmless-base file when ../shared has it.

The planted-fixture acceptance tests (ranking, null, swap, random labels, length, contamination, interventions, DPO)
live in the notebook, next to the code they check."""
import argparse, gzip, json, os, socket, subprocess, sys
from pathlib import Path
import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import ROOT, run_ranks

from safety_compass.core import SafetyCompassError, format_table, sha256_file
from safety_compass import audit as A

HH = Path(os.environ.get("SC_SHARED", ROOT.parent / "shared")) \
     / "data" / "hh-rlhf" / "harmless-base-test.jsonl.gz"
CONCEPTS = ("refusal", "sycophancy", "deception")

# ---------------------------------------------------------------------------------------------------------------
# reading (no model)

def test_formats_from_files(tmp_path):
    rows = [{"prompt": "Q1?", "chosen": "yes", "rejected": "no"},
            {"chosen": "\n\nHuman: Q2?\n\nAssistant: a", "rejected": "\n\nHuman: Q2?\n\nAssistant: b"},
            {"instruction": "Q3?", "output_a": "x", "output_b": "y", "preferred": "B"},
            {"prompt": [{"role": "user", "content": "Q4?"}], "chosen": [{"role": "assistant", "content": "c"}],
             "rejected": [{"role": "assistant", "content": "d"}]}]
    for name in ("d.jsonl", "d.jsonl.gz", "d.json", "d.parquet"):
        p = tmp_path / name
        if name.endswith(".parquet"): pd.DataFrame(rows[:1] * 3).to_parquet(p); n = 3
        else:
            text = json.dumps(rows, indent=1) if name == "d.json" else "".join(json.dumps(r) + "\n" for r in rows)
            (gzip.open(p, "wt") if name.endswith(".gz") else open(p, "w")).write(text) if False else None
            if name.endswith(".gz"):
                with gzip.open(p, "wt") as f: f.write(text)
            else: p.write_text(text)
            n = 4
        d = A.load_preferences(p)
        assert len(d) == n
        if n == 4:
            assert [x.prompt[-1][1] for x in d.pairs] == ["Q1?", "Q2?", "Q3?", "Q4?"]
            assert (d.pairs[2].chosen, d.pairs[2].rejected) == ("y", "x")
            assert set(d.formats) == {"trl", "hh", "ab"}
    # JSON array: each element's line is the line it starts on
    arr = A.load_preferences(tmp_path / "d.json")
    assert arr.pairs[0].where == f"{tmp_path / 'd.json'}:2"

def test_bad_rows(tmp_path):
    p = tmp_path / "bad.jsonl"
    good = {"prompt": "Q?", "chosen": "a", "rejected": "b"}
    p.write_text("\n".join([json.dumps(good), "{not json", json.dumps(good)]) + "\n")
    with pytest.raises(SafetyCompassError, match=rf"{p}:2: malformed JSON"): A.load_preferences(p)
    p.write_text("\n".join([json.dumps(good), json.dumps({**good, "prompt": ""}), json.dumps([1, 2]),
                            json.dumps({**good, "rejected": [{"role": "user", "content": "x"}]})]) + "\n")
    with pytest.raises(SafetyCompassError, match=rf"^{p}: 3 bad rows .*: {p}:2: field 'prompt' has no user text; {p}:3: "
                       rf"expected an object, got list; {p}:4: field 'rejected' must be"): A.load_preferences(p)
    d = A.load_preferences(p, skip_bad=True)
    assert len(d) == 1 and [s.split(": ")[0] for s in d.skipped] == [f"{p}:2", f"{p}:3", f"{p}:4"]
    assert "must be a string or one assistant message" in d.skipped[2]
    p.write_text(json.dumps({**good, "prompt": ""}) + "\n")
    with pytest.raises(SafetyCompassError, match="no preference pairs .1 bad row"): A.load_preferences(p, skip_bad=True)
    with pytest.raises(SafetyCompassError, match="no-such-dataset-xyz: cannot load as a local file or a hub dataset"):
        A.load_preferences("no-such-user-xyz/no-such-dataset-xyz")

# TRL conversational rows (message lists), as hub preference sets store them in parquet; the last row is implicit-prompt
CONVERSATIONAL = [{"prompt": [{"role": "user", "content": f"Question {i}?"}],
                   "chosen": [{"role": "assistant", "content": f"Good answer {i}."}],
                   "rejected": [{"role": "assistant", "content": f"Bad answer {i}."}]} for i in range(3)] + [
                  {"chosen": [{"role": "user", "content": "Implicit Q?"}, {"role": "assistant", "content": "Yes."}],
                   "rejected": [{"role": "user", "content": "Implicit Q?"}, {"role": "assistant", "content": "No."}]}]

def test_message_lists_every_format(tmp_path):
    "pandas gives parquet list columns as numpy arrays and a missing column as None: read as JSON reads them (benchopt#734)."
    lines = "".join(json.dumps(r) + "\n" for r in CONVERSATIONAL)
    (tmp_path / "p.jsonl").write_text(lines); (tmp_path / "p.json").write_text(json.dumps(CONVERSATIONAL, indent=1))
    with gzip.open(tmp_path / "p.jsonl.gz", "wt") as f: f.write(lines)
    pd.DataFrame(CONVERSATIONAL).to_parquet(tmp_path / "p.parquet")
    got = {}
    for name in ("p.json", "p.jsonl", "p.jsonl.gz", "p.parquet"):
        d = A.load_preferences(tmp_path / name)
        got[name] = [(x.prompt, x.chosen, x.rejected) for x in d.pairs]
        assert d.formats == ("trl", "trl_implicit"), (name, d.formats)
    assert len(got["p.jsonl"]) == 4 and all(v == got["p.jsonl"] for v in got.values()), got
    assert got["p.jsonl"][3] == ((("user", "Implicit Q?"),), "Yes.", "No.")
    # in memory, as a user's DataFrame gives them: the same pairs
    recs = pd.read_parquet(tmp_path / "p.parquet").to_dict("records")
    assert isinstance(recs[0]["prompt"], np.ndarray)
    assert [(x.prompt, x.chosen, x.rejected) for x in A.pairs_from_records(recs[:3]).pairs] == got["p.jsonl"][:3]

def test_sft_rows_from_parquet_match_json(tmp_path):
    "The fine-tuning rows: parquet (a missing `input` is a null cell there) reads as the same rows as JSON."
    from safety_compass.finetune import load_rows, alpaca_format
    rows = [{"instruction": "Add 2 and 3.", "input": "", "output": "5", "id": 1}, {"instruction": "Name a colour.", "output": "Blue.", "id": 2},
            {"instruction": "Sum these.", "input": "1, 2", "output": "3", "id": 3}]
    (tmp_path / "d.json").write_text(json.dumps(rows)); pd.DataFrame(rows).to_parquet(tmp_path / "d.parquet")
    a, b = load_rows(str(tmp_path / "d.json")), load_rows(str(tmp_path / "d.parquet"))
    assert list(b) == rows and list(a) == list(b) and type(b[2]["id"]) is int and "input" not in b[1]
    assert [alpaca_format(r) for r in a] == [alpaca_format(r) for r in b]

def test_every_bad_row_in_one_error(tmp_path):
    "25 bad rows of three kinds: one error names the first 20 (file:line and field) and counts the rest; --skip-bad-rows reads the good ones."
    good = {"prompt": "Q?", "chosen": "a", "rejected": "b"}
    bad = [json.dumps({**good, "chosen": 1}), "{not json", json.dumps({"prompt": "only"}), json.dumps([1, 2])]
    lines = [json.dumps(good) if i % 2 == 0 else bad[(i // 2) % 4] for i in range(50)]
    p = tmp_path / "bad.jsonl"; p.write_text("\n".join(lines) + "\n")
    with pytest.raises(SafetyCompassError) as e: A.load_preferences(p)
    msg = str(e.value)
    assert msg.startswith(f"{p}: 25 bad rows (") and msg.endswith("; and 5 more") and "\n" not in msg, msg
    named = [int(x.split(":")[0]) for x in msg.split(f"{p}:")[2:]]
    assert named == list(range(2, 42, 2)), named                       # every bad line in file order, the first 20
    assert f"{p}:2: field 'chosen'" in msg and f"{p}:4: malformed JSON" in msg and f"{p}:6: not a preference row" in msg \
           and f"{p}:8: expected an object, got list" in msg
    d = A.load_preferences(p, skip_bad=True)
    assert len(d) == 25 and len(d.skipped) == 25 and d.rows[3] is None   # a line that is not JSON has no row

def test_write_filtered_keeps_rows_verbatim(tmp_path):
    rows = [{"prompt": f"Q{i}?", "chosen": "a", "rejected": "b", "extra": i} for i in range(5)]
    src = tmp_path / "in.jsonl"; src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    d = A.load_preferences(src)
    out = A.write_filtered(d, [1, 3], tmp_path / "out.jsonl.gz")
    back = [json.loads(l) for l in gzip.open(out, "rt")]
    assert back == [rows[0], rows[2], rows[4]]
    assert A.write_filtered(d, [1, 3], tmp_path / "again.jsonl.gz").read_bytes() == out.read_bytes()   # gzip without a timestamp

# ---------------------------------------------------------------------------------------------------------------
# the command line (arguments as the CLI chapter adds them)

def parse(*argv):
    return A.add_audit_args(argparse.ArgumentParser()).parse_args([str(a) for a in argv])

def test_errors_before_any_model(tmp_path, monkeypatch):
    import safety_compass.models as M
    monkeypatch.setattr(M, "load_experiment_model", lambda *a, **k: pytest.fail("a model was loaded"))
    good = tmp_path / "p.jsonl"; good.write_text(json.dumps({"prompt": "Q?", "chosen": "a", "rejected": "b"}) + "\n")
    bad = tmp_path / "b.jsonl"; bad.write_text(json.dumps({"prompt": "Q?", "chosen": 1, "rejected": "b"}) + "\n")
    (tmp_path / "file").write_text("")
    no_templates = tmp_path / "refusal.yaml"                               # answers: templated, but no answer texts
    cfg = yaml.safe_load((ROOT / "configs/concepts/demo/refusal.yaml").read_text())
    cfg["contrastive_pairs_file"] = str(ROOT / cfg["contrastive_pairs_file"]); cfg["audit"] = {"direction": "response", "answers": "templated"}
    no_templates.write_text(yaml.safe_dump(cfg, sort_keys=False))
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump({"name": "t", "model_config_file": str(ROOT / "configs/models/smollm2-135m.yaml"),
                                                       "concepts": [{"name": "refusal", "config_file": str(no_templates)}]}))
    cases = [((bad, "--experiment-config", "demo", "--output-dir", tmp_path / "o"), f"{bad}:1: field 'chosen'"),
             ((good, "--experiment-config", "nope", "--output-dir", tmp_path / "o"), "nope: config file not found"),
             ((good, "--experiment-config", "demo", "--output-dir", tmp_path / "o", "--concepts", "honesty"), "unknown concept(s) honesty"),
             ((good, "--experiment-config", "demo", "--output-dir", tmp_path / "file" / "o"), "output directory is not writable"),
             ((good, "--experiment-config", "demo", "--output-dir", tmp_path / "o", "--random-directions", "10"),
              "n_random: at least 20 random directions are needed for the null, got 10"),
             ((good, "--experiment-config", tmp_path / "exp.yaml", "--output-dir", tmp_path / "o"),
              f"{no_templates}:{len(no_templates.read_text().splitlines()) - 2}: audit: templates: answers: templated needs positive and negative answer texts")]
    for argv, msg in cases:
        with pytest.raises(SafetyCompassError) as e: A.audit_command(parse(*argv), print_fn=lambda *a: None)
        assert msg in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "o").exists()

def test_cli_every_bad_row(tmp_path):
    "`safety-compass audit` on a file with 22 bad rows: one error line naming 20 and counting 2, exit 2, nothing written, no model."
    from conftest import run_cli
    good = json.dumps({"prompt": "Q?", "chosen": "a", "rejected": "b"})
    p = tmp_path / "bad.jsonl"; p.write_text("".join((good if i % 2 else '{"prompt": "Q?", "chosen": 1, "rejected": "b"}') + "\n" for i in range(44)))
    r = run_cli("safety-compass", "audit", p, "--experiment-config", "demo", "--output-dir", tmp_path / "o", env={"OMP_NUM_THREADS": "1"})
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {p}: 22 bad rows") and err[0].endswith("; and 2 more"), r.stderr[-2000:]
    assert err[0].count("field 'chosen'") == 20
    assert sorted(x.name for x in tmp_path.iterdir()) == ["bad.jsonl"]

# ---------------------------------------------------------------------------------------------------------------
# end to end on the embedded model

@pytest.fixture(scope="module")
def setup(tmp_path_factory, embedded):
    """The embedded model, an experiment of the bundled concept files (their `audit:` sections select templated
    response-side directions), and its baselines."""
    from safety_compass.monitor import SafetyCompassMonitor
    d = tmp_path_factory.mktemp("audit")
    exp = {"name": "audit_test", "seed": 0, "model_config_file": str(ROOT / "configs/models/smollm2-135m.yaml"),
           "concepts": [{"name": c, "config_file": str(ROOT / f"configs/concepts/{c}.yaml")} for c in CONCEPTS]}
    (d / "exp.yaml").write_text(yaml.safe_dump(exp, sort_keys=False))
    model, tok = embedded
    mon = SafetyCompassMonitor.from_config(model, tok, d / "exp.yaml")
    mon.setup(progress=False, causal_check=False)
    mon.save_baselines(d / "baselines")
    return {"dir": d, "exp": d / "exp.yaml", "baselines": d / "baselines", "model": model, "tok": tok}

@pytest.fixture
def no_reload(monkeypatch, setup):
    "`run_audit` gets the loaded embedded model instead of loading a second copy."
    import safety_compass.models as M
    monkeypatch.setattr(M, "load_experiment_model", lambda *a, **k: (setup["model"], setup["tok"]))

def test_cli_audit_filter_inoculate(setup, no_reload, tmp_path):
    src = tmp_path / "contaminated.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in A.contaminated()))
    out, printed = tmp_path / "out", []
    a = parse(src, "--experiment-config", setup["exp"], "--output-dir", out, "--baselines", setup["baselines"], "--filter",
              "--filter-concepts", "sycophancy", "--inoculate", "Agree with the user.", "--bootstrap", "300")
    assert A.audit_command(a, printed.append) == 0
    text = "\n".join(printed)
    s = A.load_audit(out)
    assert s["table"][0]["concept"] == "sycophancy" and s["data"]["pairs_audited"] == 70
    assert format_table(A.concept_table(s), A.TABLE_COLUMNS, left=("concept", "notes")) in text   # the printed table is the summary's
    planted = [bool(r.get("planted")) for r in A.contaminated()]
    pairs = pd.read_csv(out / "pairs.csv")
    top7 = pairs.sort_values("z_sycophancy", ascending=False, kind="stable").pair[:7]
    assert sum(planted[i] for i in top7) >= 5
    kept = A.load_preferences(out / "filtered" / "pairs.jsonl")
    assert sum(bool(kept.rows[p.row].get("planted")) for p in kept.pairs) <= 2
    f = A.load_audit(out / "filtered")
    syc = lambda s_: next(r for r in s_["table"] if r["concept"] == "sycophancy")
    assert abs(syc(f)["d_z"]) <= 0.3 * abs(syc(s)["d_z"])
    ino = A.load_preferences(out / "inoculated.jsonl")
    orig = A.load_preferences(src)
    changed = [i for i, (x, y) in enumerate(zip(orig.pairs, ino.pairs)) if x.prompt != y.prompt]
    assert changed and all(ino.pairs[i].prompt == (("system", "Agree with the user."),) + orig.pairs[i].prompt for i in changed)
    assert len(changed) == s["flagged_pairs"] or set(changed) <= set(pairs.index[pairs.flagged])
    # the report section shows the same cells
    html = A.report_section({"runs": [{"name": "r", "dir": tmp_path / "run"}]})
    assert html == ""
    (tmp_path / "run").mkdir(); os.symlink(out, tmp_path / "run" / "audit")
    html = A.report_section({"runs": [{"name": "r", "dir": tmp_path / "run"}]})
    for v in A.concept_table(s)[0].values(): assert str(v).replace("'", "&#x27;") in html

# ---------------------------------------------------------------------------------------------------------------
# the defaults: `safety-compass audit DATA --experiment-config demo` (the refusal organism, each concept file's
# audit.direction), on data the defaults were not chosen on (the chapter checks the planted sets: sycophancy first on
# sycophancy pairs, refusal first and negative on harmful compliance)

CHECK = Path("data/preferences/harmful_compliance.jsonl")   # shipped; relative: found in the bundle from any directory

@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    "The refusal organism (the demo experiment's model) and the demo experiment's baselines on it."
    from safety_compass.organisms import load_organism
    from safety_compass.monitor import SafetyCompassMonitor
    d = tmp_path_factory.mktemp("demo_audit")
    model, tok = load_organism("refusal")
    mon = SafetyCompassMonitor.from_config(model, tok, "demo")
    mon.setup(progress=False, causal_check=False)
    mon.save_baselines(d / "baselines")
    return {"model": model, "tok": tok, "baselines": d / "baselines"}

def audit_demo(demo, monkeypatch, data, out, *extra):
    "`safety-compass audit DATA --experiment-config demo` with no --directions; returns (summary, printed lines)."
    import safety_compass.models as M
    monkeypatch.setattr(M, "load_experiment_model", lambda *a, **k: (demo["model"], demo["tok"]))
    printed = []
    assert A.audit_command(parse(data, "--experiment-config", "demo", "--output-dir", out, "--baselines", demo["baselines"],
                                 "--bootstrap", "200", *extra), printed.append, progress=False) == 0
    return A.load_audit(out), printed

def test_defaults_read_harmful_compliance(demo, monkeypatch, tmp_path):
    """On the shipped harmful-compliance file (written after the defaults were chosen; answers matched in length),
    the default audit ranks refusal first with a negative sign, beyond the random-direction null, and says so first."""
    monkeypatch.chdir(tmp_path)                                         # the copy-paste command works from any directory
    s, printed = audit_demo(demo, monkeypatch, CHECK, tmp_path / "hc")
    assert {c: v["kind"] for c, v in s["directions"].items()} == {c: "response" for c in CONCEPTS}
    top = s["table"][0]
    assert top["concept"] == "refusal" and top["d_z"] < 0 and top["specific"] and top["separates"], top
    assert s["data"]["pairs_audited"] == 39 and not s["length"]["confounded"]
    line = A.headline(s)
    assert line.startswith("Top concept: refusal. Chosen answers are less refusal-like than rejected ones"), line
    assert printed[0] == line and f"**{line}**" in (tmp_path / "hc" / "preflight.md").read_text()
    assert s["data_sha256"] == sha256_file(ROOT / CHECK)                  # the bundled file's provenance is recorded

@pytest.mark.skipif(not HH.is_file(), reason=f"{HH} not present (the shared real-data folder is not part of a fresh clone)")
def test_defaults_hh_refusal_sign(demo, monkeypatch, tmp_path):
    """On the first 60 real single-turn HH harmless-base pairs (chosen: the more harmless answer) the default directions
    give refusal a positive sign (measured +0.33; the audit chapter's table)."""
    s, _ = audit_demo(demo, monkeypatch, HH, tmp_path / "hh", "--single-turn", "--skip-bad-rows", "--limit", "60")
    refusal = next(r for r in s["table"] if r["concept"] == "refusal")
    assert s["data"]["pairs_audited"] == 60 and refusal["d_z"] > 0, refusal

# ---------------------------------------------------------------------------------------------------------------
# two processes (gloo): the forward batches are shared, rank 0 writes, the numbers match one process

WORKER = r'''
import sys, json, numpy as np, torch
from safety_compass.capture import init_distributed, dist_info
out, cache = sys.argv[1], sys.argv[2]
init_distributed()                                           # the launcher's environment, as under torchrun
rank, world = dist_info()
from safety_compass.models import load_default_model
from safety_compass import audit as A
model, tok = load_default_model()
rng = np.random.default_rng(0)
dirs = {c: A.AuditDirection(c, L, rng.standard_normal(model.config.hidden_size), "prompt") for c, L in (("a", 3), ("b", 7))}
for d in dirs.values(): d.unit /= np.linalg.norm(d.unit)
data = A.pairs_from_records(A.planted_sycophancy(1)[:10])
store = A.StateStore(model, tok, [3, 7], cache, chunk_size=4, token_budget=256)
res = A.audit_pairs(model, tok, data, dirs, store=store, n_boot=100, n_random=20, discover=False)
if res is not None: np.savez(out, **{f"{rep}_{c}": v for rep, d in res.deltas.items() for c, v in d.items()})
else: open(out + ".none", "w").write(str(rank))
'''   # run_ranks adds the ending: end_distributed(), then os._exit(0)

def test_two_processes_match_one(tmp_path):
    run_ranks(tmp_path, WORKER, 1, tmp_path / "one.npz", tmp_path / "c1")
    run_ranks(tmp_path, WORKER, 2, tmp_path / "two.npz", tmp_path / "c2")
    a, b = np.load(tmp_path / "one.npz"), np.load(tmp_path / "two.npz")
    assert sorted(a.files) == sorted(b.files)
    for k in a.files: assert np.abs(a[k] - b[k]).max() < 1e-4, k
    assert (tmp_path / "two.npz.none").read_text() == "1"             # rank 1 takes part in the forwards, gets no result
    assert len(list((tmp_path / "c2").rglob("chunk-*.npz"))) == len(list((tmp_path / "c1").rglob("chunk-*.npz"))) == 5

WORKER_CLI = r'''
import sys
from safety_compass.cli import main
if main(sys.argv[1:]) != 0: raise SystemExit(1)
'''

def test_filter_under_two_processes(setup, no_reload, tmp_path):
    """`safety-compass audit --filter` as two processes (gloo): every rank takes part in the filtered file's audit too
    (rank 1 used to return after the first audit while rank 0 waited for it in the second one's forwards: a hang, which
    run_ranks' timeout turns into a failure), and the filtered audit gives one process's numbers."""
    src = tmp_path / "contaminated.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in A.contaminated()[:24]))
    args = [src, "--experiment-config", setup["exp"], "--baselines", setup["baselines"], "--filter", "--filter-concepts",
            "sycophancy", "--bootstrap", "100", "--random-directions", "20", "--seed", "0"]
    run_ranks(tmp_path, WORKER_CLI, 2, "audit", *args, "--output-dir", tmp_path / "two", timeout=900)
    assert A.audit_command(parse(*args, "--output-dir", tmp_path / "one"), lambda *_: None) == 0
    for sub in ("", "filtered"):
        one, two = A.load_audit(tmp_path / "one" / sub), A.load_audit(tmp_path / "two" / sub)
        assert one["data"]["pairs_audited"] == two["data"]["pairs_audited"]
        for r1, r2 in zip(one["table"], two["table"], strict=True):
            assert r1["concept"] == r2["concept"] and abs(r1["d_z"] - r2["d_z"]) < 1e-4, (sub, r1, r2)
    assert A.load_audit(tmp_path / "two" / "filtered")["data"]["pairs_audited"] < 24

# ---------------------------------------------------------------------------------------------------------------
# real data: Anthropic HH harmless-base test split (../shared; never copied into the project)

@pytest.mark.long   # about 6 minutes on a 2-core CPU (the audit of 662 pairs, twice): make test-long
@pytest.mark.skipif(not HH.is_file(), reason=f"{HH} not present (the shared real-data folder is not part of a fresh clone)")
def test_hh_end_to_end(setup, no_reload, tmp_path):
    out = tmp_path / "hh"
    argv = (HH, "--experiment-config", setup["exp"], "--output-dir", out, "--baselines", setup["baselines"], "--single-turn",
            "--skip-bad-rows")
    printed = []
    assert A.audit_command(parse(*argv), printed.append) == 0
    s = A.load_audit(out)
    d = s["data"]
    assert d["pairs_audited"] + len(d["skipped"]) >= 662 - 1 and d["pairs_audited"] >= 660, d
    assert d["dropped_multi_turn"] > 1500 and all(":" in x for x in d["skipped"])
    for r in s["table"]:
        assert None not in r["d_z_ci"] and None not in r["auroc_ci"] and r["split_half"] is not None
        assert r["length_intercept_t"] is not None and r["null_p95"] is not None
    assert s["length"]["chosen_shorter"] > 0.5 and s["length"]["confounded"]   # the shared README: chosen shorter in 55%
    files = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert A.audit_command(parse(*argv), lambda *a: None) == 0                  # a rerun with the same seed: the same files
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == files
    print("\n".join(printed))
