"""The embedded development stack: PostgreSQL, Redis and the Temporal dev server as supervised children.

``tickler run``, the pytest session fixtures and the bench start them; every server keeps its files under
one data dir. One module per server, and one for the supervision they share (process.py); proxy.py is
HAProxy, in front of the web processes of `tickler run --replicas N`; mail.py the local SMTP server.
"""

from tickler.devstack.mail import start_mail
from tickler.devstack.postgres import login_url, start_postgres
from tickler.devstack.process import STARTUP_TIMEOUT, ManagedProcess, free_port, spawn, wait_for_port
from tickler.devstack.proxy import Backend, ProxyMissing, haproxy_executable, start_proxy
from tickler.devstack.redis import start_redis
from tickler.devstack.temporal import start_temporal, temporal_executable

__all__ = [
    "STARTUP_TIMEOUT",
    "Backend",
    "ManagedProcess",
    "ProxyMissing",
    "free_port",
    "haproxy_executable",
    "login_url",
    "spawn",
    "start_mail",
    "start_postgres",
    "start_proxy",
    "start_redis",
    "start_temporal",
    "temporal_executable",
    "wait_for_port",
]
