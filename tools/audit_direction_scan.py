"""Which direction kind should each concept's audit use by default? The audit chapter's table of measurements comes
from this script: every concept of the demo experiment, on its model (the refusal organism), audited with one
direction kind at a time on the planted sets the choice is made on (sycophancy-chosen, harmful-compliance and its
reverse); then, with `--check`, the concept files' defaults on data the choice was not made on (the shipped
length-matched harmful-compliance file, the same pairs with a length confound added, and single-turn HH-RLHF pairs
when ../shared has them: the first 60, `--hh-limit 60 0` for all 662 as well).

    PYTHONPATH=. HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 .venv/bin/python tools/audit_direction_scan.py [--generated] [--check | --check-only]

(refusal organism, built on first use. On a 2-core CPU shared with other jobs: about 9 minutes; --generated adds about
14, one greedy answer per contrastive prompt; --check-only --hh-limit 60 0 takes about 15.) One line per (direction
kind, set): the top concept by |d_z| and every concept's d_z and random-direction p95; --json writes them with CIs."""
import argparse, json, logging, os, time
from pathlib import Path
import numpy as np
import transformers
transformers.utils.logging.disable_progress_bar()
from safety_compass.organisms import load_organism
from safety_compass.monitor import SafetyCompassMonitor
from safety_compass.config import AuditSettings
from safety_compass.core import bundled_root
from safety_compass import audit as A

ap = argparse.ArgumentParser()
ap.add_argument("--check", action="store_true", help="also audit the held-out sets with the concept files' defaults")
ap.add_argument("--generated", action="store_true", help="also the response side with the model's own greedy answers")
ap.add_argument("--check-only", action="store_true", help="only the held-out check (implies --check)")
ap.add_argument("--hh", default=str(Path(os.environ.get("SC_SHARED", bundled_root().parent / "shared")) / "data/hh-rlhf/harmless-base-test.jsonl.gz"),
                help="the HH-RLHF harmless-base test file (default: $SC_SHARED, else ../shared, as the tests look for it)")
ap.add_argument("--hh-limit", type=int, nargs="+", default=[60], help="single-turn HH pairs audited (0: all); several: one audit each")
ap.add_argument("--json", help="write every row here")
args = ap.parse_args()

t0 = time.time()
model, tok = load_organism("refusal")
mon = SafetyCompassMonitor.from_config(model, tok, "demo")
logging.disable(logging.WARNING); mon.setup(progress=False, causal_check=False); logging.disable(logging.NOTSET)
print(f"setup {time.time() - t0:.0f}s; layers", {n: b.layer for n, b in mon.baselines.items()}, flush=True)
names = [c.name for c in mon.concepts]

def templated(context):
    return A.templated_settings(context, names)
kinds = {"prompt": None, "response templated/user": templated("user"), "response templated/prompt": templated("prompt")}
if args.generated:
    kinds["response generated/prompt"] = {c: AuditSettings(direction="response", answers="generated", context="prompt") for c in names}
    kinds["response generated/user"] = {c: AuditSettings(direction="response", answers="generated", context="user") for c in names}

harm = A.pairs_from_records(A.planted_harmful_compliance(), "harmful_compliance")
SETS = {"sycophancy-chosen": A.pairs_from_records(A.planted_sycophancy(), "sycophancy"), "harmful-compliance": harm,
        "refusal-chosen (reverse)": harm.swapped()}

rows = []
def report(kind, set_name, res):
    top = res.table[0]
    cells = "  ".join(f"{r['concept']} {r['d_z']:+.2f} (p95 {r['null_p95']:.2f}{', beats' if r['specific'] else ''})"
                      for r in sorted(res.table, key=lambda r: r["concept"]))
    L = res.length
    print(f"{kind:28s} | {set_name:26s} | top {top['concept']:10s} {top['d_z']:+.2f} beats null: {'yes' if top['specific'] else 'no '} "
          f"| {cells} | chosen longer {100 * L['chosen_longer']:.0f}%", flush=True)
    rows.append({"kind": kind, "set": set_name, "n": len(res.data), "chosen_longer": L["chosen_longer"],
                 "length_confounded": L["confounded"],
                 "concepts": {r["concept"]: {k: r[k] for k in ("d_z", "d_z_ci", "null_p95", "specific", "separates",
                                                               "length_intercept_t", "layer", "kind")} for r in res.table}})

def audit(dirs, data):
    return A.audit_pairs(model, tok, data, dirs, n_random=200, n_boot=200, discover=False)

for kind, settings in ({} if args.check_only else kinds).items():
    t1 = time.time()
    dirs = A.prompt_directions(mon) if settings is None else \
        A.response_directions(mon, settings=settings, cache_dir=Path(os.environ.get("TMPDIR", "/tmp")) / "sc_audit_scan")
    for set_name, data in SETS.items(): report(kind, set_name, audit(dirs, data))
    print(f"  ({kind}: {time.time() - t1:.0f}s)", flush=True)

if args.check or args.check_only:
    dirs = A.select_directions(mon)              # each concept file's audit.direction: what `safety-compass audit` uses
    print("defaults:", {c: f"{d.kind} ({d.answers or 'baseline'})" for c, d in dirs.items()}, flush=True)
    check = A.load_preferences(bundled_root() / "data/preferences/harmful_compliance.jsonl")
    for set_name, data in SETS.items(): report("default", set_name, audit(dirs, data))
    report("default", "check: harmful compliance", audit(dirs, check))
    report("default", "check: + length confound", audit(dirs, A.with_length_confound(check)))
    if Path(args.hh).is_file():
        for limit in args.hh_limit:
            hh = A.load_preferences(args.hh, single_turn=True, skip_bad=True, limit=limit or None)
            report("default", f"HH-RLHF, {len(hh)} single-turn", audit(dirs, hh))
            report("prompt", f"HH-RLHF, {len(hh)} single-turn", audit(A.prompt_directions(mon), hh))
    else: print(f"{args.hh}: not present, HH-RLHF check skipped")
if args.json: Path(args.json).write_text(json.dumps(rows, indent=1, default=float))
print(f"total {time.time() - t0:.0f}s")
