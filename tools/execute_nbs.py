"""Execute notebooks in place so their saved outputs (tables, plots) show in the docs; then strip volatile metadata.

    python tools/execute_nbs.py [nbs/04_capture.ipynb ...]     # default: every notebook in nbs/
Cells flagged `#| eval: false` are skipped, as nbdev_test does. Stops at the first failing notebook.
"""
import os, sys, time
from pathlib import Path
from execnb.nbio import read_nb, write_nb
from execnb.shell import CaptureShell

root = Path(__file__).resolve().parents[1]
paths = [Path(p).resolve() for p in sys.argv[1:]] or sorted((root / "nbs").glob("*.ipynb"))
os.chdir(root / "nbs")

def no_eval(cell):
    src = cell.source if isinstance(cell.source, str) else "".join(cell.source)
    return cell.cell_type == "code" and any(l.replace(" ", "").startswith("#|eval:false") for l in src.splitlines())

for p in paths:
    t0 = time.perf_counter()
    nb = read_nb(p)
    for c in nb.cells:  # execnb only replaces outputs a cell produces again: start from none
        if c.cell_type == "code": c["outputs"] = []; c["execution_count"] = None
    shell = CaptureShell(path=p.parent)
    shell.run_all(nb, exc_stop=True, preproc=no_eval)
    write_nb(nb, p)
    print(f"executed {p.name} in {time.perf_counter() - t0:.1f}s", flush=True)
for p in paths: os.system(f"{Path(sys.executable).parent / 'nbdev_clean'} --fname {p}")  # only the notebooks run here
