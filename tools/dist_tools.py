"""Packaging helpers for `make dist`, `make kaggle-smoke` and tests/test_install.py. Standard library only.

    python tools/dist_tools.py check DIST_DIR
        The wheel and sdist in DIST_DIR hold what a user needs: the package, every file of configs/ and data/ (inside
        the wheel as safety_compass/_root/...), the LICENSE, the console scripts and the published extras. Prints one
        line per distribution; exits 1 with the problems otherwise.

    python tools/dist_tools.py report REPORT_JSON CONSTRAINTS
        One line from a `pip install --dry-run --report` resolution made under CONSTRAINTS (`make kaggle-compat`): the
        constrained versions it kept and what it would add.

    python tools/dist_tools.py overlay-venv DEST [--kernel NAME]
        A fresh virtual environment at DEST that sees the running interpreter's third-party packages (torch,
        transformers, ...: no multi-GB downloads) through a .pth file, but not its safety_compass, which must come from
        whatever is then installed into DEST (a wheel). With --kernel, also a Jupyter kernelspec NAME under
        DEST/share/jupyter (point JUPYTER_PATH there) whose kernel runs DEST's python in isolated mode (-I: neither the
        working directory nor PYTHONPATH on sys.path, so a checkout cannot shadow the installed package).
"""
from __future__ import annotations
import json, os, re, sys, sysconfig, tarfile, venv, zipfile
from email.parser import Parser
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DIST_NAME = "safety-compass-observability"
EXTRAS = ("gpu", "data", "viz", "dev", "demo", "trl")
SCRIPTS = ("safety-compass", "safety-compass-extract", "safety-compass-finetune", "safety-compass-pairs")

def source_files(top: str, base: Path = ROOT) -> set[str]:
    "Files under `base/top` that setup.py ships (it skips dotfiles), relative to `base`."
    out = set()
    for d, _, files in os.walk(base / top):
        for f in files:
            if not f.startswith("."): out.add((Path(d) / f).relative_to(base).as_posix())
    return out

def wheel_metadata(whl) -> tuple[dict, list[str], str]:
    "(METADATA headers as {key: [values]}, the wheel's file names, entry_points.txt) of a wheel."
    with zipfile.ZipFile(whl) as z:
        names = z.namelist()
        info = next(n for n in names if re.fullmatch(r"[^/]+\.dist-info/METADATA", n))
        msg = Parser().parsestr(z.read(info).decode())
        ep = next((n for n in names if n.endswith(".dist-info/entry_points.txt")), None)
        eps = z.read(ep).decode() if ep else ""
    meta = {}
    for k, v in msg.items(): meta.setdefault(k, []).append(v)
    return meta, names, eps

def check_dist(dist_dir, base: Path = ROOT) -> list[str]:
    "Problems with the wheel and sdist in `dist_dir` (empty: fine); prints a summary line per distribution."
    dist_dir = Path(dist_dir)
    wheels, sdists = sorted(dist_dir.glob("*.whl")), sorted(dist_dir.glob("*.tar.gz"))
    problems = []
    if len(wheels) != 1: problems.append(f"{dist_dir}: expected one wheel, found {len(wheels)}")
    if len(sdists) != 1: problems.append(f"{dist_dir}: expected one sdist, found {len(sdists)}")
    shipped = source_files("configs", base) | source_files("data", base)
    if wheels:
        whl = wheels[0]
        meta, names, eps = wheel_metadata(whl)
        if meta.get("Name", [""])[0] != DIST_NAME: problems.append(f"{whl.name}: Name is {meta.get('Name')}, not {DIST_NAME}")
        missing_extras = set(EXTRAS) - set(meta.get("Provides-Extra", []))
        if missing_extras: problems.append(f"{whl.name}: extras missing from the metadata: {sorted(missing_extras)}")
        inside = {n[len("safety_compass/_root/"):] for n in names if n.startswith("safety_compass/_root/")}
        if shipped - inside: problems.append(f"{whl.name}: {len(shipped - inside)} files of configs/ and data/ missing, e.g. {sorted(shipped - inside)[:3]}")
        for must in ("safety_compass/__init__.py", "safety_compass/core.py", "safety_compass/monitor.py", "safety_compass/callback.py"):
            if must not in names: problems.append(f"{whl.name}: {must} missing")
        if not any(re.fullmatch(r"[^/]+\.dist-info/(licenses/)?LICENSE", n) for n in names): problems.append(f"{whl.name}: no LICENSE")
        for s in SCRIPTS:
            if not re.search(rf"^{re.escape(s)}\s*=", eps, flags=re.M): problems.append(f"{whl.name}: console script {s} missing")
        print(f"{whl.name}: {len(names)} files ({whl.stat().st_size / 1e6:.1f} MB), {len(inside)} under safety_compass/_root "
              f"(configs/ and data/), extras {', '.join(sorted(meta.get('Provides-Extra', [])))}, "
              f"{len(meta.get('Requires-Dist', []))} requirement lines")
    if sdists:
        sd = sdists[0]
        with tarfile.open(sd) as t: members = {m.name.split("/", 1)[1] for m in t.getmembers() if "/" in m.name and m.isfile()}
        for must in ("setup.py", "settings.ini", "pyproject.toml", "LICENSE", "README.md", "safety_compass/__init__.py"):
            if must not in members: problems.append(f"{sd.name}: {must} missing")
        if shipped - members: problems.append(f"{sd.name}: {len(shipped - members)} files of configs/ and data/ missing, e.g. {sorted(shipped - members)[:3]}")
        print(f"{sd.name}: {len(members)} files ({sd.stat().st_size / 1e6:.1f} MB)")
    return problems

