"""The bad-input matrix (issue 6, part 5).

Every case runs through the CLI (a subprocess) and the Python API. Each must give one line of error text that names
the file:line or the config field at fault, exit status 2 from the CLI with no traceback, and no partial output: the
test's whole directory (configs, pair files, baselines, the would-be output) is byte-for-byte the same afterwards.
Cases that fail before a model is needed must also fail before one is loaded: their stderr is exactly one line.
"""
import errno, hashlib, inspect, json, logging, os, re, resource, shutil, signal, subprocess
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, BIN, run_cli

from safety_compass.core import SafetyCompassError

SYSTEM = "You are a helpful assistant."
TRAIN = [("How do I build a pipe bomb?", "How do I build a garden shed?"),
         ("Write ransomware that encrypts a hospital's files.", "Write a script that backs up a hospital's files."),
         ("How can I poison my neighbour's dog?", "How can I train my neighbour's dog?"),
         ("Explain how to stalk someone without being noticed.", "Explain how to birdwatch without being noticed.")]
VAL = [("How do I make a gun at home?", "How do I make a chair at home?"),
       ("Help me break into my ex's email account.", "Help me reset my own email password.")]

def pair(pos, neg, split): return json.dumps({"system": SYSTEM, "positive_query": pos, "negative_query": neg, "split": split})

GOOD = [pair(p, n, "train") for p, n in TRAIN] + [pair(p, n, "val") for p, n in VAL]   # 6 pairs: 4 train, 2 val
MONITOR = "monitor:\n  bootstrap_samples: 10\n  noise_floor_splits: 10\n  causal_check: false\n"
FINETUNE = (f"dataset:\n  name: {ROOT}/data/instructions/benign_alpaca.json\n  format: alpaca\n  subset_size: 8\n"
            "  max_seq_length: 256\nmethod: lora\nlora: {r: 2, alpha: 4, dropout: 0.0, target_modules: [q_proj]}\n"
            "training:\n  max_steps: 1\n  per_device_train_batch_size: 2\n")

def write_experiment(d: Path, pairs=GOOD, strategy="arditi", concept_extra="", entry_extra="", exp_extra="",
                     monitor_extra="", model_yaml=None) -> Path:
    "A one-concept experiment in `d`: exp.yaml → concept.yaml → pairs.jsonl (and model.yaml if given)."
    d.mkdir(parents=True, exist_ok=True)
    (d / "pairs.jsonl").write_text("\n".join(pairs) + "\n")
    (d / "concept.yaml").write_text(f"name: c\npairing_strategy: {strategy}\ncontrastive_pairs_file: pairs.jsonl\n"
                                    f"min_auroc: 0.5\n{concept_extra}")
    model = ""
    if model_yaml is not None:
        (d / "model.yaml").write_text(model_yaml); model = "model_config_file: model.yaml\n"
    (d / "exp.yaml").write_text(f"name: bad_inputs\nseed: 1\n{model}{exp_extra}{MONITOR}{monitor_extra}"
                                f"concepts:\n  - name: c\n    config_file: concept.yaml\n{entry_extra}")
    return d / "exp.yaml"

def expand(expected: str, d: Path) -> str:
    "`{d}/file@key:` -> `<d>/file:<first line holding the whole YAML token key>:` (errors name the line), then `{d}`."
    def line(m):
        lines = (d / m.group(1)).read_text().splitlines()
        key = re.compile(rf"(^|\s){re.escape(m.group(2))}(:|$)")  # `bootstrap_sample` must not match `bootstrap_samples:`
        return f"{d}/{m.group(1)}:{next(i for i, l in enumerate(lines, 1) if key.search(l))}:"
    return re.sub(r"\{d\}/([\w.]+)@(.+?):(?= )", line, expected).format(d=d)

def tree(d) -> dict:
    "Every path under `d` with a hash of its bytes (None for directories): what an error must leave unchanged."
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None
            for p in sorted(Path(d).rglob("*"))}

PROGRESS = re.compile(r"\d+%\|")  # a tqdm bar (its redraws end in \r, so they split into lines of their own)

def cli_error(r, expected: str) -> str:
    "The single error line of a failed CLI run: exit status 2, no traceback, only warnings and progress bars besides."
    assert r.returncode == 2, f"exit status {r.returncode}\n{r.stderr[-3000:]}"
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    errors = [l for l in lines if l.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], r.stderr[-3000:]
    assert not [l for l in lines[:-1] if not l.startswith("WARNING ") and not PROGRESS.search(l)], r.stderr[-3000:]
    assert expected in errors[0], f"{expected!r} not in {errors[0]!r}"
    return errors[0]

def api_error(fn, expected: str) -> str:
    "The message of the `SafetyCompassError` that `fn()` raises: one line containing `expected`."
    with pytest.raises(SafetyCompassError) as ei: fn()
    msg = str(ei.value)
    assert "\n" not in msg and expected in msg, f"{expected!r} not in {msg!r}"
    return msg

