"""Wrong manifests on purpose: ``binaudit publish --wrong-manifest-rate R`` changes
EXPECTED_QUANTITY (the event's and its manifest's, which must agree) of a seeded share of the
events and writes the truth to a sidecar file (``core.truth``), never into the event.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from core.truth import WRONG_MANIFEST_KINDS, TruthEntry, TruthWriter, perturbed_count
from schemas.events import BinEvent


@dataclass(frozen=True)
class WrongManifests:
    """Which share of events gets a wrong manifest, of which kinds, and where the truth goes."""

    rate: float = 0.0
    kinds: tuple[str, ...] = WRONG_MANIFEST_KINDS
    truth_path: Path | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError(f"wrong-manifest rate must be within [0, 1] (got {self.rate})")
        unknown = sorted(set(self.kinds) - set(WRONG_MANIFEST_KINDS))
        if unknown or not self.kinds:
            raise ValueError(f"unknown wrong-manifest kind(s) {unknown or self.kinds}; choose "
                             f"from {', '.join(WRONG_MANIFEST_KINDS)}")


class ManifestPerturber:
    """Seeded: the same (seed, events) always gives the same wrong manifests."""

    def __init__(self, spec: WrongManifests, seed: int, pool: Sequence[int]) -> None:
        self.spec = spec
        self._pool = list(pool)
        self._rng = random.Random(f"{seed}:wrong-manifests")
        self.perturbed: dict[str, int] = {}  # kind -> events published with it

    def apply(self, event: BinEvent) -> tuple[BinEvent, TruthEntry]:
        """The event as published (maybe with a wrong count) and its truth row."""
        true = event.expected_quantity
        kind, manifest = self._draw(true)
        entry = TruthEntry(event.event_id, event.bin_id, true, manifest, kind)
        if kind is None:
            return event, entry
        self.perturbed[kind] = self.perturbed.get(kind, 0) + 1
        update: dict[str, object] = {"expected_quantity": manifest}
        if event.manifest is not None:
            update["manifest"] = event.manifest.model_copy(
                update={"EXPECTED_QUANTITY": manifest})
        return event.model_copy(update=update), entry

    def _draw(self, true: int) -> tuple[str | None, int]:
        # One draw per event whatever the outcome, so the choice for event i does not depend
        # on which kinds earlier events could take.
        hit = self._rng.random() < self.spec.rate
        kinds = list(self.spec.kinds)
        self._rng.shuffle(kinds)
        if hit:
            for kind in kinds:
                manifest = perturbed_count(true, kind, self._rng, self._pool)
                if manifest is not None:
                    return kind, manifest
        return None, true


@contextmanager
def truth_file(path: Path | None) -> Iterator[TruthWriter | None]:
    """A TruthWriter on ``path`` (created with its folder), or None without a path."""
    if path is None:
        yield None
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        yield TruthWriter(fh)


def with_wrong_manifests(events: Iterator[BinEvent], perturber: ManifestPerturber,
                         truth: TruthWriter | None) -> Iterator[BinEvent]:
    """Each event, perturbed or not, its truth row written before it is yielded."""
    for event in events:
        published, entry = perturber.apply(event)
        if truth is not None:
            truth.write(entry)
        yield published
