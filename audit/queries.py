"""The auditors' side: mismatch queries (through the ``mismatches`` view), reviews, and the
export of reviewed discrepancies as training data.

Queries go through the view that migration 0002 creates (the ``binaudit_auditor`` role can read
only views), so what the CLI shows is what an auditor's SQL client shows. A review records
when (UTC) and the true count: for a confirmed mismatch the auditor's count, for a dismissed
one the manifest's EXPECTED_QUANTITY. The database records who (migration 0006: a trigger names
the reviewer from the database session, so a client cannot write another name) and keeps every
review in ``discrepancy_reviews``. The export writes the trainer's auditors' CSV
(``id,image_path,expected_quantity,...``, read by ``trainer.data.read_labels_csv``) and
downloads each image next to it, so ``binaudit train prepare --labels OUT --source-dir DIR``
turns audited bins into the next model's data.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Select,
    and_,
    column,
    func,
    or_,
    select,
    table,
    update,
)

from core.settings import Settings
from core.tables import REVIEW_STATES, discrepancies, discrepancy_reviews
from inference.images import ImageFetcher
from schemas.events import MAX_EXPECTED_QUANTITY, parse_s3_uri
from schemas.records import EventError, VerdictStatus

log = logging.getLogger(__name__)

MISMATCH_COLUMNS = (
    "discrepancy_id", "event_id", "bin_id", "captured_at", "station_id", "robot_id",
    "expected_quantity", "predicted_quantity", "confidence", "p_expected", "discrepancy_score",
    "model_version", "status",
    "review_state", "reviewer", "reviewed_at", "reviewed_quantity", "note", "image_uri",
    "created_at",
)
# The view (created by migration 0002, scores added by 0003; not part of the tables' MetaData).
mismatches_view = table("mismatches", *(column(name) for name in MISMATCH_COLUMNS))
# Migration 0006's view over the append-only discrepancy_reviews (auditors read views only).
history_view = table("review_history", *(column(c.name) for c in discrepancy_reviews.c))
REVIEW_DECISIONS = ("confirmed", "dismissed")
MAX_PAGE_SIZE = 10_000


class AuditError(ValueError):
    """A query or review request that cannot be carried out (says why)."""


# ---- queries ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class MismatchFilter:
    """Every field narrows the result; None means "any". ``until`` is exclusive."""

    since: datetime | None = None
    until: datetime | None = None
    bin_id: str | None = None
    station_id: str | None = None
    status: str | None = None
    min_confidence: float | None = None
    max_confidence: float | None = None
    min_score: float | None = None
    model_version: str | None = None
    review_state: str | None = None

    def clauses(self) -> list[ColumnElement[bool]]:
        v = mismatches_view.c
        for name, allowed in (("status", tuple(VerdictStatus)), ("review_state", REVIEW_STATES)):
            value = getattr(self, name)
            if value is not None and value not in allowed:
                raise AuditError(f"{name} must be one of {', '.join(allowed)} (got {value!r})")
        out: list[ColumnElement[bool]] = []
        if self.since is not None:
            out.append(v.captured_at >= self.since)
        if self.until is not None:
            out.append(v.captured_at < self.until)
        if self.min_confidence is not None:
            out.append(v.confidence >= self.min_confidence)
        if self.max_confidence is not None:
            out.append(v.confidence <= self.max_confidence)
        if self.min_score is not None:
            out.append(v.discrepancy_score >= self.min_score)
        for attr, col in (("bin_id", v.bin_id), ("station_id", v.station_id),
                          ("status", v.status), ("model_version", v.model_version),
                          ("review_state", v.review_state)):
            value = getattr(self, attr)
            if value is not None:
                out.append(col == str(value))
        return out


MISMATCH_ORDERS = ("score", "id")


@dataclass(frozen=True)
class PageRequest:
    """Offset pages (``page`` from 1) or keyset (``after_id``: the rows after that one in the
    order). ``order``: ``score`` (highest discrepancy score first, unscored rows last, then
    id) or ``id`` (oldest first)."""

    limit: int = 50
    page: int = 1
    after_id: int | None = None
    order: str = "score"

    def __post_init__(self) -> None:
        if not 1 <= self.limit <= MAX_PAGE_SIZE:
            raise AuditError(f"limit must be within 1..{MAX_PAGE_SIZE} (got {self.limit})")
        if self.page < 1:
            raise AuditError(f"page must be >= 1 (got {self.page})")
        if self.after_id is not None and self.page != 1:
            raise AuditError("give --page or --after-id, not both")
        if self.order not in MISMATCH_ORDERS:
            raise AuditError(f"order must be one of {', '.join(MISMATCH_ORDERS)} "
                             f"(got {self.order!r})")


def mismatch_query(filters: MismatchFilter, page: PageRequest) -> Select[Any]:
    """The SELECT over the view for these filters and this page (pure)."""
    v = mismatches_view.c
    query = select(mismatches_view).where(*filters.clauses())
    if page.order == "id":
        query = query.order_by(v.discrepancy_id)
        if page.after_id is not None:
            query = query.where(v.discrepancy_id > page.after_id)
    else:
        # Unscored rows (written before migration 0003) sort last: scores lie in [0, 1].
        key = func.coalesce(v.discrepancy_score, -1.0)
        query = query.order_by(key.desc(), v.discrepancy_id)
        if page.after_id is not None:
            anchor = (select(func.coalesce(v.discrepancy_score, -1.0))
                      .where(v.discrepancy_id == page.after_id).scalar_subquery())
            query = query.where(or_(key < anchor,
                                    and_(key == anchor, v.discrepancy_id > page.after_id)))
    if page.after_id is None:
        query = query.offset((page.page - 1) * page.limit)
    return query.limit(page.limit)


def list_mismatches(*, conn: Connection, filters: MismatchFilter,
                    page: PageRequest) -> list[dict[str, Any]]:
    return [dict(row) for row in conn.execute(mismatch_query(filters, page)).mappings()]


# ---- review ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class ReviewDecision:
    state: str
    # Who the caller says it is: logged, but the recorded reviewer is named by the database.
    reviewer: str
    at: datetime  # aware UTC
    note: str | None = None
    count: int | None = None


def review_values(current: Mapping[str, Any], decision: ReviewDecision) -> dict[str, Any]:
    """The columns a review sets, or an AuditError naming what is missing (pure)."""
    if decision.state not in REVIEW_DECISIONS:
        raise AuditError(f"status must be one of {', '.join(REVIEW_DECISIONS)}")
    if decision.at.tzinfo is None:
        raise AuditError("review time must be timezone-aware")
    if not decision.reviewer.strip():
        raise AuditError("a review needs a reviewer")
    if decision.count is not None and not 0 <= decision.count <= MAX_EXPECTED_QUANTITY:
        # The column is an integer: a larger number would fail in Postgres, not here.
        raise AuditError(f"--count must be between 0 and {MAX_EXPECTED_QUANTITY} "
                         f"(got {decision.count})")
    if decision.note is not None and "\x00" in decision.note:
        raise AuditError("the note must not contain NUL characters")
    expected = int(current["expected_quantity"])
    if decision.state == "confirmed":
        if decision.count is None:
            raise AuditError("a confirmed mismatch needs --count (the true count, used for "
                             "training)")
        if decision.count == expected:
            raise AuditError(f"--count {decision.count} equals the expected quantity: that is "
                             "a dismissal, not a confirmed mismatch")
        true_count = decision.count
    else:
        if decision.count is not None and decision.count != expected:
            raise AuditError(f"a dismissed mismatch keeps the expected quantity {expected}; "
                             f"--count {decision.count} contradicts it (confirm instead)")
        true_count = expected
    return {"review_state": decision.state, "reviewer": decision.reviewer,
            "reviewed_at": decision.at, "note": decision.note, "reviewed_quantity": true_count}


def record_review(*, conn: Connection, discrepancy_id: int,
                  decision: ReviewDecision) -> tuple[dict[str, Any], dict[str, Any]]:
    """Apply a review in the caller's transaction; returns (before, after) of the row."""
    d = discrepancies.c
    current = conn.execute(select(discrepancies).where(d.id == discrepancy_id)
                           .with_for_update()).mappings().one_or_none()
    if current is None:
        raise AuditError(f"no discrepancy with id {discrepancy_id}")
    values = review_values(dict(current), decision)
    after = conn.execute(update(discrepancies).where(d.id == discrepancy_id).values(**values)
                         .returning(*discrepancies.c)).mappings().one()
    log.info("discrepancy %d (event %s, bin %s): %s by %s (as %s) -> count %s",
             discrepancy_id, current["event_id"], current["bin_id"], decision.state,
             after["reviewer"], decision.reviewer, values["reviewed_quantity"])
    return dict(current), dict(after)


