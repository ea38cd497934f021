"Bad input through the CLI: one line on stderr, exit status 2, no traceback, no partial output files."
import json, shutil
from pathlib import Path
import pytest
from conftest import run_cli, ROOT

def _experiment(tmp, pairs_lines, strategy="arditi", extra_concept="", extra_top=""):
    (tmp / "pairs.jsonl").write_text("\n".join(pairs_lines) + "\n")
    (tmp / "concept.yaml").write_text(f"name: c\npairing_strategy: {strategy}\ncontrastive_pairs_file: pairs.jsonl\n{extra_concept}")
    (tmp / "exp.yaml").write_text(f"seed: 1\n{extra_top}concepts:\n  - name: c\n    config_file: concept.yaml\n")
    return tmp / "exp.yaml"

OK = '{"system": "s", "positive_query": "How do I build a bomb?", "negative_query": "How do I build a shed?", "split": "train"}'
OKV = OK.replace('"train"', '"val"')

CASES = [
    ("malformed JSON line", [OK, '{"system": "s",', OKV], {}, "pairs.jsonl:2: malformed JSON"),
    ("missing field", [OK, '{"system": "s", "positive_query": "a", "split": "val"}'], {}, "pairs.jsonl:2: missing field 'negative_query'"),
    ("empty val split", [OK, OK.replace("bomb", "gun")], {}, "no 'val' pairs"),
    ("unknown strategy", [OK, OKV], {"strategy": "contrastive"}, "unknown pairing strategy 'contrastive'"),
]

@pytest.mark.parametrize("name,lines,kw,expected", CASES, ids=[c[0] for c in CASES])
def test_pair_file_errors(tmp_path, name, lines, kw, expected):
    exp = _experiment(tmp_path, lines, **kw)
    out = tmp_path / "out"
    r = run_cli("safety-compass-extract", "--experiment-config", exp, "--output-dir", out, "--model", "default")
    assert r.returncode == 2, r.stderr
    err = r.stderr.strip().splitlines()
    assert err[-1].startswith("error: ") and expected in err[-1], r.stderr
    assert "Traceback" not in r.stderr
    assert not out.exists()

def test_missing_config(tmp_path):
    r = run_cli("safety-compass", "extract", "--experiment-config", tmp_path / "nope.yaml", "--output-dir", tmp_path / "o")
    assert r.returncode == 2 and "nope.yaml: config file not found" in r.stderr and "Traceback" not in r.stderr

def test_missing_pairs_file(tmp_path):
    exp = _experiment(tmp_path, [OK, OKV])
    (tmp_path / "pairs.jsonl").unlink()
    r = run_cli("safety-compass-extract", "--experiment-config", exp, "--output-dir", tmp_path / "o", "--model", "default")
    assert r.returncode == 2 and "contrastive_pairs_file" in r.stderr and "not found" in r.stderr

def test_unknown_key_strict(tmp_path):
    exp = _experiment(tmp_path, [OK, OKV], extra_top="measure_evry: 3\n")
    r = run_cli("safety-compass-extract", "--experiment-config", exp, "--output-dir", tmp_path / "o", "--strict")
    assert r.returncode == 2 and "unknown key 'measure_evry'" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "o").exists()

def test_layer_out_of_range(tmp_path):
    exp = _experiment(tmp_path, [OK, OKV])
    exp.write_text(exp.read_text() + "    best_layer: 31\n")
    r = run_cli("safety-compass-extract", "--experiment-config", exp, "--output-dir", tmp_path / "o", "--model", "default")
    assert r.returncode == 2 and "best_layer: layer 31 out of range 0..30" in r.stderr
    assert not (tmp_path / "o").exists()

def test_duplicate_concepts(tmp_path):
    exp = _experiment(tmp_path, [OK, OKV])
    exp.write_text(exp.read_text() + "  - name: c\n    config_file: concept.yaml\n")
    r = run_cli("safety-compass-extract", "--experiment-config", exp, "--output-dir", tmp_path / "o", "--model", "default")
    assert r.returncode == 2 and "duplicated concept name(s) c" in r.stderr
