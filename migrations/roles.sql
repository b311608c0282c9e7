-- Tickler's PostgreSQL logins, run by a superuser once per cluster, before `tickler migrate`
-- (`tickler run` runs it on its embedded server; docs/deployment.md, "Least privilege in PostgreSQL").
-- Idempotent: it creates what is missing and puts back the attributes of what exists.
--
--   tickler             the migration owner: owns the database and every table; `tickler migrate` and
--                       `tickler run`'s migration log in as it (TICKLER_MIGRATION_DATABASE_URL).
--   tickler_login       the app's login (TICKLER_DATABASE_URL): no privilege of its own; it may only take
--                       tickler_app (TICKLER_DATABASE_ROLE), which row-level security applies to.
--   tickler_maintainer  the maintenance login (TICKLER_MAINTENANCE_DATABASE_URL): may only take
--                       tickler_maintenance (the worker's maintenance Schedule, `tickler audit` and co).
--   tickler_app, tickler_maintenance  group roles, no login; the migrations grant them their tables.
--
-- None is a superuser, BYPASSRLS, or may create roles or databases; no login may take the owner's role.
-- Passwords: psql variables, when given (psql -v owner_password=... -v app_password=...
-- -v maintainer_password=...); none given, the logins have none (the embedded server trusts 127.0.0.1).
-- The database: CREATE DATABASE tickler OWNER tickler (before PostgreSQL 15, then also
-- REVOKE CREATE ON SCHEMA public FROM PUBLIC in it).

DO $$
DECLARE
    login text;
BEGIN
    FOREACH login IN ARRAY ARRAY['tickler', 'tickler_login', 'tickler_maintainer'] LOOP
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = login) THEN
            EXECUTE format('CREATE ROLE %I LOGIN', login);
        END IF;
        EXECUTE format(
            'ALTER ROLE %I LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEROLE NOCREATEDB NOREPLICATION', login
        );
    END LOOP;
    FOREACH login IN ARRAY ARRAY['tickler_app', 'tickler_maintenance'] LOOP
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = login) THEN
            EXECUTE format('CREATE ROLE %I NOLOGIN NOINHERIT NOBYPASSRLS', login);
        END IF;
        EXECUTE format('ALTER ROLE %I NOLOGIN NOSUPERUSER NOBYPASSRLS NOCREATEROLE NOCREATEDB', login);
    END LOOP;
END $$;

-- The logins take their group role at connect (SET ROLE); NOINHERIT: without it they hold nothing.
ALTER ROLE tickler_login NOINHERIT;
ALTER ROLE tickler_maintainer NOINHERIT;
GRANT tickler_app TO tickler_login;
GRANT tickler_maintenance TO tickler_maintainer;
-- The owner grants the group roles their tables, so it administers them (it is no member of the logins).
GRANT tickler_app, tickler_maintenance TO tickler WITH ADMIN OPTION;

\if :{?owner_password}
ALTER ROLE tickler PASSWORD :'owner_password';
\endif
\if :{?app_password}
ALTER ROLE tickler_login PASSWORD :'app_password';
\endif
\if :{?maintainer_password}
ALTER ROLE tickler_maintainer PASSWORD :'maintainer_password';
\endif
