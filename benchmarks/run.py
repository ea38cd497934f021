#!/usr/bin/env python
"""Safety Compass benchmark suite: every figure is a ratio against a baseline measured in the same process and run.

  1. measure() vs the published safety-compass 0.1.3 (same model object, pair files, layers, batch size) + agreement
  2. measure() vs the floor: a bare no-grad forward of the same prompts through the decoder up to the deepest layer
  3. monitoring share: measurement time / wall time of a monitored LoRA fine-tune (every 10 and every 50 steps)
  4. embedded-model load: cold (empty cache, de-quantizes the GGUF) / warm (cache filled)
  5. peak extra memory of one measurement vs one batch's activations, all hidden states, and the reference

Run `make bench` (installs the reference, then runs this), or `.venv/bin/python benchmarks/run.py [--quick]`.
See benchmarks/README.md for how to read the numbers.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import itertools
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))          # our package: this checkout, whatever else is installed
if str(HERE) not in sys.path:
    sys.path.insert(1, str(HERE))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("TQDM_DISABLE", "1")       # the GGUF de-quantizer's progress bar during cold loads

import numpy as np
import torch
from torch import nn

import safety_compass
from safety_compass.capture import (decoder_blocks, eval_mode, final_norm, layer_module, num_layers, token_batches,
                                    tokenize_prompts, unwrap_model)
from safety_compass.config import resolve_relative
from safety_compass.models import load_default_model
from safety_compass.monitor import SafetyCompassMonitor, load_experiment

import bench_util as U
from bench_util import log
from reference import Reference

SECTIONS = {1: "reference", 2: "floor", 3: "share", 4: "load", 5: "memory"}
METRICS = ("cosine_to_baseline", "auroc_fixed", "auroc_current", "direction_norm")
TOL = 1e-4


# -- configuration -------------------------------------------------------------------------------------
def bench_experiment(full_pairs: bool) -> dict:
    """demo.yaml with every path made absolute; with `full_pairs`, alpaca_qlora.yaml's concepts (the 60-pair sets).

    The model stays the embedded one (demo's smollm2-135m.yaml model file), as do demo's monitor, dataset, LoRA and
    training sections, so only the pair sets change.
    """
    demo_exp, demo_path = load_experiment(ROOT / "configs/experiments/demo.yaml")
    exp = json.loads(json.dumps(demo_exp))
    exp["model_config_file"] = str(resolve_relative(demo_exp["model_config_file"], demo_path))
    src_exp, src_path = (load_experiment(ROOT / "configs/experiments/alpaca_qlora.yaml") if full_pairs
                         else (demo_exp, demo_path))
    exp["concepts"] = [{"name": e["name"], "config_file": str(resolve_relative(e["config_file"], src_path))}
                       for e in src_exp["concepts"]]
    exp["dataset"] = dict(demo_exp["dataset"], name=str(resolve_relative(demo_exp["dataset"]["name"], demo_path)))
    exp["name"] = f"bench-{'full' if full_pairs else 'demo'}-pairs"
    return exp


def with_best_layers(exp: dict, layers: dict) -> dict:
    "The experiment with each concept's `best_layer` fixed (setup() then skips the layer choice)."
    e = json.loads(json.dumps(exp))
    for c in e["concepts"]:
        c["best_layer"] = int(layers[c["name"]])
    return e


# -- the floor: a bare forward through the first `deepest` layers --------------------------------------
def _owner(root: nn.Module, target: nn.Module):
    for mod in root.modules():
        for name, child in mod.named_children():
            if child is target:
                return mod, name
    raise RuntimeError(f"cannot find the module holding {type(target).__name__}")


@contextlib.contextmanager
def truncated_decoder(model, deepest: int):
    """The base model (no LM head) with only the blocks up to `hidden_states[deepest]`; restored on exit.

    For deepest < num_layers the block list is replaced by its first `deepest` blocks and the final norm by
    nn.Identity, so the base model's output is exactly `hidden_states[deepest]`.
    """
    inner = unwrap_model(model)
    blocks = decoder_blocks(inner)
    n = len(blocks)
    owner, attr = _owner(inner, blocks)
    norm = final_norm(inner)
    has_norm = norm is not None
    norm_owner, norm_attr = _owner(inner, norm) if has_norm else (None, None)
    try:
        if deepest < n:
            setattr(owner, attr, nn.ModuleList(list(blocks)[:deepest]))
            if has_norm:
                setattr(norm_owner, norm_attr, nn.Identity())
        yield owner
    finally:
        setattr(owner, attr, blocks)
        if has_norm:
            setattr(norm_owner, norm_attr, norm)


def padded_batches(ids, batches, pad_id, device):
    "Right-padded (input_ids, attention_mask) tensors per batch, built once outside the timed region."
    lengths = [len(x) for x in ids]
    out = []
    for b in batches:
        width = max(lengths[i] for i in b)
        x = torch.full((len(b), width), pad_id, dtype=torch.long)
        m = torch.zeros((len(b), width), dtype=torch.long)
        for r, i in enumerate(b):
            x[r, :lengths[i]] = torch.tensor(ids[i]); m[r, :lengths[i]] = 1
        out.append((x.to(device), m.to(device)))
    return out


def floor_forward(model, tensors, deepest: int):
    with truncated_decoder(model, deepest) as base, eval_mode(model), torch.inference_mode():
        for x, m in tensors:
            base(input_ids=x, attention_mask=m, use_cache=False)


def check_floor(model, mon, tensors, batches, ids, deepest) -> float:
    "Max |floor output − our captured hidden_states[deepest]| on the first batch (the floor computes the same thing)."
    x, m = tensors[0]
    with truncated_decoder(model, deepest) as base, eval_mode(model), torch.inference_mode():
        h = base(input_ids=x, attention_mask=m, use_cache=False).last_hidden_state
    last = m.sum(1) - 1
    got = h[torch.arange(len(x)), last].float().cpu().numpy()
    ours = mon._capture([deepest])[deepest][batches[0]]
    return float(np.abs(got - ours).max())


# -- timing cases run round-robin, so background load hits all contenders alike -------------------------
def interleaved(cases: list[tuple], repeats: int, device, mem=None, warmup: int = 1) -> dict:
    """cases: (name, fn, extra) with extra() read after each run (or None). One warm-up each, then `repeats` rounds.

    Returns {name: {seconds, median_s, peak_bytes, median_peak_bytes, extra, median_extra, last}}.
    """
    res = {name: {"seconds": [], "peak_bytes": [], "extra": [], "warmup": {}} for name, _, _ in cases}
    for rnd in range(warmup + repeats):
        for name, fn, extra in cases:
            if mem is not None:
                mem.start()
            else:
                gc.collect()
            U.sync(device)
            t0 = time.perf_counter()
            out = fn()
            U.sync(device)
            dt = time.perf_counter() - t0
            peak = mem.stop() if mem is not None else None
            ex = extra() if extra is not None else None
            r = res[name]
            r["last"] = out
            if rnd < warmup:
                r["warmup"] = {"seconds": dt, "peak_bytes": peak, "extra": ex}
                log(f"    warm-up  {name:<28} {dt:8.3f} s")
                continue
            r["seconds"].append(dt); r["peak_bytes"].append(peak); r["extra"].append(ex)
            log(f"    round {rnd - warmup + 1}/{repeats} {name:<28} {dt:8.3f} s"
                + (f"  peak +{peak / 2**20:.1f} MiB" if peak is not None else ""))
    for r in res.values():
        r["median_s"] = U.median(r["seconds"])
        r["median_peak_bytes"] = U.median(r["peak_bytes"])
        r["median_extra"] = U.median(r["extra"])
        r["repeats"] = repeats
    return res


def instrument_ours(mon) -> list:
    "Record the seconds of each activation capture inside our measure() (the forward part)."
    rec, orig = [], mon._capture
    dev = next(unwrap_model(mon.model).parameters()).device
    def timed(layers, progress=False):
        t0 = time.perf_counter(); out = orig(layers, progress=progress); U.sync(dev)
        rec.append(time.perf_counter() - t0); return out
    mon._capture = timed
    return rec


def instrument_reference(rmon):
    "Accumulate the seconds the reference spends in its forward passes (`_extract_hidden_states`)."
    acc = [0.0]
    for ex in rmon.extractors.values():
        def timed(message_list, _orig=ex._extract_hidden_states):
            t0 = time.perf_counter(); out = _orig(message_list); acc[0] += time.perf_counter() - t0; return out
        ex._extract_hidden_states = timed
    def take():
        v = acc[0]; acc[0] = 0.0; return v
    return take


@contextlib.contextmanager
def perturbed(model, block: int, scale: float, seed: int):
    "Add seeded Gaussian noise (scale × the weight's std) to one MLP weight of decoder block `block`; restored on exit."
    blk = decoder_blocks(model)[block]
    params = [(n, p) for n, p in blk.named_parameters() if "mlp" in n and p.dim() == 2]
    name, w = next(((n, p) for n, p in params if "down" in n), params[0])
    orig = w.detach().clone()
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(w.shape, generator=g, dtype=torch.float32) * float(w.detach().float().std()) * scale
    with torch.no_grad():
        w.add_(noise.to(device=w.device, dtype=w.dtype))
    try:
        yield f"block {block} {name}"
    finally:
        with torch.no_grad():
            w.copy_(orig)


def agreement(ours_rows: list[dict], ref_row: dict) -> list[dict]:
    out = []
    for r in ours_rows:
        c = r["concept"]
        d = {"concept": c}
        for k in METRICS:
            a, b = float(r[k]), float(ref_row[f"{c}_{k}"])
            d[f"ours_{k}"], d[f"ref_{k}"] = a, b
            d[f"absdiff_{k}"] = abs(a - b)
        d["reldiff_direction_norm"] = d["absdiff_direction_norm"] / max(abs(d["ref_direction_norm"]), 1e-30)
        out.append(d)
    return out


def agreement_verdict(rows: list[dict]) -> dict:
    worst = {k: max(r[f"absdiff_{k}"] for r in rows) for k in METRICS}
    worst["rel_direction_norm"] = max(r["reldiff_direction_norm"] for r in rows)
    ok = all(worst[k] <= TOL for k in ("cosine_to_baseline", "auroc_fixed", "auroc_current", "rel_direction_norm"))
    return {"max_abs_diff": worst, "pass": ok}


# -- sections 1, 2, 5: one model, three measurers, two floors -------------------------------------------
def bench_measure(args, exp, device, R, notes: list) -> dict:
    log("\n[1/2/5] measure(): ours vs reference 0.1.3 vs floor; peak memory")
    model, tok = load_default_model(device=device if device.type == "cuda" else None)
    n, hidden = num_layers(model), unwrap_model(model).config.hidden_size
    elt = next(model.parameters()).element_size()

    mon = SafetyCompassMonitor.from_config(model, tok, exp)
    t0 = time.perf_counter(); mon.setup(progress=False, causal_check=False)
    log(f"  our setup() (layer sweep, choice): {time.perf_counter() - t0:.1f} s")
    layers = {c: b.layer for c, b in mon.baselines.items()}
    deepest = max(mon.layers)
    log(f"  layers chosen by our setup(): {layers}; deepest hooked layer {deepest} of {n}")

    # ours at the reference's batch size: a monitor re-created with those layers fixed
    mon4 = SafetyCompassMonitor.from_config(model, tok, with_best_layers(exp, layers), batch_size=4, token_budget=None)
    if mon4.settings.token_budget is not None or mon4.settings.batch_size != 4:
        notes.append(f"from_config(..., batch_size=4, token_budget=None) gave token_budget={mon4.settings.token_budget}, "
                     f"batch_size={mon4.settings.batch_size} (the model config's token_budget overrides the explicit "
                     "override); settings set directly instead")
        mon4.settings = replace(mon4.settings, token_budget=None, batch_size=4)
    mon4.setup(progress=False, causal_check=False)
    assert {c: b.layer for c, b in mon4.baselines.items()} == layers

    ids = tokenize_prompts(tok, mon.prompts)
    lengths = [len(x) for x in ids]
    batches_tb = token_batches(lengths, mon.settings.token_budget, mon.settings.batch_size)
    batches_4 = token_batches(lengths, None, 4)
    def biggest(batches):
        return max(len(b) * max(lengths[i] for i in b) for b in batches)
    n_pair_prompts = sum(2 * len(c.pairs) for c in mon.concepts)
    log(f"  prompts: {len(mon.prompts)} unique of {n_pair_prompts} pair sides; tokens {sum(lengths)}, "
        f"longest {max(lengths)}; token-budget ({mon.settings.token_budget}) batches: {len(batches_tb)}, batch-4 batches: {len(batches_4)}")

    # the reference, same model object, same pair files, same layers, batch 4
    ref = Reference(args.reference_dir)
    log(f"  reference: safety-compass {ref.version} from {ref.file}")
    rmon = ref.monitor(model, tok, mon.concepts, layers, n, hidden, batch_size=4)
    t0 = time.perf_counter()
    with ref.active(), U.quiet_stdout():
        rmon.setup(allow_layer_sweep=False)
    log(f"  reference setup() at the same layers: {time.perf_counter() - t0:.1f} s")
    assert {k: b.layer for k, b in rmon.baselines.items()} == layers

    pad_id = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    t_tb, t_4 = padded_batches(ids, batches_tb, pad_id, device), padded_batches(ids, batches_4, pad_id, device)
    fcheck = check_floor(model, mon, t_tb, batches_tb, ids, deepest)
    log(f"  floor check: max |floor − captured hidden_states[{deepest}]| = {fcheck:.2e}")

    cap_tb, cap_4 = instrument_ours(mon), instrument_ours(mon4)
    ref_fwd = instrument_reference(rmon)
    steps = itertools.count(1)
    def ref_measure():
        with ref.active(), U.quiet_stdout():
            return rmon.measure(next(steps))
    mem = U.PeakMemory(device)
    log(f"  timing: {R} rounds after 1 warm-up, round-robin; memory: {mem.kind}" + ("" if mem.available else " (unavailable)"))
    res = interleaved([
        ("ours (token budget)", lambda: mon.measure(next(steps)), lambda: cap_tb[-1]),
        ("ours (batch 4)", lambda: mon4.measure(next(steps)), lambda: cap_4[-1]),
        ("reference 0.1.3 (batch 4)", ref_measure, ref_fwd),
        ("floor (token budget)", lambda: floor_forward(model, t_tb, deepest), None),
        ("floor (batch 4)", lambda: floor_forward(model, t_4, deepest), None),
    ], R, device, mem=mem)

    # agreement: the unperturbed model (last timed round) and a deterministically perturbed one
    agree = {}
    unpert = {"ours (token budget)": agreement(res["ours (token budget)"]["last"], res["reference 0.1.3 (batch 4)"]["last"]),
              "ours (batch 4)": agreement(res["ours (batch 4)"]["last"], res["reference 0.1.3 (batch 4)"]["last"])}
    block = max(0, min(n // 2, min(layers.values())) - 1)  # upstream of every hooked layer
    with perturbed(model, block, args.perturb_scale, args.seed) as what:
        log(f"  agreement: perturbing {what} by {args.perturb_scale} × std × N(0, 1), seed {args.seed}")
        p_tb = mon.measure(next(steps)); p_4 = mon4.measure(next(steps)); p_ref = ref_measure()
    pert = {"ours (token budget)": agreement(p_tb, p_ref), "ours (batch 4)": agreement(p_4, p_ref)}
    for mode in pert:
        agree[mode] = {"unperturbed": {"rows": unpert[mode], **agreement_verdict(unpert[mode])},
                       "perturbed": {"rows": pert[mode], **agreement_verdict(pert[mode])}}
    base_cmp = []
    for c in layers:
        rb = rmon.baselines[c]
        for mode, m in (("ours (token budget)", mon), ("ours (batch 4)", mon4)):
            ob = m.baselines[c]
            base_cmp.append({"concept": c, "mode": mode, "layer": ob.layer,
                             "direction_cosine": float(np.dot(ob.direction, rb.direction) /
                                                       (np.linalg.norm(ob.direction) * np.linalg.norm(rb.direction))),
                             "abs_diff_auroc": abs(ob.baseline_auroc - rb.baseline_auroc),
                             "rel_diff_norm": abs(ob.direction_norm - rb.direction_norm) / rb.direction_norm})

    out = {"layers": layers, "deepest": deepest, "num_layers": n, "hidden": hidden, "dtype_bytes": elt,
           "unique_prompts": len(mon.prompts), "pair_prompt_sides": n_pair_prompts, "tokens": sum(lengths),
           "longest_prompt": max(lengths), "token_budget": mon.settings.token_budget,
           "batches": {"token budget": len(batches_tb), "batch 4": len(batches_4)},
           "largest_batch_tokens": {"token budget": biggest(batches_tb), "batch 4": biggest(batches_4)},
           "floor_check_max_abs_diff": fcheck, "reference_version": ref.version, "reference_file": ref.file,
           "perturbation": {"block": block, "scale": args.perturb_scale, "seed": args.seed},
           "timings": {k: {kk: vv for kk, vv in v.items() if kk != "last"} for k, v in res.items()},
           "agreement": agree, "baselines": base_cmp, "memory_kind": mem.kind if mem.available else None}
    with ref.active():
        del rmon
    del mon, mon4, model
    gc.collect()
    return out


# -- section 3: monitoring share of a monitored LoRA fine-tune ------------------------------------------
class StepTimer:
    "Wall seconds of each training step (on_step_begin → on_step_end, before the monitor's on_step_end runs)."
    def __new__(cls, device):
        from transformers import TrainerCallback
        class _T(TrainerCallback):
            def __init__(self):
                self.times, self.t0 = [], None
            def on_step_begin(self, args, state, control, **kw):
                U.sync(device); self.t0 = time.perf_counter()
            def on_step_end(self, args, state, control, **kw):
                U.sync(device); self.times.append(time.perf_counter() - self.t0)
        return _T()


def bench_share(args, exp, layers, device, steps: int, everys: list[int]) -> list[dict]:
    from transformers import Trainer
    from transformers.trainer_callback import PrinterCallback
    from safety_compass.callback import SafetyCompassCallback
    from safety_compass.config import load_experiment, training_arguments
    from safety_compass.finetune import SFTCollator, load_rows, prepare_model, sft_features
    log(f"\n[3] monitoring share: monitored LoRA fine-tune, {steps} steps, every {everys}")
    seed = int(exp.get("seed", 42))
    ds = exp["dataset"]
    out = []
    for every in everys:
        torch.manual_seed(seed)
        model, tok = load_default_model(device=device if device.type == "cuda" else None)
        mon = SafetyCompassMonitor.from_config(model, tok, with_best_layers(exp, layers) if layers else exp)
        t0 = time.perf_counter(); mon.setup(progress=False, causal_check=False); t_setup = time.perf_counter() - t0
        rows = load_rows(ds["name"], ds.get("subset_size"), seed)
        feats = sft_features(rows, tok, ds.get("format", "alpaca"), int(ds.get("max_seq_length", 512)), source=ds["name"])
        peft_model = prepare_model(model, exp.get("method", "lora"), exp.get("lora") or exp.get("qlora"))
        tmp = Path(tempfile.mkdtemp(prefix="sc-bench-ft-"))
        try:
            targs = training_arguments(load_experiment(exp), tmp / "checkpoints", max_steps=steps)
            timer = StepTimer(device)
            cb = SafetyCompassCallback(mon, measure_every_n_steps=every, log_file=tmp / "drift_log.csv")
            trainer = Trainer(model=peft_model, args=targs, train_dataset=feats,
                              data_collator=SFTCollator(tok.pad_token_id or 0), callbacks=[timer, cb])
            trainer.remove_callback(PrinterCallback)
            U.sync(device); t0 = time.perf_counter()
            trainer.train()
            U.sync(device); wall = time.perf_counter() - t0
            measured_steps = sorted({r["step"] for r in cb.history}, key=[r["step"] for r in cb.history].index)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        ms = list(mon.measure_seconds)
        per = list(zip(measured_steps, ms))
        fresh = [s for st, s in per if st != 0]   # step 0 reuses setup()'s activations: no forward pass
        r = {"every": every, "steps": int(trainer.state.global_step), "train_wall_s": wall, "setup_s": t_setup,
             "measurements": len(ms), "measure_total_s": sum(ms), "share": sum(ms) / wall,
             "measure_seconds_by_step": per, "median_measure_s": U.median(fresh), "step_seconds": timer.times,
             "median_step_s": U.median(timer.times),
             "mean_step_s_excl_measure": (wall - sum(ms)) / max(1, trainer.state.global_step)}
        log(f"  every {every:>3}: {r['steps']} steps, train wall {wall:.1f} s, {len(ms)} measurements "
            f"{sum(ms):.1f} s → share {100 * r['share']:.1f}%; median step {r['median_step_s']:.3f} s, "
            f"median measurement {r['median_measure_s'] or 0:.2f} s")
        out.append(r)
        del trainer, peft_model, model, mon, cb
        gc.collect()
    return out


# -- section 4: cold vs warm model load -------------------------------------------------------------------
@contextlib.contextmanager
def cache_env(path):
    old = os.environ.get("SAFETY_COMPASS_CACHE")
    os.environ["SAFETY_COMPASS_CACHE"] = str(path)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("SAFETY_COMPASS_CACHE", None)
        else:
            os.environ["SAFETY_COMPASS_CACHE"] = old


def bench_load(R: int) -> dict:
    log(f"\n[4] embedded-model load: cold (fresh SAFETY_COMPASS_CACHE) vs warm; {R} rounds after 1 warm-up, alternating")
    warm_dir = Path(tempfile.mkdtemp(prefix="sc-bench-cache-warm-"))
    cold, warm = [], []
    def load_in(d):
        with cache_env(d):
            gc.collect()
            t0 = time.perf_counter()
            m, t = load_default_model()
            dt = time.perf_counter() - t0
        del m, t
        gc.collect()
        return dt
    try:
        w_cold = load_in(warm_dir)      # the cold warm-up, which also fills the warm cache
        w_warm = load_in(warm_dir)
        log(f"    warm-up  cold {w_cold:.2f} s, warm {w_warm:.3f} s")
        for i in range(R):
            d = Path(tempfile.mkdtemp(prefix="sc-bench-cache-cold-"))
            try:
                cold.append(load_in(d))
            finally:
                shutil.rmtree(d, ignore_errors=True)
            warm.append(load_in(warm_dir))
            log(f"    round {i + 1}/{R}  cold {cold[-1]:.2f} s, warm {warm[-1]:.3f} s")
    finally:
        shutil.rmtree(warm_dir, ignore_errors=True)
    return {"cold_s": cold, "warm_s": warm, "median_cold_s": U.median(cold), "median_warm_s": U.median(warm),
            "warmup": {"cold_s": w_cold, "warm_s": w_warm}, "repeats": R}


# -- report ------------------------------------------------------------------------------------------------
def x(v, digits=3):
    return "n/a" if v is None else f"{v:.{digits}f}×"


def summary_rows(res: dict, R: int) -> list[dict]:
    rows = []
    def add(id_, figure, value, baseline, ratio, n, note=""):
        rows.append({"id": id_, "figure": figure, "value": value, "baseline": baseline, "ratio": ratio, "n": n, "note": note})
    m = res.get("measure")
    if m:
        t = m["timings"]
        o_tb, o_4, ref = t["ours (token budget)"], t["ours (batch 4)"], t["reference 0.1.3 (batch 4)"]
        f_tb, f_4 = t["floor (token budget)"], t["floor (batch 4)"]
        rn = f"{R}+1"
        if "reference" in res["sections"]:
            add("1a", "measure(), ours batch 4 / reference batch 4", U.secs(o_4["median_s"]), U.secs(ref["median_s"]),
                x(o_4["median_s"] / ref["median_s"]), rn, f"reference is {ref['median_s'] / o_4['median_s']:.1f}× slower")
            add("1b", "measure(), ours token budget / reference batch 4", U.secs(o_tb["median_s"]), U.secs(ref["median_s"]),
                x(o_tb["median_s"] / ref["median_s"]), rn, f"reference is {ref['median_s'] / o_tb['median_s']:.1f}× slower")
            add("1c", "forward share of measure(): reference", U.secs(ref["median_extra"]), U.secs(ref["median_s"]),
                x(ref["median_extra"] / ref["median_s"]), rn, "its _extract_hidden_states / its measure()")
            for mode, key in (("token budget", "ours (token budget)"), ("batch 4", "ours (batch 4)")):
                for state in ("unperturbed", "perturbed"):
                    a = m["agreement"][key][state]
                    w = a["max_abs_diff"]
                    add("1d", f"agreement {state}, ours {mode} vs reference",
                        f"max|Δ| cos {w['cosine_to_baseline']:.1e} aurocF {w['auroc_fixed']:.1e} aurocC {w['auroc_current']:.1e}",
                        f"norm |Δ| {w['direction_norm']:.1e} rel {w['rel_direction_norm']:.1e}",
                        "PASS" if a["pass"] else "FAIL", "1", f"tolerance {TOL:g}")
            bmin = min(b["direction_cosine"] for b in m["baselines"])
            add("1e", "baseline directions, cosine(ours, reference)", f"min {bmin:.7f}", "1", "PASS" if bmin > 1 - TOL else "FAIL",
                "1", "each package's own setup() at the same layers")
        if "floor" in res["sections"]:
            add("2a", "measure() batch 4 / floor forward batch 4", U.secs(o_4["median_s"]), U.secs(f_4["median_s"]),
                x(o_4["median_s"] / f_4["median_s"]), rn)
            add("2b", "measure() token budget / floor forward token budget", U.secs(o_tb["median_s"]), U.secs(f_tb["median_s"]),
                x(o_tb["median_s"] / f_tb["median_s"]), rn)
            add("2c", "capture only, token budget / floor token budget", U.secs(o_tb["median_extra"]), U.secs(f_tb["median_s"]),
                x(o_tb["median_extra"] / f_tb["median_s"]), rn, "hooks + batching + copies, no metrics")
            add("2d", "capture only, batch 4 / floor batch 4", U.secs(o_4["median_extra"]), U.secs(f_4["median_s"]),
                x(o_4["median_extra"] / f_4["median_s"]), rn)
            add("2e", "metrics share of measure() (token budget)", U.secs(o_tb["median_s"] - o_tb["median_extra"]),
                U.secs(o_tb["median_s"]), x((o_tb["median_s"] - o_tb["median_extra"]) / o_tb["median_s"]), rn,
                "bootstrap CIs etc.: measure() − capture")
        if "memory" in res["sections"] and m["memory_kind"]:
            hid, elt, deep = m["hidden"], m["dtype_bytes"], m["deepest"]
            for mode, key in (("token budget", "ours (token budget)"), ("batch 4", "ours (batch 4)")):
                peak = t[key]["median_peak_bytes"]
                a = m["largest_batch_tokens"][mode] * hid * elt
                b = a * (deep + 1)
                add("5a", f"peak extra, ours {mode} / one batch at deepest layer", U.mib(peak), U.mib(a), x(peak / a, 2), rn,
                    f"largest batch {m['largest_batch_tokens'][mode]} tokens × {hid} × {elt} B")
                add("5b", f"peak extra, ours {mode} / all hidden states 0..{deep}", U.mib(peak), U.mib(b), x(peak / b, 3), rn,
                    f"(deepest+1) = {deep + 1} layers × one batch")
            if "reference" in res["sections"]:
                rp = ref["median_peak_bytes"]
                for mode, key in (("token budget", "ours (token budget)"), ("batch 4", "ours (batch 4)")):
                    add("5c", f"peak extra, ours {mode} / reference batch 4", U.mib(t[key]["median_peak_bytes"]), U.mib(rp),
                        x(t[key]["median_peak_bytes"] / rp, 3), rn)
            for mode, key in (("token budget", "floor (token budget)"), ("batch 4", "floor (batch 4)")):
                ok = f"ours ({mode})"
                add("5d", f"peak extra, ours {mode} / floor {mode}", U.mib(t[ok]["median_peak_bytes"]), U.mib(t[key]["median_peak_bytes"]),
                    x(t[ok]["median_peak_bytes"] / t[key]["median_peak_bytes"], 2) if t[key]["median_peak_bytes"] else "n/a", rn)
    for s in res.get("share") or []:
        label = f"every {s['every']}, {s['steps']} steps"
        add("3a", f"monitoring share, {label}", f"{s['measure_total_s']:.1f} s ({s['measurements']} meas.)",
            f"{s['train_wall_s']:.1f} s train wall", f"{100 * s['share']:.1f}%", "1 run", "Σ measure_seconds / trainer.train() wall")
    if res.get("share"):
        steps_all = [t for s in res["share"] for t in s["step_seconds"]]
        meas_all = [v for s in res["share"] for st, v in s["measure_seconds_by_step"] if st != 0]
        ms, ss = U.median(meas_all), U.median(steps_all)
        add("3b", "one measurement / one training step", U.secs(ms), U.secs(ss), x(ms / ss, 1) if ms and ss else "n/a",
            f"{len(meas_all)} / {len(steps_all)}", "medians over all runs' measurements (step 0 excluded) and steps")
    ld = res.get("load")
    if ld:
        add("4", "embedded model load, cold / warm", U.secs(ld["median_cold_s"]), U.secs(ld["median_warm_s"]),
            x(ld["median_cold_s"] / ld["median_warm_s"], 0), f"{ld['repeats']}+1", "cold = empty SAFETY_COMPASS_CACHE")
    return rows


def agreement_rows(m: dict) -> list[dict]:
    rows = []
    for mode, states in m["agreement"].items():
        for state, a in states.items():
            for r in a["rows"]:
                b = next(b for b in m["baselines"] if b["concept"] == r["concept"] and b["mode"] == mode)
                rows.append({"mode": mode, "model": state, "concept": r["concept"], "layer": m["layers"][r["concept"]],
                             "cos ours": f"{r['ours_cosine_to_baseline']:.6f}", "cos ref": f"{r['ref_cosine_to_baseline']:.6f}",
                             "|Δcos|": f"{r['absdiff_cosine_to_baseline']:.1e}",
                             "aurocF ours/ref": f"{r['ours_auroc_fixed']:.4f}/{r['ref_auroc_fixed']:.4f}",
                             "|ΔaurocF|": f"{r['absdiff_auroc_fixed']:.1e}",
                             "aurocC ours/ref": f"{r['ours_auroc_current']:.4f}/{r['ref_auroc_current']:.4f}",
                             "|ΔaurocC|": f"{r['absdiff_auroc_current']:.1e}",
                             "norm ours": f"{r['ours_direction_norm']:.4f}", "|Δnorm|": f"{r['absdiff_direction_norm']:.1e}",
                             "relΔnorm": f"{r['reldiff_direction_norm']:.1e}",
                             "base cos": f"{b['direction_cosine']:.7f}"})
    return rows


SUMMARY_COLS = ["id", "figure", "value", "baseline", "ratio", "n", "note"]
AGREE_COLS = ["mode", "model", "concept", "layer", "cos ours", "cos ref", "|Δcos|", "aurocF ours/ref", "|ΔaurocF|",
              "aurocC ours/ref", "|ΔaurocC|", "norm ours", "|Δnorm|", "relΔnorm", "base cos"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="development run: 2 repeats + warm-up, 20 fine-tune steps")
    ap.add_argument("--full-pairs", action="store_true",
                    help="alpaca_qlora.yaml's concepts (the full 60-pair sets) on the embedded model instead of the demo subsets")
    ap.add_argument("--out", default=str(ROOT / "bench_results"), help="results directory (default: bench_results/)")
    ap.add_argument("--repeats", type=int, help="timed repeats per figure (default 5, --quick 2), after one warm-up")
    ap.add_argument("--steps", type=int, help="fine-tune steps for the monitoring share (default 100, --quick 20)")
    ap.add_argument("--every", help="comma-separated measure_every_n_steps values (default 10,50; --quick 10,20)")
    ap.add_argument("--only", help="comma-separated sections to run: 1 reference, 2 floor, 3 share, 4 load, 5 memory")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--reference-dir", default=str(ROOT / ".venv/reference-0.1.3"),
                    help="where `pip install --target` put safety-compass 0.1.3")
    ap.add_argument("--perturb-scale", type=float, default=0.5, help="noise scale (× weight std) for the agreement check")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    t_start = time.perf_counter()
    logging.basicConfig(level=logging.ERROR)
    warnings.filterwarnings("ignore")
    import transformers
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()

    here = Path(safety_compass.__file__).resolve()
    if ROOT not in here.parents:
        raise SystemExit(f"imported safety_compass from {here}, not this checkout ({ROOT})")
    R = args.repeats or (2 if args.quick else 5)
    steps = args.steps or (20 if args.quick else 100)
    everys = [int(v) for v in args.every.split(",")] if args.every else ([10, 20] if args.quick else [10, 50])
    only = {int(s) for s in args.only.split(",")} if args.only else set(SECTIONS)
    sections = [SECTIONS[i] for i in sorted(only)]
    device = torch.device("cuda" if (args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())) else "cpu")
    if R < 1:
        raise SystemExit("--repeats must be ≥ 1")

    hw = U.hardware_info(device)
    log("Safety Compass benchmark" + (" (--quick: development numbers, not for reporting)" if args.quick else ""))
    log(U.format_hardware(hw))
    exp = bench_experiment(args.full_pairs)
    log(f"  pairs              {'full 60-pair sets (alpaca_qlora.yaml)' if args.full_pairs else 'demo 24-pair subsets (demo.yaml)'}")
    log(f"  sections           {', '.join(sections)}; repeats {R} after 1 warm-up")

    notes: list[str] = []
    res: dict = {"sections": sections}
    layers = None
    if only & {1, 2, 5}:
        res["measure"] = bench_measure(args, exp, device, R, notes)
        layers = res["measure"]["layers"]
    if 3 in only:
        res["share"] = bench_share(args, exp, layers, device, steps, everys)
    if 4 in only:
        res["load"] = bench_load(R)

    total = time.perf_counter() - t_start
    hw["load_avg_at_end"] = [round(v, 2) for v in os.getloadavg()]
    rows = summary_rows(res, R)
    summary = U.format_table(rows, SUMMARY_COLS)
    agree = U.format_table(agreement_rows(res["measure"]), AGREE_COLS) if "measure" in res and "reference" in sections else None
    ctx = []
    if "measure" in res:
        m = res["measure"]
        ctx.append(f"layers {m['layers']}, deepest {m['deepest']} of {m['num_layers']}; {m['unique_prompts']} unique prompts "
                   f"({m['pair_prompt_sides']} pair sides), {m['tokens']} tokens, longest {m['longest_prompt']}; "
                   f"batches: {m['batches']}; largest batch tokens: {m['largest_batch_tokens']}")
        ctx.append(f"floor check: max |floor output − captured hidden_states[{m['deepest']}]| = {m['floor_check_max_abs_diff']:.1e}")
        warm = ", ".join(f"{k} {v['warmup']['seconds']:.1f} s" for k, v in m["timings"].items())
        ctx.append(f"warm-up runs (excluded from medians): {warm}")
        if m.get("reference_version"):
            ctx.append(f"reference: safety-compass {m['reference_version']} ({m['reference_file']})")
    ctx += [f"note: {n}" for n in notes]

    log("\n" + "=" * 100)
    log("Safety Compass benchmark results" + (" (--quick)" if args.quick else "") +
        f" — {'full 60-pair sets' if args.full_pairs else 'demo pair subsets'}, device {device}")
    log(U.format_hardware(hw))
    for c in ctx:
        log("  " + c)
    log("")
    log(summary)
    if agree:
        log("\nAgreement with the reference (cosine vs each package's own baseline; base cos = cosine of the two baselines)")
        log(agree)
    log(f"\ntotal wall time {total:.0f} s ({total / 60:.1f} min)")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    payload = {"argv": sys.argv[1:], "quick": args.quick, "full_pairs": args.full_pairs, "repeats": R, "device": str(device),
               "hardware": hw, "total_wall_s": total, "notes": notes, "context": ctx, "summary": rows, "results": res,
               "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    (out / "results.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
    md = [f"# Safety Compass benchmark results{' (--quick)' if args.quick else ''}", "",
          f"{'Full 60-pair sets' if args.full_pairs else 'Demo 24-pair subsets'}, device `{device}`, "
          f"{R} timed repeats after 1 warm-up (medians), total wall time {total:.0f} s.", "",
          "## Hardware", "", *[f"- {k}: {v}" for k, v in hw.items()], "", *[f"- {c}" for c in ctx], "",
          "## Summary", "", U.markdown_table(rows, SUMMARY_COLS), ""]
    if agree:
        md += ["## Agreement with safety-compass 0.1.3", "", U.markdown_table(agreement_rows(res["measure"]), AGREE_COLS), ""]
    (out / "results.md").write_text("\n".join(md))
    log(f"results written to {out / 'results.json'} and {out / 'results.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
