"""Replay of failed items (txmetrics.replay against Azurite and PostgreSQL): a fixed item is
replayed once (again: "already replayed"; forced: nothing doubled), and an item refused for a card
number in its event id is replayed only once its id is fixed; replays before and after a database
loss get different archive keys; a forced replay with a corrected occurred_at is refused."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest

from localdev.services import LocalServices
from tests.helpers import archive_rows, empty_tables, ledger_event_ids
from txmetrics import kpi, replay, runtime
from txmetrics.adapters.blob import BlobArchive
from txmetrics.adapters.postgres import PostgresStore
from txmetrics.compaction import compact_day
from txmetrics.core.catalog import load_catalog
from txmetrics.core.naming import replay_sequence_number
from txmetrics.rebuild import rebuild
from txmetrics.settings import BUNDLED_CATALOG

DAY = date(2026, 3, 1)
BAD_CURRENCY = {"event_id": "?", "transaction_id": "t", "occurred_at": "2026-03-01T10:00:00Z", "merchant_id": "m",
                "amount": "9.99", "currency": "eur", "payment_method": "card", "status": "approved"}


def test_fixed_failed_item_is_replayed_once(deliver: Callable[..., None], db: psycopg.Connection,
                                            archive: BlobArchive, env: dict[str, str]) -> None:
    bad = {"event_id": "fix-me", "transaction_id": "t", "occurred_at": "2026-03-01T10:00:00Z", "merchant_id": "m",
           "amount": "9.99", "currency": "eur", "payment_method": "card", "status": "approved"}
    deliver([bad], partition_id="3", first_sequence=77)
    (item_id,) = db.execute("SELECT id FROM failed_items WHERE event_id = 'fix-me'").fetchone()
    assert replay.replay(db, runtime.get_pipeline(), item_ids=[item_id])[0].note.startswith("still invalid")
    replay.set_field(db, item_id, "currency", "EUR")
    outcome = replay.replay(db, runtime.get_pipeline(), item_ids=[item_id])
    assert outcome[0].replayed and outcome[0].note == "replayed"
    snapshot = (db.execute("SELECT count(*) FROM dynamic_metrics WHERE event_id = 'fix-me'").fetchone(),
                db.execute("SELECT sum(count) FROM aggregate_histograms_current WHERE metric_name = 'approved' "
                           "AND dimensions = '{}'").fetchone(), archive_rows(archive))
    assert snapshot[0] == (2,) and [r[2] for r in snapshot[2]] == ["fix-me"]
    assert snapshot[2][0][:2] == ("replay", replay_sequence_number("fix-me"))      # the event's key, not the item's id
    assert replay.replay(db, runtime.get_pipeline(), item_ids=[item_id])[0].note == "already replayed"
    forced = replay.replay(db, runtime.get_pipeline(), item_ids=[item_id], force=True)
    assert forced[0].note.startswith("replayed (event already ingested")
    assert (db.execute("SELECT count(*) FROM dynamic_metrics WHERE event_id = 'fix-me'").fetchone(),
            db.execute("SELECT sum(count) FROM aggregate_histograms_current WHERE metric_name = 'approved' "
                       "AND dimensions = '{}'").fetchone(), archive_rows(archive)) == snapshot
    assert db.execute("SELECT replayed, replayed_at IS NOT NULL, fixed_payload IS NOT NULL FROM failed_items "
                      "WHERE id = %s", (item_id,)).fetchone() == (True, True, True)


def test_an_item_refused_for_a_card_number_id_is_replayed_only_once_fixed(
        deliver: Callable[..., None], db: psycopg.Connection, env: dict[str, str]) -> None:
    """Its stored payload has the id masked ("************1111"): replayed as is, the event would
    be stored under an id its producer never sent, the collision issue 11 removed."""
    bad = {"event_id": "4111111111111111", "transaction_id": "t", "occurred_at": "2026-03-01T10:00:00Z",
           "merchant_id": "m", "amount": "9.99", "currency": "EUR", "payment_method": "card", "status": "approved"}
    deliver([bad], partition_id="3", first_sequence=78)
    (item_id, code, payload) = db.execute("SELECT id, error_code, payload FROM failed_items").fetchone()
    assert code == "card_number_in_event_id" and json.loads(payload)["event_id"] == "************1111"
    outcome = replay.replay(db, runtime.get_pipeline(), error_code=code)
    assert not outcome[0].replayed and "event_id held a card number" in outcome[0].note
    assert db.execute("SELECT count(*) FROM ingested_events").fetchone() == (0,)
    replay.set_field(db, item_id, "event_id", "order-77")
    assert replay.replay(db, runtime.get_pipeline(), item_ids=[item_id])[0].replayed
    assert db.execute("SELECT count(*) FROM ingested_events").fetchone() == (1,)
    assert ledger_event_ids(db, ["order-77"]) == {"order-77"}


def test_replays_before_and_after_a_database_loss_get_different_archive_keys(
        deliver: Callable[..., None], db: psycopg.Connection, archive: BlobArchive, services: LocalServices,
        env: dict[str, str]) -> None:
    """failed_items cannot be rebuilt, so item ids start again at 1 after a database loss: the
    replay's archive key comes from the event (naming.replay_sequence_number), and the new
    item 1's event does not take the (partition, sequence number) of the old item 1's."""
    def replay_first_item(event_id: str) -> None:
        deliver([{**BAD_CURRENCY, "event_id": event_id}], partition_id="0", first_sequence=5)
        (item_id,) = db.execute("SELECT id FROM failed_items WHERE event_id = %s", (event_id,)).fetchone()
        assert item_id == 1
        replay.set_field(db, item_id, "currency", "EUR")
        assert replay.replay(db, runtime.get_pipeline(), item_ids=[item_id])[0].note == "replayed"

    replay_first_item("before-loss")
    empty_tables(db)                  # PostgreSQL lost (ids restart), rebuilt from the lake
    runtime.reset()
    store = PostgresStore(services.database_url)
    try:
        rebuilt = rebuild(store=store, archive=archive, catalog=load_catalog(BUNDLED_CATALOG), start=DAY,
                          end=DAY + timedelta(days=1))
    finally:
        store.close()
    assert rebuilt.events == 1 and ledger_event_ids(db, ["before-loss"]) == {"before-loss"}
    replay_first_item("after-loss")

    rows = archive_rows(archive)
    assert sorted(r[:3] for r in rows) == sorted(
        ("replay", replay_sequence_number(e), e) for e in ("before-loss", "after-loss"))
    assert len({r[:2] for r in rows}) == 2                       # contract section 3: each key once
    with psycopg.connect(services.database_url, autocommit=True) as conn:
        assert compact_day(conn, archive, DAY, target_bytes=1 << 30).inputs == 2
    assert sorted(r[2] for r in archive_rows(archive)) == ["after-loss", "before-loss"]
    assert db.execute("SELECT count(*) FROM dynamic_metrics WHERE metric_name = 'approved'").fetchone() == (2,)


def test_a_forced_replay_with_a_corrected_time_is_refused(
        deliver: Callable[..., None], db: psycopg.Connection, archive: BlobArchive, env: dict[str, str]) -> None:
    """Replayed with a wrong time, corrected, replayed again with --force: the event id is
    stored at the first time, and storing it at the second would count it twice (the ledger
    deduplicates by event_id and occurred_at). Refused with a note; nothing changes."""
    deliver([{**BAD_CURRENCY, "event_id": "re-fix", "occurred_at": "2026-03-01T10:00:00"}],   # no offset
            partition_id="0", first_sequence=9)
    (item_id,) = db.execute("SELECT id FROM failed_items WHERE event_id = 're-fix'").fetchone()
    replay.set_field(db, item_id, "currency", "EUR")
    replay.set_field(db, item_id, "occurred_at", "2026-03-01T10:00:00+05:00")        # the wrong guess
    assert replay.replay(db, runtime.get_pipeline(), item_ids=[item_id])[0].note == "replayed"

    def stored() -> tuple[Any, ...]:
        return (db.execute("SELECT metric_name, value, occurred_at FROM dynamic_metrics ORDER BY 1").fetchall(),
                db.execute("SELECT sum(count) FROM aggregate_histograms_current WHERE metric_name = 'approved' "
                           "AND dimensions = '{}'").fetchone(), archive_rows(archive))
    before = stored()
    assert len(before[0]) > 1 and before[1] == (1,) and len(before[2]) == 1

    replay.set_field(db, item_id, "occurred_at", "2026-03-01T10:00:00Z")             # the right one
    (outcome,) = replay.replay(db, runtime.get_pipeline(), item_ids=[item_id], force=True)
    assert not outcome.replayed and outcome.note.startswith("not replayed: event_id 're-fix' is already stored "
                                                            "with occurred_at 2026-03-01T05:00:00+00:00")
    assert "a replay cannot change a stored event" in outcome.note and f"failed resolve {item_id}" in outcome.note
    assert stored() == before
    assert db.execute("SELECT replay_note FROM failed_items WHERE id = %s", (item_id,)).fetchone() == (outcome.note,)
    # the stored time again: the same event, nothing added (as for any replay of a stored event)
    replay.set_field(db, item_id, "occurred_at", "2026-03-01T05:00:00Z")
    again = replay.replay(db, runtime.get_pipeline(), item_ids=[item_id], force=True)[0]
    assert again.replayed and again.note.startswith("replayed (event already ingested") and stored() == before


def test_failed_set_keeps_every_number_as_written(deliver: Callable[..., None], db: psycopg.Connection,
                                                  env: dict[str, str]) -> None:
    """`failed set` re-encodes the payload: through a float, an amount of 123456789.123456789
    was stored, counted and archived as 123456789.12345679 (an audit), and a value typed for
    the amount itself lost its last digits the same way."""
    from typer.testing import CliRunner

    from txmetrics_cli.main import app

    body = ('{"event_id": "exact-1", "transaction_id": "t", "occurred_at": "2026-03-01T10:00:00Z", "merchant_id": "m",'
            ' "amount": 123456789.123456789, "currency": "eur", "payment_method": "card", "status": "approved",'
            ' "attributes": {"score": 0.30000000000000001}}')
    deliver([body.encode(), {**BAD_CURRENCY, "event_id": "exact-2", "currency": "EUR", "amount": -1}],
            partition_id="3")
    items = dict(db.execute("SELECT event_id, id FROM failed_items").fetchall())
    stored = replay.set_field(db, items["exact-1"], "currency", "EUR")
    assert '"amount":123456789.123456789' in stored and '"score":0.30000000000000001' in stored
    typed = CliRunner().invoke(app, ["failed", "set", str(items["exact-2"]), "amount", "1234567890.123456789"])
    assert typed.exit_code == 0 and '"amount":1234567890.123456789' in typed.stdout, typed.output
    outcomes = replay.replay(db, runtime.get_pipeline(), item_ids=sorted(items.values()))
    assert [o.replayed for o in outcomes] == [True, True]
    (row,) = kpi.query(db, metric="amount", start=datetime(2026, 3, 1, tzinfo=UTC),
                       end=datetime(2026, 3, 2, tzinfo=UTC))
    assert row.sum == Decimal("123456789.123456789") + Decimal("1234567890.123456789")


def test_replaying_a_resolved_item_says_so(deliver: Callable[..., None], db: psycopg.Connection,
                                           env: dict[str, str]) -> None:
    """A closed item named by id was skipped in silence ("nothing to replay: no open item
    matches"), though it exists (an audit)."""
    deliver([{**BAD_CURRENCY, "event_id": "closed-1"}, {**BAD_CURRENCY, "event_id": "open-1"}], partition_id="3")
    items = dict(db.execute("SELECT event_id, id FROM failed_items").fetchall())
    assert replay.resolve(db, [items["closed-1"]]) == 1
    outcomes = replay.replay(db, runtime.get_pipeline(), item_ids=[items["open-1"], items["closed-1"]])
    assert [(o.item_id, o.replayed) for o in outcomes] == sorted([(items["closed-1"], False), (items["open-1"], False)])
    notes = {o.item_id: o.note for o in outcomes}
    assert notes[items["closed-1"]].startswith("not replayed: the item is resolved (closed")
    assert notes[items["open-1"]].startswith("still invalid: invalid_currency")
    # by error code, closed items stay out of it, as before
    assert [o.item_id for o in replay.replay(db, runtime.get_pipeline(), error_code="invalid_currency")] == \
        [items["open-1"]]


@pytest.mark.parametrize("value, shown", [("-abc", "-abc"), ("--note=x", "--note=x"), ("-x y", "'-x y'")])
def test_the_dash_hint_names_the_value_as_typed(value: str, shown: str) -> None:
    """The refusal of a dash-led value says how to set it; its command sets the value typed,
    not the option click matched of it (a cluster's first letter, a long option's name before
    `=`): copied as shown, `-abc` stored "-a" (a review)."""
    from typer.testing import CliRunner

    from txmetrics_cli.main import app

    refused = CliRunner().invoke(app, ["failed", "set", "42", "event_type", value])
    assert refused.exit_code == 2 and "No such option" in refused.output, refused.output
    assert f"put -- before the arguments: txmetrics failed set -- ID FIELD {shown} " in refused.output, \
        refused.output


def test_failed_cli_says_why_a_selection_or_an_edit_missed(deliver: Callable[..., None], db: psycopg.Connection,
                                                          env: dict[str, str]) -> None:
    """An operator's typo looked like success (an audit): `failed set ID statuss approved` added
    a field the event never had and left status unfixed; `failed list --code` with a misspelt
    code printed an empty list, as for a clean queue; and `failed set ID amount -5` was taken
    for an option."""
    from typer.testing import CliRunner

    from txmetrics_cli.main import app

    deliver([{**BAD_CURRENCY, "event_id": "typo-1", "status": "aproved"}], partition_id="3")
    (item_id,) = db.execute("SELECT id FROM failed_items WHERE event_id = 'typo-1'").fetchone()
    before = db.execute("SELECT fixed_payload FROM failed_items WHERE id = %s", (item_id,)).fetchone()
    runner = CliRunner()
    typo = runner.invoke(app, ["failed", "set", str(item_id), "statuss", "approved"])
    assert typo.exit_code != 0 and "did you mean 'status'" in typo.output, typo.output
    assert db.execute("SELECT fixed_payload FROM failed_items WHERE id = %s", (item_id,)).fetchone() == before
    own = runner.invoke(app, ["failed", "set", str(item_id), "loyalty_tier", "gold"])   # a field of the producer's own
    assert own.exit_code == 0 and '"loyalty_tier":"gold"' in own.stdout, own.output
    negative = runner.invoke(app, ["failed", "set", str(item_id), "amount", "-5"])
    assert negative.exit_code == 0 and '"amount":-5' in negative.stdout, negative.output
    stored = db.execute("SELECT fixed_payload FROM failed_items WHERE id = %s", (item_id,)).fetchone()
    for option in ("--bogus", "--dry-run", "-h"):     # an option, misspelt or not, is never taken as the value (a review)
        refused = runner.invoke(app, ["failed", "set", str(item_id), "event_type", option])
        assert refused.exit_code == 2 and "No such option" in refused.output, refused.output
        assert f"put -- before the arguments: txmetrics failed set -- ID FIELD {option}" in refused.output, \
            refused.output
    assert db.execute("SELECT fixed_payload FROM failed_items WHERE id = %s", (item_id,)).fetchone() == stored
    dashed = runner.invoke(app, ["failed", "set", "--", str(item_id), "event_type", "-h"])    # as the hint says
    assert dashed.exit_code == 0 and '"event_type":"-h"' in dashed.stdout, dashed.output
    listed = runner.invoke(app, ["failed", "list", "--code", "invalid_curency"])
    assert listed.exit_code == 0 and "did you mean 'invalid_currency'" in listed.output, listed.output
    replayed = runner.invoke(app, ["failed", "replay", "--code", "nosuchcode"])
    assert replayed.exit_code == 0 and "the codes open items have: invalid_currency" in replayed.output, \
        replayed.output
    present = runner.invoke(app, ["failed", "list", "--code", "invalid_currency", "--format", "csv"])
    assert "no open items have" not in present.output and "typo-1" in present.output, present.output


def test_failed_set_takes_a_field_the_catalog_lists_in_extra_fields(
        deliver: Callable[..., None], db: psycopg.Connection, env: dict[str, str], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """extra_fields declares top-level fields that are near misses of contract fields and
    meant (`merchant_ids`): `failed set` takes them as the catalog does (a review)."""
    import yaml
    from typer.testing import CliRunner

    from txmetrics_cli.main import app

    catalog = yaml.safe_load(BUNDLED_CATALOG.read_text())
    catalog["extra_fields"] = ["merchant_ids"]
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump(catalog))
    deliver([{**BAD_CURRENCY, "event_id": "extra-1"}], partition_id="3")
    (item_id,) = db.execute("SELECT id FROM failed_items WHERE event_id = 'extra-1'").fetchone()
    runner = CliRunner()
    refused = runner.invoke(app, ["failed", "set", str(item_id), "merchant_ids", "m1"])
    assert refused.exit_code == 2 and "did you mean 'merchant_id'" in refused.output, refused.output
    monkeypatch.setenv("METRIC_CATALOG", str(path))
    taken = runner.invoke(app, ["failed", "set", str(item_id), "merchant_ids", "m1"])
    assert taken.exit_code == 0 and '"merchant_ids":"m1"' in taken.stdout, taken.output
