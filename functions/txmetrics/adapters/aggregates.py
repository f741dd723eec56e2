"""The aggregates in PostgreSQL: the writers' histogram deltas (aggregate_deltas), the fold
that merges them into the 5-minute rows (aggregate_histograms), the daily rollups
(window_seconds = 86400, aggregate_rollups), and the one source of histogram rows every
KPI reader goes through (docs/read-side.md).

Functions take the connection the caller's transaction runs on and keyword-only arguments;
none opens a transaction of its own (kpi.py and rollup.py decide those); `fold` is one
statement, so it is all or nothing in whatever transaction runs it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg

from ..core.catalog import is_plain_field_path
from ..core.histogram import Histogram
from .plans import without_nested_loops

STORED_WINDOW = 300          # the 5-minute rows
DAY = 86400                  # the daily rollups


# ------------------------------------------------------------------ the fold
def fold(conn: psycopg.Connection) -> int:
    """Merge every committed delta into aggregate_histograms: txm_fold_aggregates, one
    statement, so all or nothing; concurrent folds take turns. Returns deltas folded."""
    row = conn.execute("SELECT txm_fold_aggregates()").fetchone()
    return int(row[0]) if row else 0


@dataclass(frozen=True, slots=True)
class PendingDeltas:
    deltas: int
    oldest: datetime | None      # when the oldest pending delta was committed (None: none pending)


def pending_deltas(conn: psycopg.Connection) -> PendingDeltas:
    """How far the fold is behind: deltas not folded yet, and the commit time of the oldest."""
    row = conn.execute("SELECT count(*), min(created_at) FROM aggregate_deltas").fetchone()
    assert row is not None
    return PendingDeltas(int(row[0]), row[1])


# ------------------------------------------------------------------ daily rollups
def days_to_roll(conn: psycopg.Connection, *, before: date, lookback_days: int) -> list[date]:
    """Days before `before`, within `lookback_days`, with 5-minute rows and no fresh rollup."""
    rows = conn.execute(
        """SELECT DISTINCT (window_start AT TIME ZONE 'UTC')::date AS day FROM aggregate_histograms
            WHERE window_seconds = 300 AND window_start >= (%s::date - %s)::timestamp AT TIME ZONE 'UTC'
              AND window_start < %s::timestamp AT TIME ZONE 'UTC'
           EXCEPT SELECT day FROM aggregate_rollups WHERE NOT stale
           ORDER BY 1""", (before, lookback_days, before)).fetchall()
    return [r[0] for r in rows]


def fresh_rollup_days(conn: psycopg.Connection, *, first: date, last: date) -> set[date]:
    """The days in [first, last] whose rollup is fresh (no late event folded since)."""
    rows = conn.execute("SELECT day FROM aggregate_rollups WHERE NOT stale AND day BETWEEN %s AND %s",
                        (first, last)).fetchall()
    return {r[0] for r in rows}


def begin_rollup(conn: psycopg.Connection, *, day: date) -> int:
    """Mark the day's rollup stale and bump its version; the version this rollup builds.

    Under the fold's lock (txm_fold_aggregates takes it before its one statement): a fold in
    flight whose snapshot predates the day's first rollup row would find no row to bump, and
    the rollup, having read the 5-minute rows before that fold committed, would be marked
    fresh without its events (an audit). With the lock, a fold either committed before (the
    rollup reads its rows) or starts after this row exists (and bumps it)."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('txmetrics.fold_aggregates'))")
        row = conn.execute(
            """INSERT INTO aggregate_rollups (day, stale) VALUES (%s, true)
               ON CONFLICT (day) DO UPDATE SET stale = true, version = aggregate_rollups.version + 1
               RETURNING version""", (day,)).fetchone()
    assert row is not None
    return int(row[0])


