"""Execute notebooks in place so their saved outputs (tables, plots) show in the docs; then strip volatile metadata.

    python tools/execute_nbs.py [nbs/04_capture.ipynb ...]     # default: every notebook in nbs/
    python tools/execute_nbs.py --scrub-only [nbs/X.ipynb ...] # only scrub paths and shrink figures in stored outputs
Cells flagged `#| eval: false` are skipped, as nbdev_test does. Stops at the first failing notebook.
Stored outputs carry no machine paths (`tests/test_docs.py::test_no_machine_paths_in_stored_outputs`): text outputs
have the temporary directory written `<tmp>`, the home directory `~` and this checkout `<repo>` (`scrub_paths`).
PNG outputs over 50 KB are stored as 256-colour palette PNGs (`shrink_png`: a plot's flat colours survive; about a
third of the bytes), so a chapter's stored figures stay small.
"""
import os, re, sys, tempfile, time
from pathlib import Path

root = Path(__file__).resolve().parents[1]
MACHINE_PATH = re.compile(r"(?<![\w.~<>-])/(?:tmp|root|home|work|var/folders|private)/")   # what the test looks for

def scrub_paths(text: str) -> str:
    "`text` with this machine's temporary directory, checkout and home directory written `<tmp>`, `<repo>` and `~`."
    for prefix, short in ((tempfile.gettempdir(), "<tmp>"), ("/tmp", "<tmp>"), (str(root), "<repo>"),
                          (str(Path.home()), "~")):
        text = re.sub(re.escape(prefix.rstrip("/")) + r"(?=/|\b)", short, text)
    return text

def scrub_nb(nb) -> int:
    "Scrub every stream and text output of notebook `nb` in place; the number of outputs changed."
    n = 0
    for c in nb.cells:
        for o in c.get("outputs", []):
            if "text" in o:
                t = "".join(o["text"]) if isinstance(o["text"], list) else o["text"]
                if (s := scrub_paths(t)) != t: o["text"] = s; n += 1
            for k, v in o.get("data", {}).items():
                if k.startswith("text/"):
                    t = "".join(v) if isinstance(v, list) else v
                    if (s := scrub_paths(t)) != t: o["data"][k] = s; n += 1
    return n

def shrink_png(b64: str, over: int = 50_000) -> str:
    "A base64 PNG over `over` bytes re-encoded as a 256-colour palette PNG, when that is smaller; else unchanged."
    import base64, io
    from PIL import Image
    raw = base64.b64decode(b64)
    if len(raw) <= over: return b64
    im = Image.open(io.BytesIO(raw))
    if im.mode == "P": return b64
    buf = io.BytesIO()
    im.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(buf, "PNG", optimize=True)
    return base64.b64encode(buf.getvalue()).decode() + "\n" if buf.tell() < len(raw) else b64

def shrink_nb(nb) -> int:
    "Shrink every PNG output of notebook `nb` in place (`shrink_png`); the number changed."
    n = 0
    for c in nb.cells:
        for o in c.get("outputs", []):
            v = o.get("data", {}).get("image/png")
            if v is None: continue
            v = "".join(v) if isinstance(v, list) else v
            if (s := shrink_png(v)) != v: o["data"]["image/png"] = s; n += 1
    return n

def no_eval(cell):
    src = cell.source if isinstance(cell.source, str) else "".join(cell.source)
    return cell.cell_type == "code" and any(l.replace(" ", "").startswith("#|eval:false") for l in src.splitlines())

if __name__ == "__main__":
    from execnb.nbio import read_nb, write_nb
    scrub_only = "--scrub-only" in sys.argv
    paths = [Path(p).resolve() for p in sys.argv[1:] if p != "--scrub-only"] or sorted((root / "nbs").glob("*.ipynb"))
    os.chdir(root / "nbs")
    for p in paths:
        t0 = time.perf_counter()
        nb = read_nb(p)
        if not scrub_only:
            from execnb.shell import CaptureShell
            for c in nb.cells:  # execnb only replaces outputs a cell produces again: start from none
                if c.cell_type == "code": c["outputs"] = []; c["execution_count"] = None
            CaptureShell(path=p.parent).run_all(nb, exc_stop=True, preproc=no_eval)
        n, k = scrub_nb(nb), shrink_nb(nb)
        if n or k or not scrub_only: write_nb(nb, p)
        print(f"{'scrubbed' if scrub_only else 'executed'} {p.name} in {time.perf_counter() - t0:.1f}s ({n} outputs had "
              f"machine paths; {k} figures shrunk)", flush=True)
    for p in paths: os.system(f"{Path(sys.executable).parent / 'nbdev_clean'} --fname {p}")  # only the notebooks run here
