"""Fixtures shared by every test directory."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pgcluster import find_bindir, postgres_cluster, require_postgres


@pytest.fixture(scope="session")
def postgres_dsn() -> Iterator[str]:
    """A throwaway PostgreSQL started for this test run (see pgcluster.py)."""
    if find_bindir() is None:
        if require_postgres():
            pytest.fail("CORREO_REQUIRE_POSTGRES=1 but no PostgreSQL server binaries found")
        pytest.skip("PostgreSQL server binaries not found (install Debian's postgresql)")
    with postgres_cluster() as dsn:
        yield dsn
