"""TLS, mTLS and API keys to Temporal: the settings' checks, and `connect` through Debian's HAProxy
terminating TLS in front of the session's dev server, demanding a client certificate (or an API key)."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import re
import signal
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pydantic import SecretStr, ValidationError
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import TLSConfig

from core.settings import Settings
from core.temporal import TemporalConfigError, connect, tls_config
from tests.conftest import Servers
from tickler import devstack
from tickler.cli import _refuse_unusable_temporal_settings

API_KEY = "tickler-test-api-key"
# A failed handshake or a refused call should fail fast; the bound keeps a hang from eating the suite.
REFUSAL_WITHIN = 30.0
DROPPED = "CertificateRequired|connection closed|broken pipe|connection reset"


# -- settings, no server -----------------------------------------------------------------------------


def test_a_client_certificate_needs_its_key_and_the_other_way_round(tmp_path: Path) -> None:
    for half in (
        {"temporal_tls_cert_file": tmp_path / "c.pem"},
        {"temporal_tls_key_file": tmp_path / "k.pem"},
    ):
        with pytest.raises(
            ValidationError, match="TICKLER_TEMPORAL_TLS_CERT_FILE and TICKLER_TEMPORAL_TLS_KEY_FILE"
        ):
            Settings.model_validate(half)


def test_tls_as_the_settings_ask(tmp_path: Path) -> None:
    assert tls_config(Settings()) is None
    assert tls_config(Settings(temporal_tls=True)) is True
    # An API key alone: None, which the SDK turns into TLS on the system's roots.
    assert tls_config(Settings(temporal_api_key=SecretStr(API_KEY))) is None
    (tmp_path / "ca.pem").write_bytes(b"ca")
    (tmp_path / "c.pem").write_bytes(b"cert")
    (tmp_path / "k.pem").write_bytes(b"key")
    full = Settings(
        temporal_tls_ca_file=tmp_path / "ca.pem",
        temporal_tls_cert_file=tmp_path / "c.pem",
        temporal_tls_key_file=tmp_path / "k.pem",
        temporal_tls_server_name="temporal.internal",
    )
    assert tls_config(full) == TLSConfig(
        server_root_ca_cert=b"ca", client_cert=b"cert", client_private_key=b"key", domain="temporal.internal"
    )
    assert tls_config(Settings(temporal_tls_server_name="t.internal")) == TLSConfig(domain="t.internal")


def test_an_unreadable_file_stops_the_process_at_start_with_its_name(tmp_path: Path) -> None:
    settings = Settings(
        temporal_tls_ca_file=tmp_path / "missing.pem", encryption_keys=None, env="dev", data_dir=tmp_path
    )
    with pytest.raises(TemporalConfigError, match=r"TICKLER_TEMPORAL_TLS_CA_FILE .*missing\.pem"):
        tls_config(settings)
    # `tickler worker` and `tickler web` say so in one line, before they connect to anything.
    with pytest.raises(SystemExit) as exited:
        _refuse_unusable_temporal_settings(settings)
    assert "TICKLER_TEMPORAL_TLS_CA_FILE" in str(exited.value.code)
    with pytest.raises(SystemExit) as exited:
        _refuse_unusable_temporal_settings(Settings(env="production", data_dir=tmp_path))
    assert "TICKLER_ENCRYPTION_KEYS" in str(exited.value.code)


# -- end to end through HAProxy ----------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    ca: Path
    client_cert: Path
    client_key: Path
    other_ca: Path
    server_pem: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _ca(common_name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                key_encipherment=False, data_encipherment=False, key_agreement=False,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    return key, cert


def _leaf(
    ca_key: ec.EllipticCurvePrivateKey, ca: x509.Certificate, common_name: str, *, server: bool
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    if server:
        names: list[x509.GeneralName] = [
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        ]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


def _pem(*items: x509.Certificate | ec.EllipticCurvePrivateKey) -> bytes:
    out = b""
    for item in items:
        if isinstance(item, x509.Certificate):
            out += item.public_bytes(serialization.Encoding.PEM)
        else:
            out += item.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
    return out


def make_pki(folder: Path) -> Pki:
    """A throwaway CA, the proxy's certificate (127.0.0.1, localhost) and a client's; and a CA that
    signed neither, for the client that trusts the wrong one."""
    ca_key, ca = _ca("Tickler test CA")
    server_key, server = _leaf(ca_key, ca, "temporal-proxy", server=True)
    client_key, client = _leaf(ca_key, ca, "tickler-worker", server=False)
    _, other = _ca("Some other CA")
    files = {
        "ca.pem": _pem(ca),
        "other-ca.pem": _pem(other),
        "client.pem": _pem(client),
        "client.key": _pem(client_key),
        "server.pem": _pem(server, server_key),
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
        (folder / name).chmod(0o600)
    return Pki(
        folder / "ca.pem",
        folder / "client.pem",
        folder / "client.key",
        folder / "other-ca.pem",
        folder / "server.pem",
    )


HAPROXY_CONFIG = """\
# TLS in front of the dev server's gRPC, as a cluster's ingress would: h2 on both sides.
global
    log stdout format raw local0 info

