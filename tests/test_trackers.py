"""Drift metrics in the Trainer's trackers, read back from what the trackers wrote: TensorBoard event files and a W&B
offline run's transaction log. Tiny random Llama models; the helpers come from test_callback_resume.py.

Key scheme (see nbs/08_callback.ipynb): `safety_compass/<concept>/<metric>` for step rows, `safety_compass_end/...` for
a row on weights the Trainer changed after the last step; both integrations store them as `train/<key>`.
"""
import json, struct
from pathlib import Path
import numpy as np
import pytest
import torch
from test_callback_resume import tiny_llama, lm_dataset, make_monitor, train_args, read_log, NUMERIC

CONCEPTS = ("refusal", "sycophancy")

@pytest.fixture(scope="module")
def tok(embedded): return embedded[1]

@pytest.fixture(scope="module")
def ds(tok): return lm_dataset(tok)

def _tracked_run(tok, ds, tmp, report_to, **kw):
    "5 steps, measuring every 2, evaluation/saves every 2 and load_best_model_at_end (best = checkpoint-2), attached."
    from transformers import Trainer
    from safety_compass.callback import SafetyCompassCallback
    m = tiny_llama(tok)
    cb = SafetyCompassCallback(make_monitor(m, tok, CONCEPTS), measure_every_n_steps=2, log_file=tmp / "log.csv",
                               alerts=[{"rule": "cosine_below", "threshold": 0.3, "action": "log"}])   # fires on some rows
    a = train_args(tmp / "out", max_steps=5, report_to=report_to, eval_strategy="steps", eval_steps=2, save_strategy="steps",
                   save_steps=2, load_best_model_at_end=True, metric_for_best_model="loss", greater_is_better=True, **kw)
    tr = Trainer(model=m, args=a, train_dataset=ds, eval_dataset=ds, callbacks=[cb])
    cb.attach(tr)
    tr.train()
    return cb, tr, read_log(tmp / "log.csv")

def _expected(log) -> dict[str, list[tuple[int, float]]]:
    "What the trackers must hold, from the drift log: {train/<key>: [(step, value), ...]}."
    want = {}
    for _, r in log.iterrows():
        sec = "safety_compass" if r.weights == "step" else "safety_compass_end"
        vals = {k: r[k] for k in NUMERIC}
        vals.update({f"cross_{o}_cosine": r[f"cross_{o}_cosine"] for o in CONCEPTS if o != r.concept})
        vals.update(drifted=float(str(r.drifted).lower() == "true"), alerts=float(len([a for a in (r.alert if isinstance(r.alert, str) else "").split(";") if a])))
        for k, v in vals.items(): want.setdefault(f"train/{sec}/{r.concept}/{k}", []).append((int(r.step), float(v)))
        if r.weights != "step": want.setdefault(f"train/{sec}/best_checkpoint_step", [(int(r.step), float(r.weights.split(':')[1]))])
    return want

def _check(got: dict, log, tr, rtol: float):
    want = _expected(log)
    assert sorted(k for k in got if "safety_compass" in k) == sorted(want)
    for k, pts in want.items():
        assert [s for s, _ in got[k]] == [s for s, _ in pts], k
        np.testing.assert_allclose([v for _, v in got[k]], [v for _, v in pts], rtol=rtol, atol=1e-7, err_msg=k)
    # the Trainer's own loss logging is intact: every step, same values as its log_history
    losses = [(h["step"], h["loss"]) for h in tr.state.log_history if "loss" in h]
    assert [s for s, _ in losses] == [1, 2, 3, 4, 5]
    np.testing.assert_allclose([v for _, v in got["train/loss"]], [v for _, v in losses], rtol=1e-6)

def test_tensorboard_event_files(tok, ds, tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(tmp_path / "tb"))
    cb, tr, log = _tracked_run(tok, ds, tmp_path, ["tensorboard"])
    assert list(zip(log.step, log.weights)) == [(s, "step") for s in (0, 0, 2, 2, 4, 4, 5, 5)] + [(5, "best_checkpoint:2")] * 2
    ea = EventAccumulator(str(tmp_path / "tb"), size_guidance={"scalars": 0}); ea.Reload()
    got = {t: [(e.step, e.value) for e in ea.Scalars(t)] for t in ea.Tags()["scalars"]}
    _check(got, log, tr, rtol=1e-6)   # TensorBoard stores float32
    assert 0 < sum(v for _, v in got["train/safety_compass/refusal/alerts"]) < 4   # the alert counts vary
    assert [s for s, _ in got["train/safety_compass_end/refusal/cosine_to_baseline"]] == [5]   # logged before the writer closed

