"""The training loops' progress display: a tqdm bar on a terminal, plain lines anywhere else.

A bar redraws itself with carriage returns, which a Slurm `.out` file (or any pipe) keeps as one
endless line. So when stdout is not a terminal there is no bar: every logging step prints one line,
flushed at once, e.g.

    demo step 120/800 (15%) image=0.4321 video=0.5012 lr=5.00e-05 31.2 samples/s wait=12% eta 4m10s

Usage, in a loop: `bar = Progress(total, initial=start_step, desc=name, enabled=is_main)`, then
`bar.update(1)` every step, `bar.log(step, values)` on logging steps (the metrics dict: `loss` or
`loss/<modality>`, `lr`, `samples_per_s`, `data_wait_share`), `bar.close()` at the end; `write(line)`
prints a line without breaking the bar.
"""

from __future__ import annotations

import sys
import time

from tqdm import tqdm


def is_tty(stream=None) -> bool:
    stream = stream if stream is not None else sys.stdout
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # a closed or file-like stream without isatty
        return False


def write(line: str) -> None:
    """One line on stdout: above the bar on a terminal, flushed at once elsewhere."""
    if is_tty():
        tqdm.write(line)
    else:
        print(line, flush=True)


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


class Progress:
    """Steps done of `total`: a bar when stdout is a terminal, else one plain line per `log` call."""

    def __init__(self, total: int, *, initial: int = 0, desc: str = "", enabled: bool = True,
                 tty: bool | None = None):
        self.total, self.step, self.desc, self.enabled = total, initial, desc, enabled
        self.tty = is_tty() if tty is None else tty
        self._t0, self._step0 = time.perf_counter(), initial  # ETA from this run's own pace
        self._bar = tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True,
                         disable=not (enabled and self.tty))

    def update(self, n: int = 1) -> None:
        self.step += n
        self._bar.update(n)

    def log(self, step: int, values: dict) -> None:
        """A logging step: the bar's postfix, or one line with step/total, losses, lr, throughput,
        data wait share and ETA."""
        if not self.enabled:
            return
        parts = [f"{k[5:] if k.startswith('loss/') else k}={v:.4f}" for k, v in values.items()
                 if k == "loss" or k.startswith("loss/")]
        if "lr" in values:
            parts.append(f"lr={values['lr']:.2e}")
        if "samples_per_s" in values:
            parts.append(f"{values['samples_per_s']:.1f} samples/s")
        if "data_wait_share" in values:
            parts.append(f"wait={values['data_wait_share']:.0%}")
        if self.tty:
            self._bar.set_postfix_str(" ".join(parts), refresh=False)
            return
        done = step - self._step0
        elapsed = time.perf_counter() - self._t0
        eta = _duration(elapsed / done * (self.total - step)) if done > 0 else "?"
        head = f"{self.desc} " if self.desc else ""
        pct = f" ({step / self.total:.0%})" if self.total else ""
        print(f"{head}step {step}/{self.total}{pct} {' '.join(parts)} eta {eta}", flush=True)

    def close(self) -> None:
        self._bar.close()