defaults
    mode http
    log global
    option httplog
    timeout connect 2s
    timeout client 90s
    timeout server 90s

# mTLS: no handshake without a certificate signed by the CA.
frontend mtls
    bind 127.0.0.1:{mtls_port} ssl crt {server_pem} ca-file {ca} verify required alpn h2
    default_backend temporal

# TLS on the server's side only, and an API key in the Authorization header (Temporal Cloud's way).
frontend api_key
    bind 127.0.0.1:{api_key_port} ssl crt {server_pem} alpn h2
    http-request deny deny_status 401 unless {{ req.hdr(authorization) -m str "Bearer {api_key}" }}
    default_backend temporal

backend temporal
    server temporal {temporal} proto h2
"""


@dataclass(frozen=True)
class Proxy:
    pki: Pki
    mtls: str
    api_key: str


@pytest.fixture(scope="module")
def proxy(servers: Servers, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    try:
        executable = devstack.haproxy_executable()
    except devstack.ProxyMissing as missing:
        # CI installs it (.ci/run): there, a missing HAProxy is a failure, not a skip.
        if os.environ.get("CI"):
            pytest.fail(str(missing))
        pytest.skip(str(missing))
    folder = tmp_path_factory.mktemp("tls")
    pki = make_pki(folder)
    mtls_port, api_key_port = devstack.free_port(), devstack.free_port()
    config = folder / "haproxy.cfg"
    config.write_text(
        HAPROXY_CONFIG.format(
            mtls_port=mtls_port,
            api_key_port=api_key_port,
            server_pem=pki.server_pem,
            ca=pki.ca,
            api_key=API_KEY,
            temporal=servers.temporal_address,
        )
    )
    log_path = folder / "haproxy.log"
    process = devstack.spawn(
        "haproxy-tls", [executable, "-db", "-f", str(config)], "", log_path, signal.SIGTERM
    )
    try:
        for port in (mtls_port, api_key_port):
            devstack.wait_for_port("127.0.0.1", port, devstack.STARTUP_TIMEOUT, process.popen, log_path)
        yield Proxy(pki, f"127.0.0.1:{mtls_port}", f"127.0.0.1:{api_key_port}")
    finally:
        process.stop()


def through(settings: Settings, address: str, **tls: object) -> Settings:
    fields: dict[str, object] = {
        "temporal_address": address,
        "temporal_tls": False,
        "temporal_tls_ca_file": None,
        "temporal_tls_cert_file": None,
        "temporal_tls_key_file": None,
        "temporal_tls_server_name": None,
        "temporal_api_key": None,
    }
    # Validated, so that the combination checks run as they do on a process's own settings.
    return Settings.model_validate({**settings.model_dump(), **fields, **tls})


async def works(client: Client, settings: Settings) -> None:
    """Start a workflow (no worker runs its type: it just waits), describe it, list it, end it."""
    workflow_id = f"tls-probe-{uuid.uuid4().hex[:8]}"
    handle = await client.start_workflow(
        "TlsProbe",
        id=workflow_id,
        task_queue=f"tls-{uuid.uuid4().hex[:8]}",
        execution_timeout=timedelta(minutes=1),
    )
    described = await handle.describe()
    assert described.status == WorkflowExecutionStatus.RUNNING
    assert described.id == workflow_id
    listed = [w.id async for w in client.list_workflows(f"WorkflowId = '{workflow_id}'")]
    assert listed in ([], [workflow_id])  # the visibility store may lag: the call itself must pass
    await handle.terminate("TLS probe done")


async def refused(settings: Settings, because: str) -> None:
    """The connection fails, fast, for the reason the regex ``because`` names in the SDK's error."""

    async def attempt() -> None:
        async with asyncio.timeout(REFUSAL_WITHIN):
            await works(await connect(settings), settings)

    # The SDK says it with a RuntimeError (no connection) or an RPCError (a refused call).
    with pytest.raises(Exception) as caught:  # noqa: PT011
        await attempt()
    assert not isinstance(caught.value, TimeoutError), "refused, not hung"
    assert re.search(because, str(caught.value)), caught.value