def five_minute_histograms(conn: psycopg.Connection, *, start: datetime, end: datetime, scale: int
                           ) -> Iterator[tuple[str, str, Histogram, Decimal]]:
    """(metric, dimensions as JSON text, histogram, exact sum) of the folded 5-minute rows in
    [start, end) at `scale`."""
    for metric, dims, count, total, lo, hi, zero, po, pc, no, nc in conn.execute(
            """SELECT metric_name, dimensions::text, count, sum, min, max, zero_count, pos_offset, pos_counts,
                      neg_offset, neg_counts
                 FROM aggregate_histograms
                WHERE window_seconds = 300 AND window_start >= %s AND window_start < %s AND scale = %s""",
            (start, end, scale)):
        yield metric, dims, Histogram(count=int(count), min=float(lo), max=float(hi), zero_count=int(zero),
                                      pos_offset=po, pos_counts=list(pc or []), neg_offset=no,
                                      neg_counts=list(nc or [])), Decimal(total)


def replace_rollup(conn: psycopg.Connection, *, day: date, version: int, scale: int,
                   rows: Iterable[tuple[str, str, Histogram, Decimal]]) -> bool:
    """Replace the day's daily rows by `rows` (metric, dimensions JSON, histogram, sum) and
    mark the rollup fresh if `version` is still current; whether it is. Call inside a
    transaction: rollups of one day take turns on an advisory lock (two at once, e.g. two
    rebuilds, would insert the same keys)."""
    start = datetime.combine(day, datetime.min.time(), tzinfo=UTC)
    conn.execute("SELECT pg_advisory_xact_lock(hashtext('txmetrics.roll_day'), %s)", (day.toordinal(),))
    conn.execute("DELETE FROM aggregate_histograms WHERE window_seconds = %s AND window_start = %s", (DAY, start))
    with conn.cursor().copy(
            "COPY aggregate_histograms (metric_name, window_seconds, window_start, dimensions, count, sum, min, max, "
            "zero_count, scale, pos_offset, pos_counts, neg_offset, neg_counts) FROM STDIN") as copy:
        for metric, dims, h, total in rows:
            copy.write_row((metric, DAY, start, dims, h.count, total, h.min, h.max, h.zero_count, scale,
                            h.pos_offset, _array(h.pos_counts, h.pos_offset), h.neg_offset,
                            _array(h.neg_counts, h.neg_offset)))
    return conn.execute("UPDATE aggregate_rollups SET stale = false, rolled_at = now() "
                        "WHERE day = %s AND version = %s", (day, version)).rowcount == 1


def _array(counts: list[int], offset: int | None) -> str | None:
    return None if offset is None else "{" + ",".join(map(str, counts)) + "}"


# ------------------------------------------------------------------ the KPI row source
@dataclass(frozen=True, slots=True)
class GroupHistogram:
    """One group's merged histogram (per window when one was asked for): the totals and the
    bucket counts by key, positive and negative values apart."""

    bucket: datetime | None
    group: dict[str, Any]
    count: int
    sum: Decimal
    min: float
    max: float
    zero_count: int
    pos: dict[str, int] | None       # bucket key (as text) -> count
    neg: dict[str, int] | None


