"""What every benchmark here shares: thread pinning, timing (warm-up, repeats, median), the machine description, the
read bandwidth of this machine, peak memory, and rewriting one section of `RESULTS.md`.

Timing on a shared machine is noisy: pin the threads (one gives the stablest ratios), warm up, repeat, report the
median, and compare only figures measured in the same run.
"""

from __future__ import annotations

import os
import platform
import re
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import transformers

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def setup(device: str, threads: int) -> None:
    """Pin torch's intra-op threads (and inter-op to 1) and check that the device exists."""
    if threads < 1:
        raise SystemExit(f"--threads must be at least 1, got {threads}.")
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set: interop threads can only be set once per process
        pass
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available here.")
    transformers.logging.set_verbosity_error()


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], device: str) -> float:
    """Seconds one call of `fn` takes (the device synchronised before and after)."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def median_seconds(fn: Callable[[], object], device: str, repeats: int, warmup: int = 1) -> tuple[float, list[float]]:
    """`warmup` untimed calls, then the median and all of `repeats` timed calls."""
    for _ in range(warmup):
        fn()
    times = [timed(fn, device) for _ in range(max(1, repeats))]
    return statistics.median(times), times


def read_bandwidth(device: str, gib: float = 1.0, repeats: int = 5) -> float:
    """Bytes per second this process reads from memory: the median time to sum a `gib` GiB float32 tensor (one
    read of every byte; the same threads as the benchmark, measured in its run). On CUDA each timed call sums it 8
    times back to back: one sum of 1 GiB takes about 0.25 ms on an H200, to which the launch and the host sync
    around it would add several percent (a lower bandwidth, every fraction of the bound that much higher)."""
    tensor = torch.ones(int(gib * 2**30) // 4, dtype=torch.float32, device=device)
    reads = 8 if device == "cuda" else 1
    seconds, _ = median_seconds(lambda: [tensor.sum() for _ in range(reads)], device, repeats)
    return reads * tensor.numel() * tensor.element_size() / seconds


def load_average() -> str:
    try:
        return " / ".join(f"{value:.2f}" for value in os.getloadavg())
    except OSError:
        return "unknown"


def machine_lines(device: str) -> list[str]:
    """The machine and software the figures come from."""
    cpu = platform.processor() or platform.machine()
    try:
        model = re.search(r"model name\s*:\s*(.*)", Path("/proc/cpuinfo").read_text())
        cpu = model.group(1).strip() if model else cpu
    except OSError:
        pass
    memory = ""
    try:
        total = re.search(r"MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text())
        memory = f", {int(total.group(1)) / 2**20:.0f} GiB RAM" if total else ""
    except OSError:
        pass
    lines = [
        f"machine: {platform.system()} {platform.machine()}, {cpu}, {os.cpu_count()} logical CPUs{memory}",
        f"software: Python {platform.python_version()}, torch {torch.__version__}, "
        f"transformers {transformers.__version__}",
        f"torch threads: {torch.get_num_threads()} intra-op; load average (1/5/15 min) at start: {load_average()}",
    ]
    if device == "cuda":
        properties = torch.cuda.get_device_properties(0)
        lines.append(f"gpu: {properties.name}, {properties.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda}")
    return lines


def parameter_bytes(model: torch.nn.Module) -> int:
    """Bytes of the model's parameters, a tied weight counted once: what one decode step must read."""
    return sum(p.numel() * p.element_size() for p in model.parameters())


# ---- memory -----------------------------------------------------------------------------------------------------


def reset_peak_memory(device: str) -> None:
    """Start a new peak: CUDA's allocator statistics, or this process's peak RSS (VmHWM, Linux)."""
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    else:
        Path("/proc/self/clear_refs").write_text("5")


def current_memory(device: str) -> int:
    """Bytes in use now: CUDA tensors, or this process's resident set."""
    if device == "cuda":
        return torch.cuda.memory_allocated()
    return _proc_status_kb("VmRSS") * 1024


def peak_memory(device: str) -> int:
    """Peak bytes since the last `reset_peak_memory`."""
    if device == "cuda":
        return torch.cuda.max_memory_allocated()
    return _proc_status_kb("VmHWM") * 1024


def _proc_status_kb(field: str) -> int:
    match = re.search(rf"{field}:\s+(\d+) kB", Path("/proc/self/status").read_text())
    if match is None:
        raise RuntimeError(f"/proc/self/status has no {field}: peak memory needs Linux.")
    return int(match.group(1))


# ---- results file -----------------------------------------------------------------------------------------------


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def update_section(path: Path, title: str, body: str) -> None:
    """Replace the `## title` section of the markdown file at `path` (or append it), leaving the others as they are;
    written to a temporary file first and then renamed over the old one."""
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    section = f"## {title}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text, count=1).rstrip() + "\n"
    else:
        text = text.rstrip() + "\n\n" + section
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", delete=False) as temporary:
        temporary.write(text)
    os.chmod(temporary.name, 0o644)
    os.replace(temporary.name, path)
