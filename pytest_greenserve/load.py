"""Load shapes (``--greenserve-load``): how requests are released, and the measured window.

* ``closed:N`` (default ``closed:1``): a closed loop of N clients, each sending its next
  request when its last one is answered; ``closed:1`` is the paper's one request at a time.
  ``--greenserve-concurrency=N`` is the same fact under its older name (options.py maps it
  onto ``closed:N``).
* ``poisson:RATE`` / ``constant:RATE``: an open loop; request i is released at a scheduled
  arrival time whatever became of the others, RATE requests per second on average:
  exponential gaps drawn from a seeded RNG (``--greenserve-seed`` and the repetition, so the
  same session draws the same arrivals), or evenly spaced gaps of 1/RATE.
* ``sweep`` / ``sweep:R1,R2,...``: a series of Poisson rates, one sample each (its own
  configuration label, ``torch-cpu@http/poisson2.5``, so statistics, reports and the gate
  treat every rate as an item), after a ``closed:1`` sample that calibrates it. Without
  rates: :data:`SWEEP_FACTORS` times the closed:1 sample's request rate. The sweep stops at
  the first rate where latency runs away (:func:`runaway`): the median end-to-end latency
  over 4x closed:1's, or under 90% of the requests released inside the measured window
  completed inside it.

The measured window of an open loop (:func:`measured_window`): the arrival schedule spans
``[0, last arrival]``; its first ``warmup`` fraction and last ``cooldown`` fraction are not
measured (the queue filling, the load about to stop), nor is the drain after the last
arrival. A request counts for the sample's figures when it *completed* inside the window.

Pure: no pytest, nothing else from the package.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass

#: sweep rates without explicit ones: these multiples of the closed:1 sample's requests/s
SWEEP_FACTORS = (0.25, 0.5, 0.75, 1.0, 1.25, 1.5)
#: latency has run away when the median end-to-end latency exceeds this many times closed:1's
RUNAWAY_P50_FACTOR = 4.0
#: ... or when the achieved request rate is below this share of the offered one
RUNAWAY_ACHIEVED_SHARE = 0.9
#: the most requests an open loop keeps in flight from its client threads (as --greenserve-concurrency's top)
MAX_IN_FLIGHT = 256

KINDS = ("closed", "poisson", "constant", "sweep")
USAGE = ("expected closed:N, poisson:RATE, constant:RATE (requests/s), sweep or sweep:R1,R2,... "
         "e.g. poisson:2.5")

_RATE = re.compile(r"^[0-9]*\.?[0-9]+(e[-+]?[0-9]+)?$", re.IGNORECASE)


@dataclass(frozen=True)
class LoadShape:
    """One parsed ``--greenserve-load``. ``clients``: closed loop's N; ``rate_rps``: an open
    loop's rate; ``rates_rps``: a sweep's explicit rates (empty: derived from closed:1)."""

    kind: str = "closed"
    clients: int = 1
    rate_rps: float | None = None
    rates_rps: tuple[float, ...] = ()

    @property
    def open_loop(self) -> bool:
        return self.kind in ("poisson", "constant")

    @property
    def sweep(self) -> bool:
        return self.kind == "sweep"

    @property
    def concurrent(self) -> bool:
        """Whether requests may overlap (then the target must be able to queue them: HTTP)."""
        return self.kind != "closed" or self.clients > 1

    def __str__(self) -> str:
        if self.kind == "closed":
            return f"closed:{self.clients}"
        if self.kind == "sweep":
            return "sweep" + (":" + ",".join(f"{r:g}" for r in self.rates_rps) if self.rates_rps else "")
        return f"{self.kind}:{self.rate_rps:g}"

    def label_suffix(self) -> str:
        """What the configuration label gets: ``/c4`` for closed:4 (as before this option),
        ``/poisson2.5``, ``/constant2``; nothing for closed:1 (the paper's samples keep their
        labels). A sweep has one per rate: that of its rate's poisson shape."""
        if self.kind == "closed":
            return f"/c{self.clients}" if self.clients > 1 else ""
        if self.kind == "sweep":
            raise ValueError("a sweep has one label per rate: label each rate's shape")
        return f"/{self.kind}{self.rate_rps:g}"


CLOSED_1 = LoadShape()


def closed(clients: int) -> LoadShape:
    return LoadShape("closed", clients=clients)


def poisson(rate_rps: float) -> LoadShape:
    return LoadShape("poisson", rate_rps=rate_rps)


def _rate(text: str) -> float:
    text = text.strip()
    if not _RATE.match(text):
        raise ValueError(f"{USAGE}; {text!r} is not a rate")
    value = float(text)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{USAGE}; a rate is above 0 requests/s, not {text!r}")
    return value


