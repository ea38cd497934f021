"A monitored fine-tune killed between measurements resumes without losing or duplicating drift-log rows."
import hashlib, os, signal, subprocess, sys, time
from pathlib import Path
import pandas as pd
from conftest import ROOT, BIN

CONFIG = f"""
name: crash_test
seed: 7
model_config_file: {ROOT}/configs/models/smollm2-135m.yaml
concepts:
  - name: refusal
    config_file: {ROOT}/configs/concepts/demo/refusal.yaml
monitor:
  measure_every_n_steps: 2
  bootstrap_samples: 20
  causal_check: false
dataset:
  name: {ROOT}/data/instructions/benign_alpaca.json
  format: alpaca
  subset_size: 64
  max_seq_length: 48
method: lora
lora: {{r: 4, alpha: 8, dropout: 0.0, target_modules: [q_proj, v_proj]}}
training:
  max_steps: 12
  per_device_train_batch_size: 2
  learning_rate: 0.001
  save_steps: 4
  logging_steps: 2
"""

def _sha(p): return hashlib.sha256(Path(p).read_bytes()).hexdigest()

def test_sigkill_then_resume(tmp_path):
    cfg = tmp_path / "crash.yaml"; cfg.write_text(CONFIG)
    run = tmp_path / "run"
    cmd = [str(BIN / "safety-compass"), "finetune", "--experiment-config", str(cfg), "--output-dir", str(run)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    log = run / "drift_log.csv"
    deadline = time.time() + 600
    # wait until step 6 is measured: after checkpoint-4 was saved, before checkpoint-8
    while time.time() < deadline:
        if log.exists() and any(l.startswith("6,") for l in log.read_text().splitlines()): break
        assert proc.poll() is None, "training ended before it could be killed"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL); proc.wait()
    before = pd.read_csv(log)
    assert set(before.step) >= {0, 2, 4, 6}
    assert (run / "checkpoints" / "checkpoint-4").exists()
    baseline_hash = _sha(run / "baselines" / "directions.npz")
    with open(log, "a") as f: f.write("8,0.3,refusal,30,0.9")     # a torn last line, as a kill mid-write leaves
    r = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    after = pd.read_csv(log)
    assert list(after.step) == [0, 2, 4, 6, 8, 10, 12]                 # each (step, concept) once, monotonic
    pd.testing.assert_frame_equal(after[after.step <= 6].reset_index(drop=True), before.reset_index(drop=True))  # nothing lost or rewritten
    assert _sha(run / "baselines" / "directions.npz") == baseline_hash  # reloaded, not re-extracted
    assert "dropping torn last line" in r.stderr
