"""Progress bars only on long work: a 9 MB model loads, converts and exports in well under a second, and bars for
it (ours, and transformers' "Loading weights" / "Writing model shards") are noise in a terminal and in logs."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

# Work on fewer bytes than this takes seconds at most: no progress bar.
LONG_WORK_BYTES = 1_000_000_000


def is_long_work(num_bytes: int) -> bool:
    """Whether reading or writing `num_bytes` takes long enough to deserve a progress bar."""
    return num_bytes >= LONG_WORK_BYTES


def bytes_under(paths: Path | Iterable[Path]) -> int:
    """Total size of the files at `paths` (a file, or every file under a folder)."""
    total = 0
    for path in [paths] if isinstance(paths, (str, Path)) else paths:
        path = Path(path)
        if path.is_file():
            total += path.stat().st_size
        elif path.is_dir():
            total += sum((Path(root) / name).stat().st_size for root, _, names in os.walk(path) for name in names)
    return total


@contextmanager
def transformers_progress_bars(enabled: bool) -> Iterator[None]:
    """transformers' own progress bars (loading and saving weights) on or off inside the block, restored after."""
    from transformers.utils import logging

    was_enabled = logging.is_progress_bar_enabled()
    (logging.enable_progress_bar if enabled else logging.disable_progress_bar)()
    try:
        yield
    finally:
        (logging.enable_progress_bar if was_enabled else logging.disable_progress_bar)()


__all__ = ["LONG_WORK_BYTES", "bytes_under", "is_long_work", "transformers_progress_bars"]
