"""Profile merge semantics, identity resolution, event de-duplication and bulk jobs."""

from __future__ import annotations

from typing import Any

import pytest

from klaviyo_sandbox.faults import FaultBook, FaultError
from klaviyo_sandbox.merge import patch_properties
from klaviyo_sandbox.store import (
    Account,
    EventRecord,
    ImportErrorRow,
    ImportJob,
    ProfileConflict,
    ProfileNotFound,
    ProfileWrite,
    new_id,
)


def upsert(account: Account, clear_nulls: bool = True, patch: Any = None, **attributes: Any) -> str:
    profile, _ = account.upsert(ProfileWrite(attributes, patch=patch), clear_nulls=clear_nulls)
    return profile.id


def event(
    profile_id: str, metric: str = "M", unique_id: str | None = "u", time: str = "2026-01-01T00:00:00+00:00"
) -> EventRecord:
    return EventRecord(new_id(), profile_id, None, metric, unique_id, time, None, None, {}, False, time)


def test_null_clears_only_when_asked() -> None:
    account = Account("a")
    pid = upsert(
        account, email="a@x.io", first_name="A", location={"city": "Oslo", "zip": "1"}, properties={"k": 1}
    )
    upsert(account, clear_nulls=False, email="a@x.io", first_name=None, properties={"k": None})
    assert account.profiles[pid].fields["first_name"] == "A" and account.profiles[pid].properties == {"k": 1}
    upsert(account, email="a@x.io", first_name=None, location={"zip": None}, properties={"k": None})
    profile = account.profiles[pid]
    assert (
        "first_name" not in profile.fields
        and profile.location == {"city": "Oslo"}
        and profile.properties == {}
    )


def test_properties_null_clears_all_of_them() -> None:
    account = Account("a")
    pid = upsert(account, email="a@x.io", properties={"k": 1, "j": 2})
    upsert(account, email="a@x.io", properties=None)
    assert account.profiles[pid].properties == {}


@pytest.mark.parametrize(
    ("before", "patch", "after"),
    [
        ({}, {"append": {"s": "A"}}, {"s": ["A"]}),
        ({"s": "A"}, {"append": {"s": ["B"]}}, {"s": ["A", "B"]}),
        ({"s": ["A"]}, {"append": {"s": "A"}}, {"s": ["A", "A"]}),  # no silent de-duplication
        ({"s": ["A", "B", "A"]}, {"unappend": {"s": "A"}}, {"s": ["B"]}),
        ({"a": 1, "b": 2, "c": 3}, {"unset": ["a", "b"]}, {"c": 3}),
        ({"a": 1}, {"unset": "a"}, {}),
        ({"a": 1}, None, {"a": 1}),
    ],
)
def test_patch_properties(before: dict[str, Any], patch: Any, after: dict[str, Any]) -> None:
    assert patch_properties(before, patch) == after


def test_identity_by_email_case_insensitive_external_id_and_id() -> None:
    account = Account("a")
    pid = upsert(account, email="Ana@X.io")
    assert upsert(account, email="ana@x.io", external_id="c1") == pid
    assert upsert(account, external_id="c1", title="t") == pid
    assert account.upsert(ProfileWrite({}, profile_id=pid), clear_nulls=True)[0].id == pid
    with pytest.raises(ProfileNotFound):
        account.upsert(ProfileWrite({}, profile_id="missing"), clear_nulls=True)


def test_changing_an_identifier_reindexes() -> None:
    account = Account("a")
    pid = upsert(account, email="old@x.io", external_id="c1")
    upsert(account, external_id="c1", email="new@x.io")
    assert account.find("email", "old@x.io") is None
    found = account.find("email", "new@x.io")
    assert found is not None and found.id == pid


def test_identifiers_of_two_profiles_conflict() -> None:
    account = Account("a")
    upsert(account, email="a@x.io")
    other = upsert(account, email="b@x.io", external_id="c1")
    with pytest.raises(ProfileConflict) as raised:
        upsert(account, email="a@x.io", external_id="c1")
    assert raised.value.profile_id == other


def test_events_dedupe_by_profile_metric_and_unique_id_or_second() -> None:
    account = Account("a")
    pid = upsert(account, email="a@x.io")
    results = [
        account.add_event(event(pid)),
        account.add_event(event(pid)),
        account.add_event(event(pid, metric="N")),
        account.add_event(event(pid, unique_id=None)),
        account.add_event(event(pid, unique_id=None)),  # same second, no unique_id: Klaviyo keeps one
        account.add_event(event(pid, unique_id=None, time="2026-01-01T00:00:01+00:00")),
    ]
    assert results == [True, False, True, True, False, True]
    assert account.profiles[pid].last_event_date == "2026-01-01T00:00:01+00:00"


def test_bulk_job_applies_without_clearing_and_lists_errors_in_payload_order() -> None:
    account = Account("a")
    upsert(account, email="a@x.io", first_name="A")
    upsert(account, email="b@x.io", external_id="taken")
    rejected = ImportErrorRow("e", "invalid", "Invalid input.", "bad", "/data/attributes/profiles/data/2", {})
    pending = [
        (0, ProfileWrite({"email": "a@x.io", "first_name": None, "properties": {"n": 1}}), {}),
        (1, ProfileWrite({"email": "a@x.io", "external_id": "taken"}), {"conflict": True}),
        (3, ProfileWrite({"email": "c@x.io"}), {}),
    ]
    job = ImportJob("j", "now", 4, pending, [rejected], [])
    account.finish_job(job)
    assert (job.status, job.completed_count, job.failed_count) == ("complete", 2, 2)
    assert [row.pointer for row in job.errors] == [
        "/data/attributes/profiles/data/1",
        "/data/attributes/profiles/data/2",
    ]
    profile = account.find("email", "a@x.io")
    assert profile is not None and profile.fields["first_name"] == "A" and profile.properties == {"n": 1}


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def test_faults_spend_counts_expire_and_filter() -> None:
    clock = Clock()
    book = FaultBook(clock)
    book.add({"status": 503, "count": 2, "endpoint": "/api/events"})
    book.add({"status": 500, "seconds": 5})
    book.add({"status": 409, "email": "A@x.io"})
    assert book.wants_emails
    hits = [book.take("POST", "/api/events", ()) for _ in range(3)]
    assert [fault.status if fault else None for fault in hits] == [503, 503, 500]
    clock.now = 5.0
    assert book.take("POST", "/api/events", ()) is None
    conflict = book.take("POST", "/api/profile-import", ["a@x.io"])
    assert conflict is not None and conflict.status == 409
    assert book.clear() == 1


def test_one_fault_is_cleared_by_id_and_the_others_stay() -> None:
    book = FaultBook(Clock())
    outage = book.add({"status": 503, "seconds": 300})
    conflict = book.add({"status": 409, "email": "a@x.io"})
    assert book.clear("fault-unknown") == 0
    assert book.clear(outage.id) == 1
    assert [fault.id for fault in book.active()] == [conflict.id]


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"status": 302},
        {"status": 503, "count": 0},
        {"drop": True, "status": 503},
        {"delay": "1"},
        {"x": 1},
    ],
)
def test_fault_bodies_are_validated(body: dict[str, Any]) -> None:
    with pytest.raises(FaultError):
        FaultBook().add(body)
