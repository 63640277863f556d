"""Events are named in one place, documented, and every line carries the schema version."""

import json

from conftest import REPO
from ragsweep.events import EVENTS_SCHEMA_VERSION, FIELDS, Event, markdown
from ragsweep.platform import get_platform_config
from ragsweep.runlog import RunLog
from ragsweep.store import Store


def test_every_event_is_documented_and_the_doc_is_current():
    assert set(FIELDS) == set(Event)
    assert (REPO / "docs" / "events.md").read_text(encoding="utf-8") == markdown(), (
        "regenerate: PYTHONPATH=src python -c 'from ragsweep.events import markdown; print(markdown(), end=\"\")' > docs/events.md"
    )


def test_each_line_has_the_schema_version_and_unknown_events_are_refused(tmp_path):
    import pytest

    store = Store(tmp_path / "db.sqlite")
    log = RunLog("r1", tmp_path, store, get_platform_config())
    log.event(Event.NOTE, "plan", message="hello")
    with pytest.raises(ValueError):
        log.event("made_up_event")
    log.close()
    [line] = (tmp_path / "events.jsonl").read_text().splitlines()
    record = json.loads(line)
    assert record["schema_version"] == EVENTS_SCHEMA_VERSION and record["event"] == "note" and record["message"] == "hello"
    assert store.events("r1") == [record]
