"""SQLite storage of a Turing study: the image list (id → file, truth), readers, their sessions and answers.

The database runs in WAL mode with ``synchronous=FULL`` and every answer is one transaction, so an answer the
server acknowledged survives a crash or restart. Each request opens its own short-lived connection, which keeps the
store safe under uvicorn's thread pool without a shared connection or lock.

A reader is invited by name (:meth:`Store.invite`) and gets a random code; the code, not the name, signs them in,
and each sign-in opens a session whose random token is the browser's cookie. Only SHA-256 hashes of codes and
session tokens are stored, so the database file does not hold anything that signs a reader in.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import re
import secrets
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from mcfast.atomic import atomic_path
from mcfast.errors import InputError

SCHEMA_VERSION = "2"
TRUTHS = ("real", "synthetic")
CONFIDENCE_LEVELS = (1, 2, 3, 4, 5)
MAX_NAME_LENGTH = 60
# Reader codes: 20 symbols from 31 that are hard to confuse when typed (no 0/O, 1/I/L), about 99 random bits.
CODE_ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"
CODE_LENGTH = 20
_READERS_V2 = ("""
CREATE TABLE readers (
    reader_id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE COLLATE NOCASE,     -- shown in the report, never used to sign in
    code_hash TEXT UNIQUE,                        -- SHA-256 of the reader's code, NULL until one is issued
    created_at TEXT NOT NULL
)""", """
CREATE TABLE sessions (
    token_hash TEXT PRIMARY KEY,                  -- SHA-256 of the session cookie
    reader_id INTEGER NOT NULL REFERENCES readers(reader_id),
    created_at TEXT NOT NULL
)""")
_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE images (
    position INTEGER PRIMARY KEY,                 -- display order, 0-based
    image_id TEXT NOT NULL UNIQUE,                -- opaque random id, the only name a browser sees
    truth TEXT NOT NULL CHECK (truth IN ('real', 'synthetic')),
    file TEXT NOT NULL UNIQUE,                    -- rendered PNG inside the study's images/ folder
    window TEXT,                                  -- CT display window, NULL when shown as is
    source TEXT NOT NULL                          -- original file, for the report only
);
CREATE TABLE answers (
    reader_id INTEGER NOT NULL REFERENCES readers(reader_id),
    image_id TEXT NOT NULL REFERENCES images(image_id),
    answer TEXT NOT NULL CHECK (answer IN ('real', 'synthetic')),
    confidence INTEGER NOT NULL CHECK (confidence BETWEEN 1 AND 5),
    elapsed_ms INTEGER,
    answered_at TEXT NOT NULL,
    PRIMARY KEY (reader_id, image_id)
);
""" + "".join(f"{statement};\n" for statement in _READERS_V2)


class AnswerRejected(Exception):
    """An answer that does not fit the reader's state (already answered, not the current image, study done)."""


@dataclass(frozen=True)
class StudyImage:
    position: int
    image_id: str
    truth: str
    file: str
    window: str | None
    source: str


@dataclass(frozen=True)
class Reader:
    reader_id: int
    name: str


@dataclass(frozen=True)
class Answer:
    reader: str
    image_id: str
    truth: str
    answer: str
    confidence: int
    window: str | None
    elapsed_ms: int | None
    answered_at: str


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


def normalize_name(name: str) -> str:
    """Reader names: trimmed, inner whitespace collapsed, 1–60 printable characters."""
    cleaned = re.sub(r"\s+", " ", str(name)).strip()
    if not cleaned or len(cleaned) > MAX_NAME_LENGTH or not cleaned.isprintable():
        raise InputError(f"reader name {name!r}: use 1 to {MAX_NAME_LENGTH} printable characters")
    return cleaned


def normalize_names(names: list[str]) -> list[str]:
    """:func:`normalize_name` of each; a name given twice (ignoring case, as the store does) is refused."""
    cleaned = [normalize_name(name) for name in names]
    seen: set[str] = set()
    for name in cleaned:
        if name.casefold() in seen:
            raise InputError(f"reader name {name!r} is given twice")
        seen.add(name.casefold())
    return cleaned


def normalize_code(code: str) -> str:
    """A typed or pasted reader code: case, spaces and dashes do not matter."""
    return re.sub(r"[\s-]+", "", str(code)).upper()


def new_code() -> str:
    """A fresh reader code, grouped in fives for reading aloud: ``XXXXX-XXXXX-XXXXX-XXXXX``."""
    raw = "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))
    return "-".join(raw[k:k + 5] for k in range(0, CODE_LENGTH, 5))


def _digest(secret: str) -> str:
    # A plain hash is enough: codes and session tokens are long random strings, not passwords a guess could find.
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


