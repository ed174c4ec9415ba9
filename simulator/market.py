"""One market behind every simulated venue: a latent fair value per asset, and how each venue
quotes around it. Pure, no I/O, no wall clock.

``LatentMarket`` holds, per asset, one fair-value path in US dollars shared by every venue and
every instrument that trades the asset: a log-price with regime-switching volatility (calm and
turbulent spells), compound-Poisson jumps and a daily activity cycle, stepped on a fixed grid of
``GRID_MS``. An instrument ``BASE-QUOTE`` is worth ``usd(BASE) / usd(QUOTE)``: BTC-USD and
BTC-USDT differ by USDT's small, slowly moving basis to the dollar (an Ornstein-Uhlenbeck
process), ETH-BTC is the ratio of the two paths, so no venue can drift away from the others.

The path depends only on the seed and the asset (each asset has its own RNG): querying it never
changes it. Its time origin is the first market step of any venue (``origin_ms``; before it
every price is its start), so a run with a fake clock gives the same frames wherever that clock
starts, up to the daily cycle, which follows the time of day (UTC).

``VenueQuoter`` is one venue's view of one instrument: it follows the fair value ``lag_ms``
late with a small idiosyncratic deviation of its own, quotes a spread of ``half_spread_bps``
around that reference, spaces its depth by ``level_gap_bps``, and draws taker arrivals from a
self-exciting intensity (each trade raises the chance of the next; a jump of the fair value
brings a burst of takers) that follows the daily cycle. Takers lean towards the fair value now,
not the venue's lagging one: that is the arbitrage that closes a dislocation. Each venue's
profile is in ``VENUE_PROFILES``.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from simulator.book import Side, TrueBook

GRID_MS = 50  # one step of every fair-value path
DAY_MS = 86_400_000
YEAR_S = 365 * 86_400
HISTORY_STEPS = 12_000  # 10 minutes of path kept for lagged look-ups
FAST_FORWARD_STEPS = 72_000  # a gap longer than an hour is crossed in one aggregated step
BPS = 1e-4


@dataclass(frozen=True, slots=True)
class AssetProfile:
    """How one asset's dollar price moves."""

    start_usd: float
    annual_vol: float  # of the calm regime; the turbulent one is TURBULENT_VOL_FACTOR times it
    jumps_per_hour: float  # compound-Poisson arrivals
    jump_bps: float  # mean absolute jump size (Laplace distributed)


# Roughly today's levels and volatilities; an asset not listed starts where its venue's
# instrument table says and moves like DEFAULT_ASSET.
ASSETS: dict[str, AssetProfile] = {
    "BTC": AssetProfile(62_000.0, 0.45, 40.0, 6.0),
    "ETH": AssetProfile(3_000.0, 0.60, 40.0, 8.0),
    "BNB": AssetProfile(250.0, 0.60, 30.0, 8.0),
    "SOL": AssetProfile(150.0, 0.80, 40.0, 10.0),
    "XRP": AssetProfile(0.52, 0.80, 30.0, 10.0),
    "ADA": AssetProfile(0.45, 0.80, 30.0, 10.0),
    "DOGE": AssetProfile(0.12, 0.90, 30.0, 12.0),
    "LTC": AssetProfile(80.0, 0.70, 30.0, 10.0),
    "DOT": AssetProfile(6.0, 0.80, 30.0, 10.0),
    "LINK": AssetProfile(14.0, 0.80, 30.0, 10.0),
    "AVAX": AssetProfile(45.0, 0.85, 30.0, 10.0),
    "MATIC": AssetProfile(0.5666, 0.85, 30.0, 10.0),
}
DEFAULT_ASSET = AssetProfile(100.0, 0.70, 30.0, 10.0)
# currencies that are pegged (nearly) rather than traded: their start and the basis around it
PEGS: dict[str, tuple[float, float]] = {
    # currency: (start in USD, standard deviation of the basis in bps)
    "USD": (1.0, 0.0),
    "USDT": (1.0002, 3.0),  # Tether trades a couple of bps over the dollar, slowly moving
    "USDC": (1.0, 1.0),
    "EUR": (1.08, 20.0),
}
PEG_HALF_LIFE_S = 600.0  # the basis wanders over minutes
TURBULENT_VOL_FACTOR = 2.0
CALM_TO_TURBULENT_PER_S = 1 / 600  # a turbulent spell every ~10 minutes ...
TURBULENT_TO_CALM_PER_S = 1 / 40  # ... lasting ~40 s
DAILY_AMPLITUDE = 0.4  # activity and volatility swing +-40% over the day
DAILY_PEAK_HOUR_UTC = 15.0  # US and European hours overlap


