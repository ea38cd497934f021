"The callback under TRL's SFTTrainer and DPOTrainer, on the embedded model."
import json
import pandas as pd
import pytest
from conftest import ROOT

trl = pytest.importorskip("trl")

# fp32 on the CPU: TRL's configs default to bf16 autocast, whose backward is about 8x slower on a CPU without bf16
# units (the SFT test: 276 s against 33 s here); what these tests check, the callback's steps and logs, does not change
CPU = dict(use_cpu=True, bf16=False)

def _monitor(model, tok):
    from safety_compass import SafetyCompassMonitor
    return SafetyCompassMonitor.from_config(model, tok, "demo", concepts=["refusal"], bootstrap_samples=20, causal_check=False)

def _rows(n):
    return json.loads((ROOT / "data/instructions/benign_alpaca.json").read_text())[:n]

def test_sft_trainer(tmp_path):
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer
    from safety_compass import SafetyCompassCallback, load_default_model
    model, tok = load_default_model()
    ds = Dataset.from_list([{"messages": [{"role": "user", "content": r["instruction"]}, {"role": "assistant", "content": r["output"]}]}
                            for r in _rows(16)])
    cb = SafetyCompassCallback(_monitor(model, tok), measure_every_n_steps=2, log_file=tmp_path / "sft_log.csv")
    args = SFTConfig(output_dir=str(tmp_path / "sft"), max_steps=4, per_device_train_batch_size=4, learning_rate=5e-3,
                     max_length=96, report_to=[], save_strategy="no", logging_steps=2, disable_tqdm=True, **CPU)
    tr = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok, callbacks=[cb],
                    peft_config=LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    tr.train()
    log = pd.read_csv(tmp_path / "sft_log.csv")
    assert list(log.step) == [0, 2, 4]
    assert log.cosine_to_baseline.iloc[0] == 1.0 and log.cosine_to_baseline.iloc[-1] < 1.0

def test_dpo_trainer(tmp_path):
    from datasets import Dataset
    from peft import LoraConfig
    from trl import DPOConfig, DPOTrainer
    from safety_compass import SafetyCompassCallback, load_default_model
    model, tok = load_default_model()
    ds = Dataset.from_list([{"prompt": [{"role": "user", "content": r["instruction"]}],
                             "chosen": [{"role": "assistant", "content": r["output"]}],
                             "rejected": [{"role": "assistant", "content": "I don't know."}]} for r in _rows(8)])
    cb = SafetyCompassCallback(_monitor(model, tok), measure_every_n_steps=2, log_file=tmp_path / "dpo_log.csv")
    args = DPOConfig(output_dir=str(tmp_path / "dpo"), max_steps=2, per_device_train_batch_size=2, learning_rate=5e-3,
                     max_length=96, report_to=[], save_strategy="no", logging_steps=1, disable_tqdm=True, **CPU)
    tr = DPOTrainer(model=model, args=args, train_dataset=ds, processing_class=tok, callbacks=[cb],
                    peft_config=LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    tr.train()
    log = pd.read_csv(tmp_path / "dpo_log.csv")
    assert list(log.step) == [0, 2]
    assert log.cosine_to_baseline.iloc[-1] < 1.0
