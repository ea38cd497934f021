"""Which layer's refusal DiM direction, ablated from every residual write (`steer.ablate`), lowers the first-token
refusal log-odds on the bundled harmful behavior prompts? One line per (pair set, layer), then the best layer against
20 random directions. The numbers in the steering chapter's closing note come from this script:
    PYTHONPATH=. HF_HUB_OFFLINE=1 .venv/bin/python tools/steer_layer_scan.py
(embedded SmolLM2-135M-Instruct; about 10 minutes on a 2-core CPU)."""
import torch, numpy as np, json
torch.set_num_threads(2)
from safety_compass.models import load_default_model
from safety_compass.config import load_experiment
from safety_compass.pairs import load_pairs
from safety_compass.capture import capture_last_token
from safety_compass.directions import dim_direction, opener_token_ids
from safety_compass.behavior import bundled_behavior, DEFAULT_OPENERS
from safety_compass.steer import prompt_ids, last_logits, logodds, ablate, random_control
import transformers; transformers.utils.logging.disable_progress_bar()
model, tok = load_default_model()
for cfgname in ("demo", "smollm2_full"):
    exp = load_experiment(cfgname, concepts=["refusal"])
    c = exp.concepts[0]
    pairs = load_pairs(c.pairs_file, c.config.pairing_strategy)
    tr = [p for p in pairs if p.split == "train"]
    convs = [p.positive for p in tr] + [p.negative for p in tr]
    layers = [4, 6, 8, 10, 12, 14, 16, 18, 20, 23]
    acts = capture_last_token(model, tok, convs, layers)
    items = bundled_behavior("refusal"); harmful = [it for it in items if it["kind"] == "harmful"]
    ids = prompt_ids(tok, harmful); pos, neg = (opener_token_ids(tok, o) for o in DEFAULT_OPENERS["refusal"])
    lo0 = logodds(last_logits(model, tok, ids), pos, neg)
    res = {}
    for i, L in enumerate(layers):
        a = np.asarray(acts[i]) if not isinstance(acts, dict) else np.asarray(acts[L])
        u, n = dim_direction(a[:len(tr)], a[len(tr):])
        lo = logodds(last_logits(model, tok, ids, lambda: ablate(model, u)), pos, neg)
        drop = lo0 - lo
        res[L] = (float(drop.mean()), float((drop > 0).mean()))
        print(cfgname, len(tr), "layer", L, "mean drop %+.3f lowered on %.0f%%" % (drop.mean(), 100 * (drop > 0).mean()), flush=True)
    best = max(res, key=lambda L: res[L][0])
    rd = -random_control(model, tok, ids, DEFAULT_OPENERS["refusal"], "ablate", n=20, seed=0, ref_logodds=lo0)
    print(cfgname, "best layer", best, res[best], "random p95 %+.3f mean %+.3f" % (np.percentile(rd, 95), rd.mean()), flush=True)