def review_history(*, conn: Connection, discrepancy_id: int) -> list[dict[str, Any]]:
    """Every review of a discrepancy, oldest first (``review_history``, migration 0006)."""
    h = history_view.c
    query = select(history_view).where(h.discrepancy_id == discrepancy_id).order_by(h.id)
    return [dict(row) for row in conn.execute(query).mappings()]


# ---- export ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class TrainingRow:
    """One line of the auditors' CSV; the first three columns are what the trainer reads."""

    id: str
    image_path: str
    expected_quantity: int
    image_uri: str
    bin_id: str
    event_id: str
    discrepancy_id: int
    review_state: str
    predicted_quantity: int
    model_version: str
    reviewer: str
    reviewed_at: str


EXPORT_COLUMNS = tuple(f.name for f in fields(TrainingRow))


def image_id(image_uri: str) -> str:
    """The image's id: its key's file stem (ABID: ``bin-images/00523.jpg`` → ``00523``)."""
    _, key = parse_s3_uri(image_uri)
    return PurePosixPath(key).stem


def training_rows(reviewed: Sequence[Mapping[str, Any]], *, images_dir: str) -> list[TrainingRow]:
    """Reviewed mismatches → one row per image, the latest review winning (pure).

    The count is the reviewed true count (a dismissal keeps the expected quantity).
    """
    latest: dict[str, Mapping[str, Any]] = {}
    for row in reviewed:
        if row["review_state"] not in REVIEW_DECISIONS or row["image_uri"] is None:
            continue
        ident = image_id(row["image_uri"])
        if ident not in latest or (row["reviewed_at"], row["discrepancy_id"]) >= (
                latest[ident]["reviewed_at"], latest[ident]["discrepancy_id"]):
            latest[ident] = row
    out = []
    for ident, row in sorted(latest.items()):
        count = row["reviewed_quantity"]
        if count is None:  # reviewed before true counts were recorded: dismissals only
            if row["review_state"] != "dismissed":
                log.warning("discrepancy %s confirmed without a true count: not exported",
                            row["discrepancy_id"])
                continue
            count = row["expected_quantity"]
        suffix = PurePosixPath(parse_s3_uri(row["image_uri"])[1]).suffix or ".jpg"
        out.append(TrainingRow(
            id=ident, image_path=f"{images_dir}/{ident}{suffix}" if images_dir else "",
            expected_quantity=int(count), image_uri=row["image_uri"], bin_id=row["bin_id"],
            event_id=row["event_id"], discrepancy_id=int(row["discrepancy_id"]),
            review_state=row["review_state"], predicted_quantity=int(row["predicted_quantity"]),
            model_version=row["model_version"], reviewer=row["reviewer"] or "",
            reviewed_at=row["reviewed_at"].isoformat() if row["reviewed_at"] else ""))
    return out