def parse_load(text: str) -> LoadShape:
    """``poisson:2.5`` -> LoadShape("poisson", rate_rps=2.5); ValueError with a one-line message."""
    text = text.strip().lower()
    kind, _, arg = text.partition(":")
    if kind not in KINDS:
        raise ValueError(USAGE)
    if kind == "sweep":
        if not arg.strip():
            return LoadShape("sweep")
        rates = tuple(_rate(r) for r in arg.split(","))
        if list(rates) != sorted(set(rates)):
            raise ValueError(f"{USAGE}; a sweep's rates rise, each once")
        return LoadShape("sweep", rates_rps=rates)
    if not arg.strip():
        raise ValueError(f"{USAGE}; {kind} needs a number after the colon")
    if kind == "closed":
        try:
            clients = int(arg)
        except ValueError:
            raise ValueError(f"{USAGE}; closed:N takes a whole number of clients") from None
        if not 1 <= clients <= MAX_IN_FLIGHT:
            raise ValueError(f"{USAGE}; closed:N takes 1 to {MAX_IN_FLIGHT} clients")
        return closed(clients)
    return LoadShape(kind, rate_rps=_rate(arg))


# -- the arrival schedule ----------------------------------------------------------------------

def arrival_times(shape: LoadShape, n: int, seed: int = 0, repetition: int = 1) -> list[float]:
    """Seconds after the start at which each of ``n`` requests is released: the first at 0,
    then exponential gaps of mean 1/RATE (Poisson; seeded by ``seed`` and ``repetition``, so
    the same seed gives the same arrivals and each repetition its own draw), or gaps of
    exactly 1/RATE (constant)."""
    if not shape.open_loop:
        raise ValueError(f"{shape} has no arrival schedule (a closed loop sends when answered)")
    if n <= 0:
        return []
    rate = shape.rate_rps
    if shape.kind == "constant":
        return [i / rate for i in range(n)]
    rng = random.Random(f"greenserve-load:{seed}:{repetition}:{rate!r}")
    times, t = [0.0], 0.0
    for _ in range(n - 1):
        t += rng.expovariate(rate)
        times.append(t)
    return times


def measured_window(arrivals_s, warmup: float, cooldown: float) -> tuple[float, float]:
    """(start, end) in seconds after the first arrival: the arrival span less its first
    ``warmup`` and last ``cooldown`` fractions. ValueError when nothing is left."""
    span = max(arrivals_s) if arrivals_s else 0.0
    start, end = warmup * span, (1.0 - cooldown) * span
    if not end > start:
        raise ValueError(f"the measured window is empty: {len(arrivals_s)} arrivals span {span:.3g} s, less the "
                         f"warm-up ({warmup:g}) and cool-down ({cooldown:g}) fractions; send more prompts or "
                         f"lower --greenserve-load-warmup/--greenserve-load-cooldown")
    return start, end


def completed_inside(finished_s, start: float, end: float) -> list[bool]:
    """Per request: whether it completed inside ``[start, end]`` (seconds after the first arrival)."""
    return [f is not None and start <= f <= end for f in finished_s]


# -- the sweep -----------------------------------------------------------------------------------

def sweep_rates(shape: LoadShape, closed_rps: float | None) -> tuple[float, ...]:
    """The rates a sweep offers: its own, else :data:`SWEEP_FACTORS` times ``closed_rps``
    (closed:1's requests/s), rounded to 3 significant digits so that labels stay short and
    every repetition reuses the same ones. Empty when closed:1 gave no rate."""
    if shape.rates_rps:
        return shape.rates_rps
    if not closed_rps or closed_rps <= 0:
        return ()
    return tuple(dict.fromkeys(float(f"{f * closed_rps:.3g}") for f in SWEEP_FACTORS))


def runaway(p50_s: float | None, closed_p50_s: float | None, achieved_pct: float | None,
            offered_rps: float) -> str | None:
    """Why latency has run away at this rate, or None: the median end-to-end latency above
    :data:`RUNAWAY_P50_FACTOR` times closed:1's, or fewer requests completed inside the
    measured window than :data:`RUNAWAY_ACHIEVED_SHARE` of those released in it
    (``achieved_pct``, the sample's ``achieved_rate_pct``). Nothing completed: ran away."""
    if p50_s is None or achieved_pct is None:
        return f"no request completed inside the measured window at {offered_rps:g} requests/s"
    if closed_p50_s and p50_s > RUNAWAY_P50_FACTOR * closed_p50_s:
        return (f"median latency {p50_s:.3g} s is over {RUNAWAY_P50_FACTOR:g}x closed:1's {closed_p50_s:.3g} s "
                f"at {offered_rps:g} requests/s")
    if achieved_pct < 100 * RUNAWAY_ACHIEVED_SHARE:
        return (f"{achieved_pct:.0f}% of the requests released in the measured window completed in it, under "
                f"{RUNAWAY_ACHIEVED_SHARE:.0%}, at {offered_rps:g} requests/s")
    return None


def run_sweep(rates, measure_at, closed_p50_s: float | None, stop: bool = True) -> tuple[list[float], str | None]:
    """Offer each of ``rates`` in turn: ``measure_at(rate)`` measures one open-loop sample and
    returns it (a sample dict with ``latency_p50_s`` and ``achieved_rate_pct``). With ``stop``, the
    sweep ends after the first rate whose latency ran away (:func:`runaway`), that rate
    included. Returns the rates measured and why it stopped (None: it ran them all)."""
    ran: list[float] = []
    for rate in rates:
        sample = measure_at(rate)
        ran.append(rate)
        why = runaway(sample.get("latency_p50_s"), closed_p50_s, sample.get("achieved_rate_pct"), rate)
        if why is not None and stop:
            return ran, why
    return ran, None
