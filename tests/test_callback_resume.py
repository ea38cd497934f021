"""Resume, last-row and interval rules of `SafetyCompassCallback`, on tiny random 2-layer Llama models (seconds on CPU).

A resumed run must never re-extract baselines from trained weights: it loads the ones saved with the run (the run's
`baselines_dir` or the checkpoint's `safety_compass/` folder) and reproduces the uninterrupted run's numbers, or stops
with one line. The row labelled with the last step describes that step's weights, whatever the Trainer does after it.
"""
import shutil
from pathlib import Path
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import ROOT

NUMERIC = ["cosine_to_baseline", "cosine_ci_low", "cosine_ci_high", "auroc_fixed", "auroc_fixed_ci_low", "auroc_fixed_ci_high",
           "auroc_current", "auroc_current_ci_low", "auroc_current_ci_high", "direction_norm", "noise_floor"]

# ---- tiny inputs shared with test_trackers.py ----------------------------------------------------------------------
def tiny_llama(tok, seed: int = 0, **cfg):
    "A randomly initialised 2-layer Llama (hidden 64) with the embedded model's vocabulary; the same weights for a seed."
    from transformers import AutoConfig, AutoModelForCausalLM
    torch.manual_seed(seed)
    cfg = AutoConfig.for_model("llama", **{**dict(vocab_size=len(tok), num_hidden_layers=2, hidden_size=64, num_attention_heads=4,
                                                  num_key_value_heads=4, intermediate_size=128), **cfg})
    return AutoModelForCausalLM.from_config(cfg).eval()

def lm_dataset(tok, n: int = 8, length: int = 24):
    "n short causal-LM examples."
    from datasets import Dataset
    texts = [f"Note {i}: a small boat number {i} crossed the quiet lake before noon on a windy day." for i in range(n)]
    enc = tok(texts, truncation=True, max_length=length, padding="max_length")
    enc["labels"] = [list(x) for x in enc["input_ids"]]
    return Dataset.from_dict(dict(enc))

def make_monitor(model, tok, concepts=("refusal",)):
    "The bundled demo concepts (project pair files) on `model`, with small bootstrap/noise-floor settings."
    from safety_compass import SafetyCompassMonitor
    return SafetyCompassMonitor.from_config(model, tok, "demo", concepts=list(concepts), bootstrap_samples=20,
                                            noise_floor_splits=20, causal_check=False)

def train_args(out, **kw):
    from transformers import TrainingArguments
    base = dict(output_dir=str(out), per_device_train_batch_size=2, learning_rate=1e-2, max_steps=4, logging_steps=1,
                report_to=[], save_strategy="no", use_cpu=True, seed=0, disable_tqdm=True, dataloader_num_workers=0,
                lr_scheduler_type="constant")
    base.update(kw)
    return TrainingArguments(**base)

def read_log(p) -> pd.DataFrame:
    return pd.read_csv(p, keep_default_na=False, na_values=[""])

@pytest.fixture(scope="module")
def tok(embedded): return embedded[1]

@pytest.fixture(scope="module")
def ds(tok): return lm_dataset(tok)

def run(tok, ds, out, log, max_steps, resume=None, bdir=None, save=False, every=2, alerts=None, extra=(), **kw):
    "One Trainer run of the tiny model (same initial weights every time) with a fresh callback on `log`."
    from transformers import Trainer
    from safety_compass.callback import SafetyCompassCallback
    m = tiny_llama(tok)
    mon = make_monitor(m, tok)
    cb = SafetyCompassCallback(mon, measure_every_n_steps=every, log_file=log, baselines_dir=bdir, alerts=alerts)
    a = train_args(out, max_steps=max_steps, save_strategy="steps" if save else "no", save_steps=2, **kw)
    tr = Trainer(model=m, args=a, train_dataset=ds, callbacks=[cb, *extra])
    tr.train(resume_from_checkpoint=resume)
    return cb, tr

@pytest.fixture(scope="module")
def straight(tok, ds, tmp_path_factory):
    "The uninterrupted 4-step run: the reference every resumed run must reproduce."
    d = tmp_path_factory.mktemp("straight")
    cb, _ = run(tok, ds, d / "out", d / "log.csv", 4)
    return read_log(d / "log.csv"), cb

def assert_rows_close(got: pd.DataFrame, want: pd.DataFrame, tol: float = 1e-6):
    key = ["step", "concept", "weights"]
    got, want = got.set_index(key).sort_index(), want.set_index(key).sort_index()
    assert list(got.index) == list(want.index)
    np.testing.assert_allclose(got[NUMERIC].to_numpy(float), want[NUMERIC].to_numpy(float), atol=tol, rtol=0)

