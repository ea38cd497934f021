"`pip install .` into a fresh virtual environment gives the public API, the bundled configs and working console scripts."
import os, subprocess, sys, shutil, site, sysconfig
from pathlib import Path
from conftest import ROOT

def _run(cmd, **kw):
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=600, **kw)

def test_pip_install_fresh_venv(tmp_path):
    src = tmp_path / "src"
    files = _run(["git", "-C", ROOT, "ls-files", "--cached", "--others", "--exclude-standard"]).stdout.split()
    for f in files:
        if (ROOT / f).is_file():
            (src / f).parent.mkdir(parents=True, exist_ok=True); shutil.copy2(ROOT / f, src / f)
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", venv])
    py = venv / "bin" / "python"
    # the fresh venv sees this environment's third-party packages (torch etc.) but not its editable safety_compass
    site_dir = Path(_run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    (site_dir / "_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    r = _run([py, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", src])
    assert r.returncode == 0, r.stderr[-2000:]
    elsewhere = tmp_path / "elsewhere"; elsewhere.mkdir()
    code = ("import safety_compass as sc; from safety_compass import SafetyCompassMonitor, SafetyCompassCallback, load_default_model;"
            "from safety_compass.core import bundled_root, find_config; print(sc.__file__); print(bundled_root()); print(find_config('demo', 'experiments'))")
    r = _run([py, "-c", code], cwd=elsewhere)
    assert r.returncode == 0, r.stderr[-2000:]
    mod, root, demo = r.stdout.split()
    assert str(venv) in mod and str(venv) in root, r.stdout        # the installed copy, not the checkout
    assert Path(demo).is_file() and (Path(root) / "data/contrastive_pairs/refusal.jsonl").is_file()
    for script in ("safety-compass", "safety-compass-extract", "safety-compass-pairs"):
        r = _run([venv / "bin" / script, "--help"], cwd=elsewhere)
        assert r.returncode == 0 and "usage" in r.stdout.lower(), (script, r.stderr[-1000:])
    r = _run([venv / "bin" / "safety-compass-extract", "--experiment-config", "missing", "--output-dir", "o"], cwd=elsewhere)
    assert r.returncode == 2 and r.stderr.strip() == "error: missing: config file not found"