def _wandb_records(path):
    "Records of a W&B transaction log (.wandb): a 7-byte header, then LevelDB-log-style 32 KiB blocks of chunks."
    data = Path(path).read_bytes()
    assert struct.unpack("<4sHB", data[:7])[:2] == (b":W&B", 0xBEE1)
    pos, buf, out, block = 7, b"", [], 32768
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7: pos += left; continue
        _, n, typ = struct.unpack("<IHB", data[pos:pos + 7])
        if typ == 0 and n == 0: pos += left; continue
        chunk = data[pos + 7:pos + 7 + n]; pos += 7 + n
        if typ == 1: out.append(chunk)
        elif typ == 2: buf = chunk
        elif typ == 3: buf += chunk
        elif typ == 4: out.append(buf + chunk); buf = b""
    return out

def test_wandb_offline_run(tok, ds, tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    from wandb.proto import wandb_internal_pb2 as pb
    for k, v in dict(WANDB_MODE="offline", WANDB_DIR=str(tmp_path), WANDB_SILENT="true", WANDB_PROJECT="sc-test").items():
        monkeypatch.setenv(k, v)
    try:
        cb, tr, log = _tracked_run(tok, ds, tmp_path, ["wandb"])
        run_dir = Path(wandb.run.dir).parent
    finally:
        wandb.finish()
    history = []
    for raw in _wandb_records(next(run_dir.glob("run-*.wandb"))):
        rec = pb.Record(); rec.ParseFromString(raw)
        if rec.WhichOneof("record_type") == "history":
            history.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in rec.history.item})
    got = {}
    for h in history:
        for k, v in h.items():
            if isinstance(v, (int, float)) and k.startswith("train/") and k != "train/global_step":
                got.setdefault(k, []).append((h["train/global_step"], v))
    _check(got, log, tr, rtol=1e-7)
    table = [h for h in history if h.get("safety_compass/drift_log/_type") == "table-file"]
    assert len(table) == 1 and table[0]["safety_compass/drift_log/nrows"] == len(log)
    assert table[0]["safety_compass/drift_log/ncols"] == len(log.columns)

def test_attach_registers_once_before_the_integrations(tok, ds, tmp_path):
    pytest.importorskip("tensorboard")
    from transformers import Trainer
    from transformers.integrations import TensorBoardCallback
    from safety_compass.callback import SafetyCompassCallback, _TrainEndFirst
    m = tiny_llama(tok)
    cb = SafetyCompassCallback(make_monitor(m, tok), log_file=tmp_path / "log.csv")
    tr = Trainer(model=m, args=train_args(tmp_path / "out", report_to=["tensorboard"]), train_dataset=ds, callbacks=[cb])
    cb.attach(tr); cb.attach(tr)
    names = [type(c).__name__ for c in tr.callback_handler.callbacks]
    assert names.count("SafetyCompassCallback") == 1 and names.count("_TrainEndFirst") == 1
    assert names.index("_TrainEndFirst") < names.index("TensorBoardCallback") < names.index("SafetyCompassCallback")
    cb2 = SafetyCompassCallback(make_monitor(m, tok), log_file=tmp_path / "log2.csv", trainer=tr)   # trainer= is attach()
    assert cb2.trainer is tr and sum(c is cb2 for c in tr.callback_handler.callbacks) == 1

def test_without_trainer_one_warning_and_nothing_sent(tok, ds, tmp_path, caplog, monkeypatch):
    pytest.importorskip("tensorboard")
    from transformers import Trainer
    from safety_compass.callback import SafetyCompassCallback
    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(tmp_path / "tb"))
    m = tiny_llama(tok)
    seen = []
    cb = SafetyCompassCallback(make_monitor(m, tok), measure_every_n_steps=2, log_file=tmp_path / "log.csv",
                               on_measure=lambda rows, state: seen.append(state.global_step))
    tr = Trainer(model=m, args=train_args(tmp_path / "out", report_to=["tensorboard"]), train_dataset=ds, callbacks=[cb])
    with caplog.at_level("WARNING", logger="safety_compass.callback"):
        tr.train()
    warn = [r.getMessage() for r in caplog.records if "no trainer attached" in r.getMessage()]
    assert len(warn) == 1 and "callback.attach(trainer)" in warn[0] and "tensorboard" in warn[0]
    assert not any("safety_compass" in k for h in tr.state.log_history for k in h)
    assert seen == [0, 2, 4] and list(read_log(tmp_path / "log.csv").step) == [0, 2, 4]   # on_measure and the log still work

