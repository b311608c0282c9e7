#!/bin/sh
# Writes the files of every compose secret into ./secrets/ (docs/deployment.md, "Running the compose
# file"); an existing file is kept, so re-running only fills in what is missing. Passwords are hex: no
# character needs quoting in a URL, a shell or a config file. Run from the project root:
#   sh deploy/make-secrets.sh
set -eu
umask 077
dir=secrets
mkdir -p "$dir"

new() { # new NAME CONTENT: write NAME unless it exists
    if [ -e "$dir/$1" ]; then echo "kept    $dir/$1"; else printf '%s\n' "$2" >"$dir/$1"; echo "created $dir/$1"; fi
}
pw() { openssl rand -hex 24; }

new postgres_superuser_password "$(pw)"
new tickler_owner_db_password "$(pw)"
new tickler_app_db_password "$(pw)"
new tickler_maintainer_db_password "$(pw)"
new temporal_db_password "$(pw)"
new redis_password "$(pw)"
# The app reads whole URLs (TICKLER_*_URL_FILE): derived from the password files, so one rotation
# changes both (docs/deployment.md, "Rotating").
# The logins are those of migrations/roles.sql.
new tickler_owner_database_url \
    "postgresql+asyncpg://tickler:$(cat "$dir/tickler_owner_db_password")@postgres:5432/tickler"
new tickler_app_database_url \
    "postgresql+asyncpg://tickler_login:$(cat "$dir/tickler_app_db_password")@postgres:5432/tickler"
new tickler_maintenance_database_url \
    "postgresql+asyncpg://tickler_maintainer:$(cat "$dir/tickler_maintainer_db_password")@postgres:5432/tickler"
new tickler_redis_url "redis://:$(cat "$dir/redis_password")@redis:6379/0"
new tickler_jwt_secret "$(openssl rand -hex 32)"
# Signs the notifications the worker publishes on Redis (TICKLER_CHANNEL_KEY).
new tickler_channel_key "$(openssl rand -hex 32)"
# Signs each transaction's organization for row-level security (TICKLER_ORGANIZATION_KEYS), newest first.
new tickler_organization_keys "$(openssl rand -hex 32)"
# Payload encryption keys, one `kid:base64` per line, newest first (TICKLER_ENCRYPTION_KEY_FILE).
new tickler_encryption_keys "k$(date +%Y%m%d):$(openssl rand -base64 32)"
if [ ! -e "$dir/tls_pem" ]; then
    # HAProxy's form: the certificate chain, then its key, in one file. A self-signed one for a first
    # try; for real use: cat fullchain.pem privkey.pem > secrets/tls_pem
    tmp="$(mktemp -d)"
    openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=localhost" \
        -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
        -keyout "$tmp/key" -out "$tmp/cert" 2>/dev/null
    cat "$tmp/cert" "$tmp/key" >"$dir/tls_pem"
    rm -r "$tmp"
    echo "created $dir/tls_pem (self-signed, 30 days: replace it)"
fi
# The containers run as other users (uids 999, 1000, 10001): compose bind-mounts each file as it is, so
# the files are readable by all, and the directory (0700, umask above) keeps other host users out.
chmod 0444 "$dir"/*