# ---- 1. a resumed run loads the saved baselines and reproduces the uninterrupted run -------------------------------
def test_resume_finds_baselines_in_the_checkpoint(tok, ds, tmp_path, straight):
    "No baselines_dir and resume_from_checkpoint=True (the path is found by the Trainer, not passed to the callback)."
    ref, ref_cb = straight
    assert list(ref.step) == [0, 2, 4] and set(ref.weights) == {"step"}
    out, log = tmp_path / "out", tmp_path / "log.csv"
    run(tok, ds, out, log, 2, save=True)
    saved = out / "checkpoint-2" / "safety_compass"
    assert (saved / "directions.npz").is_file() and (saved / "directions_metadata.json").is_file()
    with np.load(saved / "directions.npz") as z:  # the step-0 baselines, not anything extracted later
        np.testing.assert_array_equal(z["refusal/direction"], ref_cb.monitor.baselines["refusal"].direction)
    first = log.read_bytes()
    cb, tr = run(tok, ds, out, log, 4, resume=True, save=True)
    assert tr.state.global_step == 4
    assert log.read_bytes().startswith(first)            # appended, never rewritten
    assert_rows_close(read_log(log), ref)                 # steps 0, 2 from the first run, 4 from the resumed one
    np.testing.assert_array_equal(cb.monitor.baselines["refusal"].direction, ref_cb.monitor.baselines["refusal"].direction)

def test_resume_from_baselines_dir_and_alerts_after_resume(tok, ds, tmp_path, straight):
    "baselines_dir wins, even with the checkpoint's copy gone; alerts are evaluated on the resumed run's first measurement."
    ref, _ = straight
    out, log, bdir = tmp_path / "out", tmp_path / "log.csv", tmp_path / "baselines"
    run(tok, ds, out, log, 2, save=True, bdir=bdir)
    assert (bdir / "directions.npz").is_file()
    shutil.rmtree(out / "checkpoint-2" / "safety_compass")
    always = [{"rule": "cosine_below", "threshold": 2.0, "action": "log"}]   # fires on any row it is evaluated on
    run(tok, ds, out, log, 4, resume=str(out / "checkpoint-2"), bdir=bdir, alerts=always)
    got = read_log(log)
    assert_rows_close(got, ref)
    assert got.set_index("step").alert.fillna("").to_dict() == {0: "", 2: "", 4: "cosine_below"}

# ---- 2. no saved baselines: one line, nothing extracted, nothing written ---------------------------------------------
def test_resume_without_saved_baselines_stops(tok, ds, tmp_path):
    from safety_compass.core import SafetyCompassError
    out, log = tmp_path / "out", tmp_path / "log.csv"
    run(tok, ds, out, log, 2, save=True)
    shutil.rmtree(out / "checkpoint-2" / "safety_compass")       # e.g. a checkpoint written before this version
    before = log.read_bytes()
    with pytest.raises(SafetyCompassError) as e:
        run(tok, ds, out, log, 4, resume=str(out / "checkpoint-2"))
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("training resumes at step 2 but no saved baselines were found")
    assert "checkpoint-2/safety_compass" in msg and "baselines_dir=" in msg
    assert log.read_bytes() == before

def test_fresh_run_onto_a_log_with_rows_stops(tok, ds, tmp_path, straight):
    from safety_compass.core import SafetyCompassError
    log = tmp_path / "log.csv"
    ref, _ = straight
    ref.to_csv(log, index=False)
    before = log.read_bytes()
    with pytest.raises(SafetyCompassError, match=r"log\.csv already has rows but no saved baselines were found.*or use a new log_file"):
        run(tok, ds, tmp_path / "out", log, 4)
    assert log.read_bytes() == before

def test_log_without_weights_column(tok, ds, tmp_path, straight):
    "An old-format log: one line naming the fix before anything is extracted; after upgrade_drift_log the run appends."
    from safety_compass.core import SafetyCompassError
    from safety_compass.callback import upgrade_drift_log
    ref, _ = straight
    log, bdir = tmp_path / "log.csv", tmp_path / "baselines"
    ref[ref.step <= 2].drop(columns="weights").to_csv(log, index=False)
    with pytest.raises(SafetyCompassError, match=r"drift log from before the 'weights' column; run safety_compass\.callback\.upgrade_drift_log\(") as e:
        run(tok, ds, tmp_path / "out", log, 4, bdir=bdir)
    assert "\n" not in str(e.value) and not bdir.exists()     # checked before any baseline was extracted or saved
    assert upgrade_drift_log(log) == 2
    # the upgraded log holds steps 0 and 2; a fresh run (baselines extracted at step 0) must be refused: the log has rows
    with pytest.raises(SafetyCompassError, match="already has rows"):
        run(tok, ds, tmp_path / "out", log, 4)
    # with the run's baselines it goes on: 0 and 2 are kept as they were, 4 is appended
    straight[1].monitor.save_baselines(bdir)
    run(tok, ds, tmp_path / "out", log, 4, bdir=bdir)
    assert_rows_close(read_log(log), ref)

