"""Fixtures of the audit room's tests: a seeded console stack."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from tests.console_fixtures import Seeded, seed_console


@pytest.fixture
def console_seed(settings_factory: Callable[..., Any], clean_db: Engine, s3_client: Any,
                 bucket_factory: Callable[..., str], sample_dir: Path) -> Seeded:
    bucket = bucket_factory("console")
    settings = settings_factory(s3={"bucket": bucket, "allowed_buckets": (bucket,)})
    return seed_console(settings, clean_db, s3_client, sample_dir, bucket)
