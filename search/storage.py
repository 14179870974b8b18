"""Where a study lives: an embedded sqlite file per study (the default) or a database server, opened
with faults named and a lost server retried.

- A sqlite file is checked before Optuna touches it: a file that is not sqlite, a damaged one, or
  the database of another application (Optuna would quietly add its tables to it) is refused with
  a ``StorageError`` that names the file.
- A database server that goes away while workers run (a PostgreSQL restart, a dropped connection)
  stalls each storage call, which retries for ``search.storage_retry`` seconds with a message, then
  gives up with a ``StorageError``; until then no worker dies of it. Stale pooled connections are
  dropped (``pool_pre_ping``) once the server is back. A write whose acknowledgement was lost is
  retried too, so in that rare case a trial can be recorded twice.

>>> url_of(SearchConfig(), "mine")  # the default: the study's own sqlite file
'sqlite:///outputs/search/mine.db'
>>> shown("postgresql+psycopg2://user:pw@host/db")  # a server, as messages and logs name it
'postgresql+psycopg2://user:***@host/db'
>>> storage = make_storage(SearchConfig(storage=f"sqlite:///{tmp_path}/studies.db"), "mine")
>>> optuna.create_study(study_name="mine", storage=storage).study_name
'mine'
>>> notes = tmp_path / "notes.db"
>>> _ = notes.write_text("my notes")
>>> make_storage(SearchConfig(storage=f"sqlite:///{notes}"), "mine")  # doctest: +ELLIPSIS
Traceback (most recent call last):
  ...
search.errors.StorageError: .../notes.db is not a sqlite database (it starts with b'my notes'): it cannot ...
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import logging
import pathlib
import sqlite3
import time
import warnings

import optuna
import sqlalchemy
from optuna.exceptions import StorageInternalError
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from search.config import SearchConfig
from search.errors import StorageError

__all__ = ["DEFAULT_STORAGE_DIR", "ResilientRDBStorage", "check_sqlite_file", "fail_stale", "make_storage",
           "shown", "url_of"]

DEFAULT_STORAGE_DIR = pathlib.Path("outputs/search")
SCHEMA_ATTEMPTS = 5  # tries to open a storage whose tables another worker is creating
OPTUNA_TABLES = {"studies", "version_info"}  # present in every Optuna RDB schema
SQLITE_MAGIC = b"SQLite format 3\x00"

log = logging.getLogger("patternc.search")


def shown(url: str) -> str:
    """The URL with its password masked, for messages and logs."""
    try:
        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except sqlalchemy.exc.ArgumentError:
        return url


def url_of(settings: SearchConfig, study: str) -> str:
    """``search.storage``, or the study's own sqlite file under ``outputs/search/``."""
    return settings.storage or f"sqlite:///{DEFAULT_STORAGE_DIR / study}.db"


def check_sqlite_file(path: pathlib.Path) -> None:
    """Refuse a file that is not sqlite, is damaged, or holds another application's tables."""
    if not path.exists() or path.stat().st_size == 0:
        return  # a new study
    if path.is_dir():
        raise StorageError(f"{path} is a directory, not a study's sqlite file")
    with open(path, "rb") as f:
        head = f.read(len(SQLITE_MAGIC))
    if head != SQLITE_MAGIC:
        raise StorageError(f"{path} is not a sqlite database (it starts with {head[:8]!r}): it cannot hold "
                           f"a study; move it away or choose another search.study or search.storage")
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)) as db:
            (verdict,) = db.execute("PRAGMA quick_check").fetchone()
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.OperationalError:
        return  # busy past the timeout (another worker writes it) or unreadable: Optuna's open says which
    except sqlite3.DatabaseError as error:
        verdict, tables = str(error), set()
    if verdict != "ok":
        raise StorageError(f"{path} is a damaged sqlite database ({verdict}): restore a copy, or move it "
                           f"away to start the study anew")
    if tables and not tables >= OPTUNA_TABLES:
        raise StorageError(f"{path} is the sqlite database of another application (tables: "
                           f"{', '.join(sorted(tables)[:6])}), not an Optuna study: Optuna would add its "
                           f"tables to it; choose another search.study or search.storage")


def _lost_connection(error: BaseException | None) -> bool:
    """A connection that failed (server down, restarted, dropped; sqlite busy), as opposed to bad data."""
    return isinstance(error, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError)) or bool(
        getattr(error, "connection_invalidated", False))