def _losses(tok, ds, tmp, callback: str):
    from transformers import Trainer
    from safety_compass.callback import SafetyCompassCallback
    m = tiny_llama(tok, attention_dropout=0.1)   # dropout draws from the RNG: a measurement that touched it would show
    tr = Trainer(model=m, args=train_args(tmp / callback, max_steps=6, logging_steps=1), train_dataset=ds)
    if callback != "none":
        SafetyCompassCallback(make_monitor(m, tok), measure_every_n_steps=2, log_file=tmp / f"{callback}.csv",
                              report_to_trainer=callback == "attached").attach(tr)
    tr.train()
    return [(h["step"], h["loss"]) for h in tr.state.log_history if "loss" in h], [p.detach().clone() for p in m.parameters()], tr

def test_attached_callback_does_not_perturb_training(tok, ds, tmp_path):
    ref, ref_w, _ = _losses(tok, ds, tmp_path, "none")
    got, w, tr = _losses(tok, ds, tmp_path, "attached")
    assert got == ref and len(ref) == 6                              # bitwise, at the same steps
    assert all(torch.equal(a, b) for a, b in zip(w, ref_w))
    assert [h["step"] for h in tr.state.log_history if "safety_compass/refusal/cosine_to_baseline" in h] == [0, 2, 4, 6]
    silent, _, tr2 = _losses(tok, ds, tmp_path, "silent")           # report_to_trainer=False: nothing through trainer.log
    assert silent == ref and not any("safety_compass" in k for h in tr2.state.log_history for k in h)

def _sft(tok, tmp, attach: bool):
    "TRL's SFTTrainer on the tiny model; its own metrics (token accuracy, entropy, ...) are averaged between logging steps."
    trl = pytest.importorskip("trl")
    from datasets import Dataset
    from safety_compass.callback import SafetyCompassCallback
    m = tiny_llama(tok)
    data = Dataset.from_dict({"text": [f"Line {i}: the small boat number {i} crossed the lake." for i in range(16)]})
    args = trl.SFTConfig(output_dir=str(tmp / f"sft{attach}"), max_steps=4, per_device_train_batch_size=4, learning_rate=1e-2,
                         max_length=32, logging_steps=2, report_to=[], save_strategy="no", use_cpu=True, seed=0, disable_tqdm=True)
    tr = trl.SFTTrainer(model=m, args=args, train_dataset=data, processing_class=tok)
    if attach:  # measuring every step, i.e. between the SFTTrainer's own logging steps
        SafetyCompassCallback(make_monitor(m, tok), measure_every_n_steps=1, log_file=tmp / "sft.csv").attach(tr)
    tr.train()
    return tr.state.log_history

def test_subclass_log_metrics_untouched(tok, tmp_path):
    ref = [h for h in _sft(tok, tmp_path, False) if "loss" in h]
    hist = _sft(tok, tmp_path, True)
    got = [h for h in hist if "loss" in h]
    assert "mean_token_accuracy" in ref[0]
    assert [{k: v for k, v in h.items()} for h in got] == ref          # same keys and values at the same steps
    ours = [h for h in hist if "safety_compass/refusal/cosine_to_baseline" in h]
    assert [h["step"] for h in ours] == [0, 1, 2, 3, 4]
    assert not any("mean_token_accuracy" in h for h in ours)

def test_console_keeps_metric_dicts_off(tok, ds, tmp_path, capsys):
    """The Trainer's printer (`disable_tqdm=True`: PrinterCallback) prints its own loss dicts, not the monitor's
    metric dicts (thousands of characters on one line); those still reach `log_history`."""
    from transformers import Trainer
    from safety_compass.callback import SafetyCompassCallback
    m = tiny_llama(tok)
    tr = Trainer(model=m, args=train_args(tmp_path / "out", max_steps=2), train_dataset=ds)
    SafetyCompassCallback(make_monitor(m, tok, CONCEPTS), measure_every_n_steps=1, log_file=tmp_path / "log.csv").attach(tr)
    tr.train()
    out = capsys.readouterr().out
    assert "'loss'" in out and "safety_compass/" not in out                  # the printer still runs, without our dicts
    assert max(len(line) for line in out.splitlines()) <= 200, max(out.splitlines(), key=len)
    assert [h["step"] for h in tr.state.log_history if "safety_compass/refusal/cosine_to_baseline" in h] == [0, 1, 2]
