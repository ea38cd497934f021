"""Load the published `safety-compass` 0.1.3 in the same process as ours, although both are `import safety_compass`.

The reference is installed (by `make bench`) with `pip install --no-deps safety-compass==0.1.3 --target
.venv/reference-0.1.3`. We import it once with our `safety_compass*` modules taken out of `sys.modules` and the
reference directory first on `sys.path`, keep its module objects, and put ours back. Its modules import each other
by the absolute name `safety_compass.x`, at module top and sometimes inside functions (its `from_config` imports
`safety_compass.config` lazily), so every call into the reference runs inside `Reference.active()`, which swaps its
modules into `sys.modules` for the duration and restores ours afterwards. Nothing of the reference is copied into
this project: it is only imported and called.
"""
from __future__ import annotations

import contextlib
import importlib
import sys
from pathlib import Path

PKG = "safety_compass"


def _ours(name: str) -> bool:
    return name == PKG or name.startswith(PKG + ".")


def _take_modules() -> dict:
    "Remove and return every `safety_compass*` module currently in sys.modules."
    taken = {k: sys.modules[k] for k in list(sys.modules) if _ours(k)}
    for k in taken:
        del sys.modules[k]
    return taken


class Reference:
    "The published package's modules, importable side by side with ours."

    def __init__(self, ref_dir):
        self.dir = Path(ref_dir).resolve()
        if not (self.dir / PKG / "monitor.py").is_file():
            raise FileNotFoundError(f"reference package not found under {self.dir}; run: make bench "
                                    f"(pip install --no-deps safety-compass==0.1.3 --target {self.dir})")
        ours = _take_modules()
        saved_path = list(sys.path)
        try:
            sys.path.insert(0, str(self.dir))
            importlib.invalidate_caches()
            # everything measure() reaches: monitor -> concept -> utils (all imported at module top)
            self.monitor_mod = importlib.import_module(f"{PKG}.monitor")
            self.concept_mod = importlib.import_module(f"{PKG}.concept")
            self.utils_mod = importlib.import_module(f"{PKG}.utils")
            pkg = sys.modules[PKG]
            where = Path(pkg.__file__).resolve()
            if self.dir not in where.parents:
                raise RuntimeError(f"imported {where} instead of the reference under {self.dir}")
            self.version = getattr(pkg, "__version__", "unknown")
            self.modules = {k: sys.modules[k] for k in list(sys.modules) if _ours(k)}
        finally:
            _take_modules()
            sys.modules.update(ours)
            sys.path[:] = saved_path
            importlib.invalidate_caches()
        self.file = str(Path(self.monitor_mod.__file__))

    @contextlib.contextmanager
    def active(self):
        "Reference modules in sys.modules while the block runs (for lazy `from safety_compass.x import ...`)."
        ours = _take_modules()
        sys.modules.update(self.modules)
        try:
            yield self
        finally:
            # keep anything the reference imported lazily for next time
            self.modules.update({k: v for k, v in sys.modules.items() if _ours(k)})
            _take_modules()
            sys.modules.update(ours)

    def monitor(self, model, tokenizer, concepts, layers: dict, num_layers: int, hidden_dim: int, batch_size: int = 4):
        """A reference `SafetyCompassMonitor` for our `ConceptSpec`s (absolute pair-file paths) at fixed `layers`.

        Built with its constructor, not its `from_config` (whose config loader is the reference's, and would resolve
        paths its own way).
        """
        cfgs = [{"name": c.name, "pairing_strategy": c.pairing_strategy,
                 "contrastive_pairs_file": str(Path(c.pairs_file).resolve())} for c in concepts]
        model_config = {"model_name": "default", "num_layers": int(num_layers), "hidden_dim": int(hidden_dim),
                        "extraction_batch_size": int(batch_size), "extraction_dtype": "float32"}
        with self.active():
            return self.monitor_mod.SafetyCompassMonitor(model, tokenizer, concept_configs=cfgs, model_config=model_config,
                                                         concept_layers={k: int(v) for k, v in layers.items()})