def daily_activity(time_ms: int) -> float:
    """Multiplier of volatility and trade arrivals at this time of day: 0.6 .. 1.4, mean 1."""
    phase = (time_ms % DAY_MS) / DAY_MS - DAILY_PEAK_HOUR_UTC / 24
    return 1.0 + DAILY_AMPLITUDE * math.cos(2 * math.pi * phase)


def split_instrument(instrument: str) -> tuple[str, str]:
    base, sep, quote = instrument.rpartition("-")
    if not sep:
        raise ValueError(f"not a BASE-QUOTE instrument: {instrument!r}")
    return base, quote


_BINANCE_QUOTES = ("USDT", "USDC", "FDUSD", "BUSD", "BTC", "ETH", "BNB", "EUR", "USD")


def canonical_instrument(exchange: str, symbol: str) -> str:
    """The canonical ``BASE-QUOTE`` of a venue's symbol: BTCUSDT -> BTC-USDT (Binance),
    BTC-USD (Coinbase), BTC/USD -> BTC-USD (Kraken); what ``exchanges.<ex>.symbols`` says."""
    if "/" in symbol:
        return symbol.replace("/", "-")
    if "-" in symbol:
        return symbol
    for quote in _BINANCE_QUOTES:
        if symbol.endswith(quote) and len(symbol) > len(quote):
            return f"{symbol[: -len(quote)]}-{quote}"
    raise ValueError(f"cannot tell base and quote of {exchange} symbol {symbol!r}")


class _Path:
    """One asset's log dollar price on the grid: the newest ``HISTORY_STEPS`` points."""

    def __init__(self, rng: random.Random, start_usd: float) -> None:
        self.rng = rng
        self.log_price = math.log(start_usd)
        self.first_index = 0  # grid index of points[0]
        self.points: deque[float] = deque([self.log_price], maxlen=HISTORY_STEPS)

    @property
    def last_index(self) -> int:
        return self.first_index + len(self.points) - 1

    def append(self, log_price: float) -> None:
        if len(self.points) == self.points.maxlen:
            self.first_index += 1
        self.points.append(log_price)
        self.log_price = log_price

    def skip(self, steps: int, log_price: float) -> None:
        """``steps`` grid points ahead at once (after a long pause): older points are dropped."""
        index = self.last_index + steps
        self.points.clear()
        self.first_index = index
        self.points.append(log_price)
        self.log_price = log_price

    def at(self, index: int) -> float:
        if index <= self.first_index:
            return self.points[0]
        return self.points[min(index, self.last_index) - self.first_index]