def reviewed_mismatches(*, conn: Connection) -> list[dict[str, Any]]:
    v = mismatches_view.c
    query = (select(mismatches_view).where(v.review_state.in_(REVIEW_DECISIONS))
             .order_by(v.reviewed_at, v.discrepancy_id))
    return [dict(row) for row in conn.execute(query).mappings()]


def write_training_csv(rows: Sequence[TrainingRow], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=EXPORT_COLUMNS)
        writer.writeheader()
        writer.writerows(asdict(r) for r in rows)
    return path


class ExportTooLarge(AuditError):
    """The export would pass one of its limits (rows, images or bytes)."""


@dataclass(frozen=True)
class ExportLimits:
    """Bounds of one export (None: unbounded, as for the CLI run by an operator)."""

    max_rows: int | None = None
    max_images: int | None = None
    max_bytes: int | None = None

    def check_rows(self, rows: int, *, images: bool) -> None:
        if self.max_rows is not None and rows > self.max_rows:
            raise ExportTooLarge(f"{rows} reviewed rows: more than the export limit of "
                                 f"{self.max_rows} (BINAUDIT_CONSOLE__EXPORT_MAX_ROWS)")
        if images and self.max_images is not None and rows > self.max_images:
            raise ExportTooLarge(f"{rows} images: more than the export limit of "
                                 f"{self.max_images} (BINAUDIT_CONSOLE__EXPORT_MAX_IMAGES); "
                                 "export the CSV without images instead")