# ---- 3. the last row describes the last weights ---------------------------------------------------------------------
class _Witness:
    "Measures the step-`at` weights at on_step_end, with its own monitor sharing the callback's baselines."
    def __init__(self, cb, at): self.cb, self.at, self.rows = cb, at, None
    def __call__(self):
        from transformers import TrainerCallback
        from safety_compass.callback import _Restore
        w = self
        class CB(TrainerCallback):
            def on_step_end(self, args, state, control, **kw):
                if state.global_step == w.at:
                    mon = w.cb.monitor
                    snap = _Restore(mon.model, mon.tokenizer)
                    try: w.rows = {r["concept"]: r for r in mon.measure(w.at)}
                    finally: snap.restore()
        return CB()

def _run_best(tok, ds, out, max_steps, every, extra_factory=None, **kw):
    from transformers import Trainer
    from safety_compass.callback import SafetyCompassCallback
    m = tiny_llama(tok)
    cb = SafetyCompassCallback(make_monitor(m, tok), measure_every_n_steps=every, log_file=out / "log.csv")
    wit = _Witness(cb, kw.pop("witness_at"))
    a = train_args(out, max_steps=max_steps, eval_strategy="steps", eval_steps=2, save_strategy="steps", save_steps=2,
                   load_best_model_at_end=True, metric_for_best_model="loss", greater_is_better=True, **kw)
    # greater_is_better with a falling eval loss makes the first evaluation (step 2) the best checkpoint
    tr = Trainer(model=m, args=a, train_dataset=ds, eval_dataset=ds,
                 callbacks=[cb, wit(), *(extra_factory() if extra_factory else [])])
    tr.train()
    return cb, tr, wit, read_log(out / "log.csv")

def test_best_model_reload_gets_its_own_row(tok, ds, tmp_path):
    cb, tr, wit, got = _run_best(tok, ds, tmp_path, max_steps=5, every=2, witness_at=5)
    assert tr.state.best_model_checkpoint.endswith("checkpoint-2")
    assert list(zip(got.step, got.weights)) == [(0, "step"), (2, "step"), (4, "step"), (5, "step"), (5, "best_checkpoint:2")]
    last = got[(got.step == 5) & (got.weights == "step")].iloc[0]
    for k in NUMERIC:   # the step-5 row is the step-5 weights, measured before the Trainer reloaded anything
        assert abs(last[k] - wit.rows["refusal"][k]) <= 1e-6, k
    best = got[got.weights == "best_checkpoint:2"].iloc[0]
    two = got[(got.step == 2) & (got.weights == "step")].iloc[0]
    for k in NUMERIC:   # the reloaded weights are checkpoint-2's, saved losslessly
        assert abs(best[k] - two[k]) <= 1e-6, k
    assert abs(last.cosine_to_baseline - best.cosine_to_baseline) > 1e-3   # the two rows really differ here

def test_stop_decided_after_step_end_is_still_measured(tok, ds, tmp_path):
    "EarlyStoppingCallback stops in on_evaluate (after on_step_end) at step 4, not a measuring step; then the best reloads."
    from transformers import EarlyStoppingCallback
    cb, tr, wit, got = _run_best(tok, ds, tmp_path, max_steps=20, every=3, witness_at=4,
                                 extra_factory=lambda: [EarlyStoppingCallback(early_stopping_patience=1)])
    assert tr.state.global_step == 4
    assert list(zip(got.step, got.weights)) == [(0, "step"), (3, "step"), (4, "step"), (4, "best_checkpoint:2")]
    last = got[(got.step == 4) & (got.weights == "step")].iloc[0]
    for k in NUMERIC: assert abs(last[k] - wit.rows["refusal"][k]) <= 1e-6, k

def test_no_extra_row_when_nothing_changes_the_weights(straight):
    ref, cb = straight
    assert list(zip(ref.step, ref.weights)) == [(0, "step"), (2, "step"), (4, "step")]
    assert len(cb.history) == 3

# ---- 4. measure_every_n_steps --------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [0, -1, 1.5, "2", True])
def test_measure_every_n_steps_must_be_a_positive_integer(tok, bad, tmp_path):
    from safety_compass.core import SafetyCompassError
    from safety_compass.callback import SafetyCompassCallback
    mon = make_monitor(tiny_llama(tok), tok)
    with pytest.raises(SafetyCompassError, match=r"^measure_every_n_steps: must be a positive integer \(None uses the config's value\), got"):
        SafetyCompassCallback(mon, measure_every_n_steps=bad, log_file=tmp_path / "x.csv")
    assert SafetyCompassCallback(mon, measure_every_n_steps=None, log_file=tmp_path / "x.csv").every == 10   # demo config
