"The reference README's Quickstart, as written, with load_default_model() in place of Qwen3-8B."
import pandas as pd
from conftest import ROOT

def test_reference_quickstart(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # config paths must not depend on the working directory
    from transformers import Trainer, TrainingArguments
    from safety_compass import SafetyCompassMonitor, SafetyCompassCallback, load_default_model
    from safety_compass.finetune import load_rows, sft_features, SFTCollator

    model, tokenizer = load_default_model()
    monitor = SafetyCompassMonitor.from_config(
        model=model, tokenizer=tokenizer,
        experiment_config=str(ROOT / "configs/experiments/alpaca_qlora.yaml"),
    )
    callback = SafetyCompassCallback(monitor=monitor, measure_every_n_steps=2, log_file="drift_log.csv")
    rows = load_rows(str(ROOT / "data/instructions/benign_alpaca.json"), subset_size=16, seed=0)
    dataset = sft_features(rows, tokenizer, "alpaca", max_seq_length=64)
    trainer = Trainer(model=model, args=TrainingArguments(output_dir="out", max_steps=2, per_device_train_batch_size=2,
                                                          learning_rate=1e-5, report_to=[], use_cpu=True, save_strategy="no"),
                      train_dataset=dataset, data_collator=SFTCollator(tokenizer.pad_token_id), callbacks=[callback])
    trainer.train()
    log = pd.read_csv(tmp_path / "drift_log.csv")
    assert list(log.step) == [0] * 3 + [2] * 3 and set(log.concept) == {"refusal", "sycophancy", "deception"}
    assert {"step", "concept", "cosine_to_baseline", "auroc_fixed", "auroc_current"} <= set(log.columns)
    assert (log[log.step == 0].cosine_to_baseline == 1.0).all()
    assert (log[log.step == 2].cosine_to_baseline < 1.0).all()   # two full fine-tuning steps move every direction