def merged_histograms(conn: psycopg.Connection, *, metric: str, dimension_set: tuple[str, ...],
                      group_by: tuple[str, ...], filters: dict[str, str], start: datetime, end: datetime,
                      window_seconds: int | None, use_rollups: bool = True) -> list[GroupHistogram]:
    """`metric`'s rows stored under `dimension_set` in [start, end) (`histogram_rows`), kept
    where each dimension of `filters` has its value (as text), merged per group of
    `group_by` (and per window), in window then group order."""
    source, params = histogram_rows(conn, metric=metric, dimension_set=dimension_set, start=start, end=end,
                                    window_seconds=window_seconds, use_rollups=use_rollups)
    where = []
    for i, (name, value) in enumerate(filters.items()):
        params[f"f{i}"] = value
        # `null` also selects a JSON null (an event without the field), as the table prints it
        where.append(f"(dimensions ->> '{_key(name)}' = %(f{i})s "
                     f"OR (%(f{i})s = 'null' AND dimensions -> '{_key(name)}' = 'null'::jsonb))")
    filtered = f"SELECT * FROM ({source}) AS candidates" + (f" WHERE {' AND '.join(where)}" if where else "")
    keys = [_key(k) for k in group_by]
    group_cols = "bucket, " + (", ".join(f"dimensions -> '{k}'" for k in keys) or "NULL::jsonb")
    group_json = "jsonb_build_object(" + ", ".join(f"'{k}', dimensions -> '{k}'" for k in keys) + ")"
    # Bucket counts are added per group in two set-based passes (positive and negative
    # values), then joined to the totals: each pass reads the candidate rows once, whatever
    # the number of groups (a correlated subquery per group re-read them once per group).
    # Stored counts are dense: the zeros between sparse buckets are skipped before adding.
    buckets = """
            SELECT bucket, g, jsonb_object_agg(k, c) AS counts FROM (
                SELECT bucket, {g} AS g, {side}_offset + o::int - 1 AS k, sum(c)::bigint AS c
                  FROM r, unnest({side}_counts) WITH ORDINALITY AS u(c, o)
                 WHERE {side}_counts IS NOT NULL AND c > 0 GROUP BY {cols}, 3) AS keyed
             GROUP BY bucket, g"""
    same_group = "coalesce({a}.bucket, '-infinity') = coalesce(t.bucket, '-infinity') AND {a}.g = t.g"
    sql = f"""
        WITH r AS MATERIALIZED ({filtered}),
        totals AS (
            SELECT bucket, {group_json} AS g, sum(count)::bigint AS n, sum(sum) AS s, min(min) AS lo,
                   max(max) AS hi, sum(zero_count)::bigint AS z
              FROM r GROUP BY {group_cols}),
        pos AS ({buckets.format(g=group_json, side="pos", cols=group_cols)}),
        neg AS ({buckets.format(g=group_json, side="neg", cols=group_cols)})
        SELECT t.bucket, t.g, t.n, t.s, t.lo, t.hi, t.z, p.counts, q.counts
          FROM totals t
          LEFT JOIN pos p ON {same_group.format(a="p")}
          LEFT JOIN neg q ON {same_group.format(a="q")}
         ORDER BY t.bucket NULLS FIRST, t.g"""
    with without_nested_loops(conn):
        rows = conn.execute(sql, params).fetchall()
    return [GroupHistogram(bucket=bucket, group=dict(g or {}), count=int(n), sum=Decimal(s), min=float(lo),
                           max=float(hi), zero_count=int(z), pos=pos, neg=neg)
            for bucket, g, n, s, lo, hi, z, pos, neg in rows]


