"""Timing, peak-memory, hardware and table helpers for the Safety Compass benchmark suite."""
from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import platform
import statistics
import sys
import time
from typing import Callable

import torch


# -- hardware ------------------------------------------------------------------------------------------
def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def mem_total_gib() -> float | None:
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def hardware_info(device: torch.device) -> dict:
    import transformers
    info = {
        "cpu_model": cpu_model(),
        "cpu_cores_logical": os.cpu_count(),
        "cpu_cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "ram_gib": mem_total_gib(),
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def format_hardware(info: dict) -> str:
    keys = ["cpu_model", "cpu_cores_logical", "cpu_cores_usable", "ram_gib", "load_avg_at_start", "load_avg_at_end", "python", "torch",
            "transformers", "torch_threads", "device", "gpu", "cuda"]
    return "\n".join(f"  {k:<18} {info[k]}" for k in keys if k in info)


# -- timing --------------------------------------------------------------------------------------------
def sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


# -- peak memory ---------------------------------------------------------------------------------------
def _proc_status_kib(key: str) -> int | None:
    try:
        for line in open("/proc/self/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


_LIBC = None


def _malloc_trim():
    "Return freed heap pages to the OS, so RSS before a run is not inflated by a previous run's garbage."
    global _LIBC
    try:
        if _LIBC is None:
            _LIBC = ctypes.CDLL("libc.so.6")
        _LIBC.malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakMemory:
    """Peak extra memory of a region: CUDA max_memory_allocated, or on CPU VmHWM (reset via /proc/self/clear_refs) − VmRSS."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cuda = device.type == "cuda"
        self.available = self.cuda or self._can_reset()
        self.kind = "cuda max_memory_allocated" if self.cuda else "VmHWM − VmRSS (clear_refs 5)"
        self.base = 0

    @staticmethod
    def _can_reset() -> bool:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            return _proc_status_kib("VmHWM") is not None
        except OSError:
            return False

    def start(self):
        gc.collect()
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
        elif self.available:
            _malloc_trim()
            self.base = _proc_status_kib("VmRSS") * 1024
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")

    def stop(self) -> int | None:
        "Peak bytes above the level at start()."
        if self.cuda:
            torch.cuda.synchronize(self.device)
            return int(torch.cuda.max_memory_allocated(self.device) - self.base)
        if not self.available:
            return None
        return int(_proc_status_kib("VmHWM") * 1024 - self.base)


def repeat(fn: Callable[[], object], repeats: int, device: torch.device, warmup: int = 1, mem: PeakMemory | None = None,
           label: str = "", extra: Callable[[], float] | None = None, log=print) -> dict:
    """Run `fn` warmup + repeats times; per repeat: wall seconds, peak extra memory and `extra()` (read after the run).

    Only the timed repeats count; the warm-up's numbers are kept separately.
    """
    times, peaks, extras = [], [], []
    warm = {}
    for i in range(warmup + repeats):
        if mem is not None:
            mem.start()
        else:
            gc.collect()
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        dt = time.perf_counter() - t0
        peak = mem.stop() if mem is not None else None
        ex = extra() if extra is not None else None
        if i < warmup:
            warm = {"seconds": dt, "peak_bytes": peak, "extra": ex}
            continue
        times.append(dt); peaks.append(peak); extras.append(ex)
        if log:
            log(f"    {label} repeat {i - warmup + 1}/{repeats}: {dt:.3f} s"
                + (f", peak +{peak / 2**20:.1f} MiB" if peak is not None else ""))
    return {"seconds": times, "median_s": median(times), "peak_bytes": peaks,
            "median_peak_bytes": median(peaks) if mem is not None and mem.available else None,
            "extra": extras, "median_extra": median(extras) if extra is not None else None, "warmup": warm,
            "repeats": repeats}


# -- tables --------------------------------------------------------------------------------------------
def format_table(rows: list[dict], columns: list[str], headers: dict | None = None) -> str:
    headers = headers or {}
    cells = [[str(r.get(c, "")) for c in columns] for r in rows]
    heads = [headers.get(c, c) for c in columns]
    widths = [max(len(h), *(len(row[i]) for row in cells)) if cells else len(h) for i, h in enumerate(heads)]
    def line(vals):
        return "  ".join(v.ljust(w) for v, w in zip(vals, widths)).rstrip()
    out = [line(heads), line(["-" * w for w in widths])]
    out += [line(r) for r in cells]
    return "\n".join(out)


def markdown_table(rows: list[dict], columns: list[str], headers: dict | None = None) -> str:
    headers = headers or {}
    def esc(v):
        return str(v).replace("|", "\\|")
    out = ["| " + " | ".join(esc(headers.get(c, c)) for c in columns) + " |",
           "|" + "|".join("---" for _ in columns) + "|"]
    out += ["| " + " | ".join(esc(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(out)


@contextlib.contextmanager
def quiet_stdout():
    "Silence print() output of code under test (the reference prints progress lines)."
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        yield


def mib(b) -> str:
    return "n/a" if b is None else f"{b / 2**20:.1f} MiB"


def secs(s) -> str:
    if s is None:
        return "n/a"
    return f"{s:.3f} s" if s < 10 else f"{s:.1f} s"


def ratio(a, b, fmt="{:.3f}") -> str:
    if a is None or b is None or b == 0:
        return "n/a"
    return fmt.format(a / b)


def log(msg: str):
    print(msg, flush=True)
    sys.stdout.flush()
