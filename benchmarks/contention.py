"""Section 7 of the benchmark: `setup()` and `measure()` of the demo monitor, quiet or beside one CPU-bound process.

    python benchmarks/contention.py --threads 2 [--busy] [--share off] [--measures 3]

Prints one JSON line: the seconds of one `setup()` (layer sweep and layer choice; no causal gate, as section 6) and of
each `measure()`. `--busy` starts a pure-Python spin loop (one CPU-bound process) before timing and stops it after.
`--share off` disables `core.cpu_share` (the monitor then keeps torch's thread count whatever the machine is doing):
the behaviour before it existed. One process per setting, so each starts with its own thread pool.
"""
import argparse, contextlib, json, subprocess, sys, time, warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, required=True, help="torch.set_num_threads before anything runs")
    ap.add_argument("--busy", action="store_true", help="one competing CPU-bound process (a spin loop) while timing")
    ap.add_argument("--share", choices=["on", "off"], default="on", help="core.cpu_share in the monitor (default on)")
    ap.add_argument("--measures", type=int, default=3)
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    import torch
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()
    import safety_compass.monitor as M
    from safety_compass.models import load_default_model
    if args.share == "off":
        M.cpu_share = lambda enabled=True: contextlib.nullcontext(torch.get_num_threads())
    torch.set_num_threads(args.threads)
    model, tok = load_default_model()
    mon = M.SafetyCompassMonitor.from_config(model, tok, "demo", causal_check=False)
    spin = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if args.busy else None
    try:
        time.sleep(1.0)   # the spin loop is running before the clock starts
        t0 = time.perf_counter(); mon.setup(progress=False); setup_s = time.perf_counter() - t0
        measures = []
        for k in range(args.measures):
            t0 = time.perf_counter(); mon.measure(step=k + 1); measures.append(time.perf_counter() - t0)
    finally:
        if spin is not None: spin.kill(); spin.wait()
    print(json.dumps({"threads": args.threads, "busy": args.busy, "share": args.share, "setup_s": setup_s,
                      "measure_s": measures}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
