"""A task record's named transitions: each changes exactly the fields it names, None included."""

from __future__ import annotations

from typing import Any

from runapi_mcp.tasks import ImageRecord, TaskRecord

T0 = 1_767_225_600.0


def _record(**fields: Any) -> TaskRecord:
    base: dict[str, Any] = {
        "idempotency_key": "k", "model": "gpt-image-2", "service": "gpt_image_2", "action": "text_to_image",
        "route": "/api/v1/gpt_image_2/text_to_image", "created_at": T0, "updated_at": T0,
    }  # fmt: skip
    return TaskRecord(**{**base, **fields})


def _changed(before: TaskRecord, after: TaskRecord) -> set[str]:
    old, new = before.model_dump(), after.model_dump()
    return {key for key in new if new[key] != old[key]}


def _image(index: int, path: str | None) -> ImageRecord:
    return ImageRecord(id=f"i{index}", task_id="t", index=index, uri=f"runapi://images/i{index}", path=path, url="u")


def test_each_transition_changes_what_it_names_and_stamps_the_time() -> None:
    submitting = _record(error="RunAPI has not confirmed the create yet")
    pending = submitting.accepted("up-1", at=T0 + 1)
    assert _changed(submitting, pending) == {"upstream_id", "status", "error", "updated_at", "history"}
    assert (pending.status, pending.error, pending.updated_at) == ("pending", None, T0 + 1)
    running = pending.progressed("processing", 0.4, at=T0 + 2)
    assert _changed(pending, running) == {"status", "progress", "updated_at", "history"}
    costed = running.costed(7, at=T0 + 3)
    assert _changed(running, costed) == {"cost_cents", "updated_at"}
    done = costed.completed([_image(0, "/lib/0.png")], ["https://x/0.png"], None, at=T0 + 4)
    assert _changed(costed, done) == {
        "status", "progress", "images", "remote_urls", "completed_at", "updated_at", "history"
    }  # fmt: skip
    assert (done.progress, done.completed_at) == (1.0, T0 + 4)
    assert [(step.status, step.at) for step in done.history] == [
        ("pending", T0 + 1), ("processing", T0 + 2), ("completed", T0 + 4)
    ]  # fmt: skip


def test_a_none_clears_what_it_names() -> None:
    noted = _record(status="processing", progress=0.5).noted("polling failed 3 times in a row", at=T0 + 1)
    cleared = noted.noted(None, at=T0 + 2)
    assert cleared.error is None and _changed(noted, cleared) == {"error", "updated_at"}
    # Progress no longer known is said so (the old keyword update dropped every None but the error's).
    unknown = cleared.progressed("processing", None, at=T0 + 3)
    assert unknown.progress is None and _changed(cleared, unknown) == {"progress", "updated_at"}
    assert cleared.costed(None, at=T0 + 4).cost_cents is None


def test_a_cancelled_task_stays_cancelled_with_its_note() -> None:
    cancelled = _record(status="processing").cancelled("cancelled by the client", at=T0 + 1)
    assert (cancelled.status, cancelled.completed_at) == ("cancelled", T0 + 1)
    # What was in flight when it was cancelled lands: a cost and pictures count, the state and note stay.
    late = cancelled.costed(12, at=T0 + 2).completed([_image(0, "/lib/0.png")], ["https://x/0.png"], None, at=T0 + 3)
    assert (late.status, late.error, late.completed_at) == ("cancelled", "cancelled by the client", T0 + 1)
    assert late.cost_cents == 12 and late.images[0].path == "/lib/0.png"
    for moved in (late.failed("boom", at=T0 + 4), late.noted(None, at=T0 + 4), late.accepted("up-2", at=T0 + 4)):
        assert (moved.status, moved.error) == ("cancelled", "cancelled by the client")
    assert [step.status for step in late.history] == ["cancelled"]


def test_a_refetch_replaces_the_pictures_and_the_note_only() -> None:
    done = _record().completed([_image(0, None)], ["https://x/0.png"], "downloaded 0 of 1 images", at=T0 + 1)
    assert done.missing_outputs
    again = done.refetched([_image(0, "/lib/0.png")], None, at=T0 + 20)
    assert _changed(done, again) == {"images", "error", "updated_at"}
    assert not again.missing_outputs
