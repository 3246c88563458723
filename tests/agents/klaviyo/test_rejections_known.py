"""What delivery remembers as refused: by profile state and by event, bounded, forgettable."""

from __future__ import annotations

from agents.klaviyo.rejections import Known, too_large


def test_a_profile_state_is_refused_once_and_a_newer_state_is_a_new_request() -> None:
    known = Known()
    assert known.refuse_profile("default/a@shop.example", 3) is True
    assert known.refuse_profile("default/a@shop.example", 3) is False  # its dead letter exists
    assert known.profile_refused("default/a@shop.example", 3)
    assert not known.profile_refused("default/a@shop.example", 4)
    assert not known.profile_refused("default/b@shop.example", 3)


def test_forgetting_lets_a_redriven_state_or_event_be_tried_again() -> None:
    known = Known()
    known.refuse_profile("default/a@shop.example", 3)
    known.refuse_event(("a@shop.example", "Refund Issued", "e1"))
    known.forget_profile("default/a@shop.example", 3)
    known.forget_event(("a@shop.example", "Refund Issued", "e1"))
    assert not known.profile_refused("default/a@shop.example", 3)
    assert not known.event_refused(("a@shop.example", "Refund Issued", "e1"))
    known.forget_event(("never", "seen", "x"))  # forgetting what is unknown is harmless


def test_memory_is_bounded_and_forgets_the_oldest_first() -> None:
    known = Known(capacity=2)
    for version in (1, 2, 3):
        known.refuse_profile("default/a@shop.example", version)
    assert not known.profile_refused("default/a@shop.example", 1)
    assert all(known.profile_refused("default/a@shop.example", version) for version in (2, 3))


def test_a_refusal_made_before_sending_reads_like_klaviyos_413() -> None:
    refusal = too_large("profile of 120,000 bytes exceeds Klaviyo's 100 KB per profile")
    assert refusal.status == 413
    assert refusal.detail.endswith("(refused before sending)")
    assert refusal.errors == [{"status": 413, "code": "too_large", "detail": refusal.detail}]