class Store:
    """Access to one study database (``study.sqlite3``)."""

    def __init__(self, db_path: str | Path):
        self.db_path = Path(db_path)
        if not self.db_path.is_file():
            raise InputError(f"{self.db_path}: no Turing study database here (create one with `mcfast turing create`)")
        try:
            version = self.meta().get("schema_version")
        except sqlite3.DatabaseError as exc:
            raise InputError(f"{self.db_path}: not a Turing study database ({exc})") from None
        if version == "1":
            version = self._upgrade_from_v1()
        if version != SCHEMA_VERSION:
            raise InputError(f"{self.db_path}: study schema version {version!r}, this mcfast reads {SCHEMA_VERSION}")

    @classmethod
    def create(cls, db_path: str | Path, meta: dict[str, str], images: list[StudyImage]) -> "Store":
        """Write a new study database atomically (it appears complete or not at all)."""
        db_path = Path(db_path)
        with atomic_path(db_path) as tmp:
            conn = sqlite3.connect(tmp, isolation_level=None)
            try:
                # WAL is recorded in the file header, so every later connection uses it.
                conn.execute("PRAGMA journal_mode=WAL")
                conn.executescript(_SCHEMA)
                conn.execute("BEGIN")
                conn.executemany("INSERT INTO meta VALUES (?, ?)",
                                 sorted({**meta, "schema_version": SCHEMA_VERSION}.items()))
                conn.executemany("INSERT INTO images VALUES (?, ?, ?, ?, ?, ?)",
                                 [(i.position, i.image_id, i.truth, i.file, i.window, i.source) for i in images])
                conn.execute("COMMIT")
            finally:
                conn.close()  # checkpoints and removes the -wal file before the rename
        return cls(db_path)

    def _upgrade_from_v1(self) -> str:
        """Schema 1 signed readers in by name: drop its sessions, keep readers and answers; one transaction.

        Readers keep their answers and name but have no code until ``mcfast turing invite`` issues one. Their old
        session cookies stop working: a cookie handed out for a typed name may belong to whoever typed it.
        """
        try:
            conn = sqlite3.connect(self.db_path, timeout=10.0, isolation_level=None)
        except sqlite3.Error as exc:
            raise InputError(f"{self.db_path}: cannot open the study to upgrade it ({exc})") from None
        try:
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=OFF")  # the readers table is rebuilt under answers' reference
            conn.execute("BEGIN IMMEDIATE")
            try:
                version = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0]
                if version == "1":  # not upgraded meanwhile by another process
                    rows = conn.execute("SELECT reader_id, name, created_at FROM readers").fetchall()
                    conn.execute("DROP TABLE readers")
                    for statement in _READERS_V2:
                        conn.execute(statement)
                    conn.executemany("INSERT INTO readers (reader_id, name, code_hash, created_at) "
                                     "VALUES (?, ?, NULL, ?)", rows)
                    if conn.execute("PRAGMA foreign_key_check").fetchall():
                        raise sqlite3.IntegrityError("answers of unknown readers")
                    conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (SCHEMA_VERSION,))
                    version = SCHEMA_VERSION
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise InputError(f"{self.db_path}: cannot upgrade the study database to schema {SCHEMA_VERSION} "
                             f"({exc}); it is unchanged") from None
        finally:
            conn.close()
        return version

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        conn = sqlite3.connect(self.db_path, timeout=10.0, isolation_level=None, check_same_thread=False)
        try:
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            yield conn
        finally:
            conn.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")  # take the write lock first: check-then-insert is atomic
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def meta(self) -> dict[str, str]:
        with self._connect() as conn:
            return dict(conn.execute("SELECT key, value FROM meta").fetchall())

    def images(self) -> list[StudyImage]:
        with self._connect() as conn:
            rows = conn.execute("SELECT position, image_id, truth, file, window, source FROM images "
                                "ORDER BY position").fetchall()
        return [StudyImage(*row) for row in rows]

    def image_file(self, image_id: str) -> str | None:
        """The stored file name for ``image_id``, or None when the id is not part of the study."""
        with self._connect() as conn:
            row = conn.execute("SELECT file FROM images WHERE image_id = ?", (str(image_id),)).fetchone()
        return row[0] if row else None

    def total(self) -> int:
        with self._connect() as conn:
            return conn.execute("SELECT COUNT(*) FROM images").fetchone()[0]

    def reader_by_token(self, token: str | None) -> Reader | None:
        """The reader whose session cookie is ``token``, or None."""
        if not token:
            return None
        with self._connect() as conn:
            row = conn.execute("SELECT r.reader_id, r.name FROM sessions s JOIN readers r USING (reader_id) "
                               "WHERE s.token_hash = ?", (_digest(str(token)),)).fetchone()
        return Reader(*row) if row else None

    def sign_in(self, code: str) -> tuple[Reader, str] | None:
        """Open a session for the reader holding ``code``: (reader, session token), or None for an unknown code."""
        code = normalize_code(code)
        if not code:
            return None
        token = secrets.token_urlsafe(32)
        with self._transaction() as conn:
            row = conn.execute("SELECT reader_id, name FROM readers WHERE code_hash = ?",
                               (_digest(code),)).fetchone()
            if row is None:
                return None
            conn.execute("INSERT INTO sessions VALUES (?, ?, ?)", (_digest(token), row[0], _now()))
        return Reader(*row), token

    def sign_out(self, token: str | None) -> None:
        """End the session ``token`` (the reader's other sessions and code stay valid)."""
        if token:
            with self._transaction() as conn:
                conn.execute("DELETE FROM sessions WHERE token_hash = ?", (_digest(str(token)),))

    def invite(self, names: list[str], renew: bool = False) -> list[tuple[Reader, str]]:
        """Issue a code to each reader in ``names``: [(reader, code)], all in one transaction (all or none).

        A new name becomes a reader. A reader who already has a code keeps it unless ``renew``, which replaces the
        code and ends the reader's sessions (for a lost or leaked code); their answers stay. Only the codes' hashes
        are stored, so the codes returned here cannot be shown again.
        """
        cleaned = normalize_names(names)
        issued = []
        with self._transaction() as conn:
            for name in cleaned:
                row = conn.execute("SELECT reader_id, name, code_hash FROM readers WHERE name = ?",
                                   (name,)).fetchone()
                if row is None and renew:
                    raise InputError(f"--renew: no reader named {name!r} in this study")
                if row is not None and row[2] is not None and not renew:
                    raise InputError(f"reader {row[1]!r} already has a code; use --renew to replace it "
                                     "(their old code and sessions stop working, their answers stay)")
                code = new_code()
                if row is None:
                    cur = conn.execute("INSERT INTO readers (name, code_hash, created_at) VALUES (?, ?, ?)",
                                       (name, _digest(normalize_code(code)), _now()))
                    reader = Reader(cur.lastrowid, name)
                else:
                    conn.execute("UPDATE readers SET code_hash = ? WHERE reader_id = ?",
                                 (_digest(normalize_code(code)), row[0]))
                    conn.execute("DELETE FROM sessions WHERE reader_id = ?", (row[0],))
                    reader = Reader(row[0], row[1])
                issued.append((reader, code))
        return issued

    def readers(self) -> list[tuple[Reader, bool]]:
        """Every reader with whether they hold a code, in the order they were added."""
        with self._connect() as conn:
            rows = conn.execute("SELECT reader_id, name, code_hash IS NOT NULL FROM readers "
                                "ORDER BY reader_id").fetchall()
        return [(Reader(rid, name), bool(has_code)) for rid, name, has_code in rows]

    @staticmethod
    def _next_image(conn: sqlite3.Connection, reader_id: int) -> tuple[str, str | None, int] | None:
        row = conn.execute(
            "SELECT image_id, window, position FROM images WHERE image_id NOT IN "
            "(SELECT image_id FROM answers WHERE reader_id = ?) ORDER BY position LIMIT 1", (reader_id,)).fetchone()
        return tuple(row) if row else None

    def progress(self, reader_id: int) -> dict:
        """``{"answered", "total", "image_id", "window"}``; ``image_id`` is None when the reader is done."""
        with self._connect() as conn:
            answered = conn.execute("SELECT COUNT(*) FROM answers WHERE reader_id = ?", (reader_id,)).fetchone()[0]
            total = conn.execute("SELECT COUNT(*) FROM images").fetchone()[0]
            nxt = self._next_image(conn, reader_id)
        return {"answered": answered, "total": total,
                "image_id": nxt[0] if nxt else None, "window": nxt[1] if nxt else None}

    def record_answer(self, reader_id: int, image_id: str, answer: str, confidence: int,
                      elapsed_ms: int | None = None) -> None:
        """Store one answer in its own transaction; only the reader's current image may be answered."""
        if answer not in TRUTHS:
            raise InputError(f"answer {answer!r}: expected one of {', '.join(TRUTHS)}")
        if confidence not in CONFIDENCE_LEVELS:
            raise InputError(f"confidence {confidence!r}: expected an integer from 1 to 5")
        with self._transaction() as conn:
            nxt = self._next_image(conn, reader_id)
            if nxt is None:
                raise AnswerRejected("every image of the study is already answered")
            if nxt[0] != image_id:
                raise AnswerRejected("this is not the current image (answered already, or another tab moved on)")
            conn.execute("INSERT INTO answers VALUES (?, ?, ?, ?, ?, ?)",
                         (reader_id, image_id, answer, int(confidence), elapsed_ms, _now()))

    def answers(self) -> list[Answer]:
        """Every answer with its reader's name and the image's truth, by reader then display order."""
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT r.name, a.image_id, i.truth, a.answer, a.confidence, i.window, a.elapsed_ms, a.answered_at "
                "FROM answers a JOIN readers r USING (reader_id) JOIN images i USING (image_id) "
                "ORDER BY r.reader_id, i.position").fetchall()
        return [Answer(*row) for row in rows]