class ResilientRDBStorage(RDBStorage):
    """Optuna's RDB storage whose calls outlive a lost database for ``retry_seconds``.

    Every call Optuna's cached storage makes is wrapped (``_retrying`` below); a failure that is not
    a lost connection (a damaged sqlite file, say) becomes a ``StorageError`` naming the storage.
    """

    def __init__(self, url: str, retry_seconds: float = 60, **kwargs):
        self.label, self.retry_seconds = f"search.storage={shown(url)}", retry_seconds
        super().__init__(url, **kwargs)

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        """Optuna's stale trials (heartbeat older than the grace period), and also RUNNING trials that
        never recorded a heartbeat and started longer ago than that: a worker killed between taking
        a trial and its heartbeat thread's first beat, which Optuna would leave RUNNING for ever."""
        from optuna.storages._rdb import models  # Optuna 5's schema (pinned <6): trials, heartbeats

        stale = super()._get_stale_trial_ids(study_id)
        # stored as naive UTC (Optuna 5's _datetime_start_utc column)
        cutoff = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None) - datetime.timedelta(
            seconds=self.grace_period)
        session = self.scoped_session()
        try:
            silent = (session.query(models.TrialModel.trial_id)
                      .outerjoin(models.TrialHeartbeatModel)
                      .filter(models.TrialModel.study_id == study_id,
                              models.TrialModel.state == TrialState.RUNNING,
                              models.TrialHeartbeatModel.trial_id.is_(None),
                              models.TrialModel._datetime_start_utc < cutoff).all())
        finally:
            session.close()
        return stale + [trial_id for (trial_id,) in silent if trial_id not in stale]


def _retrying(method):
    @functools.wraps(method)
    def call(self: ResilientRDBStorage, *args, **kwargs):
        started = None
        while True:
            try:
                result = method(self, *args, **kwargs)
                if started is not None:
                    log.warning("%s: the database answers again after %.1f s", self.label,
                                time.monotonic() - started)
                return result
            except (StorageInternalError, sqlalchemy.exc.DBAPIError) as error:
                cause = error.__cause__ if isinstance(error, StorageInternalError) else error
                if not _lost_connection(cause):
                    if isinstance(error, StorageInternalError):
                        raise StorageError(f"{self.label}: {type(cause).__name__}: {cause}") from None
                    raise
                now = time.monotonic()
                if started is None:
                    started = now
                    log.warning("%s: lost the database (%s); retrying for up to %.0f s "
                                "(search.storage_retry)", self.label, str(cause).strip().splitlines()[0],
                                self.retry_seconds)
                if now - started >= self.retry_seconds:
                    raise StorageError(
                        f"{self.label}: the database did not answer for {now - started:.0f} s "
                        f"(search.storage_retry); last error: {str(cause).strip().splitlines()[0]}. This "
                        f"worker stops; a trial it was running is failed and retried by the heartbeat "
                        f"check of the next worker") from None
                time.sleep(min(2.0, max(0.1, self.retry_seconds / 20)))

    return call


for _name in ("create_new_study", "delete_study", "get_all_studies", "get_study_directions",
              "get_study_id_from_name", "get_study_name_from_id", "get_study_system_attrs",
              "get_study_user_attrs", "set_study_system_attr", "set_study_user_attr", "_create_new_trial",
              "_get_best_trial_id", "_get_stale_trial_ids", "_get_trials", "_set_trial_param", "get_trial",
              "get_trial_id_from_study_id_trial_number", "record_heartbeat", "set_trial_intermediate_value",
              "set_trial_state_values", "set_trial_system_attr", "set_trial_user_attr"):
    setattr(ResilientRDBStorage, _name, _retrying(getattr(ResilientRDBStorage, _name)))


def fail_stale(study: optuna.Study) -> None:
    """Fail the study's stale trials (``ResilientRDBStorage._get_stale_trial_ids``) and enqueue their
    retries: Optuna's ``fail_stale_trials``, whose "experimental" warning we do not need."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def make_storage(settings: SearchConfig, study: str) -> ResilientRDBStorage:
    """The storage of study ``study``: ``search.storage`` (any SQLAlchemy URL Optuna takes, e.g.
    ``postgresql+psycopg2://user@host/db``) or its own sqlite file under ``outputs/search/``."""
    url = url_of(settings, study)
    engine_kwargs = {}
    if url.startswith("sqlite:///"):
        path = pathlib.Path(url.removeprefix("sqlite:///"))
        path.parent.mkdir(parents=True, exist_ok=True)
        check_sqlite_file(path)
    elif not url.startswith("sqlite"):
        engine_kwargs["pool_pre_ping"] = True  # a pooled connection that a server restart closed is replaced
    for attempt in range(SCHEMA_ATTEMPTS):
        try:
            with warnings.catch_warnings():  # heartbeats are "experimental" (Optuna 2.8); we rely on them
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                retry = RetryHeartbeatStaleTrialCallback(max_retry=settings.retries)
                return ResilientRDBStorage(url, retry_seconds=settings.storage_retry,
                                           engine_kwargs=engine_kwargs, heartbeat_interval=settings.heartbeat,
                                           grace_period=2 * settings.heartbeat,
                                           heartbeat_stale_trial_callback=retry)
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
            # Workers started together on an empty database race to create Optuna's tables; PostgreSQL
            # fails the loser's CREATE TYPE/TABLE (duplicate key in pg_type). The tables exist next time.
            if attempt == SCHEMA_ATTEMPTS - 1:
                raise StorageError(f"cannot create Optuna's tables in search.storage={shown(url)} after "
                                   f"{SCHEMA_ATTEMPTS} attempts (other workers creating them?)") from None
            time.sleep(0.5 * (attempt + 1))
        except Exception as error:  # SQLAlchemy's errors name the driver or the server that failed
            raise StorageError(f"cannot open search.storage={shown(url)}: {type(error).__name__}: "
                               f"{str(error).strip().splitlines()[0]}") from None
    raise AssertionError("unreachable")
