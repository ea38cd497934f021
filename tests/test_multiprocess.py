"""Two CPU processes (accelerate launch, gloo) give the same drift metrics as one, and only rank 0 writes.

What runs: `accelerate launch --multi_gpu --num_processes 2 safety-compass finetune ...` on a CPU host (DDP over gloo) on the embedded model.
Every rank takes part in each measurement's forward passes (the batches are dealt round-robin, results all-gathered);
rank 0's rows are broadcast so every rank takes the same alert decisions. An audit hook (sitecustomize) records every
file that rank 1 opens for writing, renames or creates under the run directory.

What is compared: the 2-process run's baselines and drift-log rows against one process measuring the same weights
(the base model at step 0, the saved adapter at the last step). The training trajectory itself is not compared with a
1-process run: DDP changes the data order and the per-step batch, which is the Trainer's business, not the monitor's.
"""
import json, os, subprocess, sys, textwrap
from pathlib import Path
import numpy as np
import pandas as pd
import pytest
from conftest import ROOT, BIN

CONFIG = f"""
name: ddp_test
seed: 11
model_config_file: {ROOT}/configs/models/smollm2-135m.yaml
concepts:
  - name: refusal
    config_file: {ROOT}/configs/concepts/demo/refusal.yaml
  - name: sycophancy
    config_file: {ROOT}/configs/concepts/demo/sycophancy.yaml
monitor:
  measure_every_n_steps: 2
  bootstrap_samples: 50
  causal_check: false
  batch_size: 4
dataset:
  name: {ROOT}/data/instructions/benign_alpaca.json
  format: alpaca
  subset_size: 64
  max_seq_length: 48
method: lora
lora: {{r: 4, alpha: 8, dropout: 0.0, target_modules: [q_proj, v_proj]}}
training:
  max_steps: 4
  per_device_train_batch_size: 2
  learning_rate: 0.003
  save_steps: 2
  logging_steps: 2
"""

# Records rank 1's writes under $SC_AUDIT_ROOT into $SC_AUDIT_OUT (outside the run directory).
SITECUSTOMIZE = textwrap.dedent('''
    import os, sys, atexit, json
    if os.environ.get("RANK") == "1" and os.environ.get("SC_AUDIT_ROOT"):
        root, seen = os.path.realpath(os.environ["SC_AUDIT_ROOT"]), []
        def hook(event, args):
            if event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
                mode, flags = args[1] or "", args[2] or 0
                if not (any(c in str(mode) for c in "wax+") or flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)): return
                paths = [args[0]]
            elif event in ("os.rename", "os.replace"): paths = [args[1]]
            elif event in ("os.mkdir", "os.remove", "os.truncate"): paths = [args[0]]
            else: return
            for p in paths:
                try: p = os.path.realpath(os.fsdecode(p))
                except Exception: continue
                if p.startswith(root): seen.append([event, p])
        sys.addaudithook(hook)
        atexit.register(lambda: open(os.environ["SC_AUDIT_OUT"], "w").write(json.dumps(seen)))
''')

ROW_METRICS = ["cosine_to_baseline", "auroc_fixed", "auroc_current", "direction_norm", "cosine_ci_low", "cosine_ci_high",
               "auroc_fixed_ci_low", "auroc_fixed_ci_high", "cross_refusal_cosine", "cross_sycophancy_cosine"]

def test_two_processes_match_one(tmp_path, embedded):
    cfg = tmp_path / "ddp.yaml"; cfg.write_text(CONFIG)
    run = tmp_path / "run"
    site = tmp_path / "site"; site.mkdir(); (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    audit = tmp_path / "rank1_writes.json"
    env = {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "SC_AUDIT_ROOT": str(run), "SC_AUDIT_OUT": str(audit), "OMP_NUM_THREADS": "1"}
    # `--multi_gpu` selects accelerate's torchrun launcher; with no GPU, TrainingArguments(use_cpu=True) makes it
    # MULTI_CPU over gloo (accelerate's `--cpu` flag would start one process, its multi-CPU path needs mpirun)
    cmd = [str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--num_cpu_threads_per_process", "1",
           str(BIN / "safety-compass"), "finetune", "--experiment-config", str(cfg), "--output-dir", str(run)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env, cwd=tmp_path)
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-4000:])
    info = json.loads((run / "run.json").read_text())
    assert info["world_size"] == 2 and info["status"] == "completed"

    # exactly one process writes Safety Compass files: rank 1 writes only the Trainer's own per-rank RNG state
    writes = json.loads(audit.read_text())
    ours = [p for _, p in writes if not Path(p).name.startswith("rng_state_1") and not Path(p).name.startswith("checkpoint-")
            and Path(p) != run / "checkpoints"]
    assert audit.exists() and ours == [], ours

    log = pd.read_csv(run / "drift_log.csv")
    assert list(log.step) == [0, 0, 2, 2, 4, 4]  # each (step, concept) once, written by one process
    assert (log.groupby("step").concept.apply(sorted) == [["refusal", "sycophancy"]] * 3).all()

    # one process, same weights: the base model gives the same baselines and step-0 rows ...
    from safety_compass.monitor import SafetyCompassMonitor
    model, tok = embedded
    mon = SafetyCompassMonitor.from_config(model, tok, cfg)
    mon.setup(progress=False)
    saved = np.load(run / "baselines" / "directions.npz")
    for name, b in mon.baselines.items():
        assert b.layer == int(log[log.concept == name].layer.iloc[0])
        np.testing.assert_allclose(saved[f"{name}/direction"], b.direction, atol=1e-5)
    _close(mon.measure(0), log[log.step == 0])
    # ... and the saved adapter gives the same last-step rows
    from peft import PeftModel
    tuned = PeftModel.from_pretrained(model, str(run / "adapter"))
    try:
        mon2 = SafetyCompassMonitor.from_config(tuned, tok, cfg)
        mon2.load_baselines(run / "baselines")
        _close(mon2.measure(4), log[log.step == 4])
    finally:
        tuned.unload()  # leave the shared session model as it was

def _close(rows, logged):
    logged = logged.set_index("concept")
    assert len(rows) == len(logged)
    for row in rows:
        for k in ROW_METRICS:
            if k in logged.columns and not pd.isna(logged.loc[row["concept"], k]) and row.get(k) is not None:
                # 1e-5, relative for values above 1 (the CSV keeps 8 significant digits: a norm of 35 is stored to 1e-6)
                x, y = float(row[k]), float(logged.loc[row["concept"], k])
                assert abs(x - y) <= 1e-5 * max(1.0, abs(y)), (row["concept"], k, x, y)
        assert row["drifted"] == (str(logged.loc[row["concept"], "drifted"]).lower() == "true")