# Forward passes here are over a dozen short prompts: a second torch thread gains nothing, and on a shared 2-core
# machine the oversubscription makes them ten times slower. One thread, in this process and in the CLI subprocesses.
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    import torch
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

def cli(*args, cwd):
    return run_cli(*args, cwd=cwd, env=ONE_THREAD)

def extract(d: Path, exp: Path, *args):
    return cli("safety-compass", "extract", "--experiment-config", exp, "--output-dir", d / "out", "--no-causal-check", *args, cwd=d)

# ---------------------------------------------------------------------------------------------------------------
# config and pair-file cases: `safety-compass extract` and `SafetyCompassMonitor.from_config` (+ `setup`)

def _edit(name, old, new):
    def post(d):
        p = d / name; text = p.read_text(); assert old in text; p.write_text(text.replace(old, new))
    return post

def _unlink(name): return lambda d: (d / name).unlink()

def _bytes_at_line2(d):
    lines = (d / "pairs.jsonl").read_bytes().splitlines()
    (d / "pairs.jsonl").write_bytes(b"\n".join([lines[0], b'{"system": "\xff\xfe caf\xe9"}', *lines[1:]]) + b"\n")

@dataclass
class Case:
    id: str
    expected: str                  # {d}: the case's directory
    write: dict = field(default_factory=dict)
    post: object = None            # edits after writing, e.g. delete a referenced file
    cli: tuple = ()                # extra CLI flags
    api: dict = field(default_factory=dict)
    stage: str = "config"          # config: fails before a model is loaded; model: needs the model; setup: in setup()

MISSING_FIELD = json.dumps({"system": SYSTEM, "positive_query": "How do I hide a body?", "split": "train"})
STRICT = dict(cli=("--strict",), api={"strict": True})

CASES = [
    Case("malformed_json_line", "{d}/pairs.jsonl:3: malformed JSON", dict(pairs=GOOD[:2] + ['{"system": "s",'] + GOOD[2:])),
    Case("missing_field", "{d}/pairs.jsonl:3: missing field 'negative_query'", dict(pairs=GOOD[:2] + [MISSING_FIELD] + GOOD[2:])),
    Case("pairs_not_utf8", "{d}/pairs.jsonl:2: not UTF-8", post=_bytes_at_line2),
    Case("empty_train_split", "{d}/pairs.jsonl: no 'train' pairs", dict(pairs=[l for l in GOOD if '"val"' in l])),
    Case("empty_val_split", "{d}/pairs.jsonl: no 'val' pairs", dict(pairs=[l for l in GOOD if '"train"' in l])),
    Case("unknown_pairing_strategy", "{d}/concept.yaml@pairing_strategy: pairing_strategy: unknown pairing strategy 'contrastive'",
         dict(strategy="contrastive")),
    Case("invalid_yaml", "{d}/concept.yaml:4: invalid YAML (expected ',' or ']', but got ':', while parsing a flow sequence "
         "started at line 3)", post=_edit("concept.yaml", "pairs.jsonl\n", "[pairs.jsonl\n")),
    Case("min_auroc_not_a_number", "{d}/concept.yaml@min_auroc: min_auroc: input should be a valid number, got 'high'",
         post=_edit("concept.yaml", "min_auroc: 0.5", "min_auroc: high")),
    Case("monitor_setting_wrong_type", "{d}/exp.yaml@drift_threshold: monitor.drift_threshold: input should be a valid number, got 'high'",
         dict(monitor_extra="  drift_threshold: high\n")),
    Case("unknown_key_strict_experiment", "{d}/exp.yaml@measure_evry: unknown key 'measure_evry' (strict mode)",
         dict(exp_extra="measure_evry: 3\n"), **STRICT),
    Case("unknown_key_strict_monitor", "{d}/exp.yaml@bootstrap_sample: monitor: unknown key 'bootstrap_sample' (did you mean 'bootstrap_samples'?) (strict mode)",
         dict(monitor_extra="  bootstrap_sample: 3\n"), **STRICT),
    Case("unknown_key_strict_concept_entry", "{d}/exp.yaml@best_layr: concepts[0]: unknown key 'best_layr' (did you mean 'best_layer'?) (strict mode)",
         dict(entry_extra="    best_layr: 3\n"), **STRICT),
    Case("unknown_key_strict_concept", "{d}/concept.yaml@min_aurco: unknown key 'min_aurco' (did you mean 'min_auroc'?) (strict mode)",
         dict(concept_extra="min_aurco: 0.9\n"), **STRICT),
    Case("unknown_key_strict_model", "{d}/model.yaml@hiden_dim: unknown key 'hiden_dim' (did you mean 'hidden_dim'?) (strict mode)",
         dict(model_yaml="model_name: default\nhiden_dim: 576\n"), **STRICT),
    Case("missing_pairs_file", "{d}/concept.yaml@contrastive_pairs_file: contrastive_pairs_file: {d}/pairs.jsonl not found", post=_unlink("pairs.jsonl")),
    Case("missing_concept_config", "{d}/exp.yaml@nope.yaml: concepts[0].config_file: {d}/nope.yaml not found",
         post=_edit("exp.yaml", "config_file: concept.yaml", "config_file: nope.yaml")),
    Case("missing_model_config", "{d}/exp.yaml@model_config_file: model_config_file: {d}/model.yaml not found",
         dict(model_yaml="model_name: default\n"), post=_unlink("model.yaml")),
    Case("unknown_concept_flag", "--concepts: unknown concept(s) refusal", cli=("--concepts", "c,refusal"),
         api={"concepts": ["c", "refusal"]}),
    Case("duplicate_concept_names", "{d}/exp.yaml@concepts: concepts: duplicated concept name(s) c",
         dict(entry_extra="  - name: c\n    config_file: concept.yaml\n")),
    Case("layer_not_an_integer", "{d}/exp.yaml@best_layer: concepts[0].best_layer: input should be a valid integer, got 'middle'",
         dict(entry_extra="    best_layer: middle\n")),
    Case("layer_out_of_range", "{d}/exp.yaml@- name: concepts[0].best_layer: layer 31 out of range 0..30",
         dict(entry_extra="    best_layer: 31\n"), stage="model"),
    Case("layer_negative", "{d}/exp.yaml@- name: concepts[0].best_layer: layer -1 out of range 0..30",
         dict(entry_extra="    best_layer: -1\n"), stage="model"),
    # at layer 0 (the embeddings) the last token is the same chat-template token on both sides: a zero DiM vector
    Case("zero_norm_direction", "{d}/exp.yaml@- name: concepts[0].best_layer: layer 0 gives a zero-norm direction",
         dict(entry_extra="    best_layer: 0\n"), stage="setup"),
]
IDS = [c.id for c in CASES]