async def test_mtls_with_the_client_certificate_works(proxy: Proxy, settings: Settings) -> None:
    pki = proxy.pki
    mtls = through(
        settings,
        proxy.mtls,
        temporal_tls_ca_file=pki.ca,
        temporal_tls_cert_file=pki.client_cert,
        temporal_tls_key_file=pki.client_key,
    )
    await works(await connect(mtls), mtls)
    # The certificate's other name, given as the server name (SNI and verification).
    named = through(
        settings,
        proxy.mtls,
        temporal_tls_ca_file=pki.ca,
        temporal_tls_cert_file=pki.client_cert,
        temporal_tls_key_file=pki.client_key,
        temporal_tls_server_name="localhost",
    )
    await works(await connect(named), named)


async def test_mtls_without_a_client_certificate_is_refused(proxy: Proxy, settings: Settings) -> None:
    # HAProxy ends the handshake without a certificate it can verify; under TLS 1.3 the client learns it
    # as the alert, or as the connection closed under its first call, whichever comes first.
    await refused(through(settings, proxy.mtls, temporal_tls_ca_file=proxy.pki.ca), DROPPED)
    # Nor in clear, to the TLS port.
    await refused(through(settings, proxy.mtls), "connection closed|Transport")


async def test_a_client_trusting_another_ca_or_name_does_not_connect(
    proxy: Proxy, settings: Settings
) -> None:
    pki = proxy.pki
    certificate = {"temporal_tls_cert_file": pki.client_cert, "temporal_tls_key_file": pki.client_key}
    await refused(
        through(settings, proxy.mtls, temporal_tls_ca_file=pki.other_ca, **certificate), "UnknownIssuer"
    )
    # The system's roots do not know the throwaway CA either.
    await refused(through(settings, proxy.mtls, temporal_tls=True, **certificate), "UnknownIssuer")
    # The right CA, but a name the proxy's certificate does not carry.
    await refused(
        through(
            settings,
            proxy.mtls,
            temporal_tls_ca_file=pki.ca,
            temporal_tls_server_name="temporal.elsewhere.example",
            **certificate,
        ),
        "NotValidForName",
    )


async def test_an_api_key_is_sent_as_a_bearer_token_over_tls(proxy: Proxy, settings: Settings) -> None:
    keyed = through(
        settings, proxy.api_key, temporal_tls_ca_file=proxy.pki.ca, temporal_api_key=SecretStr(API_KEY)
    )
    await works(await connect(keyed), keyed)
    await refused(through(settings, proxy.api_key, temporal_tls_ca_file=proxy.pki.ca), "401")
    await refused(
        through(
            settings, proxy.api_key, temporal_tls_ca_file=proxy.pki.ca, temporal_api_key=SecretStr("wrong")
        ),
        "401",
    )
