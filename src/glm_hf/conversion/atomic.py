"""Writing an output folder all or nothing: build it beside its destination, rename it into place at the end."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_output_folder(output: Path, overwrite: bool) -> Iterator[Path]:
    """Yield an empty staging folder beside `output`; it becomes `output` on success and is removed on failure.

    An existing `output` is refused unless `overwrite`, and then replaced only once the new folder is complete.
    """
    if output.exists() and not overwrite:
        raise FileExistsError(f"{output} already exists; pass --overwrite to replace it.")
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.partial-", dir=output.parent))
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)  # mkdtemp makes it private; the result should read like any new folder
    try:
        yield staging
        _move_into_place(staging, output, overwrite)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _move_into_place(staging: Path, output: Path, overwrite: bool) -> None:
    if not output.exists():
        staging.rename(output)
        return
    if not overwrite:
        raise FileExistsError(f"{output} appeared while writing; pass --overwrite to replace it.")
    retired = Path(tempfile.mkdtemp(prefix=f".{output.name}.replaced-", dir=output.parent)) / output.name
    output.rename(retired)
    staging.rename(output)
    shutil.rmtree(retired.parent, ignore_errors=True)
