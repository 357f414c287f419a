"""Progress bars that show throughput in the unit that matters here (run-steps per second)."""

from __future__ import annotations

import sys
import time
from types import TracebackType

from tqdm.auto import tqdm


class Progress:
    """A tqdm bar over ``total`` units (run-steps, Hessians ...), updated once per compiled call.

    Disabled bars still measure, so stages can report throughput in the manifest."""

    def __init__(self, desc: str, total: int, *, unit: str = "run-steps", enabled: bool = True):
        self.desc, self.total, self.unit = desc, total, unit
        self.done = 0
        self.start = time.perf_counter()
        self._bar = tqdm(
            total=total, desc=desc, unit=unit, unit_scale=True, dynamic_ncols=True,
            disable=not enabled, file=sys.stderr, leave=True, smoothing=0.3,
        )

    def update(self, n: int) -> None:
        self.done += n
        self._bar.update(n)

    def set_postfix(self, **info: object) -> None:
        self._bar.set_postfix(**info)

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    @property
    def rate(self) -> float:
        """Units per second since the bar was opened (compile time included)."""
        return self.done / max(self.elapsed, 1e-9)

    def close(self) -> None:
        self._bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
