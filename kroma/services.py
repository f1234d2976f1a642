"""The running application's parts, opened and closed together (server, CLI and tests)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from kroma.agents.dispatcher import Dispatcher
from kroma.auth import TokenUsage
from kroma.clock import Clock
from kroma.config import Settings
from kroma.crypto import pepper
from kroma.domain.handling import Commands
from kroma.events.factory import create_store
from kroma.projections.catalog import all_projections
from kroma.projections.reader import ReadModels
from kroma.projections.runner import ProjectionRunner
from kroma.vault import Vault

# A PostgreSQL schema name for the read models or data keys, with room for a rebuild's `_old` (63 max).
_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,54}")


@dataclass
class Services:
    settings: Settings
    clock: Clock = field(default_factory=Clock)

    def __post_init__(self) -> None:
        self.store = create_store(self.settings, self.clock)  # SQLite, or PostgreSQL by event_store_url
        self.runner: ProjectionRunner
        self.reader: ReadModels
        self.token_usage: TokenUsage  # best-effort last_used_at
        self.vault: Vault  # master key and data keys, loaded on first use
        if self.settings.on_postgres:
            self._on_postgres()
        else:
            self.runner = ProjectionRunner(self.store, self.settings.readmodels_db, all_projections())
            self.reader = ReadModels(self.settings.readmodels_db)
            self.token_usage = TokenUsage(self.settings.readmodels_db)
            self.vault = Vault(self.settings.data_path)
        self.commands = Commands(self.store, self.clock)
        self.stopping = False  # set when the server starts shutting down: live streams end
        from kroma.engine.runner import RunEngine  # the engine imports the services' parts

        self.engine = RunEngine(self)
        self.dispatcher = Dispatcher(self)  # agent instructions (pipeline spec §7)

    def _on_postgres(self) -> None:
        """The log is on PostgreSQL: read models and data keys go there too, each in a schema of
        its own (kroma.projections.postgres, kroma.crypto.pg_keystore)."""
        from kroma.crypto import KEYS_DB_NAME
        from kroma.crypto.pg_keystore import PostgresKeyStore
        from kroma.projections.postgres import PostgresProjectionRunner, PostgresReadModels
        from kroma.projections.postgres_usage import PostgresTokenUsage

        url, schema = self.settings.event_store_url.strip(), self.settings.readmodels_pg_schema
        keys = self.settings.keys_pg_schema
        for setting, name in (("readmodels_schema", schema), ("keys_schema", keys)):
            if not _SCHEMA_NAME.fullmatch(name):
                raise ValueError(f"invalid {setting} {name!r}: use [a-z_][a-z0-9_]*, at most 55 chars")
        runner = PostgresProjectionRunner(self.store, url, schema, all_projections())
        reader = PostgresReadModels(url, schema, self.settings.readmodels_pool_size)
        reader.follow(runner)  # its commits and progress empty the reader's cache before settle returns
        self.runner, self.reader = runner, reader
        self.token_usage = PostgresTokenUsage(url, schema)
        legacy = self.settings.data_path / KEYS_DB_NAME  # keys kept here before they moved with the log
        self.vault = Vault(
            self.settings.data_path, key_store=lambda keyring: PostgresKeyStore(url, keys, keyring, legacy)
        )

    async def open(self, follow: bool = True, dispatch: bool | None = None, engine: bool | None = None) -> None:
        """Open the store and read models; with `follow`, catch up and keep projecting (and run the
        run engine and the agent dispatcher as the settings say, unless `engine` / `dispatch` is
        False: CLI commands on a server's folder must not work its runs)."""
        self.settings.ensure_data_dir()
        if self.settings.on_postgres:  # shared by every process on the database
            from kroma.crypto.pg_keystore import load_or_create_pepper

            url = self.settings.event_store_url.strip()
            keys = self.settings.keys_pg_schema
            self.fingerprint_key = await load_or_create_pepper(url, keys, self.settings.data_path)
        else:
            self.fingerprint_key = pepper.load_or_create(self.settings.data_path)
        await self.store.open()
        try:
            await self.runner.open()
            await self.reader.open()
            await self.token_usage.open()
            if follow:
                await self.runner.start()
                if self.settings.run_engine if engine is None else engine:
                    self.engine.start()
                if self.settings.agent_dispatch if dispatch is None else dispatch:
                    self.dispatcher.start()
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        await self.dispatcher.close()
        await self.engine.close()
        await self.runner.close()
        await self.token_usage.close()
        await self.vault.close()
        await self.reader.close()
        await self.store.close()

    async def settle(self, position: int) -> None:
        """Wait until the read models show everything up to `position` (read-your-writes)."""
        await self.runner.wait_for(position)
