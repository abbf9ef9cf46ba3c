"""GDAL/OGR calls that check return values, whatever exception mode the process is in (no QGIS).

QGIS 3.40's Processing framework turns GDAL's Python exceptions on for the whole process when it loads
(its GDAL provider calls `gdal.UseExceptions()`); QGIS 3.22 leaves them off, the default before GDAL 4.
QuickSAM's GDAL code checks return values (None, OGR error codes) and GDAL's error messages, so it runs
in that mode: `gdal_return_codes()` sets it for a block and restores the caller's mode afterwards (with
GDAL's own `ExceptionMgr` from GDAL 3.7 on, by hand before).
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any, Callable, Iterator, TypeVar

F = TypeVar("F", bound=Callable)


@contextlib.contextmanager
def gdal_return_codes() -> Iterator[None]:
    """Run the block with GDAL, OGR and OSR exceptions off; the previous modes come back after it."""
    from osgeo import gdal, ogr, osr

    modules = (gdal, ogr, osr)
    if hasattr(gdal, "ExceptionMgr"):
        with contextlib.ExitStack() as stack:
            for module in modules:
                stack.enter_context(module.ExceptionMgr(useExceptions=False))
            yield
        return
    # GDAL < 3.7: each module's mode is an error handler on one stack, taken off only from the top; the
    # order they went on is not known, so take off whichever is on top until none is left
    remaining = [module for module in modules if module.GetUseExceptions()]
    popped = []
    while remaining:
        for module in remaining:
            try:
                module.DontUseExceptions()
            except RuntimeError:
                continue
            popped.append(module)
            remaining.remove(module)
            break
        else:
            break  # another handler (not a mode) is on top: leave the rest as they are
    try:
        yield
    finally:
        for module in reversed(popped):
            module.UseExceptions()


def with_gdal_return_codes(function: F) -> F:
    """Decorator: `function` runs inside `gdal_return_codes()`."""
    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:  # whatever `function` takes and returns
        with gdal_return_codes():
            return function(*args, **kwargs)
    return wrapper  # type: ignore[return-value]
