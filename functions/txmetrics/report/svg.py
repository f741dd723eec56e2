"""Charts as inline SVG, drawn here in Python: the report needs no script, no style sheet
and no font from anywhere (pure: no I/O).

Three kinds: `time_chart` (lines, or stacked bars, over a UTC time axis of fixed buckets),
`bar_list` (horizontal bars, one per labelled item) and the `empty` placeholder. Every
drawn data element has the class "mark", and the chart's `points` says how many data
points it shows, so a browser test can tell a chart with data from an empty frame.
Every text that comes from the data is escaped.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from html import escape

# Okabe-Ito (colour-blind safe) first, then more distinct hues for long legends (error codes).
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000", "#999999",
           "#7F3C8D", "#8C564B", "#17BECF", "#BCBD22", "#393B79", "#E377C2", "#637939", "#AD494A", "#3182BD")
FONT = "font-family=\"system-ui, -apple-system, 'Segoe UI', Roboto, 'DejaVu Sans', sans-serif\""
AXIS_COLOUR = "#555"
GRID_COLOUR = "#e4e4e4"


@dataclass
class Series:
    name: str
    points: dict[datetime, float]           # bucket start -> value
    colour: str = PALETTE[0]
    width: float = 1.6                      # line width
    dash: str = ""                          # stroke-dasharray for lines
    opacity: float = 1.0


@dataclass
class Chart:
    """One drawn chart: its SVG and how many data points it shows."""

    svg: str
    points: int
    notes: list[str] = field(default_factory=list)


Formatter = Callable[[float], str]


def number(value: float) -> str:
    """Compact: 950, 12.3k, 4.56M (axis ticks and labels)."""
    magnitude = abs(value)
    for limit, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if magnitude >= limit:
            scaled = value / limit
            return f"{scaled:.3g}{suffix}"
    if magnitude >= 100 or value == int(value):
        return f"{value:,.0f}"
    return f"{value:.3g}"


def percent(value: float) -> str:
    return f"{value * 100:.0f}%" if value in (0, 1) or abs(value * 100 - round(value * 100)) < 1e-9 \
        else f"{value * 100:.1f}%"


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values covering [low, high] (about `count` of them)."""
    if not math.isfinite(low) or not math.isfinite(high):
        return [0.0, 1.0]
    if high <= low:
        high = low + (abs(low) or 1.0)
    raw = (high - low) / max(count - 1, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    first = math.floor(low / step + 1e-9) * step
    ticks = []
    value = first
    while value < high + step * 0.999:
        ticks.append(round(value, 12))
        value += step
    return ticks


_TIME_STEPS = [timedelta(minutes=m) for m in (5, 10, 15, 30, 60, 120, 180, 360, 720)] + \
    [timedelta(days=d) for d in (1, 2, 7, 14, 28)]


def time_ticks(start: datetime, end: datetime, most: int = 12) -> list[datetime]:
    """Tick times on round UTC boundaries within [start, end]."""
    span = end - start
    step = next((s for s in _TIME_STEPS if span / s <= most), _TIME_STEPS[-1])
    epoch = datetime(1970, 1, 5, tzinfo=UTC)           # a Monday: weekly ticks on Mondays
    first = epoch + step * math.ceil((start - epoch) / step)
    ticks = []
    t = first
    while t <= end:
        ticks.append(t)
        t += step
    return ticks


def time_label(t: datetime, step: timedelta) -> tuple[str, str]:
    """(first line, second line) of a time tick: the time of day, and the date at midnight."""
    t = t.astimezone(UTC)
    if step >= timedelta(days=1):
        return t.strftime("%b %d"), (t.strftime("%Y") if t.month == 1 and t.day <= step.days else "")
    second = t.strftime("%b %d") if (t.hour, t.minute) == (0, 0) else ""
    return t.strftime("%H:%M"), second


class _Frame:
    """The plot area inside a chart of `width` x `height`, and the value -> pixel maps."""

    def __init__(self, width: int, height: int, left: int = 70, right: int = 20, top: int = 34,
                 bottom: int = 58) -> None:
        self.width, self.height = width, height
        self.x0, self.x1 = left, width - right
        self.y0, self.y1 = top, height - bottom      # y0 top, y1 bottom

    def y(self, value: float, low: float, high: float) -> float:
        return self.y1 - (value - low) / (high - low) * (self.y1 - self.y0)


def _open(width: int, height: int, title: str) -> list[str]:
    return [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="100%" '
            f'role="img" aria-label="{escape(title)}" {FONT} font-size="12">',
            f"<title>{escape(title)}</title>"]


def _legend(frame: _Frame, series: Sequence[Series], bars: bool) -> list[str]:
    """One key per series, in rows from the top left; moves the plot down by the extra rows."""
    out = []
    x, y = float(frame.x0), 16.0
    for s in series:
        item = (20 if bars else 25) + 7.2 * len(s.name) + 14
        if x + item > frame.x1 and x > frame.x0:
            x, y = float(frame.x0), y + 17
        label = escape(s.name)
        if bars:
            out.append(f'<rect x="{x:.1f}" y="{y - 6:.1f}" width="11" height="11" fill="{s.colour}"/>')
        else:
            dash = f' stroke-dasharray="{s.dash}"' if s.dash else ""
            out.append(f'<line x1="{x:.1f}" y1="{y:.1f}" x2="{x + 16:.1f}" y2="{y:.1f}" stroke="{s.colour}" '
                       f'stroke-width="{max(s.width, 2)}"{dash}/>')
        out.append(f'<text x="{x + (15 if bars else 20):.1f}" y="{y + 4:.1f}">{label}</text>')
        x += item
    frame.y0 += int(y - 16)
    return out


def _y_axis(frame: _Frame, ticks: list[float], low: float, high: float, fmt: Formatter, label: str) -> list[str]:
    out = []
    for v in ticks:
        y = frame.y(v, low, high)
        out.append(f'<line x1="{frame.x0}" y1="{y:.1f}" x2="{frame.x1}" y2="{y:.1f}" stroke="{GRID_COLOUR}"/>')
        out.append(f'<text x="{frame.x0 - 6}" y="{y + 4:.1f}" text-anchor="end" fill="{AXIS_COLOUR}">'
                   f"{escape(fmt(v))}</text>")
    mid = (frame.y0 + frame.y1) / 2
    out.append(f'<text x="14" y="{mid:.1f}" transform="rotate(-90 14 {mid:.1f})" text-anchor="middle" '
               f'fill="{AXIS_COLOUR}" class="axis-label">{escape(label)}</text>')
    return out


def _x_axis(frame: _Frame, start: datetime, end: datetime, label: str, step: timedelta) -> list[str]:
    """Time ticks on round UTC boundaries; for daily buckets, the date under each bar."""
    span = (end - start).total_seconds()

    def x_of(t: datetime) -> float:
        return frame.x0 + (t - start).total_seconds() / span * (frame.x1 - frame.x0)

    out = [f'<line x1="{frame.x0}" y1="{frame.y1}" x2="{frame.x1}" y2="{frame.y1}" stroke="{AXIS_COLOUR}"/>']
    labels: list[tuple[float, str, str]] = []
    if step >= timedelta(days=1):
        days = max(int((end - start) / step), 1)
        every = math.ceil(days / 12)
        for i in range(0, days, every):
            t = start + step * i
            labels.append((x_of(t + step / 2), t.astimezone(UTC).strftime("%b %d"),
                           t.astimezone(UTC).strftime("%Y") if i == 0 else ""))
    else:
        ticks = time_ticks(start, end, most=max(int((frame.x1 - frame.x0) / 90), 2))
        tick_step = (ticks[1] - ticks[0]) if len(ticks) > 1 else end - start
        for t in ticks:
            x = x_of(t)
            out.append(f'<line x1="{x:.1f}" y1="{frame.y1}" x2="{x:.1f}" y2="{frame.y1 + 4}" stroke="{AXIS_COLOUR}"/>')
            labels.append((x, *time_label(t, tick_step)))
    for x, first, second in labels:
        out.append(f'<text x="{x:.1f}" y="{frame.y1 + 16}" text-anchor="middle" fill="{AXIS_COLOUR}">{first}</text>')
        if second:
            out.append(f'<text x="{x:.1f}" y="{frame.y1 + 29}" text-anchor="middle" fill="{AXIS_COLOUR}">'
                       f"{second}</text>")
    out.append(f'<text x="{(frame.x0 + frame.x1) / 2:.1f}" y="{frame.height - 6}" text-anchor="middle" '
               f'fill="{AXIS_COLOUR}" class="axis-label">{escape(label)}</text>')
    return out


def empty(title: str, message: str, width: int = 1200, height: int = 120) -> Chart:
    """A frame that says there is nothing to show (points = 0)."""
    out = _open(width, height, title)
    out.append(f'<rect x="1" y="1" width="{width - 2}" height="{height - 2}" fill="#fafafa" stroke="{GRID_COLOUR}"/>')
    out.append(f'<text x="{width / 2}" y="{height / 2 + 5}" text-anchor="middle" fill="{AXIS_COLOUR}" '
               f'font-size="14">{escape(message)}</text></svg>')
    return Chart(svg="".join(out), points=0)


def time_chart(title: str, series: Sequence[Series], *, start: datetime, end: datetime, step: timedelta,
               y_label: str, x_label: str = "time (UTC)", stacked_bars: bool = False, fmt: Formatter = number,
               value_label: Formatter | None = None, y_floor: float | None = 0.0,
               width: int = 1200, height: int = 300, empty_message: str = "no data in this range") -> Chart:
    """Values per time bucket of `step` over [start, end): lines (a gap where a bucket has
    no value; a lone point is a dot) or bars stacked in series order. `y_floor` None lets
    the axis start near the smallest value (rates that never go near 0)."""
    points = sum(len(s.points) for s in series)
    if not points:
        return empty(title, empty_message, width)
    frame = _Frame(width, height)
    value_label = value_label or fmt
    buckets = sorted({t for s in series for t in s.points})
    if stacked_bars:
        totals = [sum(s.points.get(t, 0.0) for s in series) for t in buckets]
        low, high = 0.0, max(totals)
    else:
        values = [v for s in series for v in s.points.values()]
        low = min(values) if y_floor is None else min(y_floor, *values)
        high = max(values)
    ticks = nice_ticks(low, high)
    low, high = ticks[0], ticks[-1]
    if high <= low:
        high = low + 1
    span = (end - start).total_seconds()

    def x_of(t: datetime) -> float:
        return frame.x0 + (t - start).total_seconds() / span * (frame.x1 - frame.x0)

    top = frame.y0
    legend = _legend(frame, series, stacked_bars)
    extra = frame.y0 - top                    # legend rows past the first: the chart grows, the plot keeps its size
    frame.y1, frame.height = frame.y1 + extra, frame.height + extra
    out = _open(width, height + extra, title) + legend
    out += _y_axis(frame, ticks, low, high, fmt, y_label)
    out += _x_axis(frame, start, end, x_label, step)
    if stacked_bars:
        slot = step.total_seconds() / span * (frame.x1 - frame.x0)
        bar = min(slot, 80.0)                  # a few wide buckets (days) get bars, not walls
        gap = min(bar * 0.15, 2.0) if bar > 3 else 0.0
        inset = (slot - bar + gap) / 2
        for t in buckets:
            base = 0.0
            when = t.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
            for s in series:
                v = s.points.get(t)
                if not v:
                    continue
                y_top, y_bottom = frame.y(base + v, low, high), frame.y(base, low, high)
                out.append(f'<rect class="mark" x="{x_of(t) + inset:.2f}" y="{y_top:.2f}" '
                           f'width="{max(bar - gap, 0.6):.2f}" height="{max(y_bottom - y_top, 0.5):.2f}" '
                           f'fill="{s.colour}"><title>{escape(s.name)}, {when}: {escape(value_label(v))}</title>'
                           "</rect>")
                base += v
    else:
        half = step / 2
        for s in series:
            runs: list[list[tuple[float, float]]] = []
            previous: datetime | None = None
            for t in sorted(s.points):
                xy = (x_of(t + half), frame.y(s.points[t], low, high))
                if previous is None or t - previous > step:
                    runs.append([xy])
                else:
                    runs[-1].append(xy)
                previous = t
            dash = f' stroke-dasharray="{s.dash}"' if s.dash else ""
            for run in runs:
                if len(run) == 1:
                    x, y = run[0]
                    out.append(f'<circle class="mark" cx="{x:.2f}" cy="{y:.2f}" r="3" fill="{s.colour}">'
                               f"<title>{escape(s.name)}</title></circle>")
                else:
                    path = "M" + " L".join(f"{x:.2f},{y:.2f}" for x, y in run)
                    fade = f' stroke-opacity="{s.opacity}"' if s.opacity < 1 else ""
                    out.append(f'<path class="mark" d="{path}" fill="none" stroke="{s.colour}" '
                               f'stroke-width="{s.width}" stroke-linejoin="round"{dash}{fade}>'
                               f"<title>{escape(s.name)}</title></path>")
    out.append("</svg>")
    return Chart(svg="".join(out), points=points)


@dataclass
class Bar:
    label: str
    value: float
    note: str = ""          # printed after the value (e.g. "91.2% approved")


def bar_list(title: str, bars: Sequence[Bar], *, x_label: str, fmt: Formatter = number, colour: str = PALETTE[0],
             x_ceiling: float | None = None, width: int = 590, empty_message: str = "no data in this range") -> Chart:
    """Horizontal bars, one per item, in the given order, each labelled with its value."""
    if not bars:
        return empty(title, empty_message, width)
    row = 24
    label_width = min(max(7.0 * max(len(b.label) for b in bars) + 16, 80), 200)
    height = 34 + row * len(bars) + 44
    x0, x1 = label_width, width - 150
    high = x_ceiling if x_ceiling is not None else max(b.value for b in bars)
    ticks = nice_ticks(0.0, high, 4)
    high = ticks[-1] or 1.0
    out = _open(width, height, title)
    y_axis_bottom = 30 + row * len(bars)
    for v in ticks:
        x = x0 + v / high * (x1 - x0)
        out.append(f'<line x1="{x:.1f}" y1="26" x2="{x:.1f}" y2="{y_axis_bottom}" stroke="{GRID_COLOUR}"/>')
        out.append(f'<text x="{x:.1f}" y="{y_axis_bottom + 15}" text-anchor="middle" fill="{AXIS_COLOUR}">'
                   f"{escape(fmt(v))}</text>")
    for i, b in enumerate(bars):
        y = 30 + i * row
        w = max(b.value / high * (x1 - x0), 0.8)
        label = b.label if len(b.label) <= 28 else b.label[:27] + "…"
        out.append(f'<text x="{x0 - 8:.1f}" y="{y + 15}" text-anchor="end">{escape(label)}</text>')
        out.append(f'<rect class="mark" x="{x0:.1f}" y="{y + 3}" width="{w:.2f}" height="{row - 7}" fill="{colour}">'
                   f"<title>{escape(b.label)}: {escape(fmt(b.value))}{escape(', ' + b.note if b.note else '')}"
                   "</title></rect>")
        out.append(f'<text x="{x0 + w + 6:.1f}" y="{y + 15}" fill="{AXIS_COLOUR}">{escape(fmt(b.value))}'
                   f"{escape('  ' + b.note if b.note else '')}</text>")
    out.append(f'<text x="{(x0 + x1) / 2:.1f}" y="{height - 6}" text-anchor="middle" fill="{AXIS_COLOUR}" '
               f'class="axis-label">{escape(x_label)}</text>')
    out.append("</svg>")
    return Chart(svg="".join(out), points=len(bars))
