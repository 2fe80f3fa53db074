"""The store contract suite (``test_contract.py``), unchanged, against PostgreSQL with
message bodies as files on a shared path (``[storage] blobs = "files"``).

``conftest.py``'s backend fixture already runs the suite on PostgreSQL with bodies in the
database (the default); every test of ``test_contract`` that uses the ``store`` fixture
is collected here again with the files variant.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import test_contract
from pg_backend import make_pg_store

from correo.store.base import Store

pytestmark = pytest.mark.postgres

for _name, _fn in vars(test_contract).items():
    if _name.startswith("test_") and "store" in inspect.signature(_fn).parameters:
        globals()[_name] = _fn


@pytest.fixture(params=["files"])
async def store(
    request: pytest.FixtureRequest, postgres_dsn: str, tmp_path: Path
) -> AsyncIterator[Store]:
    s = await make_pg_store(
        postgres_dsn, tmp_path, blobs=request.param, blob_dir=tmp_path / "blobs"
    )
    try:
        yield s
    finally:
        await s.close()