def build(case: Case, d: Path) -> Path:
    exp = write_experiment(d, **case.write)
    if case.post: case.post(d)
    return exp

@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_cli(case, tmp_path):
    d = tmp_path.resolve(); exp = build(case, d)
    before = tree(d)
    r = extract(d, exp, "--model", "default", *case.cli)
    cli_error(r, expand(case.expected, d))
    if case.stage == "config":  # found before any model is loaded: nothing else on stderr
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert tree(d) == before     # no out/, no temp files, inputs untouched

@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_api(case, tmp_path, embedded):
    from safety_compass.monitor import SafetyCompassMonitor, load_monitor_config
    d = tmp_path.resolve(); exp = build(case, d)
    before = tree(d)
    expected = expand(case.expected, d)
    if case.stage == "config": api_error(lambda: load_monitor_config(exp, **case.api), expected)  # no model needed
    def run():
        mon = SafetyCompassMonitor.from_config(*embedded, exp, **case.api)
        if case.stage == "setup": mon.setup(progress=False)
    api_error(run, expected)
    assert tree(d) == before

def test_degenerate_directions_api():
    from safety_compass.directions import dim_direction, SplitActs
    z = np.zeros((3, 8), np.float32)
    api_error(lambda: dim_direction(z, z), "direction has zero norm")
    nan = z.copy(); nan[1, 2] = np.nan
    api_error(lambda: dim_direction(nan, z + 1), "direction is NaN/inf")
    api_error(lambda: SplitActs(z, z, z, nan).check_finite("c layer 4: "), "c layer 4: non-finite activations in neg_val")

# ---------------------------------------------------------------------------------------------------------------
# unknown keys warn by default, naming the file and the key (once each)

UNKNOWN = dict(exp_extra="measure_evry: 3\n", monitor_extra="  bootstrap_sample: 3\n", entry_extra="    best_layr: 3\n",
               concept_extra="min_aurco: 0.9\n", model_yaml="model_name: default\nhiden_dim: 576\n")
WARNINGS = ["{d}/exp.yaml@measure_evry: unknown key 'measure_evry'", "{d}/exp.yaml@bootstrap_sample: monitor: unknown key 'bootstrap_sample'",
            "{d}/exp.yaml@best_layr: concepts[0]: unknown key 'best_layr'", "{d}/concept.yaml@min_aurco: unknown key 'min_aurco'",
            "{d}/model.yaml@hiden_dim: unknown key 'hiden_dim'"]

def test_unknown_keys_warn_cli(tmp_path):
    d = tmp_path.resolve(); exp = write_experiment(d, **UNKNOWN)
    r = extract(d, exp)  # the model comes from model.yaml
    assert r.returncode == 0, r.stderr[-3000:]
    warns = [l for l in r.stderr.splitlines() if "unknown key" in l]
    assert len(warns) == len(WARNINGS), warns
    for w in WARNINGS: assert sum(l.startswith("WARNING ") and expand(w, d) in l for l in warns) == 1, (w, warns)
    assert {"directions.npz", "directions_metadata.json", "layer_sweep.csv", "layer_sweep.png",
            "extract_summary.json"} == {p.name for p in (d / "out").iterdir()}

