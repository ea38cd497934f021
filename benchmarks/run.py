#!/usr/bin/env python
"""Safety Compass benchmark suite: every figure is a ratio against a baseline measured in the same process and run.

  1. measure() vs the published safety-compass 0.1.3 (same model object, pair files, layers, batch size) + agreement
  2. measure() vs the floor: a bare no-grad forward of the same prompts through the decoder up to the deepest layer
  3. monitoring share: measurement time / wall time of a monitored LoRA fine-tune (every 10 and every 50 steps)
  4. embedded-model load: cold (empty cache, de-quantizes the GGUF) / warm (cache filled)
  5. peak extra memory of one measurement vs one batch's activations, all hidden states, and the reference
  6. the measurement plan: measure() planned (per-concept depth + shared-prefix KV reuse) vs depth batches only vs the
     current path (every prompt to the deepest layer) vs the floor, on the demo and the full concept sets, with the
     planned numbers checked against the current path to 1e-5; `--gpu`: the same on a randomly initialised model of
     Qwen3-8B's shape (fp16, or NF4 with --nf4), at layers placed as the embedded model's chosen ones

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
import subprocess
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
from safety_compass.layers import decoder_blocks, eval_mode, final_norm, layer_module, num_layers, unwrap_model
from safety_compass.templates import token_batches, tokenize_prompts
from safety_compass.plan import capture_planned, plan_capture
from safety_compass.config import resolve_relative
from safety_compass.models import load_default_model
from safety_compass.monitor import SafetyCompassMonitor, load_experiment

import bench_util as U
from bench_util import log
from reference import Reference

SECTIONS = {1: "reference", 2: "floor", 3: "share", 4: "load", 5: "memory", 6: "plan", 7: "contention", 8: "gate"}
CONFIGS = ("demo", "smollm2_full")
METRICS = ("cosine_to_baseline", "auroc_fixed", "auroc_current", "direction_norm")
TOL = 1e-4


# -- configuration -------------------------------------------------------------------------------------
def bench_experiment(full_pairs: bool | str) -> dict:
    """demo.yaml with every path made absolute; with `full_pairs` (or the name `smollm2_full`), smollm2_full.yaml's
    concepts (the full 60-pair sets).

    The model stays the embedded one (demo's smollm2-135m.yaml model file), as do demo's monitor, dataset, LoRA and
    training sections, so only the pair sets change.
    """
    if isinstance(full_pairs, str):
        if full_pairs not in CONFIGS: raise SystemExit(f"unknown concept set {full_pairs!r}: one of {', '.join(CONFIGS)}")
        full_pairs = full_pairs == "smollm2_full"
    def read(name):  # the file's own mapping (paths as written) and where it lives
        e = load_experiment(ROOT / f"configs/experiments/{name}.yaml")
        return json.loads(json.dumps(e.raw)), e.path
    demo_exp, demo_path = read("demo")
    exp = json.loads(json.dumps(demo_exp))
    exp["model_config_file"] = str(resolve_relative(demo_exp["model_config_file"], demo_path))
    src_exp, src_path = read("smollm2_full") if full_pairs else (demo_exp, demo_path)
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
    "Record the seconds of each activation capture inside our measure() (the forward part, planned or not)."
    rec, orig = [], mon._measure_capture
    dev = next(unwrap_model(mon.model).parameters()).device
    def timed():
        t0 = time.perf_counter(); out = orig(); U.sync(dev)
        rec.append(time.perf_counter() - t0); return out
    mon._measure_capture = timed
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


# -- section 6: the measurement plan vs the current path vs the floor -------------------------------------
ROW_TOL = 1e-5


def rows_diff(a: list[dict], b: list[dict]) -> dict:
    """Largest difference between two measure() outputs over every float metric: absolute for cosines, AUROCs and CIs,
    relative for values above 1 (norms); also whether every `drifted` flag agrees."""
    worst, key, same = 0.0, None, True
    for x, y in zip(a, b):
        assert (x["concept"], x["layer"]) == (y["concept"], y["layer"])
        same &= x["drifted"] == y["drifted"]
        for k, v in x.items():
            if isinstance(v, float) and k != "epoch" and y.get(k) is not None:
                d = abs(v - y[k]) / max(1.0, abs(y[k]))
                if d > worst: worst, key = d, f"{x['concept']}.{k}"
    return {"max_diff": worst, "where": key, "drifted_equal": bool(same), "pass": bool(same and worst <= ROW_TOL)}


def kv_bytes(model, plan) -> int:
    "KV of the largest suffix batch's prefix slot: rows × longest prefix × 2 (K, V) × kv width × blocks run × bytes."
    cfg = unwrap_model(model).config
    cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    kv = (getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads) * head_dim
    elt = 2 if next(model.parameters()).element_size() < 2 else next(model.parameters()).element_size()  # NF4: fp16 KV
    best = 0
    for b in plan.batches:
        P = max((len(plan.groups[g].tokens) for g in b.groups if g >= 0), default=0)
        best = max(best, len(b.rows) * P * 2 * kv * b.depth * elt)
    return best


def activations_vs_bare(model, plan, pad_id, device) -> float:
    """The largest difference (relative to the layer's largest value, at least 1) between the planned capture and bare
    truncated forwards (`truncated_decoder`: no hooks, every block whole) over every prompt and layer the plan reads."""
    got = capture_planned(model, plan)
    worst = 0.0
    for L in plan.layers:
        rows = [i for i, ls in enumerate(plan.need) if L in ls]
        ids = [plan.ids[i] for i in rows]
        batches = token_batches([len(x) for x in ids], plan.token_budget, plan.batch_size)
        with truncated_decoder(model, L) as base, eval_mode(model), torch.inference_mode():
            for (x, m), b in zip(padded_batches(ids, batches, pad_id, device), batches):
                h = base(input_ids=x, attention_mask=m, use_cache=False).last_hidden_state
                ref = h[torch.arange(len(b), device=h.device), m.sum(1) - 1].float().cpu().numpy()
                worst = max(worst, float(np.abs(got[L][[rows[j] for j in b]] - ref).max() / max(1.0, np.abs(ref).max())))
    return worst


def block_macs(model) -> tuple[int, int]:
    """Multiply-adds per token of one decoder block's linear layers (query, key, value and output projections, the
    gated MLP; the attention scores left out), and of the part `capture.last_token_only` skips in a forward's last
    block at every token but the last (output projection + MLP), from a Llama-style model's config."""
    cfg = unwrap_model(model).config
    cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    H, nh = cfg.hidden_size, cfg.num_attention_heads
    hd = getattr(cfg, "head_dim", None) or H // nh
    kv = getattr(cfg, "num_key_value_heads", None) or nh
    q, k, o, mlp = H * nh * hd, H * kv * hd, nh * hd * H, 3 * H * cfg.intermediate_size
    return q + 2 * k + o + mlp, o + mlp


def cost_macs(cost: dict, key: str, macs: tuple[int, int]) -> int:
    "Multiply-adds of `CapturePlan.cost()[key]` (token-blocks) with `block_macs`' `(per block, skipped in a last block)`."
    return cost[key] * macs[0] - cost["last_block"][key] * macs[1]


def bench_plan_set(args, model, tok, exp, name, device, R, layers=None) -> dict:
    "One concept set: setup(), then planned / depth-only / current path / floor measure() round-robin, and agreement."
    mon = SafetyCompassMonitor.from_config(model, tok, with_best_layers(exp, layers) if layers else exp)
    t0 = time.perf_counter(); mon.setup(progress=False, causal_check=False); t_setup = time.perf_counter() - t0
    chosen = {c: b.layer for c, b in mon.baselines.items()}
    plan = mon.plan
    t0 = time.perf_counter()
    depth_plan = plan_capture(model, tok, mon._ids(), plan.need, token_budget=mon.settings.token_budget,
                              batch_size=mon.settings.batch_size, prefix=False)
    t_plan = time.perf_counter() - t0
    ids = mon._ids()
    lengths = [len(x) for x in ids]
    deepest = max(mon.layers)
    batches = token_batches(lengths, mon.settings.token_budget, mon.settings.batch_size)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    tensors = padded_batches(ids, batches, pad_id, device)
    log(f"  [{name}] setup() {t_setup:.1f} s; layers {chosen}; {len(ids)} unique prompts, {sum(lengths)} tokens; "
        f"plan: {plan.mode}{' (' + plan.reason + ')' if plan.reason else ''}, depths {list(plan.classes)}, "
        f"{len(plan.groups)} prefix groups")
    cap = instrument_ours(mon)
    steps = itertools.count(1)
    def run(mode):
        def fn():
            if mode == "current": mon.use_plan = False
            elif mode == "depth": mon.plan = depth_plan
            try: return mon.measure(next(steps))
            finally: mon.use_plan, mon.plan = True, plan
        return fn
    mem = U.PeakMemory(device)
    res = interleaved([
        ("planned", run("planned"), lambda: cap[-1]),
        ("depth batches only", run("depth"), lambda: cap[-1]),
        ("current path", run("current"), lambda: cap[-1]),
        ("floor", lambda: floor_forward(model, tensors, deepest), None),
    ], R, device, mem=mem)
    agree = {"unperturbed": {"planned": rows_diff(res["planned"]["last"], res["current path"]["last"]),
                             "depth batches only": rows_diff(res["depth batches only"]["last"], res["current path"]["last"])}}
    agree["activations_vs_bare"] = activations_vs_bare(model, plan, pad_id, device)
    log(f"    activations, planned vs bare truncated forwards (no hooks): max diff {agree['activations_vs_bare']:.1e}")
    n = num_layers(model)
    block = max(0, min(n // 2, min(chosen.values())) - 1)
    with perturbed(model, block, args.perturb_scale, args.seed) as what:
        p = {k: run(m)() for k, m in (("planned", "planned"), ("depth batches only", "depth"), ("current path", "current"))}
    agree["perturbed"] = {k: rows_diff(p[k], p["current path"]) for k in ("planned", "depth batches only")}
    agree["perturbation"] = what
    agree["perturbed_min_cosine"] = min(r["cosine_to_baseline"] for r in p["current path"])
    for state in ("unperturbed", "perturbed"):
        for k, v in agree[state].items():
            log(f"    agreement {state:<11} {k:<20} vs current path: max diff {v['max_diff']:.1e} ({v['where']}) "
                f"{'PASS' if v['pass'] else 'FAIL'}")
    out = {"config": name, "layers": chosen, "deepest": deepest, "num_layers": n, "unique_prompts": len(ids),
           "tokens": sum(lengths), "setup_s": t_setup, "depth_plan_s": t_plan, "plan_mode": plan.mode,
           "plan_reason": plan.reason, "depth_classes": {d: len(r) for d, r in plan.classes.items()},
           "prefix_groups": [(len(g.tokens), len(g.members), g.depth) for g in plan.groups],
           "cost_token_blocks": plan.cost(), "depth_cost_token_blocks": depth_plan.cost(), "block_macs": block_macs(model),
           "kv_prefix_bytes": kv_bytes(model, plan) if plan.mode == "prefix" else 0,
           "timings": {k: {kk: vv for kk, vv in v.items() if kk != "last"} for k, v in res.items()},
           "agreement": agree, "memory_kind": mem.kind if mem.available else None}
    del mon
    gc.collect()
    return out


SYNTHETIC = {  # randomly initialised models of a real model's shape (`--gpu`), and a tiny one to check the code path on a CPU
    "qwen3-8b": dict(model_type="qwen3", hidden_size=4096, intermediate_size=12288, num_hidden_layers=36,
                     num_attention_heads=32, num_key_value_heads=8, head_dim=128, vocab_size=151936,
                     max_position_embeddings=40960, rope_theta=1000000.0, tie_word_embeddings=False),
    "tiny-qwen3": dict(model_type="qwen3", hidden_size=64, intermediate_size=128, num_hidden_layers=6,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=16, vocab_size=49152),
}


def synthetic_model(shape: str, dtype: str, device):
    """A randomly initialised model of `SYNTHETIC[shape]`'s shape with the embedded tokenizer (its ids all fall inside
    Qwen3's vocabulary): fp16/bf16/fp32 weights, or NF4 (bitsandbytes 4-bit, fp16 compute; CUDA only)."""
    from transformers import AutoConfig, AutoModelForCausalLM
    _, tok = load_default_model()
    spec = dict(SYNTHETIC[shape])
    cfg = AutoConfig.for_model(spec.pop("model_type"), **spec)
    torch.manual_seed(0)
    if dtype == "nf4":
        from transformers import BitsAndBytesConfig
        if device.type != "cuda": raise SystemExit("--nf4 needs a CUDA device (bitsandbytes)")
        with tempfile.TemporaryDirectory(prefix="sc-bench-synth-") as d:  # quantization happens at load
            AutoModelForCausalLM.from_config(cfg, dtype=torch.float16).save_pretrained(d)
            q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float16)
            model = AutoModelForCausalLM.from_pretrained(d, quantization_config=q, device_map={"": device.index or 0})
    else:
        dt = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[dtype]
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(cfg, dtype=dt)
    return model.eval(), tok


def scaled_layers(layers: dict, n_from: int, n_to: int) -> dict:
    "The embedded model's chosen layers placed at the same depth fraction of an `n_to`-block model."
    return {c: max(1, min(n_to - 1, round(L / n_from * n_to))) for c, L in layers.items()}


def bench_plan(args, device, R, notes: list) -> dict:
    log("\n[6] the measurement plan: planned vs depth batches only vs the current path vs the floor")
    out = {"sets": []}
    model, tok = load_default_model(device=device if device.type == "cuda" else None)
    chosen = {}
    for name in args.configs:
        r = bench_plan_set(args, model, tok, bench_experiment(name), name, device, R)
        chosen[name] = (r["layers"], r["num_layers"])
        out["sets"].append(r)
    del model
    gc.collect()
    if args.synthetic:
        for dtype in args.synthetic_dtypes:
            log(f"  synthetic {args.synthetic} ({dtype}), randomly initialised, on {device}")
            model, tok = synthetic_model(args.synthetic, dtype, device)
            for name in args.configs:
                layers, n_from = chosen[name]
                layers = scaled_layers(layers, n_from, num_layers(model))
                r = bench_plan_set(args, model, tok, bench_experiment(name), f"{name} on {args.synthetic} {dtype}", device, R, layers)
                r["synthetic"] = {"shape": args.synthetic, "dtype": dtype}
                out["sets"].append(r)
            del model
            gc.collect()
            if device.type == "cuda": torch.cuda.empty_cache()
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


# -- section 7: a competing process -------------------------------------------------------------------------
def bench_contention(args) -> dict:
    """`setup()` and `measure()` quiet and beside one CPU-bound process (benchmarks/contention.py, one process per
    setting), with the monitor's `core.cpu_share` on and off (off: torch keeps its thread count, as before it existed)."""
    threads = args.threads or torch.get_num_threads()
    out = {"threads": threads}
    for busy in (False, True):
        for share in ("on", "off"):
            cmd = [sys.executable, str(ROOT / "benchmarks" / "contention.py"), "--threads", str(threads), "--share", share]
            r = subprocess.run(cmd + (["--busy"] if busy else []), capture_output=True, text=True)
            if r.returncode: raise SystemExit(f"section 7: {' '.join(cmd)} failed:\n{r.stderr[-2000:]}")
            res = json.loads(r.stdout.strip().splitlines()[-1])
            out[f"{'busy' if busy else 'quiet'}/{share}"] = res
            log(f"  [{'busy' if busy else 'quiet'}, cpu_share {share}] setup() {res['setup_s']:.1f} s, measure() "
                f"{', '.join(f'{v:.2f}' for v in res['measure_s'])} s")
    return out

# -- section 8: the causal gate, plain vs reuse --------------------------------------------------------------
GATE_KEYS = ("logodds_before", "causal_shift", "causal_shift_negative", "causal_random_shifts")

def bench_gate(args, device, R: int, concept: str = "refusal") -> dict:
    """`directions.causal_gate` on the embedded model for one demo concept at the layer our `setup()` chooses: the plain
    path (one full forward per vector, `reuse=False`) and the reuse path (blocks below the layer once per batch, vectors
    stacked above it), round-robin in this process; and the largest difference of the gate's numbers."""
    from safety_compass.directions import causal_gate
    from safety_compass.models import load_default_model
    from safety_compass.monitor import SafetyCompassMonitor, load_monitor_config
    log(f"\n[8] causal gate on the embedded model, demo concept {concept}: plain vs reuse; {R} rounds after {int(R > 1)} warm-up")
    model, tok = load_default_model()
    model.to(device)
    cfg = load_monitor_config("demo", concepts=[concept])
    mon = SafetyCompassMonitor.from_config(model, tok, cfg)
    mon.setup(causal_check=False)
    c, b = cfg.concepts[0], mon.baselines[concept]
    neg = [p.negative for p in c.val]
    s = mon.settings
    def gate(reuse):
        return lambda: causal_gate(model, tok, neg, b.layer, b.direction, b.direction_norm, c.positive_openers,
                                   c.negative_openers, n_random=s.causal_random_directions, seed=s.seed,
                                   token_budget=s.token_budget, batch_size=s.batch_size, reuse=reuse)
    # with --repeats 1 no warm-up round: setup() has just run the same model on the same prompts
    t = interleaved([("plain", gate(False), None), ("reuse", gate(True), None)], R, device, warmup=int(R > 1))
    a, r = t["plain"]["last"], t["reuse"]["last"]
    diff = {k: float(np.abs(np.asarray(r[k]) - np.asarray(a[k])).max()) for k in GATE_KEYS}
    rel = max(diff[k] / max(1.0, float(np.abs(np.asarray(a[k])).max())) for k in GATE_KEYS)
    log(f"  layer {b.layer}, {len(neg)} prompts, 19 vectors; max |reuse − plain| {max(diff.values()):.1e} ({rel:.1e} relative)")
    return {"concept": concept, "layer": b.layer, "load_avg": [round(v, 2) for v in os.getloadavg()], "num_layers": len(b.sweep) - 1, "prompts": len(neg),
            "threads": torch.get_num_threads(), "timings": {k: {kk: v[kk] for kk in ("seconds", "median_s", "warmup")}
                                                            for k, v in t.items()},
            "max_abs_diff": diff, "max_rel_diff": rel}

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
    for s in (res.get("plan") or {}).get("sets", []):
        t6, nm = s["timings"], s["config"]
        pl, dp, cur, fl = (t6[k] for k in ("planned", "depth batches only", "current path", "floor"))
        rn = f"{len(pl['seconds'])}+1"  # section 6 times --plan-repeats rounds, not --repeats
        goal = " (goal ≤ 0.6×)" if nm == "demo" else ""
        mn = lambda a, b: f"; fastest/fastest {min(a['seconds']) / min(b['seconds']):.3f}×" if a["seconds"] and b["seconds"] else ""
        add("6a", f"[{nm}] measure() planned / current path", U.secs(pl["median_s"]), U.secs(cur["median_s"]),
            x(pl["median_s"] / cur["median_s"]), rn, f"plan: {s['plan_mode']}" + mn(pl, cur))
        add("6b", f"[{nm}] measure() planned / floor", U.secs(pl["median_s"]), U.secs(fl["median_s"]),
            x(pl["median_s"] / fl["median_s"]), rn, "floor: every prompt to the deepest layer, bare forward" + goal + mn(pl, fl))
        add("6c", f"[{nm}] measure() depth batches only / floor", U.secs(dp["median_s"]), U.secs(fl["median_s"]),
            x(dp["median_s"] / fl["median_s"]), rn, "per-concept depth, no prefix reuse" + mn(dp, fl))
        add("6d", f"[{nm}] measure() current path / floor", U.secs(cur["median_s"]), U.secs(fl["median_s"]),
            x(cur["median_s"] / fl["median_s"]), rn, "every prompt to the deepest layer in capture_last_token's batches" + mn(cur, fl))
        add("6e", f"[{nm}] capture only: planned / current path", U.secs(pl["median_extra"]), U.secs(cur["median_extra"]),
            x(pl["median_extra"] / cur["median_extra"]), rn, f"metrics: {U.secs(pl['median_s'] - pl['median_extra'])} of planned")
        c, cd = s["cost_token_blocks"], s["depth_cost_token_blocks"]
        add("6f", f"[{nm}] work (padded token × blocks): depth only / plain, planned / plain", f"{cd['plan'] / cd['plain']:.3f}",
            f"{c['plan'] / c['plain']:.3f}", x(c["plan"] / cd["plan"]), "count",
            f"{c['forwards']} forwards planned vs {cd['forwards']} depth-only; {len(s['prefix_groups'])} prefix groups")
        if s.get("block_macs") and c.get("last_block"):
            blk = s["block_macs"][0]
            macs = lambda k, d: cost_macs(d, k, s["block_macs"])
            add("6f", f"[{nm}] multiply-adds (linear layers): planned / floor", f"{macs('plan', c) / 1e9:.1f} G",
                f"{c['plain'] * blk / 1e9:.1f} G", x(macs("plan", c) / (c["plain"] * blk)), "count",
                f"the floor computes every block whole; the plan skips the output projection and MLP of each forward's "
                f"last block but at the last tokens ({c['last_block']['plan']} positions); depth only "
                f"{macs('plan', cd) / (c['plain'] * blk):.3f}×")
            if "ideal" in c:
                add("6f", f"[{nm}] multiply-adds: ideal schedule / planned", f"{macs('ideal', c) / 1e9:.1f} G",
                    f"{macs('plan', c) / 1e9:.1f} G", x(macs("ideal", c) / macs("plan", c)), "count",
                    f"a bound, not a plan: every distinct token prefix once (the prompts' token trie), no padding; "
                    f"{macs('ideal', c) / (c['plain'] * blk):.3f}× the floor")
        for state in ("unperturbed", "perturbed"):
            for k in ("planned", "depth batches only"):
                a = s["agreement"][state][k]
                add("6g", f"[{nm}] agreement {state}, {k} vs current path", f"max diff {a['max_diff']:.1e}",
                    f"{a['where']}", "PASS" if a["pass"] else "FAIL", "1", f"every float metric, tolerance {ROW_TOL:g}")
        if "activations_vs_bare" in s["agreement"]:
            a = s["agreement"]["activations_vs_bare"]
            add("6g", f"[{nm}] activations, planned vs bare truncated forwards", f"max diff {a:.1e}", "every read row and layer",
                "PASS" if a <= ROW_TOL else "FAIL", "1", f"no hooks, every block whole; relative to the layer's largest value, tolerance {ROW_TOL:g}")
        if s["memory_kind"] and pl["median_peak_bytes"] is not None and cur["median_peak_bytes"] is not None:
            extra = pl["median_peak_bytes"] - cur["median_peak_bytes"]
            add("6h", f"[{nm}] peak extra memory: planned − current path", U.mib(extra), U.mib(s["kv_prefix_bytes"]),
                x(extra / s["kv_prefix_bytes"], 2) if s["kv_prefix_bytes"] else "n/a", rn,
                f"baseline: one batch's prefix KV; peaks planned {U.mib(pl['median_peak_bytes'])}, current {U.mib(cur['median_peak_bytes'])}")
    demo = next((s for s in (res.get("plan") or {}).get("sets", []) if s["config"] == "demo"), None)
    if res.get("share") and demo:
        ratio = demo["timings"]["current path"]["median_s"] / demo["timings"]["planned"]["median_s"]
        for s in res["share"]:
            ms = [v for st, v in s["measure_seconds_by_step"] if st != 0]
            m_steps = U.median(ms) / U.median(s["step_seconds"]) if ms and s["step_seconds"] else None
            if m_steps:
                est = m_steps * ratio
                add("3c", f"share estimated for the current path, every {s['every']}", f"{100 * est / (s['every'] + est):.1f}%",
                    f"planned {100 * m_steps / (s['every'] + m_steps):.1f}%", "estimate", "",
                    f"m/(N+m) with m = steps per measurement (×{ratio:.2f}, 6a⁻¹, for the current path)")
                c, bm = demo["cost_token_blocks"], demo.get("block_macs")
                if bm and "ideal" in c:  # 6f's bound on the work, at the plan's speed per multiply-add: an estimate
                    macs = lambda k: cost_macs(c, k, bm)
                    ideal = m_steps * macs("ideal") / macs("plan")
                    add("3d", f"share estimated for an ideal schedule, every {s['every']}", f"{100 * ideal / (s['every'] + ideal):.1f}%",
                        f"planned {100 * m_steps / (s['every'] + m_steps):.1f}%", "estimate", "",
                        f"m scaled by the ideal/planned multiply-adds of 6f ({macs('ideal') / macs('plan'):.3f}), "
                        f"at the plan's speed per multiply-add")
    ld = res.get("load")
    if ld:
        add("4", "embedded model load, cold / warm", U.secs(ld["median_cold_s"]), U.secs(ld["median_warm_s"]),
            x(ld["median_cold_s"] / ld["median_warm_s"], 0), f"{ld['repeats']}+1", "cold = empty SAFETY_COMPASS_CACHE")
    ct = res.get("contention")
    if ct:
        med = lambda r: U.median(r["measure_s"])
        for share, when in (("on", "now (core.cpu_share)"), ("off", "before (cpu_share off)")):
            q, b = ct[f"quiet/{share}"], ct[f"busy/{share}"]
            add("7a", f"setup(), one competing process / quiet, {when}", U.secs(b["setup_s"]), U.secs(q["setup_s"]),
                x(b["setup_s"] / q["setup_s"], 2), "1", f"goal ≤ 2.5×; {ct['threads']} torch threads asked for")
            add("7b", f"measure(), one competing process / quiet, {when}", U.secs(med(b)), U.secs(med(q)),
                x(med(b) / med(q), 2), str(len(q["measure_s"])), f"goal ≤ 2.5×; medians; {ct['threads']} torch threads asked for")
        q = ct["quiet/on"]
        add("7c", "setup() / one measure(), quiet", U.secs(q["setup_s"]), U.secs(med(q)), x(q["setup_s"] / med(q), 1),
            str(len(q["measure_s"])), "goal ≤ 5×; setup() without the causal gate, as in section 6")
    g = res.get("gate")
    if g:
        p, r = g["timings"]["plain"], g["timings"]["reuse"]
        fast = min(r["seconds"]) / min(p["seconds"])
        add("8", f"causal gate ({g['concept']}, layer {g['layer']} of {g['num_layers']}, {g['prompts']} prompts): reuse / plain",
            U.secs(r["median_s"]), U.secs(p["median_s"]), x(r["median_s"] / p["median_s"]), str(len(p["seconds"])),
            f"fastest/fastest {fast:.3f}×; max |Δ| of the gate's numbers {max(g['max_abs_diff'].values()):.1e} "
            f"({g['max_rel_diff']:.1e} relative); {g['threads']} torch threads; load average after {g['load_avg']}")
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
    ap.add_argument("--only", help="comma-separated sections to run: 1 reference, 2 floor, 3 share, 4 load, 5 memory, 6 plan, 7 contention, 8 gate")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--plan-repeats", type=int, help="timed repeats in section 6 (default: min(3, --repeats))")
    ap.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's own); on a CPU shared with "
                                                "other jobs, 1 avoids thread oversubscription, which penalises many small forwards")
    ap.add_argument("--configs", default=",".join(CONFIGS), help="concept sets of section 6 (default: demo,smollm2_full)")
    ap.add_argument("--gpu", action="store_true", help="section 6 on CUDA, also on a randomly initialised model of Qwen3-8B's "
                                                       "shape in fp16 (implies --device cuda --synthetic qwen3-8b, and --only 6 unless given)")
    ap.add_argument("--nf4", action="store_true", help="with --gpu/--synthetic: also the NF4 (bitsandbytes 4-bit) model")
    ap.add_argument("--synthetic", choices=sorted(SYNTHETIC), help="section 6 also on a randomly initialised model of this shape")
    ap.add_argument("--synthetic-dtype", default=None, choices=["fp16", "bf16", "fp32"],
                    help="weights of the synthetic model (default fp16 on CUDA, fp32 on the CPU)")
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
    if args.gpu:
        args.device, args.synthetic = "cuda", args.synthetic or "qwen3-8b"
        if not args.only: args.only = "6"
        if not torch.cuda.is_available(): raise SystemExit("--gpu: no CUDA device here")
    only = {int(s) for s in args.only.split(",")} if args.only else set(SECTIONS)
    args.configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    for c in args.configs:
        if c not in CONFIGS: raise SystemExit(f"--configs: unknown concept set {c!r}: one of {', '.join(CONFIGS)}")
    sections = [SECTIONS[i] for i in sorted(only)]
    device = torch.device("cuda" if (args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())) else "cpu")
    if R < 1:
        raise SystemExit("--repeats must be ≥ 1")
    args.synthetic_dtypes = [args.synthetic_dtype or ("fp16" if device.type == "cuda" else "fp32")] + (["nf4"] if args.nf4 else [])

    if args.threads: torch.set_num_threads(args.threads)
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
    if 6 in only:
        res["plan"] = bench_plan(args, device, args.plan_repeats or min(3, R), notes)
        demo = next((s for s in res["plan"]["sets"] if s["config"] == "demo" and "synthetic" not in s), None)
        if layers is None and demo: layers = demo["layers"]
    if 4 in only:
        res["load"] = bench_load(R)
    if 7 in only:
        res["contention"] = bench_contention(args)
    if 8 in only:
        res["gate"] = bench_gate(args, device, R)
    if 3 in only:  # the heaviest part (two 100-step fine-tunes), last
        res["share"] = bench_share(args, exp, layers, device, steps, everys)

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
