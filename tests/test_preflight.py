"""One preflight per create, and refusals typed by their reason (not their wording)."""

from __future__ import annotations

import dataclasses

import pytest

from exporter import schemas, services
from exporter.config import Settings
from exporter.errors import InvalidSelection, LimitExceeded, NotEnoughSpace
from exporter.records import exports
from exporter.registry import query
from exporter.schemas import ExportRequest, RefusalReason

ME = "researcher@demo.example"


def request(**kw: object) -> ExportRequest:
    sel = schemas.parse_selection(
        folders=["/"],
        modalities=kw.pop("modalities", ["cbct", "ios"]),  # type: ignore[arg-type]
    )
    return ExportRequest(selection=sel, **kw)  # type: ignore[arg-type]


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the estimates computed (the real function runs: a spy, not a mock)."""
    calls: list[int] = []
    real = query.estimate

    def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(exports, "estimate", spy)
    return calls


def test_a_click_computes_the_estimate_once(portal: Settings, counted: list[int]) -> None:
    base = services.estimate(portal, ME, "demo", request().selection)  # the page's modality list
    wanted = request(name="once")
    check = services.preflight_export(portal, ME, "demo", wanted, known=base)
    assert check.refusal is None and check.estimate == base
    view = services.create_export(portal, ME, "demo", wanted, check)
    assert view.file_count == base.file_count and view.estimated_bytes == base.total_bytes
    assert len(counted) == 0, "preflight and create reused the page's estimate"


def test_a_preflight_of_another_request_is_not_reused(portal: Settings, counted: list[int]) -> None:
    check = services.preflight_export(portal, ME, "demo", request(modalities=["ios"]))
    assert len(counted) == 1
    view = services.create_export(portal, ME, "demo", request(name="other"), check)
    assert len(counted) == 2, "the preflight was for another request: estimated again"
    assert view.estimated_bytes > check.estimate.total_bytes


def test_the_quota_is_checked_again_whatever_the_preflight_said(
    portal: Settings, portal_env
) -> None:  # type: ignore[no-untyped-def]
    check = services.preflight_export(portal, ME, "demo", request(name="first"))
    assert check.refusal is None
    tight = dataclasses.replace(portal, user_quota_bytes=check.estimate.total_bytes)
    services.create_export(tight, ME, "demo", request(name="first"), check)
    second = request(name="second")
    stale = services.preflight_export(portal, ME, "demo", second)  # before the quota shrank
    assert stale.refusal is None
    with pytest.raises(LimitExceeded, match="quota"):
        services.create_export(tight, ME, "demo", second, stale)


@pytest.mark.parametrize(
    ("change", "reason", "error"),
    [
        ({"max_export_bytes": 1}, RefusalReason.SIZE_LIMIT, LimitExceeded),
        ({"user_quota_bytes": 1}, RefusalReason.QUOTA, LimitExceeded),
        ({"disk_reserve_bytes": 10**18}, RefusalReason.DISK, NotEnoughSpace),
    ],
)
def test_each_refusal_has_its_reason_and_error(
    portal: Settings, change: dict[str, int], reason: RefusalReason, error: type[Exception]
) -> None:
    settings = dataclasses.replace(portal, **change)
    check = services.preflight_export(settings, ME, "demo", request())
    assert check.refusal is not None and check.refusal.reason is reason
    with pytest.raises(error, match=check.refusal.message):
        services.create_export(settings, ME, "demo", request(), check)


def test_an_empty_selection_is_refused_as_invalid(portal: Settings) -> None:
    empty = request(modalities=[])
    check = services.preflight_export(portal, ME, "demo", empty)
    assert check.refusal is not None and check.refusal.reason is RefusalReason.NO_MODALITY
    with pytest.raises(InvalidSelection, match="Choose at least one modality"):
        services.create_export(portal, ME, "demo", empty)


def test_a_preflight_is_reused_only_by_its_user_for_its_selection(
    portal: Settings, counted: list[int]
) -> None:
    """An estimate stands only for the selection it was made of: one of a smaller selection,
    another user's preflight, or one too old is not reused (found by a review)."""
    small = services.estimate(portal, ME, "demo", request(modalities=["ios"]).selection)
    tight = dataclasses.replace(portal, max_export_bytes=small.total_bytes)
    big = request(name="big")  # cbct and ios: over the limit
    check = services.preflight_export(tight, ME, "demo", big, known=small)
    assert check.estimate != small and check.refusal is not None  # estimated again
    assert check.refusal.reason is RefusalReason.SIZE_LIMIT
    with pytest.raises(LimitExceeded):
        services.create_export(tight, ME, "demo", big, check)
    mine = services.preflight_export(portal, ME, "demo", request(name="mine"))
    counted.clear()
    other = "manager@demo.example"
    services.create_export(portal, other, "demo", request(name="mine"), mine)
    assert len(counted) == 1, "another user's preflight was not reused"
    old = dataclasses.replace(
        mine, estimate=dataclasses.replace(mine.estimate, made_at=mine.estimate.made_at - 60)
    )
    counted.clear()
    services.create_export(portal, ME, "demo", request(name="mine"), old)
    assert len(counted) == 1, "a minute-old estimate was not reused"