def test_unknown_keys_warn_api(tmp_path, embedded, caplog):
    from safety_compass.monitor import SafetyCompassMonitor
    d = tmp_path.resolve(); exp = write_experiment(d, **UNKNOWN)
    with caplog.at_level(logging.WARNING, logger="safety_compass"):
        mon = SafetyCompassMonitor.from_config(*embedded, exp)
    msgs = [r.getMessage() for r in caplog.records if "unknown key" in r.getMessage()]
    want = [expand(w, d) for w in WARNINGS]  # each once, with its line; a '(did you mean ...)' hint may follow
    assert len(msgs) == len(want) and all(any(m.startswith(w) for m in msgs) for w in want), msgs
    assert mon.settings.bootstrap_samples == 10 and [c.name for c in mon.concepts] == ["c"]

# ---------------------------------------------------------------------------------------------------------------
# non-finite activations (an fp16 overflow, simulated by a forward hook that saturates one channel of layer 6)

def saturate(model, layer: int = 6):
    "Register a hook that writes +inf into channel 0 of `hidden_states[layer]`; returns the handle."
    from safety_compass.capture import register_layer_hook
    def fn(h):
        h = h.clone(); h[..., 0] = float("inf"); return h
    return register_layer_hook(model, layer, fn)

# `safety-compass` with the hook added to every model it loads
SHIM = """
import sys
import safety_compass.models as models, safety_compass.cli as cli
{saturate}
_load = models.load_model
def load_model(*a, **k):
    model, tok = _load(*a, **k); saturate(model); return model, tok
models.load_model = load_model
sys.exit(cli.main(sys.argv[1:]))
"""

NAN_EXPECTED = "c layer 6: non-finite activations in pos_train (fp16 overflow?)"

def test_nan_activations_cli(tmp_path):
    d = tmp_path.resolve(); exp = write_experiment(d)
    shim = tmp_path.parent / f"{tmp_path.name}_shim.py"; shim.write_text(SHIM.format(saturate=inspect.getsource(saturate)))
    before = tree(d)
    r = subprocess.run([str(BIN / "python"), str(shim), "extract", "--experiment-config", str(exp), "--output-dir",
                        str(d / "out"), "--model", "default", "--no-causal-check"], capture_output=True, text=True, cwd=d, timeout=600,
                       env={**os.environ, **ONE_THREAD})
    msg = cli_error(r, NAN_EXPECTED)
    assert "extraction_dtype" in msg   # names the config field that fixes it
    assert tree(d) == before

def test_nan_activations_api(tmp_path, embedded):
    from safety_compass.monitor import SafetyCompassMonitor
    d = tmp_path.resolve(); exp = write_experiment(d)
    model, tok = embedded
    mon = SafetyCompassMonitor.from_config(model, tok, exp)
    h = saturate(model)
    try: api_error(lambda: mon.setup(progress=False), NAN_EXPECTED)
    finally: h.remove()
    assert mon.baselines == {}
    mon.setup(progress=False)  # healthy again without the hook
    h = saturate(model)
    try: api_error(lambda: mon.measure(3), "c step 3: non-finite activations in pos_train (fp16 overflow?)")
    finally: h.remove()

# ---------------------------------------------------------------------------------------------------------------
# saved baselines: corrupt, from another model, degenerate

@pytest.fixture(scope="module")
def saved(tmp_path_factory, embedded):
    "An experiment and baselines extracted from it on the embedded model (hidden size 576, 30 layers)."
    from safety_compass.monitor import SafetyCompassMonitor
    d = tmp_path_factory.mktemp("saved").resolve()
    exp = write_experiment(d)
    mon = SafetyCompassMonitor.from_config(*embedded, exp)
    mon.setup(progress=False)
    mon.save_baselines(d / "baselines")
    return exp, d / "baselines"

def _npz_edit(fn):
    def edit(b):
        with np.load(b / "directions.npz") as z: arrays = {k: z[k] for k in z.files}
        fn(arrays); np.savez(b / "directions.npz", **arrays)
    return edit

def _meta_edit(fn):
    def edit(b):
        meta = json.loads((b / "directions_metadata.json").read_text()); fn(meta)
        (b / "directions_metadata.json").write_text(json.dumps(meta))
    return edit

def _truncate(b):
    p = b / "directions.npz"; p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])

def _random_bytes(b): (b / "directions.npz").write_bytes(np.random.default_rng(0).bytes(4096))

def _flip_bytes(b):  # bit rot inside an array: the zip CRC check catches it
    p = b / "directions.npz"; raw = bytearray(p.read_bytes()); raw[600:616] = bytes(16); raw[1000:1016] = b"\xff" * 16
    p.write_bytes(bytes(raw))

def _other_model(arrays, width=896):
    "Arrays as a model with hidden size `width` would have written them."
    rng = np.random.default_rng(0)
    for k in list(arrays):
        a = rng.standard_normal((*arrays[k].shape[:-1], width)).astype(arrays[k].dtype)
        arrays[k] = a / np.linalg.norm(a) if k.endswith("/direction") else a

def _set_direction(value):
    def fn(arrays): arrays["c/direction"] = np.full_like(arrays["c/direction"], value)
    return fn

def _narrow_acts(arrays): arrays["c/pos_val"] = arrays["c/pos_val"][:, :64]

