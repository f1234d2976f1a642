"""A share of the HTTP suite, unchanged, against PostgreSQL: `make_client` (tests/postgres/conftest.py)
puts the log, the read models and the data keys on the test server. The modules chosen exercise
every projection's folds and queries (translated from SQLite's dialect), secrets, and rebuilds.
Tests that inspect SQLite files themselves are left out."""

from __future__ import annotations

from tests.http.test_agent_instructions import *  # noqa: F403
from tests.http.test_asset_links import *  # noqa: F403
from tests.http.test_audit import *  # noqa: F403
from tests.http.test_chat import *  # noqa: F403
from tests.http.test_projects import *  # noqa: F403
from tests.http.test_rebuild_runs_chat_agent import *  # noqa: F403
from tests.http.test_secrets import *  # noqa: F403
from tests.http.test_style_guides import *  # noqa: F403
from tests.http.test_token_scope import *  # noqa: F403

# Reads keys.db, a SQLite file (the shared table is checked in test_shared_database.py). Tests that
# build their own SQLite client are deselected by conftest.py.
del test_only_ciphertext_enters_the_log  # noqa: F821
