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

WORKER_END = """
import os as _os, sys as _sys
from safety_compass.capture import end_distributed as _end
_end()
_sys.stdout.flush(); _sys.stderr.flush(); _os._exit(0)
"""

def run_ranks(tmp_path, source: str, world: int, *args, timeout=1200):
    """Run the worker script `source` as `world` processes, each with the environment a launcher (`torchrun`) gives it:
    RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR/MASTER_PORT (a free local port). Each gets argv `args`; asserts that every
    rank exits 0 (its output's tail otherwise) and kills any rank still running when one fails or time runs out. Every
    worker ends with `WORKER_END`: the product's `end_distributed()`, then `os._exit(0)`, because with a gloo group torch
    can abort a finished process during interpreter shutdown ("terminate called without an active exception",
    pytorch/pytorch#190489), which says nothing about the numbers these tests compare."""
    import socket
    script = tmp_path / f"worker{world}.py"; script.write_text(source + WORKER_END)
    with socket.socket() as s: s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": str(world), "LOCAL_WORLD_SIZE": str(world)}
    logs = [tmp_path / f"worker{world}.rank{r}.log" for r in range(world)]   # files, not pipes: a full pipe cannot stall a rank
    procs = []
    try:
        for r in range(world):
            with open(logs[r], "w") as log:
                procs.append(subprocess.Popen([sys.executable, str(script), *map(str, args)], env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                                              stdout=log, stderr=subprocess.STDOUT))
        for r, p in enumerate(procs):
            p.wait(timeout=timeout)
            assert p.returncode == 0, f"rank {r} of {world} exited {p.returncode}: {logs[r].read_text()[-3000:]}"
    finally:
        for p in procs:
            if p.poll() is None: p.kill(); p.wait()