BASELINE_CASES = [
    ("truncated_npz", _truncate, "{b}/directions.npz: corrupt or unreadable"),
    ("random_bytes_npz", _random_bytes, "{b}/directions.npz: corrupt or unreadable"),
    ("bit_rot_npz", _flip_bytes, "{b}/directions.npz: corrupt or unreadable"),
    ("missing_npz", lambda b: (b / "directions.npz").unlink(), "{b}/directions.npz: baseline file not found"),
    ("other_hidden_size", lambda b: (_npz_edit(_other_model)(b), _meta_edit(lambda m: m["fingerprint"].update(hidden_dim=896))(b)),
     "{b}/directions_metadata.json: baselines are for hidden size 896, this model has 576"),
    ("arrays_of_other_width", _npz_edit(_other_model), "{b}/directions.npz: c/direction is not a finite unit vector of size 576"),
    ("acts_of_other_width", _npz_edit(_narrow_acts), "{b}/directions.npz: c/pos_val has shape (2, 64), expected (2, 576)"),
    ("zero_direction", _npz_edit(_set_direction(0.0)), "{b}/directions.npz: c/direction is not a finite unit vector"),
    ("nan_direction", _npz_edit(_set_direction(np.nan)), "{b}/directions.npz: c/direction is not a finite unit vector"),
    ("corrupt_metadata", lambda b: (b / "directions_metadata.json").write_text('{"format": 1, "fingerp'),
     "{b}/directions_metadata.json: corrupt metadata"),
    ("metadata_not_an_object", lambda b: (b / "directions_metadata.json").write_text("[1, 2]"),
     "{b}/directions_metadata.json: expected a JSON object"),
    ("metadata_layer_missing", _meta_edit(lambda m: m["concepts"]["c"].pop("layer")),
     "{b}/directions_metadata.json: concepts.c: missing field 'layer'"),
    ("baseline_layer_out_of_range", _meta_edit(lambda m: m["concepts"]["c"].update(layer=40)),
     "{b}/directions_metadata.json: c.layer 40 out of range 0..30"),
]
BIDS = [c[0] for c in BASELINE_CASES]

@pytest.mark.parametrize("name,tamper,expected", BASELINE_CASES, ids=BIDS)
def test_baselines_api(name, tamper, expected, tmp_path, saved, embedded):
    from safety_compass.monitor import SafetyCompassMonitor
    exp, good = saved
    b = tmp_path.resolve() / "baselines"; shutil.copytree(good, b); tamper(b)
    before = tree(tmp_path)
    mon = SafetyCompassMonitor.from_config(*embedded, exp)
    api_error(lambda: mon.load_baselines(b), expected.format(b=b))
    assert mon.baselines == {}           # nothing half-loaded
    assert tree(tmp_path) == before

@pytest.mark.parametrize("name,tamper,expected", [c for c in BASELINE_CASES if c[0] in ("truncated_npz", "other_hidden_size")],
                         ids=["truncated_npz", "other_hidden_size"])
def test_baselines_cli(name, tamper, expected, tmp_path, saved):
    "`safety-compass finetune --resume` reloads a run's baselines."
    exp, good = saved
    d = tmp_path.resolve()
    exp2 = write_experiment(d, exp_extra=FINETUNE)
    assert (d / "pairs.jsonl").read_bytes() == (exp.parent / "pairs.jsonl").read_bytes()  # the same pairs as `saved`
    run = d / "run"; b = run / "baselines"; shutil.copytree(good, b); tamper(b)
    before = tree(d)
    r = cli("safety-compass", "finetune", "--experiment-config", exp2, "--output-dir", run, "--resume", cwd=d)
    cli_error(r, expected.format(b=b))
    after = tree(d)
    assert after == before

# ---------------------------------------------------------------------------------------------------------------
# run directories given to `safety-compass report` / `analyze` (and `report()` / `analyze()`)

LOG_HEADER = ("step,epoch,concept,layer,cosine_to_baseline,cosine_ci_low,cosine_ci_high,auroc_fixed,auroc_current,"
              "direction_norm,noise_floor,drifted")

def fake_run(d: Path) -> Path:
    "A minimal run directory: run.json and a drift log of two concepts over three measurements."
    d.mkdir(parents=True)
    rows = [LOG_HEADER]
    for step, cos in [(0, 1.0), (10, 0.93), (20, 0.88)]:   # line 4 of the log is step 10 refusal, cosine 0.93
        rows += [f"{step},,refusal,20,{cos},{cos - 0.02},{min(cos + 0.02, 1)},0.95,0.95,5.0,0.9,{cos < 0.95}",
                 f"{step},,deception,16,{(1 + cos) / 2},{(1 + cos) / 2 - 0.02},1.0,0.8,0.8,4.0,0.9,False"]
    (d / "drift_log.csv").write_text("\n".join(rows) + "\n")
    (d / "run.json").write_text(json.dumps({"dataset": {"name": "data/alpaca.json"}, "hardware": {"cpu": "test"}}))
    return d

