"""TLS with real agent processes: with --tls-cert/--tls-key/--tls-ca the mesh
port speaks mutual TLS (members join and replicate; a client without a
certificate from the CA is refused at the handshake) and the client API is
served over TLS with the same files."""

from __future__ import annotations

import datetime
import ipaddress
import json
import socket
import ssl
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from mesh.config import parse_address
from mesh.testing.agents import AgentCluster, AgentProcess, wait_until

DEADLINE = 15.0


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def make_ca(directory: Path, label: str) -> tuple[Path, Path, Path]:
    """A CA and one certificate it signed for 127.0.0.1 (server and client
    use): (ca.pem, cert.pem, key.pem)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name(f"{label} CA"))
        .issuer_name(_name(f"{label} CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(f"{label} node"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_path, cert_path, key_path = (
        directory / f"{label}-ca.pem",
        directory / f"{label}-cert.pem",
        directory / f"{label}-key.pem",
    )
    ca_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(key, key_path)
    return ca_path, cert_path, key_path


def tls_flags(files: tuple[Path, Path, Path]) -> list[str]:
    ca, cert, key = files
    return ["--tls-cert", str(cert), "--tls-key", str(key), "--tls-ca", str(ca)]


def api(agent: AgentProcess, ca: Path, method: str, path: str, **kw: Any) -> Any:
    context = ssl.create_default_context(cafile=str(ca))
    with httpx.Client(verify=context, timeout=5.0) as http:
        return http.request(method, f"https://{agent.http_addr}{path}", **kw)


def alive(agent: AgentProcess, ca: Path) -> set[str]:
    try:
        members = api(agent, ca, "GET", "/v1/members").json()["members"]
    except httpx.HTTPError:
        return set()
    return {m["name"] for m in members if m["status"] == "alive"}


def ping_without_certificate(host: str, port: int, ca: Path) -> None:
    """A TLS client that trusts the CA but has no certificate of its own."""
    context = ssl.create_default_context(cafile=str(ca))
    with (
        socket.create_connection((host, port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=host) as tls,
    ):
        tls.sendall(b"GET /mesh/v1/ping?name=node1 HTTP/1.1\r\nHost: x\r\n\r\n")
        if not tls.recv(1024):
            raise ConnectionError("closed without an answer")


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, tuple[Path, Path, Path]]:
    return {"good": make_ca(tmp_path, "good"), "rogue": make_ca(tmp_path, "rogue")}


def test_mutual_tls_mesh(
    cluster: AgentCluster, pki: dict[str, tuple[Path, Path, Path]]
) -> None:
    flags = tls_flags(pki["good"])
    ca = pki["good"][0]
    agents = [cluster.add(f"node{i}", extra=flags) for i in (1, 2, 3)]
    names = {a.name for a in agents}
    wait_until(lambda: all(alive(a, ca) == names for a in agents), DEADLINE)
    put = api(agents[0], ca, "PUT", "/v1/routes/svc.tls", json={"target": "http://t"})
    assert put.status_code == 200

    def replicated() -> bool:
        return all(
            api(a, ca, "GET", "/v1/routes/svc.tls").status_code == 200 for a in agents
        )

    wait_until(replicated, DEADLINE, what="route pushed over mutual TLS")
    # A client without a certificate: the handshake on the mesh port fails.
    host, port = parse_address(agents[0].mesh_addr)
    with pytest.raises((ssl.SSLError, ConnectionError)):
        ping_without_certificate(host, port, ca)
    # Plain HTTP on the mesh port gets nothing either.
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://{agents[0].mesh_addr}/mesh/v1/ping?name=node1", timeout=5)
    # A member whose certificate another CA signed cannot join.
    rogue = cluster.add(
        "rogue", join=[agents[0].mesh_addr], extra=tls_flags(pki["rogue"])
    )
    rogue_ca = pki["rogue"][0]

    def join_failed() -> bool:
        text = api(rogue, rogue_ca, "GET", "/metrics").text
        sample = 'mesh_exchanges_total{purpose="join",result="failed"} '
        return any(
            line.startswith(sample) and float(line.split()[-1]) >= 1
            for line in text.splitlines()
        )

    wait_until(join_failed, DEADLINE, what="the rogue's join refused")
    assert alive(rogue, rogue_ca) == {"rogue"}
    for agent in agents:
        assert alive(agent, ca) == names


def test_without_tls_ca_join_failure_says_why_and_cli_trusts_tls_ca(
    cluster: AgentCluster,
    pki: dict[str, tuple[Path, Path, Path]],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ca, cert, key = pki["good"]
    # Server TLS only: peers verify against the system trust store, which
    # does not know a private CA, so the second member cannot join ...
    flags = ["--tls-cert", str(cert), "--tls-key", str(key)]
    first = cluster.add("first", extra=flags)
    second = cluster.add("second", join=[first.mesh_addr], extra=flags)
    assert second.log_path is not None
    log = Path(second.log_path)

    def reason_logged() -> bool:
        return any(
            "join attempt failed" in line and "certificate verify failed" in line
            for line in log.read_text().splitlines()
        )

    # ... and its log says why (the TLS verification error), at info.
    wait_until(reason_logged, DEADLINE, what="the join failure's reason logged")

    # The client commands verify the agent against --tls-ca (or MESH_TLS_CA).
    from mesh.cli import main

    monkeypatch.delenv("MESH_TLS_CA", raising=False)
    url = f"https://{first.http_addr}"
    assert main(["members", "--http", url, "--json"]) == 1
    _, err = capsys.readouterr()
    assert "certificate verify failed" in err, err
    assert main(["members", "--http", url, "--tls-ca", str(ca), "--json"]) == 0
    out, _ = capsys.readouterr()
    assert "first" in {m["name"] for m in json.loads(out)["members"]}
    monkeypatch.setenv("MESH_TLS_CA", str(ca))
    assert main(["members", "--http", url, "--json"]) == 0
    capsys.readouterr()
    assert main(["members", "--http", url, "--tls-ca", "/nonexistent.pem"]) == 1
    _, err = capsys.readouterr()
    assert err.startswith("mesh: error: --tls-ca: no such file"), err
