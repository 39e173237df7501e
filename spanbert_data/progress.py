"""Progress on stderr: a tqdm bar on a terminal, plain periodic log lines otherwise (logs, CI, nohup); `stderr`,
the default sink of every log line."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable


def stderr(msg: str) -> None:
    """Print one log line on stderr, at once (the default `log` of the build, the storage and the cache)."""
    print(msg, file=sys.stderr, flush=True)


class Progress:
    """Counts work done (bytes or blocks) and tokens; shows rate of both."""

    def __init__(self, desc: str, total: int, unit: str, log: Callable[[str], None], every: float = 10.0):
        self.desc, self.total, self.unit, self.log, self.every = desc, total, unit, log, every
        self.done = self.tokens = 0
        self.started = self.last = time.perf_counter()
        self.bar = None
        if total and sys.stderr.isatty():
            from tqdm import tqdm

            scale = unit == "B"
            self.bar = tqdm(total=total, desc=desc, unit=unit, unit_scale=scale, unit_divisor=1024 if scale else 1000,
                            dynamic_ncols=True, file=sys.stderr)  # fmt: skip

    def update(self, amount: int, tokens: int = 0) -> None:
        self.done += amount
        self.tokens += tokens
        now = time.perf_counter()
        if self.bar is not None:
            self.bar.update(amount)
            self.bar.set_postfix_str(f"{self.tokens / max(now - self.started, 1e-9) / 1e6:.2f}M tok/s", refresh=False)
        elif now - self.last >= self.every:
            self.last = now
            self.log(self._line(now))

    def _line(self, now: float) -> str:
        secs = max(now - self.started, 1e-9)
        if self.unit == "B":
            amount = f"{self.done / 1e6:.1f}/{self.total / 1e6:.1f} MB, {self.done / 1e6 / secs:.2f} MB/s"
        else:
            amount = f"{self.done}/{self.total} {self.unit}"
        return f"{self.desc}: {amount}, {self.tokens / secs / 1e6:.2f}M tokens/s, {secs:.0f}s"

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.total:
            self.log(self._line(time.perf_counter()))