def download_images(settings: Settings, rows: Sequence[TrainingRow], base: Path,
                    max_bytes: int | None = None) -> tuple[list[TrainingRow], dict[str, str]]:
    """Fetch each row's image to ``base / row.image_path`` (the worker's fetcher and limits).

    Returns the rows whose image is on disk and, per failed id, why not. ExportTooLarge once
    the images pass ``max_bytes`` (the fetches still pending are cancelled).
    """
    kept: list[TrainingRow] = []
    failed: dict[str, str] = {}
    total = 0
    with ImageFetcher.from_settings(settings) as fetcher:
        futures = [(row, fetcher.fetch(row.image_uri)) for row in rows]
        for row, future in futures:
            try:
                data = future.result(timeout=300)
            except EventError as exc:
                failed[row.id] = f"{exc.kind}: {exc}"
                continue
            total += len(data)
            if max_bytes is not None and total > max_bytes:
                raise ExportTooLarge(f"the images pass the export limit of {max_bytes} bytes "
                                     "(BINAUDIT_CONSOLE__EXPORT_MAX_MB)")
            target = base / row.image_path
            target.parent.mkdir(parents=True, exist_ok=True)
            if not (target.is_file() and target.stat().st_size == len(data)):
                target.write_bytes(data)
            kept.append(row)
    return kept, failed


@dataclass(frozen=True)
class ExportReport:
    path: Path
    rows: int
    images_dir: Path | None
    failed: dict[str, str]


def export_reviewed(settings: Settings, *, conn: Connection, out: Path,
                    images_dir: Path | None = None, download: bool = True,
                    limits: ExportLimits = ExportLimits()) -> ExportReport:
    """Reviewed discrepancies → the auditors' CSV at ``out`` (+ images under ``images_dir``,
    default ``<out folder>/images``; ``image_path`` is relative to the CSV's folder, the
    ``--source-dir`` to give ``binaudit train prepare``). Without download, ``image_path`` is
    empty and the trainer looks the id up in its source folder's ABID layout. ExportTooLarge
    (before anything is downloaded where it can be known) when ``limits`` are passed."""
    base = out.resolve().parent
    images = (images_dir or base / "images").resolve() if download else None
    relative = Path(os.path.relpath(images, base)).as_posix() if images is not None else ""
    rows = training_rows(reviewed_mismatches(conn=conn), images_dir=relative)
    limits.check_rows(len(rows), images=download)
    failed: dict[str, str] = {}
    if download and rows:
        rows, failed = download_images(settings, rows, base, limits.max_bytes)
        for ident, why in failed.items():
            log.warning("image %s not exported: %s", ident, why)
    write_training_csv(rows, out)
    return ExportReport(out, len(rows), images, failed)