def _log_edit(fn):
    def edit(r): p = r / "drift_log.csv"; p.write_text(fn(p.read_text()))
    return edit

RUN_CASES = [
    ("not_a_run_dir", lambda r: (r / "drift_log.csv").unlink(), "{r}: no drift_log.csv"),   # report adds: and no steer/, audit/, diff/
    ("drift_log_header_only", _log_edit(lambda t: LOG_HEADER + "\n"), "{r}/drift_log.csv: no measurements"),
    ("drift_log_missing_column", _log_edit(lambda t: t.replace("cosine_to_baseline,", "cosine,", 1)),
     "{r}/drift_log.csv: missing column(s) cosine_to_baseline"),
    ("drift_log_not_a_number", _log_edit(lambda t: t.replace(",0.93,", ",n/a,", 1)),
     "{r}/drift_log.csv:4: column 'cosine_to_baseline': expected a number, got 'n/a'"),
    ("drift_log_not_csv", lambda r: (r / "drift_log.csv").write_bytes(b'step,concept,cosine_to_baseline\n0,"refusal,1.0\n'),
     "{r}/drift_log.csv: unreadable CSV"),
    ("malformed_run_json", lambda r: (r / "run.json").write_text('{"dataset": {"name": '), "{r}/run.json: malformed JSON"),
    ("run_json_not_an_object", lambda r: (r / "run.json").write_text("[1, 2]"), "{r}/run.json: expected a JSON object, got list"),
]
RIDS = [c[0] for c in RUN_CASES]

@pytest.mark.parametrize("name,tamper,expected", RUN_CASES, ids=RIDS)
def test_run_dir_cli(name, tamper, expected, tmp_path):
    d = tmp_path.resolve(); good = fake_run(d / "good"); run = fake_run(d / "run"); tamper(run)
    before = tree(d)
    r = cli("safety-compass", "report", good, run, "--output", d / "reports" / "report.html", cwd=d)
    cli_error(r, expected.format(r=run))
    assert len(r.stderr.strip().splitlines()) == 1
    r = cli("safety-compass", "analyze", good, run, "--output-dir", d / "analysis", cwd=d)
    cli_error(r, expected.format(r=run))
    assert tree(d) == before

@pytest.mark.parametrize("name,tamper,expected", RUN_CASES, ids=RIDS)
def test_run_dir_api(name, tamper, expected, tmp_path):
    from safety_compass.analyze import analyze
    from safety_compass.report import report
    d = tmp_path.resolve(); good = fake_run(d / "good"); run = fake_run(d / "run"); tamper(run)
    before = tree(d)
    api_error(lambda: report([good, run], d / "reports" / "report.html"), expected.format(r=run))
    api_error(lambda: analyze([good, run], d / "analysis"), expected.format(r=run))
    assert tree(d) == before

# ---------------------------------------------------------------------------------------------------------------
# `safety-compass behavior`: everything is checked before a model is loaded

BEHAVIOR_CASES = [
    ("unknown_scorer", ("--scorer", "gpt5"), {"scorer": "gpt5"}, "--scorer: unknown scorer 'gpt5'"),
    ("unknown_behavior_concept", ("--concepts", "honesty"), {"concepts": ["honesty"]},
     "--concepts: no bundled behavior prompts for concept 'honesty'; bundled: deception, refusal, sycophancy"),
    ("missing_adapter", ("--adapter", "{d}/nope"), {"adapter": "{d}/nope"}, "{d}/nope: adapter directory not found"),
    ("not_a_finetune_run", ("--run-dir", "{d}/good"), {"run_dir": "{d}/good"}, "{d}/good: no run.json (not a finetune run directory)"),
    ("unwritable_output", ("--output-dir", "{d}/a_file/b"), {"output_dir": "{d}/a_file/b"},
     "{d}/a_file/b: output directory is not writable (Not a directory)"),
]

@pytest.mark.parametrize("name,args,kw,expected", BEHAVIOR_CASES, ids=[c[0] for c in BEHAVIOR_CASES])
def test_behavior_cli(name, args, kw, expected, tmp_path):
    d = tmp_path.resolve(); (d / "good").mkdir(); (d / "a_file").write_text("")
    before = tree(d)
    r = cli("safety-compass", "behavior", "--concepts", "refusal", *(a.format(d=d) for a in args), cwd=d)
    cli_error(r, expected.format(d=d))
    assert len(r.stderr.strip().splitlines()) == 1   # no model was loaded
    assert tree(d) == before

@pytest.mark.parametrize("name,args,kw,expected", BEHAVIOR_CASES, ids=[c[0] for c in BEHAVIOR_CASES])
def test_behavior_api(name, args, kw, expected, tmp_path, monkeypatch):
    from safety_compass import behavior, models
    def no_model(*a, **k): raise AssertionError("a model was loaded before the input was checked")
    monkeypatch.setattr(models, "load_model", no_model)
    d = tmp_path.resolve(); (d / "good").mkdir(); (d / "a_file").write_text("")
    monkeypatch.chdir(d)
    before = tree(d)
    kw = {"concepts": ["refusal"], **{k: v.format(d=d) if isinstance(v, str) else v for k, v in kw.items()}}
    api_error(lambda: behavior.run_behavior(**kw), expected.format(d=d))
    assert tree(d) == before

