import os, sys, subprocess
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

@pytest.fixture(scope="session")
def embedded():
    "The embedded SmolLM2-135M-Instruct, loaded once per session."
    from safety_compass import load_default_model
    return load_default_model()

def run_cli(*args, cwd=None, env=None, timeout=900):
    "Run a console script; returns CompletedProcess with text output."
    exe = BIN / args[0]
    return subprocess.run([str(exe), *map(str, args[1:])], capture_output=True, text=True, cwd=cwd, timeout=timeout,
                          env={**os.environ, **(env or {})})