class _JumpDiffusion(_Path):
    def __init__(self, rng: random.Random, profile: AssetProfile) -> None:
        super().__init__(rng, profile.start_usd)
        self.profile = profile
        self.turbulent = False
        dt_s = GRID_MS / 1000
        self.step_sigma = profile.annual_vol * math.sqrt(dt_s / YEAR_S)
        self.p_jump = profile.jumps_per_hour * dt_s / 3600
        self.p_turbulent = CALM_TO_TURBULENT_PER_S * dt_s
        self.p_calm = TURBULENT_TO_CALM_PER_S * dt_s

    def advance(self, activity: float, steps: int = 1) -> None:
        rng = self.rng
        if steps > 1:  # a long pause: one aggregated move, no history worth keeping
            sigma = self.step_sigma * activity * math.sqrt(min(steps, FAST_FORWARD_STEPS))
            self.skip(steps, self.log_price + rng.gauss(0.0, sigma))
            return
        if self.turbulent:
            self.turbulent = rng.random() >= self.p_calm
        else:
            self.turbulent = rng.random() < self.p_turbulent
        sigma = self.step_sigma * activity * (TURBULENT_VOL_FACTOR if self.turbulent else 1.0)
        move = rng.gauss(0.0, sigma)
        jump_rate = self.p_jump * activity * (TURBULENT_VOL_FACTOR if self.turbulent else 1.0)
        if rng.random() < jump_rate:
            size = rng.expovariate(1.0 / self.profile.jump_bps) * BPS
            move += size if rng.random() < 0.5 else -size
        self.append(self.log_price + move)


class _Peg(_Path):
    """A pegged currency: its start times exp(an Ornstein-Uhlenbeck basis)."""

    def __init__(self, rng: random.Random, start_usd: float, basis_bps: float) -> None:
        super().__init__(rng, start_usd)
        self.centre = math.log(start_usd)
        dt_s = GRID_MS / 1000
        self.keep = math.exp(-math.log(2) * dt_s / PEG_HALF_LIFE_S)
        self.noise = basis_bps * BPS * math.sqrt(1 - self.keep**2)

    def advance(self, activity: float, steps: int = 1) -> None:
        if self.noise == 0.0:
            self.append(self.log_price)
            return
        keep = self.keep**steps
        noise = self.noise * math.sqrt((1 - keep**2) / (1 - self.keep**2))
        value = self.centre + (self.log_price - self.centre) * keep + self.rng.gauss(0.0, noise)
        if steps > 1:
            self.skip(steps, value)
        else:
            self.append(value)


class LatentMarket:
    """The fair value of every asset, shared by every venue of one simulator."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.origin_ms: int | None = None
        self._paths: dict[str, _JumpDiffusion | _Peg] = {}
        self._newest = 0  # grid index every path has reached

    def _path(self, asset: str, start_usd: float | None) -> _JumpDiffusion | _Peg:
        path = self._paths.get(asset)
        if path is None:
            # str seeds hash with SHA-512: the same path in every process
            rng = random.Random(f"fair:{self.seed}:{asset}")
            if asset in PEGS:
                start, basis = PEGS[asset]
                path = _Peg(rng, start, basis)
            else:
                profile = ASSETS.get(asset)
                if profile is None:
                    profile = AssetProfile(
                        start_usd or DEFAULT_ASSET.start_usd, DEFAULT_ASSET.annual_vol,
                        DEFAULT_ASSET.jumps_per_hour, DEFAULT_ASSET.jump_bps,
                    )
                path = _JumpDiffusion(rng, profile)
            # a path created late catches up with the others (its own RNG: same values)
            self._paths[asset] = path
            self._extend(path, self._newest)
        return path

    def begin(self, time_ms: int) -> None:
        """Start the paths at ``time_ms`` unless they have started: the first market step
        does this (a query alone never does, so asking early cannot move the origin)."""
        if self.origin_ms is None:
            self.origin_ms = time_ms

    def _index(self, time_ms: int) -> int:
        if self.origin_ms is None:
            return 0  # not started: every path is at its start
        return max(0, (time_ms - self.origin_ms) // GRID_MS)

    def _extend(self, path: _JumpDiffusion | _Peg, index: int) -> None:
        origin = self.origin_ms or 0
        gap = index - path.last_index
        if gap > FAST_FORWARD_STEPS:
            # one aggregated move, as large as an hour's at most: a long pause is no crash
            path.advance(daily_activity(origin + index * GRID_MS), gap - 1)
        while path.last_index < index:
            path.advance(daily_activity(origin + (path.last_index + 1) * GRID_MS))

    def usd(self, asset: str, time_ms: int, start_usd: float | None = None) -> float:
        """The asset's dollar value at ``time_ms`` (before the origin: its start)."""
        index = self._index(time_ms)
        path = self._path(asset, start_usd)
        if index > self._newest:
            for other in self._paths.values():
                self._extend(other, index)
            self._newest = index
        return math.exp(path.at(index))

    def price(self, instrument: str, time_ms: int, start: float | None = None) -> float:
        """The fair value of ``BASE-QUOTE`` in QUOTE. ``start``: the instrument's price at the
        start if its base asset is not in ``ASSETS`` (the venue's own instrument table)."""
        base, quote = split_instrument(instrument)
        quote_usd = self.usd(quote, time_ms, None if quote in PEGS or quote in ASSETS else 1.0)
        start_usd = None if start is None else start * quote_usd
        return self.usd(base, time_ms, start_usd) / quote_usd


