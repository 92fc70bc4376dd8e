"""Writing an output folder all or nothing: build it beside its destination, rename it into place at the end.

Nothing the user owns is lost on the way: an output that is (or holds, or lies inside) a source is refused before
anything is touched; `overwrite` replaces only a folder this tool wrote (`force` replaces anything); the staging
folder is removed on any failure, Ctrl-C and SIGTERM included (`glm-hf` turns SIGTERM into an exit); and the
staging folders a killed run left behind (SIGKILL, power loss) are removed by the next run for the same output.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

# The hidden folders beside `output` that a run works in: `.NAME.partial-*` (being written), `.NAME.replaced-*`
# (the old output, between the two renames).
STAGING_MARKERS = (".partial-", ".replaced-")


def check_output_location(output: Path, sources: Sequence[Path]) -> None:
    """Refuse an output that is a source, holds one, or lies inside one, or that holds the working directory."""
    target = output.resolve()
    for source in sources:
        origin = Path(source).resolve()
        if target == origin or target in origin.parents:
            raise ValueError(
                f"The output {output} {'is' if target == origin else 'holds'} the source {source}: writing it would "
                "destroy the source. Give an output folder outside the source."
            )
        if origin in target.parents:
            raise ValueError(
                f"The output {output} lies inside the source {source}; give an output folder outside the source."
            )
    if target == Path.cwd().resolve() or target in Path.cwd().resolve().parents:
        raise ValueError(f"The output {output} holds the current folder; give a new folder beside it.")


def remove_stale_staging(output: Path) -> list[Path]:
    """Remove the staging folders an interrupted run for `output` left beside it; returns them."""
    output = output.resolve()
    if not output.parent.is_dir():
        return []
    stale = sorted(
        path
        for marker in STAGING_MARKERS
        for path in output.parent.glob(f".{output.name}{marker}*")
        if path.is_dir() and not path.is_symlink()
    )
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
        print(f"removed {path}, left by an interrupted run for {output}", file=sys.stderr)
    return stale


@contextmanager
def atomic_output_folder(
    output: Path,
    overwrite: bool,
    *,
    sources: Sequence[Path] = (),
    replaceable: Callable[[Path], bool] | None = None,
    force: bool = False,
) -> Iterator[Path]:
    """Yield an empty staging folder beside `output`; it becomes `output` on success and is removed on failure.

    An existing `output` is refused unless `overwrite`, and then replaced only once the new folder is complete, and
    only if `replaceable(output)` says this tool wrote it (or `force`). `sources` are the paths read: an output that
    is, holds or lies inside one is refused before anything is touched.
    """
    check_output_location(output, sources)
    check_replaceable(output, overwrite, replaceable, force)
    output = output.resolve()  # "." has no name to put a staging folder beside
    remove_stale_staging(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.partial-", dir=output.parent))
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)  # mkdtemp makes it private; the result should read like any new folder
    try:
        yield staging
        _move_into_place(staging, output, overwrite or force)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def check_replaceable(
    output: Path, overwrite: bool, replaceable: Callable[[Path], bool] | None, force: bool = False
) -> None:
    """Refuse an existing `output` unless `overwrite` and it is recognisably this tool's (or `force`)."""
    if not output.exists() and not output.is_symlink():
        return
    if not (overwrite or force):
        raise FileExistsError(f"{output} already exists; pass --overwrite to replace it.")
    if force:
        return
    if output.is_symlink() or not output.is_dir() or (replaceable is not None and not replaceable(output)):
        raise FileExistsError(
            f"{output} exists and is not a folder this tool wrote (it holds other files, or is a file or a link); "
            "--overwrite only replaces an earlier output. Pass --force to replace it anyway, or choose a new folder."
        )


def _move_into_place(staging: Path, output: Path, overwrite: bool) -> None:
    if not output.exists():
        staging.rename(output)
        return
    if not overwrite:
        raise FileExistsError(f"{output} appeared while writing; pass --overwrite to replace it.")
    retired = Path(tempfile.mkdtemp(prefix=f".{output.name}.replaced-", dir=output.parent))
    try:
        output.rename(retired / output.name)
    except OSError:
        retired.rmdir()
        raise
    staging.rename(output)
    shutil.rmtree(retired, ignore_errors=True)


__all__ = ["atomic_output_folder", "check_output_location", "check_replaceable", "remove_stale_staging"]