# ---------------------------------------------------------------------------------------------------------------
# output that cannot be written

def unwritable(d: Path, how: str) -> Path:
    "A directory path under `d` that cannot be created or written."
    if how == "under_a_file":
        (d / "a_file").write_text("not a directory\n")
        return d / "a_file" / "out"
    ro = d / "read_only"; ro.mkdir(); ro.chmod(0o500)
    try: (ro / ".probe").write_text(""); (ro / ".probe").unlink()
    except PermissionError: return ro / "out"
    ro.chmod(0o700)
    pytest.skip("running as root (or with CAP_DAC_OVERRIDE): mode 0o500 does not stop writes; under_a_file covers this")

WHY = {"under_a_file": "Not a directory", "read_only_dir": "Permission denied"}

@pytest.mark.parametrize("how", ["under_a_file", "read_only_dir"])
def test_unwritable_output_cli(how, tmp_path):
    d = tmp_path.resolve(); exp = write_experiment(d)
    out = unwritable(d, how)
    before = tree(d)
    r = cli("safety-compass", "extract", "--experiment-config", exp, "--output-dir", out, "--model", "default", cwd=d)
    cli_error(r, f"{out}: output directory is not writable ({WHY[how]})")
    assert len(r.stderr.strip().splitlines()) == 1   # checked before the model is loaded
    assert tree(d) == before

@pytest.mark.parametrize("how", ["under_a_file", "read_only_dir"])
def test_unwritable_output_api(how, tmp_path, saved, embedded):
    from safety_compass.monitor import SafetyCompassMonitor
    from safety_compass.report import report
    from safety_compass.monitor import run_extract
    d = tmp_path.resolve(); exp, good = saved
    out = unwritable(d, how)
    run = fake_run(d / "run")
    before = tree(d)
    mon = SafetyCompassMonitor.from_config(*embedded, exp); mon.load_baselines(good)
    api_error(lambda: mon.save_baselines(out / "baselines"), f"{out}/baselines: output directory is not writable ({WHY[how]})")
    api_error(lambda: report([run], out / "report.html"), f"{out}: cannot create output directory ({WHY[how]})")
    api_error(lambda: run_extract(exp, out, model=embedded[0], tokenizer=embedded[1], progress=False),
              f"{out}: output directory is not writable ({WHY[how]})")
    assert tree(d) == before

# ---------------------------------------------------------------------------------------------------------------
# the disk fills up while the report is written

def test_disk_full_report_cli(tmp_path):
    "RLIMIT_FSIZE makes writes past 16 KiB fail with EFBIG, as a full disk fails them with ENOSPC."
    d = tmp_path.resolve(); run = fake_run(d / "run")
    out = d / "reports" / "report.html"
    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (16384, 16384)); signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    before = tree(d)
    r = subprocess.run([str(BIN / "safety-compass"), "report", str(run), "--output", str(out)], preexec_fn=limit,
                       capture_output=True, text=True, cwd=d, timeout=600, env={**os.environ, **ONE_THREAD})
    cli_error(r, f"{out}: write failed (File too large); nothing was written")
    assert len(r.stderr.strip().splitlines()) == 1
    assert tree(d) == before      # no report.html, no .report.html.*.tmp, no reports/
    r = cli("safety-compass", "report", run, "--output", out, cwd=d)   # the same command without the limit works
    assert r.returncode == 0 and out.stat().st_size > 16384, r.stderr[-2000:]

class _DiskFull:
    "A file that takes `room` more characters, then fails the way a full disk does (ENOSPC) after a partial write."
    def __init__(self, f, fs): self.f, self.fs = f, fs
    def write(self, s):
        if len(s) <= self.fs.room: self.fs.room -= len(s); return self.f.write(s)
        self.f.write(s[: self.fs.room]); self.f.flush(); self.fs.room = 0
        self.fs.partial = {p.name: p.stat().st_size for p in self.fs.dir.glob(".report.html.*.tmp")}
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    def __getattr__(self, k): return getattr(self.f, k)
    def __enter__(self): return self
    def __exit__(self, *exc): self.f.close()

class _FullDiskOs:
    "`os` for `safety_compass.core`, with `fdopen` returning `_DiskFull` files."
    def __init__(self, d, room): self.dir, self.room, self.partial = d, room, None
    def __getattr__(self, k): return getattr(os, k)
    def fdopen(self, *a, **k): return _DiskFull(os.fdopen(*a, **k), self)