@dataclass(frozen=True, slots=True)
class VenueProfile:
    """How one venue quotes: its latency, spread, depth spacing and the noise of its quotes."""

    lag_ms: int  # the venue's quotes follow the fair value this late
    half_spread_bps: float  # touch distance from the venue's reference (at least one tick)
    level_gap_bps: float  # mean spacing of its depth levels (at least one tick)
    deviation_bps: float  # standard deviation of its own quote centre around the lagged value
    deviation_half_life_ms: int
    depth_size_growth: float  # resting size grows by this fraction per level from the touch
    walk_probability: float  # chance that a taker sweeps several levels


VENUE_PROFILES: dict[str, VenueProfile] = {
    # the deepest, fastest venue with the tightest spread
    "binance": VenueProfile(15, 0.6, 0.25, 0.15, 2_000, 0.04, 0.08),
    "coinbase": VenueProfile(40, 0.9, 0.4, 0.2, 3_000, 0.03, 0.10),
    # slower to follow and wider
    "kraken": VenueProfile(120, 1.3, 0.6, 0.25, 4_000, 0.05, 0.12),
}
DEFAULT_VENUE = VenueProfile(60, 1.0, 0.5, 0.2, 3_000, 0.04, 0.10)

# taker arrivals: each step's trade probability decays towards the configured mean; a trade
# adds to it (a self-exciting, Hawkes-like process on steps) and a jump of the fair value adds
# a burst (arbitrageurs taking stale quotes)
EXCITATION_KEEP = 0.95  # per step
BRANCHING = 0.5  # share of trades that are triggered by earlier trades
JUMP_BURST = 6.0  # excitation added when the fair value moves more than the spread in one step
MAX_TRADE_PROBABILITY = 0.95


@dataclass(frozen=True, slots=True)
class Quote:
    """What one venue wants its book to look like now, in integer ticks of its price grid."""

    bid_top: int  # highest bid it will show
    ask_top: int  # lowest ask it will show (> bid_top)
    fair_ticks: float  # the fair value now, where takers lean to
    level_gap: int  # mean spacing of its levels, ticks (>= 1)
    trade_probability: float
    walk_probability: float