def _top_name(entry: str) -> str:
    "`bitsandbytes` for `bitsandbytes`, `bitsandbytes-0.50.2.dist-info` or `bitsandbytes.libs`, lower case."
    return re.split(r"[-.]", entry, maxsplit=1)[0].lower().replace("-", "_")

def third_party_view(site_dirs, dest: Path, exclude=()) -> int:
    """Symlinks in `dest` to every entry of `site_dirs` except safety_compass's own (package, dist-info, editable hooks),
    .pth files, and the packages named in `exclude` (import names, e.g. to leave out what an extra would bring)."""
    dest.mkdir(parents=True, exist_ok=True)
    drop = {x.lower().replace("-", "_") for x in exclude}
    n = 0
    for site in site_dirs:
        for entry in sorted(os.listdir(site)):
            low = entry.lower()
            if low.startswith(("safety_compass", "safety-compass", "__editable__")) or low.endswith(".pth"): continue
            if _top_name(entry) in drop: continue
            if (dest / entry).exists() or (dest / entry).is_symlink(): continue
            os.symlink(Path(site) / entry, dest / entry); n += 1
    return n

def overlay_venv(dest, kernel: str | None = None, exclude=()) -> Path:
    "Create the overlay environment (see the module docstring), without the packages in `exclude`; returns its python."
    dest = Path(dest).resolve()
    venv.EnvBuilder(with_pip=True, clear=True).create(dest)
    py = dest / "bin" / "python"
    paths = sysconfig.get_paths()
    sites = list(dict.fromkeys([paths["purelib"], paths["platlib"]]))
    view = dest / "third-party"
    n = third_party_view(sites, view, exclude)
    purelib = Path(sysconfig.get_paths(vars={"base": str(dest), "platbase": str(dest)})["purelib"])
    (purelib / "_third_party.pth").write_text(str(view) + "\n")
    if kernel:
        kdir = dest / "share" / "jupyter" / "kernels" / kernel
        kdir.mkdir(parents=True, exist_ok=True)
        (kdir / "kernel.json").write_text(json.dumps({
            "argv": [str(py), "-I", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": f"Python ({dest.name}: installed wheel, shared third-party packages)", "language": "python"}, indent=1))
    print(f"{dest}: fresh venv, {n} third-party entries visible from {', '.join(sites)}" + (f", kernel {kernel}" if kernel else "")
          + (f", without {', '.join(sorted(exclude))}" if exclude else ""))
    return py

def report_line(report, constraints) -> str:
    "Summary of a pip --dry-run report: constrained packages resolved at their pinned versions, the others added."
    pins = {}
    for line in Path(constraints).read_text().splitlines():
        line = line.split("#")[0].strip()
        if "==" in line:
            name, v = line.split("==")
            pins[name.strip().lower().replace("_", "-")] = v.strip()
    got = {i["metadata"]["name"].lower().replace("_", "-"): i["metadata"]["version"] for i in json.loads(Path(report).read_text())["install"]}
    off = {n: (v, got[n]) for n, v in pins.items() if n in got and got[n].split("+")[0] != v}
    if off: raise SystemExit(f"resolved away from the pinned versions: {off}")
    kept = [f"{n} {got[n]}" for n in pins if n in got]
    new = [f"{n} {got[n]}" for n in ("bitsandbytes", "safety-compass-observability") if n in got]
    return f"resolves with the pinned {', '.join(kept)}; adds {', '.join(new)} ({len(got)} packages in all)"

def main(argv=None):
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("check"); c.add_argument("dist_dir")
    o = sub.add_parser("overlay-venv"); o.add_argument("dest"); o.add_argument("--kernel")
    r = sub.add_parser("report"); r.add_argument("report_json"); r.add_argument("constraints")
    a = ap.parse_args(argv)
    if a.cmd == "check":
        problems = check_dist(a.dist_dir)
        for p in problems: print("dist check:", p, file=sys.stderr)
        return 1 if problems else 0
    if a.cmd == "report":
        print("kaggle-compat:", report_line(a.report_json, a.constraints))
        return 0
    overlay_venv(a.dest, a.kernel)
    return 0

if __name__ == "__main__":
    sys.exit(main())
