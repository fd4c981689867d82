"""Least privilege in Postgres: the writer role the workers connect as and the reader role of
the read path, created or updated by ``jobfit db grant`` as the tables' owner (compose's
one-shot ``migrate`` runs ``jobfit db upgrade --grant``: after every upgrade).

- writer: SELECT, INSERT, UPDATE, DELETE on jobfit's tables (SELECT only on
  ``alembic_version``), USAGE on their sequences, EXECUTE on ``WRITER_FUNCTIONS``
  (``jobfit_ensure_hnsw_index``, ``jobfit_ensure_ivfflat_index`` and
  ``jobfit_drop_replaced_entry_indexes``, migrations 0005 and 0008: how a worker builds and
  replaces a model version's entry index without owning the table). No DDL, no
  TRUNCATE, owns nothing. Default privileges give it the same on tables and sequences a later
  migration creates.
- reader: SELECT on what the read path reads (``READER_TABLES``), nothing else.

A run converges: it revokes whatever else the two roles hold in the schema, then grants the
above, in one transaction. Passwords come from the roles' URLs and are sent as verifiers that
libpq computes (as psql's ``\\password`` does): the server never sees them in clear, in a
statement or its log, and nothing here prints them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from psycopg import sql
from sqlalchemy import create_engine, make_url, pool

# The functions migrations create for the workers (SECURITY DEFINER, EXECUTE revoked from
# PUBLIC): each overload is granted to the writer.
WRITER_FUNCTIONS = (
    "jobfit_ensure_hnsw_index",
    "jobfit_ensure_ivfflat_index",
    "jobfit_drop_replaced_entry_indexes",
)
# Tables the writer may read but not change: Alembic's revision (`jobfit health` reads it).
WRITER_READ_ONLY = ("alembic_version",)

# What the reader may SELECT: a table (every column) or the listed columns of it.
READER_TABLES: dict[str, tuple[str, ...] | None] = {
    # Rankings: JobfitClient.top_jobs / top_candidates, `jobfit matches` / `candidates`.
    "documents": None,
    "matches": None,
    "pair_scores": None,
    "model_versions": None,
    # `jobfit health`: the schema's revision.
    "alembic_version": None,
    # `jobfit metrics`: failures counted by reason (never their payloads), texts embedded
    # per model version.
    "failed_messages": ("reason",),
    "field_embeddings": ("model_version_id",),
    # `jobfit metrics`: stale messages counted by kind (never their revisions).
    "stale_revisions": ("document_id", "messages"),
}

SCHEMA = "public"

# Roles whose members read or write beyond their grants (the predefined ones: Postgres 14+).
BROAD_ROLES = ("pg_read_all_data", "pg_write_all_data", "pg_database_owner")
# Attributes that would let a role give itself more, or get around its grants.
BROAD_ATTRIBUTES = {
    "rolsuper": "SUPERUSER",
    "rolcreaterole": "CREATEROLE",
    "rolcreatedb": "CREATEDB",
    "rolreplication": "REPLICATION",
    "rolbypassrls": "BYPASSRLS",
}


class RoleError(ValueError):
    """A role ``jobfit db grant`` must not manage as asked (the reason says which and why)."""


@dataclass(frozen=True)
class Role:
    kind: Literal["writer", "reader"]
    name: str
    password: str | None

    @classmethod
    def from_url(cls, kind: Literal["writer", "reader"], url: str) -> Role:
        """The role of a database URL (its user name and password)."""
        u = make_url(url)
        if not u.username:
            raise RoleError(f"the {kind} URL names no user")
        return cls(kind, u.username, u.password)


def grant_roles(owner_url: str, roles: list[Role]) -> list[str]:
    """Create or update ``roles`` and give each exactly its privileges on the database of
    ``owner_url`` (connected as the tables' owner, or a superuser); one line per role saying
    what was done. Raises ``RoleError`` for a role that must not be managed."""
    names = [r.name for r in roles]
    if len(set(names)) != len(names):
        raise RoleError("the writer and the reader must be two roles")
    engine = create_engine(owner_url, poolclass=pool.NullPool)
    try:
        with engine.begin() as conn:
            driver = conn.connection.driver_connection  # psycopg's, in this transaction
            assert driver is not None
            with driver.cursor() as cur:
                return _grant(driver, cur, roles)
    finally:
        engine.dispose()


def _grant(driver: Any, cur: Any, roles: list[Role]) -> list[str]:
    cur.execute("SELECT pg_advisory_xact_lock(hashtext('jobfit db grant'))")
    owner = _one(
        cur,
        "SELECT tableowner FROM pg_tables WHERE schemaname = %s AND tablename = 'alembic_version'",
        (SCHEMA,),
    )
    if owner is None:
        raise RoleError("the database has no jobfit schema: run `jobfit db upgrade` first")
    me, database = cur.execute("SELECT current_user, current_database()").fetchone()
    done = []
    for role in roles:
        _refuse_privileged(cur, role, owner=owner, me=me)
        created = _ensure_login(driver, cur, role)
        _reset(cur, role.name, owner=owner, database=database)
        if role.kind == "writer":
            _grant_writer(cur, role.name, owner=owner)
        else:
            _grant_reader(cur, role.name)
        done.append(f"{role.kind} {role.name}: {'created' if created else 'updated'}")
    _refuse_schema_create(cur, roles, owner=owner)
    return done


def _one(cur: Any, query: str, params: tuple[Any, ...] = ()) -> Any:
    row = cur.execute(query, params).fetchone()
    return None if row is None else row[0]


def _refuse_privileged(cur: Any, role: Role, *, owner: str, me: str) -> None:
    """A role that holds more than it would be granted would keep it (revoking grants does
    not touch attributes, memberships or ownership): refuse the owner, a role with any of
    ``BROAD_ATTRIBUTES``, a member of the owner or of ``BROAD_ROLES``, an owner of tables."""
    if role.name in (owner, me):
        raise RoleError(f"the {role.kind} role {role.name!r} is the owner's: give it its own")
    attributes = ", ".join(BROAD_ATTRIBUTES)
    row = cur.execute(
        f"SELECT {attributes} FROM pg_roles WHERE rolname = %s",  # noqa: S608 (our constants)
        (role.name,),
    ).fetchone()
    if row is None:
        return
    why = [name for name, on in zip(BROAD_ATTRIBUTES.values(), row, strict=True) if on]
    why += [
        f"member of {g}"
        for (g,) in cur.execute(
            "SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)"
            " AND pg_has_role(%s, oid, 'USAGE')",
            ([owner, *BROAD_ROLES], role.name),
        ).fetchall()
    ]
    if _one(
        cur,
        "SELECT count(*) FROM pg_class c JOIN pg_roles r ON r.oid = c.relowner"
        " WHERE r.rolname = %s",
        (role.name,),
    ):
        why.append("owns tables here")
    if why:
        raise RoleError(
            f"the {role.kind} role {role.name!r} has more than it would be granted"
            f" ({', '.join(why)}): give it a role of its own"
        )


def _ensure_login(driver: Any, cur: Any, role: Role) -> bool:
    """Create the role (LOGIN) or update it; set its password when its URL has one. True if
    it was created."""
    exists = _one(cur, "SELECT 1 FROM pg_roles WHERE rolname = %s", (role.name,)) is not None
    stmt = sql.SQL("ALTER ROLE {} LOGIN" if exists else "CREATE ROLE {} LOGIN").format(
        sql.Identifier(role.name)
    )
    if role.password is not None:
        verifier = driver.pgconn.encrypt_password(role.password.encode(), role.name.encode())
        stmt = sql.SQL("{} PASSWORD {}").format(stmt, sql.Literal(verifier.decode()))
    cur.execute(stmt)
    return not exists


def _run(cur: Any, template: str, **names: str) -> None:
    """One statement with identifiers quoted by psycopg (``{schema}``, ``{role}``, ...)."""
    cur.execute(sql.SQL(template).format(**{k: sql.Identifier(v) for k, v in names.items()}))


def _reset(cur: Any, role: str, *, owner: str, database: str) -> None:
    """Whatever the role held in this schema goes (a rerun converges), then what both roles
    need: CONNECT, USAGE on the schema."""
    for objects in ("TABLES", "SEQUENCES", "FUNCTIONS"):
        _run(cur, f"REVOKE ALL ON ALL {objects} IN SCHEMA {{schema}} FROM {{role}}", **_n(role))
        _run(
            cur,
            "ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA {schema}"
            f" REVOKE ALL ON {objects} FROM {{role}}",
            owner=owner,
            **_n(role),
        )
    _run(cur, "REVOKE ALL ON SCHEMA {schema} FROM {role}", **_n(role))
    _run(cur, "GRANT USAGE ON SCHEMA {schema} TO {role}", **_n(role))
    _run(cur, "GRANT CONNECT ON DATABASE {database} TO {role}", database=database, role=role)


def _n(role: str) -> dict[str, str]:
    return {"schema": SCHEMA, "role": role}


def _grant_writer(cur: Any, role: str, *, owner: str) -> None:
    dml = "SELECT, INSERT, UPDATE, DELETE"
    _run(cur, f"GRANT {dml} ON ALL TABLES IN SCHEMA {{schema}} TO {{role}}", **_n(role))
    for table in WRITER_READ_ONLY:
        _run(cur, "REVOKE INSERT, UPDATE, DELETE ON {table} FROM {role}", table=table, role=role)
    _run(cur, "GRANT USAGE ON ALL SEQUENCES IN SCHEMA {schema} TO {role}", **_n(role))
    for objects, privileges in (("TABLES", dml), ("SEQUENCES", "USAGE")):
        _run(
            cur,
            "ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA {schema}"
            f" GRANT {privileges} ON {objects} TO {{role}}",
            owner=owner,
            **_n(role),
        )
    signatures = cur.execute(
        "SELECT p.oid::regprocedure::text FROM pg_proc p JOIN pg_namespace n"
        " ON n.oid = p.pronamespace WHERE n.nspname = %s AND p.proname = ANY(%s)",
        (SCHEMA, list(WRITER_FUNCTIONS)),
    ).fetchall()
    if not signatures:
        raise RoleError(f"no {', '.join(WRITER_FUNCTIONS)}: run `jobfit db upgrade` first")
    for (signature,) in signatures:
        # regprocedure's text is the function's name and argument types, quoted as needed.
        cur.execute(
            sql.SQL("GRANT EXECUTE ON FUNCTION {} TO {}").format(
                sql.SQL(signature), sql.Identifier(role)
            )
        )


def _grant_reader(cur: Any, role: str) -> None:
    for table, columns in READER_TABLES.items():
        what = (
            sql.SQL("SELECT")
            if columns is None
            else sql.SQL("SELECT ({})").format(sql.SQL(", ").join(map(sql.Identifier, columns)))
        )
        cur.execute(
            sql.SQL("GRANT {} ON {} TO {}").format(
                what, sql.Identifier(SCHEMA, table), sql.Identifier(role)
            )
        )


def _refuse_schema_create(cur: Any, roles: list[Role], *, owner: str) -> None:
    """No managed role may create objects in the schema. Postgres 15+ gives PUBLIC no CREATE
    on ``public``; an older server (or database) does: then CREATE goes to the owner by name
    and is taken from PUBLIC, the hardening Postgres itself recommends since 15."""

    def creators() -> list[str]:
        return [
            r.name
            for r in roles
            if _one(cur, "SELECT has_schema_privilege(%s, %s, 'CREATE')", (r.name, SCHEMA))
        ]

    if not creators():
        return
    _run(cur, "GRANT CREATE ON SCHEMA {schema} TO {owner}", schema=SCHEMA, owner=owner)
    _run(cur, "REVOKE CREATE ON SCHEMA {schema} FROM PUBLIC", schema=SCHEMA)
    if left := creators():
        raise RoleError(
            f"{', '.join(left)} can still create objects in schema {SCHEMA} (CREATE granted"
            " to PUBLIC, or through another role): run `jobfit db grant` as the schema's owner"
            " or a superuser"
        )