class VenueQuoter:
    """One venue's quotes for one instrument (see the module docstring)."""

    def __init__(
        self,
        latent: LatentMarket,
        instrument: str,
        venue: str,
        tick_price: float,
        start_price: float,
        trade_probability: float,
        rng: random.Random,
        sweep_scale: float = 1.0,
    ) -> None:
        self.latent = latent
        self.instrument = instrument
        self.profile = VENUE_PROFILES.get(venue, DEFAULT_VENUE)
        self.tick_price = tick_price  # the price of one tick in the quote currency
        self.start_price = start_price
        self.mean_trade_probability = trade_probability
        self.rng = rng
        self._base = trade_probability * (1 - BRANCHING)
        # each trade adds this much: BRANCHING of the trades are triggered by earlier ones and
        # the mean probability stays the configured one (p = base / (1 - BRANCHING))
        self._kick = BRANCHING * (1 - EXCITATION_KEEP) / max(self._base, 1e-9)
        self.sweep_scale = sweep_scale
        self._excitation = BRANCHING / (1 - BRANCHING)  # its long-run mean
        self._deviation = 0.0  # the venue's own offset, in bps
        self._last_ms: int | None = None
        self._last_fair = 0.0
        self.reference = self.initial_price()

    def initial_price(self) -> float:
        """The fair value before the first step (the path's start), without setting its origin."""
        base, quote = split_instrument(self.instrument)
        latent = self.latent
        if latent.origin_ms is None:
            return self._start_of(base) / self._start_of(quote)
        return self.fair(latent.origin_ms)

    def _start_of(self, asset: str) -> float:
        if asset in PEGS:
            return PEGS[asset][0]
        if asset in ASSETS:
            return ASSETS[asset].start_usd
        _, quote = split_instrument(self.instrument)
        return self.start_price * self._start_of(quote) if asset != quote else 1.0

    def fair(self, time_ms: int) -> float:
        return self.latent.price(self.instrument, time_ms, self.start_price)

    def seed_quote(self) -> Quote:
        """The quote the book starts with, around the fair value's start."""
        return self._quote(self.initial_price(), self.initial_price(), 0.0)

    def _quote(self, reference: float, fair_now: float, p_trade: float) -> Quote:
        tick = self.tick_price
        half = max(tick, reference * self.profile.half_spread_bps * BPS)
        bid_top = max(1, math.floor((reference - half) / tick))
        ask_top = max(bid_top + 1, math.ceil((reference + half) / tick))
        gap = max(1, round(reference * self.profile.level_gap_bps * BPS / tick))
        walk = min(0.5, self.profile.walk_probability * (1 + self._excitation / 2))
        walk *= self.sweep_scale
        return Quote(bid_top, ask_top, fair_now / tick, gap, p_trade, walk)

    def quote(self, time_ms: int) -> Quote:
        """The venue's quote at ``time_ms`` (times must not go back)."""
        profile, rng = self.profile, self.rng
        dt = 0 if self._last_ms is None else max(0, time_ms - self._last_ms)
        self._last_ms = time_ms
        self.latent.begin(time_ms)
        keep = math.exp(-math.log(2) * dt / profile.deviation_half_life_ms)
        self._deviation = self._deviation * keep + rng.gauss(
            0.0, profile.deviation_bps * math.sqrt(1 - keep * keep)
        )
        fair_now = self.fair(time_ms)
        self.reference = self.fair(time_ms - profile.lag_ms) * (1 + self._deviation * BPS)
        self._excitation *= EXCITATION_KEEP
        spread = 2 * profile.half_spread_bps * BPS
        if self._last_fair and abs(fair_now / self._last_fair - 1) > spread:
            self._excitation += JUMP_BURST
        self._last_fair = fair_now
        activity = daily_activity(time_ms)
        # the cycle sets the arrivals from outside (the base); triggered ones follow them, so
        # the mean is activity x trade_probability at every hour
        p_trade = min(MAX_TRADE_PROBABILITY, self._base * (activity + self._excitation))
        if self.mean_trade_probability >= 1.0:
            p_trade = 1.0  # a taker every step, as configured
        return self._quote(self.reference, fair_now, p_trade)

    def traded(self) -> None:
        """A taker came: the next ones become likelier for a while."""
        self._excitation += self._kick

    def level_lots(self, typical: int, level: int) -> int:
        """A resting size for the ``level``-th level from the touch: larger deeper down."""
        growth = 1 + self.profile.depth_size_growth * level
        lots = int(self.rng.lognormvariate(0.0, 0.8) * typical * growth)
        return max(1, min(lots, int(20 * typical * growth)))


Apply = Callable[[Side, int, int], None]  # (side, ticks, new absolute lots; 0 removes)


@dataclass(frozen=True, slots=True)
class Take:
    """A taker's order before it executes: the levels it takes, best first."""

    taker_buys: bool
    maker_side: Side
    fills: tuple[tuple[int, int], ...]  # (ticks, lots taken); all but the last empty their level


