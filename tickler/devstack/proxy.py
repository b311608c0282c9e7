"""HAProxy from Debian in front of the web processes of `tickler run --replicas N`: its configuration
rendered from the template below into the data dir, checked, and run in the foreground like the other
servers. docs/decisions.md §20 says why HAProxy; docs/scaling.md what the settings are for in production.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from string import Template

from tickler.devstack.process import STARTUP_TIMEOUT, ManagedProcess, spawn, wait_for_port

HAPROXY = "haproxy"
INSTALL = "apt-get install haproxy"
# The route of web/stream/routes.py, which the proxy treats apart.
STREAM_PATH = "/v1/notifications/stream"
# Where Debian puts it: /usr/sbin is on root's PATH, often not on a user's.
_DEBIAN_HAPROXY = Path("/usr/sbin/haproxy")
_CHECK_TIMEOUT = 30.0

# What each line is for, in production terms (docs/scaling.md, "What the proxy must do for SSE"; the
# figures behind them are in docs/decisions.md §20):
# - no buffering: HAProxy forwards a response's bytes as they come; nothing here turns on what would
#   hold them (`compression`, `option http-buffer-request` is for request bodies and is off anyway).
# - `option http-no-delay`: without it HAProxy sends with MSG_MORE, and the kernel may hold a small
#   event, alone in its packet, up to 200 ms for more data that a stream does not send.
# - `timeout client` / `timeout server` are idle timeouts, reset by every heartbeat: above it, with room.
# - upstream keep-alive is HAProxy's default (`option http-keep-alive`, connections reused with
#   `http-reuse safe`); it handles the hop-by-hop `Connection` header itself, so there is no nginx-style
#   `Connection ""` to set. Last-Event-ID, like every end-to-end header, passes untouched.
# - X-Forwarded-For is replaced, not appended to: a value the client sent must not reach the app.
# - `retries` with `option redispatch 1`: a request whose connection is refused (a killed process) is
#   sent to another server at once, so no client sees the dead one, even before its checks fail. A GET
#   or HEAD is also sent again when its server closed without a word (a process dying as it accepted,
#   a kept-alive connection closed by a restart); other methods are not, as the server may have acted.
#   Nor is the stream: the copy such a retry needs is a buffer held for the connection's life, which
#   nearly quadrupled HAProxy's memory per open stream; the page retries a 502 itself.
# - the active check takes a server out after `fall` failed checks and back after `rise` good ones;
#   `fall 3`, with `timeout check` each, rides out a full garbage collection of a web process holding
#   thousands of streams (docs/performance.md) rather than cut its streams.
# - `on-marked-down shutdown-sessions`: the streams of a web process that stops answering its checks are
#   cut, so that their clients reconnect to one that answers instead of waiting on a silent stream.
#   (Not with `observe layer4`, which marks a server down on a refused connection: its shutdown also
#   cut the very request being redispatched, a 502.)
# - `balance leastconn`: streams live for hours; round robin would spread requests, not open streams.
TEMPLATE = Template(
    """\
# Written by `tickler run --replicas $replicas` from tickler/devstack/proxy.py; edits are overwritten.
global
    log stdout format raw local0 info

defaults
    mode http
    log global
    option httplog
    option dontlognull
    option http-keep-alive
    option http-no-delay
    option redispatch 1
    retries 2
    timeout connect 2s
    timeout client $idle_timeout
    timeout server $idle_timeout
    timeout client-fin 5s
    timeout server-fin 5s
    timeout http-request 10s
    timeout http-keep-alive 10s
    timeout queue 10s
    timeout check $check_timeout

frontend tickler
    bind $bind
    http-request del-header X-Forwarded-For
    http-request set-header X-Forwarded-Proto https if { ssl_fc }
    http-request set-header X-Forwarded-Proto http if !{ ssl_fc }
    option forwardfor
    default_backend web

backend web
    balance leastconn
    retry-on conn-failure empty-response
    http-request disable-l7-retry if !METH_GET or { path $stream_path }
    option httpchk
    http-check send meth GET uri /healthz ver HTTP/1.1 hdr Host tickler-proxy
    http-check expect status 200
    default-server check inter $check_interval fastinter 500ms downinter 1s fall 3 rise 2
    default-server on-marked-down shutdown-sessions
$servers
"""
)


class ProxyMissing(RuntimeError):
    """No `haproxy` on PATH: the message says how to install it."""


@dataclass(frozen=True)
class Backend:
    name: str
    port: int
    host: str = "127.0.0.1"


def haproxy_executable() -> str:
    found = shutil.which(HAPROXY)
    if found is not None:
        return found
    hint = ""
    if _DEBIAN_HAPROXY.is_file():
        hint = f" It is installed as {_DEBIAN_HAPROXY}: add /usr/sbin to PATH."
    raise ProxyMissing(
        f"`tickler run --replicas` puts HAProxy in front of the web processes, and `{HAPROXY}` is not on "
        f"PATH.{hint} Install Debian's package: `{INSTALL}` (as root: apt-get update first)."
    )


def render_config(
    host: str,
    port: int,
    backends: Sequence[Backend],
    *,
    heartbeat_seconds: float,
    check_interval_seconds: float = 1.0,
    check_timeout_seconds: float = 2.0,
) -> str:
    """The configuration: ``host:port`` in front of ``backends``, idle timeouts well above the stream's
    heartbeat (four of them, and never under a minute)."""
    return TEMPLATE.substitute(
        replicas=len(backends),
        stream_path=STREAM_PATH,
        bind=_address(host, port),
        idle_timeout=_duration(max(60.0, 4 * heartbeat_seconds)),
        check_interval=_duration(check_interval_seconds),
        check_timeout=_duration(check_timeout_seconds),
        servers="\n".join(f"    server {b.name} {_address(b.host, b.port)}" for b in backends),
    )


def start_proxy(
    data_dir: Path, host: str, port: int, backends: Sequence[Backend], *, heartbeat_seconds: float
) -> ManagedProcess:
    """HAProxy on ``host:port``, once its configuration is valid and the port accepts connections."""
    executable = haproxy_executable()
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    config_path = data_dir / "haproxy.cfg"
    config_path.write_text(render_config(host, port, backends, heartbeat_seconds=heartbeat_seconds))
    check_config(executable, config_path)
    log_path = data_dir / "haproxy.log"
    # -db: in the foreground, not daemonized, so that it is our child and dies with us. SIGTERM is its
    # hard stop: SIGUSR1, the soft one, would wait for every stream to end.
    argv = [executable, "-db", "-f", str(config_path)]
    process = spawn("haproxy", argv, f"http://{_address(host, port)}", log_path, signal.SIGTERM)
    try:
        probe = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)
        wait_for_port(probe, port, STARTUP_TIMEOUT, process.popen, log_path)
    except BaseException:
        process.stop()
        raise
    return process


def check_config(executable: str, config_path: Path) -> None:
    """Raise RuntimeError with HAProxy's own words if it would refuse ``config_path``."""
    result = subprocess.run(
        [executable, "-c", "-q", "-f", str(config_path)],
        capture_output=True,
        text=True,
        timeout=_CHECK_TIMEOUT,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"HAProxy refuses {config_path}:\n{result.stdout}{result.stderr}")


def _address(host: str, port: int) -> str:
    # HAProxy reads the last colon as the port's: an IPv6 address needs no brackets, only "ipv6@".
    return f"ipv6@{host}:{port}" if ":" in host else f"{host}:{port}"


def _duration(seconds: float) -> str:
    return f"{round(seconds * 1000)}ms"
