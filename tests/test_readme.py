"The README's Python code blocks run as written (in a fresh directory, on the embedded model)."
import os, re, subprocess, sys
from pathlib import Path
from conftest import ROOT

def python_blocks(text: str) -> list[str]:
    "The ```python fenced blocks of a markdown text, in order."
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.M | re.S)

def test_readme_has_runnable_example():
    blocks = python_blocks((ROOT / "README.md").read_text(encoding="utf-8"))
    assert blocks, "the README has no Python example"
    assert all("..." not in b for b in blocks), "a README code block leaves something out ('...')"

def test_readme_python_blocks_run(tmp_path):
    "All Python blocks, concatenated, run in a fresh directory with a fresh interpreter (as a reader would paste them)."
    code = "\n".join(python_blocks((ROOT / "README.md").read_text(encoding="utf-8")))
    script = tmp_path / "readme_example.py"; script.write_text(code)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    r = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=1800, env=env)
    assert r.returncode == 0, r.stderr[-4000:]
    assert "Traceback" not in r.stderr
    log = tmp_path / "drift_log.csv"
    assert log.is_file() and len(log.read_text().splitlines()) > 1   # the example's drift log has measurements

def test_readme_is_generated_from_index():
    "README.md is `tools/readme.py`'s rendering of nbs/index.ipynb (edit the notebook, not the README)."
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "readme.py"), "--check"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