class BookMaker:
    """Keeps one venue's true book quoted around its ``Quote``: shared by every venue's model,
    which only records the level changes its own way (through ``apply``).

    Per step: a taker may come (``plan_take``; the model records the book it met, then applies
    the fills), stale levels on the wrong side of the quote are cancelled and the touch joined
    (``requote``), and makers add, resize and cancel levels (``churn``).
    """

    def __init__(
        self,
        book: TrueBook,
        rng: random.Random,
        depth_levels: int,
        size: Callable[[int], int],
        top_levels: int = 20,
    ) -> None:
        self.book = book
        self.rng = rng
        self.depth_levels = depth_levels
        self.min_levels = max(2, depth_levels // 2)
        self.size = size  # lots of a new level at a distance (in levels) from the touch
        self.top_levels = top_levels  # where most resizes happen

    def seed(self, quote: Quote) -> None:
        for side, top in ((Side.BID, quote.bid_top), (Side.ASK, quote.ask_top)):
            ticks = top
            for level in range(self.depth_levels):
                if ticks < 1:
                    break
                self.book.set(side, ticks, self.size(level))
                ticks += self._gap(quote) * (-1 if side is Side.BID else 1)

    def _gap(self, quote: Quote) -> int:
        return self.rng.randint(max(1, quote.level_gap // 2), max(1, quote.level_gap * 3 // 2))

    def plan_take(self, quote: Quote) -> Take | None:
        """A taker order: it leans towards the fair value (strongly once the fair value is
        beyond the venue's touch: arbitrage), and now and then sweeps several levels."""
        rng, book = self.rng, self.book
        bid, ask = book.best_bid(), book.best_ask()
        if bid is None or ask is None:
            return None
        fair = quote.fair_ticks
        if fair >= ask:
            p_buy = 0.9
        elif fair <= bid:
            p_buy = 0.1
        else:
            p_buy = 0.5 + (0.2 if 2 * fair > bid + ask else -0.2 if 2 * fair < bid + ask else 0.0)
        taker_buys = rng.random() < p_buy
        maker_side = Side.ASK if taker_buys else Side.BID
        levels = book.side(maker_side)
        count = 1
        if len(levels) > 2 and rng.random() < quote.walk_probability:
            count = rng.randint(2, min(5, len(levels) - 1))
        fills: list[tuple[int, int]] = []
        pick = heapq.nsmallest if maker_side is Side.ASK else heapq.nlargest
        for ticks in pick(count, levels):
            resting = levels[ticks]
            if len(fills) < count - 1:
                fills.append((ticks, resting))  # swept
                continue
            if len(levels) - len(fills) > 1 and (resting == 1 or rng.random() < 0.35):
                fills.append((ticks, resting))
            elif resting > 1:
                fills.append((ticks, rng.randint(1, resting - 1)))
        return Take(taker_buys, maker_side, tuple(fills)) if fills else None

    def execute(self, take: Take, apply: Apply) -> None:
        levels = self.book.side(take.maker_side)
        for ticks, lots in take.fills:
            apply(take.maker_side, ticks, levels[ticks] - lots)

    def requote(self, quote: Quote, apply: Apply) -> None:
        """Cancel the levels the quote moved past, join the touch, keep the depth in bounds."""
        book = self.book
        for side, top in ((Side.BID, quote.bid_top), (Side.ASK, quote.ask_top)):
            levels = book.side(side)
            best = book.best(side)
            if best is not None and (best > top if side is Side.BID else best < top):
                stale = [t for t in levels if (t > top if side is Side.BID else t < top)]
                for ticks in sorted(stale):
                    apply(side, ticks, 0)
            if top not in levels:
                apply(side, top, self.size(0))
            step = -1 if side is Side.BID else 1
            while len(levels) < self.min_levels:
                worst = book.worst(side)
                assert worst is not None
                ticks = worst + step * self._gap(quote)
                if ticks < 1:
                    break
                apply(side, ticks, self.size(len(levels)))
            while len(levels) > self.depth_levels:
                worst = book.worst(side)
                assert worst is not None
                apply(side, worst, 0)

    def churn(self, quote: Quote, apply: Apply, changes: int) -> None:
        """About ``changes`` maker changes (adds near the touch, resizes, cancels)."""
        rng = self.rng
        for _ in range(changes):
            side = rng.choice((Side.BID, Side.ASK))
            n = len(self.book.side(side))
            if n < self.depth_levels:
                weights = (0.6, 0.3, 0.1 if n > self.min_levels else 0.0)
            else:
                weights = (0.3, 0.5, 0.2)
            op = rng.choices(("add", "modify", "remove"), weights=weights)[0]
            if op == "add":
                self._add(side, quote, apply)
            elif op == "modify":
                self.modify(side, apply)
            else:
                self._remove(side, apply)

    def _add(self, side: Side, quote: Quote, apply: Apply) -> None:
        levels = self.book.side(side)
        distance = min(int(self.rng.expovariate(4.0 / self.depth_levels)), 2 * self.depth_levels)
        offset = distance * quote.level_gap + self.rng.randrange(quote.level_gap)
        if side is Side.BID:
            ticks = quote.bid_top - offset
            if ticks < 1:
                return
        else:
            ticks = quote.ask_top + offset
        if ticks in levels:
            apply(side, ticks, self._new_lots(levels[ticks], distance))
            return
        if len(levels) >= self.depth_levels:
            worst = self.book.worst(side)
            assert worst is not None
            if (ticks < worst) if side is Side.BID else (ticks > worst):
                return
            apply(side, worst, 0)  # a full side makes room at its far end
        apply(side, ticks, self.size(distance))

    def _new_lots(self, current: int, level: int) -> int:
        lots = self.size(level)
        return lots if lots != current else lots + 1

    def modify(self, side: Side, apply: Apply, near_touch: bool = False) -> None:
        """Resize one level: one of the top ``top_levels`` (most of the time, or always when
        ``near_touch``) or any."""
        levels = self.book.side(side)
        if not levels:
            return
        if near_touch or self.rng.random() < 0.7:  # most resizes are near the touch
            pick = heapq.nlargest if side is Side.BID else heapq.nsmallest
            candidates = pick(self.top_levels, levels)
        else:
            candidates = list(levels)
        ticks = self.rng.choice(candidates)
        apply(side, ticks, self._new_lots(levels[ticks], 0))

    def _remove(self, side: Side, apply: Apply) -> None:
        levels = self.book.side(side)
        if len(levels) <= self.min_levels:
            return
        ticks = self.rng.choice(list(levels))
        apply(side, ticks, 0)


def fair_text(value: float) -> str:
    """A fair value as decimal text (it is a model quantity, not a price on any venue's grid)."""
    return f"{value:.10f}"


class FairValued(Protocol):
    """A venue's market of one symbol, as the ``fair`` introspection reads it."""

    @property
    def instrument(self) -> str: ...

    @property
    def last_time_ms(self) -> int: ...

    def fair_value(self, time_ms: int) -> float: ...


def fair_of(market: FairValued) -> dict[str, Any]:
    """What a venue's ``book`` introspection adds: the one market's fair value as of the
    book's last event (``fair_time_ms``)."""
    time_ms = market.last_time_ms
    return {"fair_value": fair_text(market.fair_value(time_ms)), "fair_time_ms": time_ms}


def fair_reply(symbol: str, market: FairValued, query: Mapping[str, list[str]]) -> dict[str, Any]:
    """``GET /_sim/<exchange>/fair?symbol=S[&time_ms=T]``: the one market's fair value of the
    symbol's instrument at T (default: the time of the symbol's last event)."""
    raw = (query.get("time_ms") or [""])[0]
    time_ms = int(raw) if raw.lstrip("-").isdigit() else market.last_time_ms
    return {
        "symbol": symbol,
        "instrument": market.instrument,
        "time_ms": time_ms,
        "fair_value": fair_text(market.fair_value(time_ms)),
    }
