"""The Amazon Bin Image Dataset (ABID) metadata format, as found in ``metadata/<id>.json``.

Parsing is tolerant where the real data varies (``normalizedName`` and dimensions are missing
on some records, some files carry an ``image_fname`` key) and keeps every unknown key, so a
manifest can be re-serialised without loss. ``EXPECTED_QUANTITY`` is recorded inventory; the
sum of the per-SKU quantities is computed next to it and never silently substituted for it.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt, computed_field, model_validator

# Derived values we add on output; dropped on input so a dump of ours parses back unchanged.
_COMPUTED_KEYS = ("sku_quantity_sum", "quantity_consistent")


class Measurement(BaseModel):
    """One physical dimension or weight of a SKU, e.g. ``{"unit": "IN", "value": 2.8}``."""

    model_config = ConfigDict(frozen=True, extra="allow")

    unit: str
    value: float


class SkuRecord(BaseModel):
    """One entry of ``BIN_FCSKU_DATA``: a product (ASIN) and how many of it the bin holds."""

    model_config = ConfigDict(frozen=True, extra="allow")

    asin: str
    name: str | None = None
    normalizedName: str | None = None  # noqa: N815 - ABID's own key
    quantity: StrictInt = Field(ge=0)
    height: Measurement | None = None
    length: Measurement | None = None
    width: Measurement | None = None
    weight: Measurement | None = None


class AbidMetadata(BaseModel):
    """The metadata of one bin image (``metadata/<id>.json``)."""

    model_config = ConfigDict(frozen=True, extra="allow")

    BIN_FCSKU_DATA: dict[str, SkuRecord] = Field(default_factory=dict)  # noqa: N815
    EXPECTED_QUANTITY: StrictInt = Field(ge=0)  # noqa: N815

    @model_validator(mode="before")
    @classmethod
    def _drop_computed(cls, data: Any) -> Any:
        if isinstance(data, dict) and any(k in data for k in _COMPUTED_KEYS):
            return {k: v for k, v in data.items() if k not in _COMPUTED_KEYS}
        return data

    @computed_field  # type: ignore[prop-decorator]
    @property
    def sku_quantity_sum(self) -> int:
        """Sum of the per-SKU quantities (may differ from EXPECTED_QUANTITY)."""
        return sum(sku.quantity for sku in self.BIN_FCSKU_DATA.values())

    @computed_field  # type: ignore[prop-decorator]
    @property
    def quantity_consistent(self) -> bool:
        """Whether the per-SKU quantities add up to EXPECTED_QUANTITY."""
        return self.sku_quantity_sum == self.EXPECTED_QUANTITY

    @classmethod
    def from_json_bytes(cls, raw: bytes | str) -> AbidMetadata:
        """Parse one metadata file's contents (raises pydantic.ValidationError)."""
        return cls.model_validate_json(raw)

    def to_json_bytes(self) -> bytes:
        """Serialise in ABID's own shape (without the computed fields)."""
        return self.model_dump_json(exclude_computed_fields=True).encode()