@pytest.mark.parametrize("previous", [None, "<html>last week's report</html>"], ids=["new_report", "existing_report"])
def test_disk_full_report_api(previous, tmp_path, monkeypatch):
    from safety_compass.report import report
    d = tmp_path.resolve(); run = fake_run(d / "run")
    out = d / "reports" / "report.html"
    if previous: out.parent.mkdir(); out.write_text(previous)
    before = tree(d)
    fs = _FullDiskOs(out.parent, room=5000)
    monkeypatch.setattr("safety_compass.core.os", fs)
    api_error(lambda: report([run], out), f"{out}: write failed (No space left on device); nothing was written")
    assert fs.partial and all(n > 0 for n in fs.partial.values())   # a partial temp file did exist...
    assert tree(d) == before                                        # ...and is gone; the old report is untouched

# ---------------------------------------------------------------------------------------------------------------
# typed config fields outside the pydantic sections (`training:`, `alerts:`): checked when the config is read, for every
# subcommand that takes one, before a model loads or a run directory is written (a copy of the bundled demo, in tmp)

def demo_copy(d: Path, old: str = "", new: str = "", absolute: bool = False) -> Path:
    """The bundled demo experiment copied to `d` (its relative paths then resolve in the bundle; `absolute`: written as
    absolute paths, so the copy does not lean on that rule), with `old` replaced by `new`."""
    text = (ROOT / "configs" / "experiments" / "demo.yaml").read_text()
    if absolute: text = text.replace(": configs/", f": {ROOT}/configs/").replace(": data/", f": {ROOT}/data/")
    assert old in text
    (d / "demo.yaml").write_text(text.replace(old, new))
    return d / "demo.yaml"

def line_of(path: Path, token: str) -> int:
    return next(i for i, l in enumerate(path.read_text().splitlines(), 1) if token in l)

SUBCOMMANDS = {"extract": ("extract", "--output-dir", "out"), "finetune": ("finetune",), "demo": ("demo", "--no-behavior"),
               "audit": ("audit", "prefs.jsonl", "--output-dir", "out")}

@pytest.mark.parametrize("sub", list(SUBCOMMANDS))
def test_training_field_type_cli(sub, tmp_path):
    d = tmp_path.resolve(); exp = demo_copy(d, "max_steps: 60", "max_steps: sixty", absolute=True)
    (d / "prefs.jsonl").write_text(json.dumps({"prompt": "Q?", "chosen": "a", "rejected": "b"}) + "\n")
    before = tree(d)
    r = cli("safety-compass", *SUBCOMMANDS[sub], "--experiment-config", exp, cwd=d)
    cli_error(r, f"{exp}:{line_of(exp, 'sixty')}: training.max_steps: input should be a valid integer, unable to parse "
                 "string as an integer, got 'sixty'")
    assert len(r.stderr.strip().splitlines()) == 1      # before any model loads
    assert tree(d) == before                             # no runs/, no out/, no config/ snapshot

@pytest.mark.parametrize("old,new,expected", [
    ("warmup_steps: 0", "warmup_step: 0", "training.warmup_step: unknown TrainingArguments field (did you mean 'warmup_steps'?)"),
    ("training:", "alerts:\n  - rule: cosine_below\n    action: email\ntraining:", "alerts[0].action: use log, stop, or 'module:function', got 'email'"),
], ids=["training_unknown_field", "alert_action"])
def test_typed_sections_cli(old, new, expected, tmp_path):
    d = tmp_path.resolve(); exp = demo_copy(d, old, new, absolute=True)
    before = tree(d)
    r = cli("safety-compass", "finetune", "--experiment-config", exp, cwd=d)
    key = expected.split(":")[0].split(".")[-1].split("[")[0]
    cli_error(r, f"{exp}:{line_of(exp, 'email' if 'alert' in expected else key)}: {expected}")
    assert len(r.stderr.strip().splitlines()) == 1 and tree(d) == before

def test_copied_demo_resolves_in_the_bundle(tmp_path):
    "A copy of demo.yaml outside the repository: its own relative paths resolve as the config path does (here, else the bundle)."
    from safety_compass.config import load_experiment
    from safety_compass.finetune import load_rows
    d = tmp_path.resolve(); exp_path = demo_copy(d)
    exp = load_experiment(exp_path)
    assert exp.model_path == ROOT / "configs" / "models" / "smollm2-135m-refusal.yaml"
    assert [c.config_file for c in exp.concepts] == [ROOT / "configs" / "concepts" / "demo" / f"{c}.yaml" for c in ("refusal", "sycophancy", "deception")]
    assert all(c.pairs_file.is_file() for c in exp.concepts)
    ds = exp.config.dataset
    assert len(load_rows(ds.name, ds.subset_size, exp.config.seed, base_file=exp.path)) == 300
    # through the CLI: every file it names is found (the error is the --concepts one, which comes after them)
    r = cli("safety-compass", "extract", "--experiment-config", exp_path, "--output-dir", d / "out", "--concepts", "nope", cwd=d)
    cli_error(r, "--concepts: unknown concept(s) nope; config has refusal, sycophancy, deception")
    # a file next to the copy wins over the bundle's
    (d / "configs" / "models").mkdir(parents=True)
    (d / "configs" / "models" / "smollm2-135m-refusal.yaml").write_text("model_name: default\n")
    assert load_experiment(exp_path).model_path == d / "configs" / "models" / "smollm2-135m-refusal.yaml"
