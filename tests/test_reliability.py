"Measuring must never change training (issue: reliability)."
import copy
import numpy as np
import pytest
import torch
from conftest import ROOT

def _train(with_callback: bool, steps: int = 6):
    from transformers import Trainer, TrainingArguments
    from safety_compass import SafetyCompassMonitor, SafetyCompassCallback, load_default_model
    from safety_compass.finetune import load_rows, sft_features, SFTCollator, prepare_model
    model, tok = load_default_model()
    rows = load_rows(str(ROOT / "data/instructions/benign_alpaca.json"), subset_size=48, seed=0)
    feats = sft_features(rows, tok, "alpaca", max_seq_length=64)
    torch.manual_seed(0)
    peft_model = prepare_model(model, "lora", {"r": 4, "alpha": 8, "dropout": 0.1, "target_modules": ["q_proj", "v_proj"]})
    cbs = []
    if with_callback:
        mon = SafetyCompassMonitor.from_config(model, tok, "demo", concepts=["refusal"], bootstrap_samples=20, causal_check=False)
        cbs = [SafetyCompassCallback(mon, measure_every_n_steps=2, log_file=str(ROOT / "runs" / "_nonperturb_log.csv"))]
    args = TrainingArguments(output_dir="/tmp/_np", max_steps=steps, per_device_train_batch_size=4, learning_rate=1e-3,
                             logging_steps=1, report_to=[], save_strategy="no", use_cpu=True, seed=0, data_seed=0, disable_tqdm=True)
    tr = Trainer(model=peft_model, args=args, train_dataset=feats, data_collator=SFTCollator(tok.pad_token_id), callbacks=cbs)
    tr.train()
    return [h["loss"] for h in tr.state.log_history if "loss" in h], tr

def test_loss_identical_with_and_without_callback(tmp_path):
    (ROOT / "runs" / "_nonperturb_log.csv").unlink(missing_ok=True)
    without, _ = _train(False)
    with_cb, tr = _train(True)
    (ROOT / "runs" / "_nonperturb_log.csv").unlink(missing_ok=True)
    assert len(without) == 6
    assert with_cb == without, (with_cb, without)   # bitwise: same floats, LoRA dropout active

def test_measurement_leaves_state_unchanged(embedded):
    from safety_compass import SafetyCompassMonitor
    from safety_compass.callback import _Restore
    from safety_compass.finetune import prepare_model
    model, tok = embedded
    model = copy.deepcopy(model)
    peft_model = prepare_model(model, "lora", {"r": 4, "dropout": 0.1, "target_modules": ["q_proj"]}, gradient_checkpointing=True)
    peft_model.train()
    tok.padding_side, tok.pad_token = "left", tok.eos_token
    mon = SafetyCompassMonitor.from_config(peft_model, tok, "demo", concepts=["refusal"], bootstrap_samples=10, causal_check=False)
    mon.setup(progress=False)
    before = {"modes": [m.training for m in peft_model.modules()], "use_cache": peft_model.config.use_cache,
              "gc": peft_model.base_model.model.model.gradient_checkpointing, "pad": (tok.padding_side, tok.pad_token),
              "adapter": peft_model.active_adapter, "grads": [p.requires_grad for p in peft_model.parameters()],
              "weights": [p.detach().clone() for p in peft_model.parameters() if p.requires_grad],
              "rng": (torch.get_rng_state(), np.random.get_state()[1].copy())}
    torch.manual_seed(123); np.random.seed(123)
    rng_before = (torch.get_rng_state(), np.random.get_state()[1].copy())
    snap = _Restore(peft_model, tok)
    try: mon.measure(1)
    finally: snap.restore()
    assert [m.training for m in peft_model.modules()] == before["modes"]
    assert peft_model.config.use_cache == before["use_cache"]
    assert peft_model.base_model.model.model.gradient_checkpointing == before["gc"] is True
    assert (tok.padding_side, tok.pad_token) == before["pad"]
    assert peft_model.active_adapter == before["adapter"]
    assert [p.requires_grad for p in peft_model.parameters()] == before["grads"]
    assert all(torch.equal(a, b) for a, b in zip(before["weights"], [p for p in peft_model.parameters() if p.requires_grad]))
    assert torch.equal(torch.get_rng_state(), rng_before[0]) and np.array_equal(np.random.get_state()[1], rng_before[1])
    tok.padding_side, tok.pad_token = "right", "<|im_end|>"
