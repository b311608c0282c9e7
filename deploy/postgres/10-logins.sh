#!/bin/sh
# First start of the postgres container only (docker-entrypoint-initdb.d): one login per job, each with
# its password from a compose secret, none of them superuser. docs/deployment.md, "Least privilege".
#
# Tickler's logins are those of migrations/roles.sql (mounted at /tickler/roles.sql), the one definition
# that `tickler run` uses too: `tickler` owns the database (only `migrate` has its URL), `tickler_login`
# is the web's and the worker's, `tickler_maintainer` the maintenance Schedule's. Temporal gets a login
# of its own that owns its two databases and nothing else. The superuser (POSTGRES_PASSWORD_FILE) stays
# for the operator's `docker compose exec postgres psql -U postgres`.
set -eu

secret() { cat "/run/secrets/$1"; }
sql() { psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" "$@"; }

sql --dbname postgres \
    -v owner_password="$(secret tickler_owner_db_password)" \
    -v app_password="$(secret tickler_app_db_password)" \
    -v maintainer_password="$(secret tickler_maintainer_db_password)" \
    -f /tickler/roles.sql

sql --dbname postgres -v temporal_password="$(secret temporal_db_password)" <<'SQL'
CREATE DATABASE tickler OWNER tickler;
REVOKE ALL ON DATABASE tickler FROM PUBLIC;
GRANT CONNECT ON DATABASE tickler TO tickler_login, tickler_maintainer;

CREATE ROLE temporal LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS PASSWORD :'temporal_password';
CREATE DATABASE temporal OWNER temporal;
CREATE DATABASE temporal_visibility OWNER temporal;
REVOKE ALL ON DATABASE temporal, temporal_visibility FROM PUBLIC;
SQL

# The owner owns the public schema too; nobody else may create in it.
sql --dbname tickler -c 'ALTER SCHEMA public OWNER TO tickler' -c 'REVOKE CREATE ON SCHEMA public FROM PUBLIC'
