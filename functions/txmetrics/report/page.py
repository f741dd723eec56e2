"""The report as one self-contained HTML page (pure: no I/O).

No script, no external style sheet, image or font: the style is inline, the charts are
inline SVG (svg.py), and a Content-Security-Policy of `default-src 'none'` makes the
browser refuse any request the page might still contain. The page is laid out for a
1280 px wide window (content 1200 px). Times are UTC and say so.

Machine-readable hooks for tests and scripts: every chart is a `<figure data-chart=NAME
data-points=N>` whose drawn data elements have the class "mark"; every headline number is
an element with `data-kpi=NAME data-value=EXACT` (the value as `txmetrics kpi` prints it
in JSON).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from html import escape

from .data import ReportData, RetentionOutlook, top_merchants, worst_merchants
from .svg import PALETTE, Bar, Chart, Series, bar_list, empty, percent, time_chart

WINDOW_WORDS = {"5m": "5 min", "1h": "hour", "1d": "day"}
STATUS_COLOURS = {"approved": "#009E73", "declined": "#E69F00", "failed": "#D55E00", "pending": "#999999"}
QUANTILE_STYLE = {0.5: ("#0072B2", 1.8, ""), 0.95: ("#E69F00", 1.8, ""), 0.99: ("#D55E00", 1.6, "5 3")}
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'"

STYLE = """
*{box-sizing:border-box}
body{margin:0;background:#f4f5f7;color:#1d1f23;font:14px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,'DejaVu Sans',sans-serif}
main{max-width:1240px;margin:0 auto;padding:20px}
header h1{font-size:24px;margin:0 0 4px}
header p{margin:0;color:#555}
h2{font-size:18px;margin:28px 0 10px;padding-bottom:4px;border-bottom:1px solid #d8dbe0}
.summary{display:grid;grid-template-columns:repeat(5,1fr);gap:12px;margin-top:18px}
.card{background:#fff;border:1px solid #d8dbe0;border-radius:8px;padding:12px 14px}
.card.wide{grid-column:1/-1}
.card .label{color:#555;font-size:12px;text-transform:uppercase;letter-spacing:.04em}
.card .value{font-size:26px;font-weight:600;margin:2px 0}
.card .sub{color:#555;font-size:13px}
.card ul{list-style:none;margin:4px 0 0;padding:0;display:flex;flex-wrap:wrap;gap:4px 28px;font-size:15px}
.card li{font-variant-numeric:tabular-nums}
.card li b{font-weight:600}
figure{background:#fff;border:1px solid #d8dbe0;border-radius:8px;margin:0 0 14px;padding:10px 12px 6px}
figcaption{font-weight:600;margin-bottom:2px}
figcaption small{font-weight:400;color:#555}
.pair{display:grid;grid-template-columns:1fr 1fr;gap:14px}
.pair figure{margin:0 0 14px}
svg{display:block}
table{border-collapse:collapse;background:#fff;border:1px solid #d8dbe0;width:100%;margin-bottom:14px;font-variant-numeric:tabular-nums}
th,td{padding:5px 10px;border-bottom:1px solid #eceef1;text-align:left}
th{background:#f0f1f4;font-weight:600}
td.n,th.n{text-align:right}
.note{color:#555;font-size:13px;margin:4px 0 10px}
.unavailable{color:#a33;font-size:13px}
footer{color:#666;font-size:12px;margin:30px 0 10px;border-top:1px solid #d8dbe0;padding-top:8px}
"""


def utc(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def size(value: float) -> str:
    """Bytes, decimal units: 950 B, 12.3 kB, 4.56 MB."""
    for limit, unit in ((1e12, "TB"), (1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
        if abs(value) >= limit:
            return f"{value / limit:.3g} {unit}"
    return f"{value:.0f} B"


def _exact(value: object) -> str:
    """A number as `txmetrics kpi --format json` writes it (exact decimals stay exact)."""
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, float):
        return "" if math.isnan(value) else repr(value)
    return str(value)


def _kpi(name: str, value: object, shown: str) -> str:
    return f'<span data-kpi="{escape(name)}" data-value="{escape(_exact(value))}">{escape(shown)}</span>'


def _colours(names: Iterable[str], fixed: dict[str, str] | None = None) -> dict[str, str]:
    fixed = fixed or {}
    out, free = {}, iter(c for c in PALETTE if c not in fixed.values())
    for name in sorted(names):
        out[name] = fixed.get(name) or next(free, PALETTE[-1])
    return out


def _figure(name: str, title: str, chart: Chart, note: str = "") -> str:
    caption = escape(title) + (f" <small>{escape(note)}</small>" if note else "")
    return (f'<figure data-chart="{escape(name)}" data-points="{chart.points}"><figcaption>{caption}</figcaption>'
            f"{chart.svg}</figure>")


def _unavailable(data: ReportData, section: str) -> str:
    reason = data.unavailable.get(section)
    return f'<p class="unavailable">Not shown: {escape(reason)}</p>' if reason else ""


def render(data: ReportData, *, title: str = "txmetrics KPI report", source: str = "") -> str:
    """The page for `data`; `source` names where the data came from (no secrets)."""
    per, trend = WINDOW_WORDS[data.window], WINDOW_WORDS[data.trend]
    span = f"{utc(data.start)} to {utc(data.end)}"
    points = (f"transactions per {per}" + (f"; rates, percentiles and failed items per {trend}" if trend != per else "")
              if data.window != "1d" else "one point per day")
    body = [
        f"<header><h1>{escape(title)}</h1><p>{escape(span)} (end exclusive) · {points} · all times UTC"
        f"{escape(' · ' + source) if source else ''}</p></header>",
        _summary(data),
        _volume(data, per),
        _approval(data, trend),
        _percentiles(data, trend),
        _merchants(data),
        _failed(data, trend),
        _lake(data),
        f"<footer>Generated {escape(utc(data.generated_at))} by <code>txmetrics report</code>. KPIs come from "
        "<code>txmetrics.kpi</code>, the code behind <code>txmetrics kpi</code> (5-minute histograms with pending "
        "deltas, daily rollups for whole fresh days); percentiles are within 0.54% of exact. Events are placed by "
        "occurred_at, failed items by their Event Hubs enqueued time, raw files by their event date. See "
        "docs/report.md.</footer>",
    ]
    return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            '<meta name="referrer" content="no-referrer">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{escape(title)}: {escape(span)}</title><style>{STYLE}</style></head>\n"
            f"<body><main>\n{chr(10).join(body)}\n</main></body></html>\n")


def _summary(data: ReportData) -> str:
    h = data.headline
    statuses = " · ".join(_kpi(f"status.{s}", n, f"{s} {n:,}") for s, n in sorted(h.statuses.items())
                          if s != "approved")
    rate = "-" if h.approval_rate is None else f"{h.approval_rate:.1%}"
    proc = h.processing
    p50 = proc.get(0.5)
    cards = [
        ("Transactions", _kpi("transactions", h.transactions, f"{h.transactions:,}"),
         _kpi("approved", h.approved, f"{h.approved:,} approved")),
        ("Approval rate", _kpi("approval_rate", h.approval_rate if h.approval_rate is not None else "", rate),
         statuses or "no declines or failures"),
        ("Processing time p50", _kpi("processing_ms.p50", p50 if p50 is not None else "",
                                     "-" if p50 is None else f"{p50:,.0f} ms"),
         " · ".join(_kpi(f"processing_ms.p{q * 100:g}", proc[q], f"p{q * 100:g} {proc[q]:,.0f} ms")
                    for q in (0.95, 0.99) if proc.get(q) is not None)),
        ("Failed items", _kpi("failed_items", h.failed_items, f"{h.failed_items:,}"),
         _kpi("failed_items.replayed", h.replayed, f"{h.replayed:,} replayed") +
         (f" ({h.replayed / h.failed_items:.0%})" if h.failed_items else "")),
        ("Raw archive", _kpi("raw_files", h.raw_files, f"{h.raw_files:,} files"),
         _kpi("raw_bytes", h.raw_bytes, size(h.raw_bytes)) + " of Parquet"),
    ]
    out = ['<section class="summary" aria-label="headline numbers">']
    for label, value, sub in cards:
        out.append(f'<div class="card"><div class="label">{label}</div><div class="value">{value}</div>'
                   f'<div class="sub">{sub}</div></div>')
    amounts = "".join(f"<li><b>{escape(cur)}</b> {_kpi(f'amount.sum.{cur}', total, f'{total:,.2f}')} "
                      f'<span class="sub">in {_kpi(f"amount.count.{cur}", n, f"{n:,}")}</span></li>'
                      for cur, n, total in h.amounts)
    out.append(f'<div class="card wide"><div class="label">Amount by currency (sum, in transactions)</div>'
               f"<ul>{amounts or '<li>-</li>'}</ul></div>")
    out.append("</section>")
    return "".join(out)


def _volume(data: ReportData, per: str) -> str:
    colours = _colours(data.volume)
    series = [Series(m, data.volume[m], colours[m]) for m in sorted(data.volume, key=lambda m: -sum(
        data.volume[m].values()))]
    chart = time_chart("Transactions by payment method", series, start=data.start, end=data.end, step=data.step,
                       y_label=f"transactions per {per}", stacked_bars=True)
    return ('<section id="volume"><h2>Volume</h2>' + _unavailable(data, "volume") +
            _figure("volume", f"Transactions per {per} by payment method", chart) + "</section>")


def _approval(data: ReportData, per: str) -> str:
    colours = _colours(data.volume)            # a method has the same colour in every chart
    series = [Series("all methods", data.approval_overall, "#000000", width=2.8)]
    series += [Series(m, data.approval_by_method[m], colours.get(m, PALETTE[-1]), width=1.5, opacity=0.85)
               for m in sorted(data.approval_by_method)]
    rates = time_chart("Approval rate", series, start=data.start, end=data.end, step=data.trend_step,
                       y_label="approval rate (%)", fmt=percent, y_floor=None)
    statuses = [s for s in ("declined", "failed") if s in data.outcomes]
    outcome_series = [Series(s, data.outcomes[s], STATUS_COLOURS[s]) for s in statuses]
    outcomes = time_chart("Declined and failed transactions", outcome_series, start=data.start, end=data.end,
                          step=data.trend_step, y_label=f"transactions per {per}", stacked_bars=True,
                          empty_message="no declined or failed transactions in this range")
    return ('<section id="approval"><h2>Approval</h2>' + _unavailable(data, "outcomes") +
            _figure("approval", f"Approval rate per {per}, overall and by payment method", rates) +
            _figure("declines", f"Declined and failed transactions per {per}", outcomes) + "</section>")


def _quantile_series(per_quantile: dict[float, dict[datetime, float]]) -> list[Series]:
    out = []
    for q in sorted(per_quantile):
        colour, width, dash = QUANTILE_STYLE.get(q, (PALETTE[4], 1.5, ""))
        out.append(Series(f"p{q * 100:g}", per_quantile[q], colour, width, dash))
    return out


def _percentiles(data: ReportData, per: str) -> str:
    proc = time_chart("Processing time", _quantile_series(data.processing), start=data.start, end=data.end,
                      step=data.trend_step, y_label="processing time (ms)")
    out = ['<section id="percentiles"><h2>Processing time and amount</h2>', _unavailable(data, "processing"),
           _figure("processing", f"Processing time p50 / p95 / p99 per {per}", proc), _unavailable(data, "amounts")]
    currencies = sorted(data.amounts, key=lambda c: -next((n for cur, n, _ in data.headline.amounts if cur == c), 0))
    if not currencies:
        out.append(_figure("amount", "Amount p50 / p95 / p99", empty("Amount", "no amounts in this range")))
    out.append('<div class="pair">')
    for cur in currencies:
        chart = time_chart(f"Amount ({cur})", _quantile_series(data.amounts[cur]), start=data.start, end=data.end,
                           step=data.trend_step, y_label=f"amount ({cur})", width=590, height=260)
        out.append(_figure(f"amount.{cur}", f"Amount in {cur}: p50 / p95 / p99 per {per}", chart))
    out.append("</div></section>")
    return "".join(out)


def _merchants(data: ReportData) -> str:
    top = top_merchants(data.merchants)
    worst, threshold = worst_merchants(data.merchants)
    busiest = bar_list("Merchants with the most transactions",
                       [Bar(m.merchant_id, m.transactions, f"{m.rate:.1%} approved") for m in top],
                       x_label="transactions")
    lowest = bar_list("Merchants with the lowest approval rate",
                      [Bar(m.merchant_id, m.rate, f"of {m.transactions:,}") for m in worst],
                      x_label="approval rate (% of transactions)", fmt=percent, colour="#D55E00", x_ceiling=1.0)
    note = f"merchants with at least {threshold:,} transactions" if threshold > 1 else "every merchant"
    return ('<section id="merchants"><h2>Merchants</h2>' + _unavailable(data, "merchants") + '<div class="pair">' +
            _figure("merchants.top", f"Top {len(top)} by transactions", busiest) +
            _figure("merchants.worst", f"Lowest {len(worst)} by approval rate", lowest, f"({note})") +
            "</div></section>")


def _failed(data: ReportData, per: str) -> str:
    codes = [c.error_code for c in data.failed_by_code]
    colours = _colours(codes)
    series = [Series(code, data.failed[code], colours[code]) for code in codes]
    chart = time_chart("Failed items by error code", series, start=data.start, end=data.end, step=data.trend_step,
                       y_label=f"failed items per {per}", x_label="Event Hubs enqueued time (UTC)",
                       stacked_bars=True, empty_message="no failed items in this range")
    per_bucket: dict[datetime, float] = {}
    for points in data.failed.values():
        for t, n in points.items():
            per_bucket[t] = per_bucket.get(t, 0) + n
    share = {t: data.failed_replayed.get(t, 0) / n for t, n in per_bucket.items() if n}
    replayed = time_chart("Replayed share of failed items", [Series("replayed", share, PALETTE[2], width=2)],
                          start=data.start, end=data.end, step=data.trend_step, fmt=percent,
                          y_label="replayed (% of failed items)", x_label="Event Hubs enqueued time (UTC)",
                          width=590, height=260, empty_message="no failed items in this range")
    rows = "".join(f"<tr><td>{escape(c.error_code)}</td><td class=n>{c.items:,}</td><td class=n>{c.replayed:,}</td>"
                   f"<td class=n>{c.replayed / c.items:.0%}</td><td class=n>{c.items - c.replayed - c.resolved:,}</td>"
                   "</tr>" for c in data.failed_by_code)
    h = data.headline
    resolved = sum(c.resolved for c in data.failed_by_code)
    total = (f"<tr><th>all codes</th><th class=n>{h.failed_items:,}</th><th class=n>{h.replayed:,}</th>"
             f"<th class=n>{(h.replayed / h.failed_items if h.failed_items else 0):.0%}</th>"
             f"<th class=n>{h.failed_items - h.replayed - resolved:,}</th></tr>")
    table = ('<table data-table="failed"><thead><tr><th>error code</th><th class=n>items</th><th class=n>replayed</th>'
             "<th class=n>replayed share</th><th class=n>open</th></tr>"
             f"</thead><tbody>{rows}{total if rows else ''}</tbody></table>")
    note = (f'<p class="note">Open = neither replayed nor resolved without replay ({resolved:,} resolved). '
            "Replay: <code>txmetrics failed replay</code>.</p>")
    return ('<section id="failed"><h2>Failed items</h2>' +
            _figure("failed", f"Failed items per {per} by error code", chart) + '<div class="pair">' +
            _figure("failed.replayed", f"Replayed share of failed items per {per}", replayed) +
            f"<div>{table}{note}</div></div></section>")


def _lake(data: ReportData) -> str:
    first = datetime.combine(data.start.astimezone(UTC).date(), datetime.min.time(), tzinfo=UTC)
    last = datetime.combine((data.end.astimezone(UTC) - timedelta(microseconds=1)).date(), datetime.min.time(),
                            tzinfo=UTC) + timedelta(days=1)
    day = timedelta(days=1)

    def at(d: date) -> datetime:
        return datetime.combine(d, datetime.min.time(), tzinfo=UTC)

    files = time_chart("Raw files per day", [Series("files", {at(d.day): d.files for d in data.lake}, PALETTE[0])],
                       start=first, end=last, step=day, y_label="files per day", x_label="event date (UTC)",
                       stacked_bars=True, width=590, height=260, empty_message="no raw files in this range")
    sizes = time_chart("Raw bytes per day", [Series("bytes", {at(d.day): d.bytes for d in data.lake}, PALETTE[2])],
                       start=first, end=last, step=day, y_label="bytes per day", x_label="event date (UTC)",
                       stacked_bars=True, fmt=size, width=590, height=260, empty_message="no raw files in this range")
    return ('<section id="lake"><h2>The lake</h2><div class="pair">' +
            _figure("lake.files", "Parquet files per day", files) +
            _figure("lake.bytes", "Parquet bytes per day", sizes) + "</div>" + _retention(data.retention) +
            "</section>")


def _project_path(path: str) -> str:
    """lifecycle/dev.yaml rather than the machine's absolute path."""
    parts = path.replace("\\", "/").split("/")
    return "/".join(parts[-2:])


def _retention(outlook: RetentionOutlook | None) -> str:
    if outlook is None:
        return '<p class="note">Retention: no lifecycle policy given.</p>'
    head = "".join(f"<th class=n>{escape(label)}</th>" for label, _ in outlook.horizons)

    def due(action: str, count: int, size_bytes: int | None) -> str:
        if not count:
            return "–"
        what = {"drop partitions": "partition", "delete rows": "row"}.get(action, "file")
        return f"{count:,} {what}{'' if count == 1 else 's'}" + (f", {size(size_bytes)}" if size_bytes else "")

    rows = "".join(f"<tr><td>{escape(r.store)}</td><td>{escape(r.target)}</td><td>{escape(r.action)}</td>" +
                   "".join(f"<td class=n>{due(r.action, n, b)}</td>" for n, b in r.due) + "</tr>"
                   for r in outlook.rows)
    inventory = "" if outlook.blob_inventory else " The blob inventory was not read (no storage account given)."
    return (f'<h3>What retention will archive or delete next (stack {escape(outlook.stack)})</h3>'
            f'<p class="note">From <code>txmetrics lifecycle plan</code> over the real inventory, with '
            f"{escape(', '.join(_project_path(f) for f in outlook.files))}: what is due today, and what will have been done by the end of "
            f"each later day if nothing else changes (Azure's lifecycle engine and the retention job each run "
            f"daily).{inventory}</p>"
            f'<table data-table="retention"><thead><tr><th>store</th><th>target</th><th>action</th>{head}</tr></thead>'
            f"<tbody>{rows or '<tr><td colspan=9>nothing is due in this outlook</td></tr>'}</tbody></table>")


__all__ = ["render", "size"]
