"""The prediction log and feedback on the team's PostgreSQL (RETRAINER_DATABASE_URL): the same rows, statements and
guarantees as the embedded SQLite log (`prediction_log.py`), shared by every host and service replica.

A request is logged in one transaction, committed before the writer moves on: with PostgreSQL's default
`synchronous_commit = on` the commit returns once the server has flushed its WAL. When the server cannot be reached
(or refuses), the writer keeps the request in the dead-letter file, as it does when SQLite refuses, and
`retrainer recover-log` writes it into the database once it answers again.

The JSON columns are `text`, as in SQLite: the service writes and the monitor reads them with orjson, and a `jsonb`
column would make the server parse and convert every request on insert for no reader's benefit. The
`retrainer_predictions` view (one row per prediction, for a person's ad-hoc SQL) is the one PostgreSQL-only piece:
it unnests the arrays with jsonb functions where SQLite's view uses json_each.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

from retrainer.io.backend import DatabaseUnreachable, advisory_key, connect_database, describe_url
from retrainer.serving.prediction_log import LogAdapter, LoggedRows, LogStatements, WindowQuery, read_window

REQUESTS_TABLE = "retrainer_requests"
FEEDBACK_TABLE = "retrainer_feedback"
PREDICTIONS_VIEW = "retrainer_predictions"
POSTGRES_STATEMENTS = LogStatements(REQUESTS_TABLE, FEEDBACK_TABLE)
STREAM_ROWS = 64  # requests fetched per round trip when reading a window (a server-side cursor bounds memory)
LOGGER = logging.getLogger("bentoml.retrainer")

_VIEW = f"""
CREATE OR REPLACE VIEW {PREDICTIONS_VIEW} AS
SELECT r.key || lpad(to_hex(a.position::int - 1), 6, '0') AS id, r.time AS time, a.arm AS arm,
       CASE WHEN a.arm = 'champion' THEN r.champion_version ELSE r.challenger_version END AS model_version,
       (r.features_digest::jsonb ->> (a.position::int - 1)) AS features_digest,
       (r.probability::jsonb ->> (a.position::int - 1))::double precision AS probability,
       (r.label::jsonb ->> (a.position::int - 1))::integer AS label,
       r.latency_ms AS latency_ms,
       f.label AS feedback_label
FROM {REQUESTS_TABLE} r
CROSS JOIN LATERAL jsonb_array_elements_text(r.arm::jsonb) WITH ORDINALITY AS a(arm, position)
LEFT JOIN {FEEDBACK_TABLE} f ON f.request_key = r.key AND f.position = a.position - 1
"""


def log_tables():
    """The log's tables as SQLAlchemy Core metadata: one row per answered request, one per feedback label."""
    import sqlalchemy as sa

    metadata = sa.MetaData()
    text = sa.Text
    requests = sa.Table(
        REQUESTS_TABLE,
        metadata,
        sa.Column("seq", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("key", text, nullable=False, unique=True),
        sa.Column("time", text, nullable=False, index=True),
        sa.Column("latency_ms", sa.Float, nullable=False),
        sa.Column("rows", sa.Integer, nullable=False),
        sa.Column("champion_version", text),
        sa.Column("challenger_version", text),
        *(sa.Column(name, text, nullable=False) for name in ("arm", "probability", "label", "features_digest")),
        sa.Column("features", text),
    )
    sa.Table(
        FEEDBACK_TABLE,
        metadata,
        sa.Column("request_key", text, sa.ForeignKey(requests.c.key), primary_key=True),
        sa.Column("position", sa.Integer, primary_key=True),
        sa.Column("time", text, nullable=False),
        sa.Column("label", sa.Integer, nullable=False),
    )
    return metadata


def create_log_tables(connection) -> None:
    """Create the tables and the view if missing, under an advisory lock (two services starting together)."""
    import sqlalchemy as sa

    connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": advisory_key("prediction-log-schema")})
    log_tables().create_all(connection, checkfirst=True)
    connection.execute(sa.text(_VIEW))


@functools.cache
def _statement(sql: str):
    """`sql` as a SQLAlchemy text clause, built once per statement."""
    import sqlalchemy as sa

    return sa.text(sql)


def _database_errors() -> tuple[type[BaseException], ...]:
    import sqlalchemy as sa

    return (sa.exc.SQLAlchemyError, DatabaseUnreachable)


class PostgresPredictionLog(LogAdapter):
    """The prediction log as two tables of the team database; methods as `LogAdapter`'s.

    Opening it does not need the server: when it is down, the tables are created at the first write that reaches
    it, and until then every write raises one of `errors` (the writer keeps the request in the dead-letter file).
    """

    statements = POSTGRES_STATEMENTS

    def __init__(self, url: str, numeric: Iterable[str] = (), categorical: Iterable[str] = ()):
        super().__init__(numeric, categorical)
        self.url = url
        self.location = describe_url(url)
        self.errors = _database_errors()
        self._created = False
        try:
            with connect_database(url) as connection:
                self._create(connection)
        except self.errors as exc:
            LOGGER.warning(
                "prediction log %s not reachable yet, requests go to the dead-letter file: %s", self.location, exc
            )

    @staticmethod
    def _cell(document: bytes) -> str:
        return document.decode()

    def _create(self, connection) -> None:
        if not self._created:
            create_log_tables(connection)
            self._created = True

    @contextmanager
    def _session(self) -> Iterator[Callable]:
        """One transaction, committed when the block ends (rolled back if it raises)."""
        with connect_database(self.url) as connection:
            self._create(connection)
            yield lambda sql, parameters: connection.execute(_statement(sql), parameters)


def read_postgres_window(url: str, query: WindowQuery) -> LoggedRows:
    """`read_predictions` on the team database: a read-only transaction, requests streamed from a server-side cursor
    (STREAM_ROWS at a time) so a million-prediction window is never held as rows at once. An empty result when the
    log's tables do not exist yet; DatabaseUnreachable when the server does not answer."""
    import sqlalchemy as sa

    with connect_database(url) as connection:
        connection.execute(sa.text("SET TRANSACTION READ ONLY"))
        if not sa.inspect(connection).has_table(REQUESTS_TABLE):
            return query.empty()
        reading = connection.execution_options(stream_results=True, yield_per=STREAM_ROWS)
        return read_window(
            lambda sql, parameters: reading.execute(_statement(sql), parameters), POSTGRES_STATEMENTS, query
        )
