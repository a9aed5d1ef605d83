"""Maintenance event tables: what a recipe's surgery logs, one row per event, saved beside the SAE.

A kind of surgery declares its table once (:func:`register_event_table`: name, file, columns with
their dtypes), its maintenance hook returns rows under that name (``MaintenanceResult.events``) and
its recipe lists the name in ``Recipe.events``. The loop then counts the table in every log line
(``n_<name>``), checkpoints it and writes it at export, without naming any kind of surgery.

Every SAE folder holds every registered table, empty where the recipe made no such event: a reader
compares the split count of an FC SAE with a baseline's 0 without checking which files exist."""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import pandas as pd

from fc_base.io import write_parquet_atomic
from fc_base.options import PluginRegistry


class EventTable(NamedTuple):
    name: str
    """The table's name: the key of its rows in ``MaintenanceResult.events``, ``n_<name>`` in the log."""
    file: str
    """Its file in the SAE folder (``fc_base.sae_folder`` names the files readers open)."""
    dtypes: dict[str, str]
    """Column -> pandas dtype, in column order; every row has exactly these keys."""
    description: str
    """One line: what one row records."""

    @property
    def columns(self) -> list[str]:
        return list(self.dtypes)

    def frame(self, rows: list[dict]) -> pd.DataFrame:
        """The table of ``rows``, with its columns and dtypes even when empty."""
        return pd.DataFrame(rows, columns=self.columns).astype(self.dtypes)


EVENT_TABLES = PluginRegistry("event table", "events", "trainers.training.registry")


def register_event_table(table: EventTable) -> EventTable:
    return EVENT_TABLES.add(table.name, table)


def event_tables() -> list[EventTable]:
    """Every registered table, in registration order (the order of the log's ``n_<name>`` fields)."""
    return EVENT_TABLES.items()


def no_events() -> dict[str, list[dict]]:
    """An empty row list per registered table."""
    return {table.name: [] for table in event_tables()}


def check_events(recipe: str, declared: tuple[str, ...], events: dict[str, list[dict]]) -> None:
    """A maintenance hook may return rows only for the tables its recipe declares."""
    stray = sorted(set(events) - set(declared))
    if stray:
        raise ValueError(f"recipe {recipe!r} logged {', '.join(stray)} events but declares "
                         f"{', '.join(declared) or 'none'} (Recipe.events)")


def write_event_tables(out_dir: Path, events: dict[str, list[dict]]) -> None:
    """Every registered table into ``out_dir`` (the rows given, or an empty table)."""
    for table in event_tables():
        write_parquet_atomic(Path(out_dir) / table.file, table.frame(events.get(table.name, [])))