def histogram_rows(conn: psycopg.Connection, *, metric: str, dimension_set: tuple[str, ...] | None, start: datetime,
                   end: datetime, window_seconds: int | None, use_rollups: bool = True, counts_only: bool = False,
                   unrolled: frozenset[date] = frozenset()) -> tuple[str, dict[str, Any]]:
    """The one source of histogram rows for KPIs: SQL (and its parameters) yielding
    (bucket, dimensions, count, sum, min, max, zero_count, pos_offset, pos_counts,
    neg_offset, neg_counts) for `metric`'s rows stored under exactly `dimension_set` in
    [start, end); `bucket` is the window of `window_seconds` the row falls in (NULL without).
    `counts_only` yields (bucket, dimensions, count) instead, `bucket` being the row's 5-minute
    window, or its day where the day's rollup is read; with it, `dimension_set` None reads
    the rows of every stored set.

    Full days with a fresh daily rollup are read from it (1 row instead of 288), the rest
    from the 5-minute rows; rollups cannot serve sub-day windows. Every reader goes through
    here, so rows from another place (e.g. pending per-batch deltas) are added once, here."""
    if dimension_set is None and not counts_only:
        raise ValueError("histogram rows are merged within one dimension set: name it")
    keys = sorted(dimension_set or ())
    bucket_expr = "NULL::timestamptz"
    if window_seconds is not None:
        bucket_expr = f"date_bin(interval '{int(window_seconds)} seconds', window_start, timestamptz 'epoch')"
    params: dict[str, Any] = {"metric": metric, "keys": keys}
    rolled = sorted(_rolled_days(conn, start, end) - unrolled) if use_rollups and window_seconds in (None, DAY) else []
    where = """metric_name = %(metric)s
                    AND dimensions ?& %(keys)s::text[]
                    AND (SELECT count(*) FROM jsonb_object_keys(dimensions)) = cardinality(%(keys)s::text[])"""
    if dimension_set is None:
        where = "metric_name = %(metric)s"
    columns = f"{bucket_expr} AS bucket, dimensions, count, sum, min, max, zero_count"
    # 5-minute rows as every reader must see them: folded rows plus pending deltas
    # (aggregate_histograms_current). A day with a fresh rollup: the rollup (folded rows only)
    # plus that day's pending deltas.
    currents = [f"SELECT {columns}, pos_offset, pos_counts, neg_offset, neg_counts FROM aggregate_histograms_current"]
    rollup = f"SELECT {columns}, pos_offset, pos_counts, neg_offset, neg_counts FROM aggregate_histograms"
    # a delta's exact sum (migration 0013), else its double as numeric: the rows of a union
    # take one type, and a double among numerics would turn every sum into a binary float
    pending = (f"SELECT {bucket_expr} AS bucket, dimensions, count, coalesce(sum_exact, sum::numeric) AS sum, min, "
               "max, zero_count, pos_keys[1], txm_hist_dense(pos_keys, pos_counts), neg_keys[1], "
               "txm_hist_dense(neg_keys, neg_counts) FROM aggregate_deltas")
    if counts_only:      # the same rows, counts only: folded and pending need no merging into keys first
        currents = ["SELECT window_start AS bucket, dimensions, count FROM aggregate_histograms",
                    "SELECT window_start AS bucket, dimensions, count FROM aggregate_deltas"]
        rollup = currents[0]
        # a rolled-up day's pending 5-minute deltas count in the day, as its rollup row does
        pending = ("SELECT date_bin(interval '1 day', window_start, timestamptz 'epoch') AS bucket, dimensions, count "
                   "FROM aggregate_deltas")
    parts = []
    if rolled:
        params["rolled"] = [datetime.combine(d, datetime.min.time(), tzinfo=UTC) for d in rolled]
        params["rolled_end"] = [t + timedelta(days=1) for t in params["rolled"]]
        parts.append(f"{rollup} WHERE {where} AND window_seconds = {DAY} "
                     "AND window_start = ANY(%(rolled)s::timestamptz[])")
        parts.append(f"{pending} WHERE {where} AND window_seconds = {STORED_WINDOW} AND EXISTS (SELECT 1 FROM "
                     "unnest(%(rolled)s::timestamptz[], %(rolled_end)s::timestamptz[]) AS d(a, b) "
                     "WHERE window_start >= d.a AND window_start < d.b)")
    for i, (a, b) in enumerate(_subtract(start, end, rolled)):
        params[f"a{i}"], params[f"b{i}"] = a, b
        parts += [f"{current} WHERE {where} AND window_seconds = {STORED_WINDOW} "
                  f"AND window_start >= %(a{i})s AND window_start < %(b{i})s" for current in currents]
    return " UNION ALL ".join(parts), params


def event_counts(conn: psycopg.Connection, *, metric: str, start: datetime, end: datetime,
                 use_rollups: bool = True) -> tuple[dict[tuple[str, ...], int], int]:
    """How many events `metric`'s rows count in [start, end), per stored dimension set (its
    sorted names), whether or not the catalog in effect still names it, and the least number
    of events the range holds: per 5-minute window (per day where its rollup is read), the
    largest count of any set, added up. The same rows `histogram_rows` reads, counts only (in
    the query's snapshot: kpi.query reads in one). Every stored set of a metric counts each
    event once, so a set that counts fewer than that misses events: one added to the catalog
    after them, or one that every set of the metric replaced (a `by` extended changes them all:
    no set holds the whole range, and the largest total alone let a query answer from the
    events after the change; an audit). A rolled-up day whose sets count differently (the
    catalog changed that day: the old sets hold its start, the new ones its end) is counted
    from its 5-minute rows, as it is before its rollup. kpi.py chooses by this."""
    counted, least, mixed = _event_counts(conn, metric=metric, start=start, end=end, use_rollups=use_rollups)
    # rollup.roll_day no longer rolls a day no set holds whole; this recount still guards the
    # rollups built before it did (a recount of a day where one set merely counts fewer, a set
    # added that day, gives the same counts)
    if mixed:
        counted, least, _ = _event_counts(conn, metric=metric, start=start, end=end, use_rollups=use_rollups,
                                          unrolled=frozenset(mixed))
    return counted, least


def _event_counts(conn: psycopg.Connection, *, metric: str, start: datetime, end: datetime, use_rollups: bool,
                  unrolled: frozenset[date] = frozenset()) -> tuple[dict[tuple[str, ...], int], int, set[date]]:
    """(counts per set, least events of the range, the rolled-up days read whose sets count
    differently)."""
    sql, params = histogram_rows(conn, metric=metric, dimension_set=None, start=start, end=end,
                                 window_seconds=None, use_rollups=use_rollups, counts_only=True, unrolled=unrolled)
    rolled = params.get("rolled", [])
    params = {**params, "rolled_days": rolled}
    # each distinct dimensions' names are read once (in the "C" collation, Python's own order: a
    # database's default collation, such as en_US, can sort `Region` after `payment_method`, and
    # the set would not be recognised), then the rows are counted per (set, window): two scans
    # of the rows (docs/read-side.md has the timings)
    with without_nested_loops(conn):
        rows = conn.execute(
            f"""WITH named AS MATERIALIZED (
                     SELECT dimensions, ARRAY(SELECT k FROM jsonb_object_keys(dimensions) AS k ORDER BY k COLLATE "C") AS keys
                       FROM (SELECT DISTINCT dimensions FROM ({sql}) AS r) AS d),
                     per_set AS MATERIALIZED (
                     SELECT named.keys, r.bucket, sum(r.count) AS n FROM ({sql}) AS r JOIN named USING (dimensions)
                      GROUP BY 1, 2)
                SELECT 'set', keys, sum(n)::bigint, NULL::timestamptz FROM per_set GROUP BY 2
                UNION ALL
                SELECT 'least', NULL, coalesce(sum(top), 0)::bigint, NULL
                  FROM (SELECT max(n) AS top FROM per_set GROUP BY bucket) AS b
                UNION ALL
                SELECT 'mixed', NULL, NULL, bucket FROM per_set WHERE bucket = ANY(%(rolled_days)s::timestamptz[])
                 GROUP BY bucket HAVING min(n) <> max(n)""",
            params).fetchall()
    counted = {tuple(keys): int(n) for kind, keys, n, _ in rows if kind == "set"}
    least = next(int(n) for kind, _, n, _ in rows if kind == "least")
    mixed = {bucket.astimezone(UTC).date() for kind, _, _, bucket in rows if kind == "mixed"}
    return counted, least, mixed


def _rolled_days(conn: psycopg.Connection, start: datetime, end: datetime) -> set[date]:
    first = (start + timedelta(days=1) - timedelta(microseconds=1)).astimezone(UTC).date()   # first full day
    last = (end.astimezone(UTC) - timedelta(days=1)).date()                                  # last full day
    if last < first:
        return set()
    return fresh_rollup_days(conn, first=first, last=last)


def _subtract(start: datetime, end: datetime, days: list[date]) -> list[tuple[datetime, datetime]]:
    """[start, end) minus the given whole UTC days, as sorted intervals."""
    out = []
    cursor = start
    for d in days:
        a = datetime.combine(d, datetime.min.time(), tzinfo=UTC)
        if a > cursor:
            out.append((cursor, a))
        cursor = max(cursor, a + timedelta(days=1))
    if cursor < end:
        out.append((cursor, end))
    return out


def _key(name: str) -> str:
    """A dimension name goes into the SQL text as a jsonb key: plain field paths only (the
    callers refuse others with a message first; this is the guard where the SQL is built)."""
    if not is_plain_field_path(name):
        raise ValueError(f"dimension name {name!r} is not a plain field path")
    return name
