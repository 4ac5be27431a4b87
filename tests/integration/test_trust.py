"""Trust decisions on real SPIRE 1.15.3: federation, X.509 CA rotation, several SVIDs.

The federation tests set and delete the other.org bundle on the session
lab's server. The deletion test must come after the other two, as it does
in file order, and the fixture removes what is left. CA rotation taints and
revokes an authority, so it runs on a SPIRE server of its own.
"""

from __future__ import annotations

import http.client
import itertools
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest
import yaml
from cryptography import x509

from harness.proxy import ProxyProcess, free_port, inbound_config, outbound_config
from harness.spire import (
    CommandError,
    SpireAgent,
    SpireLab,
    SpireServer,
    make_workdir,
    run_command,
)
from tests.integration.conftest import (
    CLIENT_ID,
    SvidFiles,
    raw_exchange,
    tls_client_context,
    write_svid,
)

pytestmark = pytest.mark.spire

UPDATE_LINE = "New X.509 identity"
OTHER_ORG_ID = "spiffe://other.org"
PARTNER_ID = "spiffe://other.org/partner"
FEDERATED_SERVER_ID = "spiffe://example.org/federated-server"
MULTI_A_ID = "spiffe://example.org/multi-a"
MULTI_B_ID = "spiffe://example.org/multi-b"
ROTATION_CLIENT_ID = "spiffe://example.org/rotation-client"
ROTATION_SERVER_ID = "spiffe://example.org/rotation-server"
WITNESS_ID = "spiffe://example.org/rotation-witness"

# SPIRE 1.15.3 backdates an X.509-SVID's NotBefore by 10 s and the agent
# renews it at half that lifetime, so a 30 s TTL is renewed about 10 s after
# issue. The CA rotation test thus runs across natural renewals as well as
# the renewals that a taint forces.
ROTATION_SVID_TTL_SECONDS = 30
# The witness SVID gets SPIRE's default TTL (1 h) instead, so that its
# certificate is still valid when the old authority is revoked, and so that
# only a taint can make the agent replace it during the test.

# A bundle or entry change reaches an agent within the server's entry cache
# reload (5 s) plus the agent's sync interval (5 s). Measured: 4-6 s with
# these tests on a 2-core machine. The margin is for a loaded CI machine.
PROPAGATION_TIMEOUT_SECONDS = 30.0
# After activate, an agent switches to the new authority only at its next
# renewal, which comes within one TTL.
RENEWAL_TIMEOUT_SECONDS = ROTATION_SVID_TTL_SECONDS + 15.0
# The agent pushes an update to every Workload API stream at once, so a
# proxy receives it well within a second of the agent CLI.
PROXY_UPDATE_TIMEOUT_SECONDS = 10.0
# The inbound proxy logs one rejection per peer host and reason kind per
# 10 s window, so waiting for a specific line may need a second attempt.
REJECTION_LOG_TIMEOUT_SECONDS = 15.0
POLL_INTERVAL_SECONDS = 0.25

T = TypeVar("T")


# Polling and log helpers.


def wait_until(
    check: Callable[[], T], timeout: float, what: str, accept: Callable[[T], object] = bool
) -> T:
    """Call ``check`` until ``accept`` is true for its result, and return that result.

    The test fails with ``what`` and the last result after ``timeout`` seconds.
    A CommandError counts as a result that is not accepted.
    """
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            last = check()
        except CommandError as error:
            last = error
        else:
            if accept(last):
                return last
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}; last result: {last}")
        time.sleep(POLL_INTERVAL_SECONDS)


def identity_lines(proxy: ProxyProcess) -> list[str]:
    return [line for line in proxy.log_text().splitlines() if UPDATE_LINE in line]


def wait_for_identity_update(proxy: ProxyProcess, seen_before: int) -> str:
    """Wait until ``proxy`` logs more identity updates than ``seen_before`` and return the last one."""
    lines = wait_until(
        lambda: identity_lines(proxy)[seen_before:],
        PROXY_UPDATE_TIMEOUT_SECONDS,
        f"a new '{UPDATE_LINE}' line in {proxy.log_path}",
    )
    return lines[-1]


# TLS clients of the inbound proxy.


def get_directly(port: int, svid: SvidFiles, path: str) -> tuple[bytes, dict]:
    """Send one GET over mTLS with ``svid`` and return the status line and the echo app's JSON."""
    reply = raw_exchange(port, svid, f"GET {path} HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n".encode())
    head, _, body = reply.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0]
    return status_line, json.loads(body) if status_line.startswith(b"HTTP/1.1 200") else {}


def assert_accepted(port: int, svid: SvidFiles, spiffe_id: str, path: str) -> None:
    status_line, seen = get_directly(port, svid, path)
    assert status_line == b"HTTP/1.1 200 OK"
    assert seen["headers"]["X-Peer-Spiffe-Id"] == [spiffe_id]


def handshake_rejected(port: int, svid: SvidFiles) -> bool:
    """Return True when an exchange with ``svid`` fails, as it does when the proxy rejects the handshake."""
    try:
        raw_exchange(port, svid, b"GET / HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n")
    except OSError:
        return True
    return False


def wait_for_rejection_line(proxy: ProxyProcess, port: int, svid: SvidFiles, line: str) -> None:
    """Repeat rejected handshakes until ``proxy`` logs ``line``, because repeated lines are held back."""

    def rejected_and_logged() -> bool:
        assert handshake_rejected(port, svid), f"the handshake with {svid.cert} was accepted"
        return line in proxy.log_text()

    wait_until(rejected_and_logged, REJECTION_LOG_TIMEOUT_SECONDS, f"'{line}' in {proxy.log_path}")


def presented_certificate(port: int, svid: SvidFiles) -> x509.Certificate:
    """Complete a handshake with the inbound proxy and return the leaf certificate it presented."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as plain:
        with tls_client_context(svid).wrap_socket(plain) as tls:
            der = tls.getpeercert(binary_form=True)
    return x509.load_der_x509_certificate(der)


def uri_sans(cert: x509.Certificate) -> list[str]:
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return names.get_values_for_type(x509.UniformResourceIdentifier)


# What an agent serves, read with the spire-agent CLI.


def fetch_response(agent: SpireAgent) -> dict:
    """Return the agent's X509SVIDResponse for this process, as the CLI prints it in JSON."""
    output = run_command(
        [agent.executable, "api", "fetch", "x509", "-output", "json", "-socketPath", str(agent.socket_path)]
    )
    return json.loads(output)


def federated_trust_domains(agent: SpireAgent) -> set[str]:
    return set(fetch_response(agent).get("federated_bundles", {}))


@dataclass(frozen=True)
class AgentView:
    """The first SVID an agent serves and the X.509 authorities of its own trust domain."""

    svid: SvidFiles
    leaf: x509.Certificate
    authority_ids: frozenset[str]

    @property
    def issuer_id(self) -> str:
        return authority_key_id(self.leaf)

    def __repr__(self) -> str:
        return (
            f"AgentView(SVID {uri_sans(self.leaf)} issued by {self.issuer_id}, "
            f"expires {self.leaf.not_valid_after_utc.isoformat()}, bundle authorities {sorted(self.authority_ids)})"
        )


def view_agent(agent: SpireAgent, directory: Path) -> AgentView:
    svid = write_svid(agent, directory)
    leaf = x509.load_pem_x509_certificate(svid.cert.read_bytes())
    roots = x509.load_pem_x509_certificates(svid.bundle.read_bytes())
    return AgentView(svid, leaf, frozenset(subject_key_id(root) for root in roots))


def subject_key_id(cert: x509.Certificate) -> str:
    # SPIRE names an X.509 authority by the hex subject key ID of its CA certificate.
    return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest.hex()


def authority_key_id(cert: x509.Certificate) -> str:
    return cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier.hex()


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


# Federation: an example.org workload that also trusts other.org.


@dataclass
class Federation:
    """The federated inbound proxy, and the other.org agent that serves its client."""

    partner_agent: SpireAgent
    proxy: ProxyProcess
    port: int


@pytest.fixture(scope="module")
def partner_agent(lab):
    """An agent of an other.org server of this module's own, serving PARTNER_ID."""
    workdirs = [make_workdir("fed-other"), make_workdir("fed-partner")]
    server = SpireServer(workdirs[0], "other.org", lab.bin_dir)
    agent: SpireAgent | None = None
    try:
        server.start()
        agent = SpireAgent(workdirs[1], server, server.join_token(), lab.bin_dir)
        agent.start()
        server.create_entry(PARTNER_ID, parent_id=agent.spiffe_id, selectors=[f"unix:uid:{os.getuid()}"])
        lab.wait_for_svid(agent, PARTNER_ID)
        yield agent
    finally:
        if agent is not None:
            agent.stop()
        server.stop()
        if os.environ.get("E5S_KEEP_SPIRE") != "1":
            for directory in workdirs:
                shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def federation(lab, partner_agent, app_port, workdir):
    """An inbound proxy whose entry federates with other.org, on a new node of the session lab."""
    entry_id: str | None = None
    try:
        lab.server.bundle_set("other.org", partner_agent.server.bundle_pem())
        agent = lab.add_agent("node-fed")
        entry_id = lab.server.create_entry(
            FEDERATED_SERVER_ID,
            parent_id=agent.spiffe_id,
            selectors=[f"unix:uid:{os.getuid()}"],
            federates_with=[OTHER_ORG_ID],
        )
        lab.wait_for_svid(agent, FEDERATED_SERVER_ID)
        wait_until(
            lambda: federated_trust_domains(agent),
            PROPAGATION_TIMEOUT_SECONDS,
            "node-fed to serve the other.org bundle",
            accept=lambda served: OTHER_ORG_ID in served,
        )
        port = free_port()
        config = inbound_config(
            agent.socket_path, port, app_port, allowed_client_trust_domain=["example.org", "other.org"]
        )
        with ProxyProcess(workdir, "trust-federated-inbound", config).start((port,)) as proxy:
            yield Federation(partner_agent, proxy, port)
    finally:
        # The default mode, restrict, fails while an entry still federates
        # with the trust domain, and dissociate removes those references.
        try:
            lab.server.run("bundle", "delete", "-id", OTHER_ORG_ID, "-mode", "dissociate")
        except CommandError:
            pass  # the deletion test already deleted it
        if entry_id is not None:
            lab.server.delete_entry(entry_id)


def test_federated_client_accepted(federation, svid_files):
    identity = identity_lines(federation.proxy)[-1]
    assert "other.org" in identity

    assert_accepted(federation.port, svid_files(federation.partner_agent), PARTNER_ID, "/federated")


def test_unfederated_proxy_rejects_other_org(inbound, federation, svid_files):
    # The session proxy's entry does not federate with other.org, so its
    # agent sends it no other.org bundle even though the server has one.
    wait_for_rejection_line(
        inbound.proxy,
        inbound.port,
        svid_files(federation.partner_agent),
        f"presented SPIFFE ID {PARTNER_ID}: no bundle for trust domain 'other.org'",
    )


def test_bundle_delete_ends_federated_trust(lab, federation, svid_files):
    partner = svid_files(federation.partner_agent)
    assert_accepted(federation.port, partner, PARTNER_ID, "/before-delete")
    updates_before = len(identity_lines(federation.proxy))

    # The default mode, restrict, fails while an entry federates with the
    # trust domain ("cannot delete bundle; federated with 1 registration
    # entries"), so dissociate the entry in the same call.
    lab.server.run("bundle", "delete", "-id", OTHER_ORG_ID, "-mode", "dissociate")
    wait_until(
        lambda: federated_trust_domains(lab.agents["node-fed"]),
        PROPAGATION_TIMEOUT_SECONDS,
        "node-fed to stop serving the other.org bundle",
        accept=lambda served: OTHER_ORG_ID not in served,
    )
    identity = wait_for_identity_update(federation.proxy, updates_before)
    assert "other.org" not in identity

    assert handshake_rejected(federation.port, partner)
    wait_for_rejection_line(
        federation.proxy,
        federation.port,
        partner,
        f"presented SPIFFE ID {PARTNER_ID}: no bundle for trust domain 'other.org'",
    )
    assert_accepted(federation.port, svid_files(lab.node_a), CLIENT_ID, "/after-delete")


# X.509 CA rotation on a SPIRE server of its own.


class Traffic:
    """Requests through an outbound proxy on a thread: each round one keep-alive and one new connection."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sent = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="trust-traffic", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def _request(self, connection: http.client.HTTPConnection, path: str) -> None:
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            response.read()
        except (OSError, http.client.HTTPException) as error:
            self.failures.append(f"{path}: {error!r}")
            connection.close()
            return
        finally:
            self.sent += 1
        if response.status != 200:
            self.failures.append(f"{path}: status {response.status}")

    def _run(self) -> None:
        keep_alive = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        round_number = 0
        while not self._stop.is_set():
            # After a failure the keep-alive connection is closed, and
            # http.client opens a new one on the next request.
            self._request(keep_alive, f"/ca/keep-alive/{round_number}")
            fresh = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            self._request(fresh, f"/ca/new/{round_number}")
            fresh.close()
            round_number += 1
            self._stop.wait(0.05)
        keep_alive.close()


def show_authorities(server: SpireServer) -> dict:
    return json.loads(server.run("localauthority", "x509", "show", "-output", "json"))


def test_ca_rotation_keeps_traffic(app_port, tmp_path, start_proxy):
    # Prepare, activate, taint and revoke under traffic: no request fails, and
    # after revoke the old authority's SVIDs are rejected.

    with SpireLab() as rotation:
        client_agent, server_agent = rotation.node_a, rotation.node_b
        witness_agent = rotation.add_agent("node-witness")
        rotation.register_workload(client_agent, ROTATION_CLIENT_ID, x509_svid_ttl=ROTATION_SVID_TTL_SECONDS)
        rotation.register_workload(server_agent, ROTATION_SERVER_ID, x509_svid_ttl=ROTATION_SVID_TTL_SECONDS)
        rotation.register_workload(witness_agent, WITNESS_ID)
        for agent, spiffe_id in (
            (client_agent, ROTATION_CLIENT_ID),
            (server_agent, ROTATION_SERVER_ID),
            (witness_agent, WITNESS_ID),
        ):
            rotation.wait_for_svid(agent, spiffe_id)
        server = rotation.server
        view_numbers = itertools.count()

        def view(agent: SpireAgent) -> AgentView:
            return view_agent(agent, tmp_path / f"view-{next(view_numbers)}")

        def wait_for_view(
            agent: SpireAgent, accept: Callable[[AgentView], bool], timeout: float, what: str
        ) -> AgentView:
            return wait_until(lambda: view(agent), timeout, f"{agent.workdir.name} to {what}", accept)

        inbound_port, outbound_port = free_port(), free_port()
        inbound = start_proxy(
            "trust-ca-inbound", inbound_config(server_agent.socket_path, inbound_port, app_port), inbound_port
        )
        outbound = start_proxy(
            "trust-ca-outbound",
            outbound_config(
                client_agent.socket_path, outbound_port, inbound_port, expected_server_spiffe_id=ROTATION_SERVER_ID
            ),
            outbound_port,
        )
        traffic = Traffic(outbound_port)
        traffic.start()
        sent_by_step: dict[str, int] = {}
        try:
            # Before: one authority, and a witness SVID issued by it, kept in files.
            old_id = show_authorities(server)["active"]["authority_id"]
            witness = view(witness_agent)
            assert witness.issuer_id == old_id
            assert_accepted(inbound_port, witness.svid, WITNESS_ID, "/ca/witness-before")
            sent_by_step["before"] = traffic.sent

            # Prepare: the new authority joins the bundle and signs nothing yet.
            updates = {proxy: len(identity_lines(proxy)) for proxy in (inbound, outbound)}
            new_id = json.loads(server.run("localauthority", "x509", "prepare", "-output", "json"))[
                "prepared_authority"
            ]["authority_id"]
            assert new_id != old_id
            for agent in (client_agent, server_agent):
                wait_for_view(
                    agent,
                    lambda current: current.authority_ids == {old_id, new_id},
                    PROPAGATION_TIMEOUT_SECONDS,
                    "serve a bundle with both authorities",
                )
            for proxy, seen_before in updates.items():
                wait_for_identity_update(proxy, seen_before)
            assert_accepted(inbound_port, witness.svid, WITNESS_ID, "/ca/witness-prepared")
            sent_by_step["prepare"] = traffic.sent

            # Activate: renewed SVIDs come from the new authority, and the
            # old authority's SVIDs stay valid.
            server.run("localauthority", "x509", "activate", "-authorityID", new_id)
            renewed_client = wait_for_view(
                client_agent,
                lambda current: current.issuer_id == new_id,
                RENEWAL_TIMEOUT_SECONDS,
                "renew its SVID from the new authority",
            )
            assert_accepted(inbound_port, renewed_client.svid, ROTATION_CLIENT_ID, "/ca/new-authority")
            assert_accepted(inbound_port, witness.svid, WITNESS_ID, "/ca/witness-activated")
            sent_by_step["activate"] = traffic.sent

            # Taint: the agents replace every SVID the old authority signed.
            # The witness SVID has a 1 h TTL, so its replacement within
            # seconds shows the taint, not a renewal at half-life.
            server.run("localauthority", "x509", "taint", "-authorityID", old_id)
            rotated = {}
            for agent in (witness_agent, client_agent, server_agent):
                rotated[agent] = wait_for_view(
                    agent,
                    lambda current: current.issuer_id == new_id,
                    PROPAGATION_TIMEOUT_SECONDS,
                    "serve an SVID of the new authority",
                )
            wait_until(
                lambda: authority_key_id(presented_certificate(inbound_port, rotated[client_agent].svid)),
                PROXY_UPDATE_TIMEOUT_SECONDS,
                "the inbound proxy to present an SVID of the new authority",
                accept=lambda issuer_id: issuer_id == new_id,
            )
            client_expiry = rotated[client_agent].leaf.not_valid_after_utc.isoformat()
            wait_until(
                lambda: identity_lines(outbound)[-1],
                PROXY_UPDATE_TIMEOUT_SECONDS,
                f"the outbound proxy to log the client SVID that expires {client_expiry}",
                accept=lambda line: f"expires {client_expiry}" in line,
            )
            # A tainted authority is still in the bundle until it is revoked.
            assert_accepted(inbound_port, witness.svid, WITNESS_ID, "/ca/witness-tainted")
            sent_by_step["taint"] = traffic.sent

            # Revoke: the old authority leaves the bundle, and the proxy
            # rejects its SVIDs from the next handshake on.
            updates = {proxy: len(identity_lines(proxy)) for proxy in (inbound, outbound)}
            server.run("localauthority", "x509", "revoke", "-authorityID", old_id)
            for agent in (client_agent, server_agent):
                wait_for_view(
                    agent,
                    lambda current: current.authority_ids == {new_id},
                    PROPAGATION_TIMEOUT_SECONDS,
                    "serve a bundle without the old authority",
                )
            for proxy, seen_before in updates.items():
                wait_for_identity_update(proxy, seen_before)
            assert witness.leaf.not_valid_after_utc.timestamp() > time.time()
            assert handshake_rejected(inbound_port, witness.svid)
            wait_for_rejection_line(
                inbound,
                inbound_port,
                witness.svid,
                f"presented SPIFFE ID {WITNESS_ID}: certificate chain does not verify against the bundle of "
                "'example.org'",
            )
            assert_accepted(inbound_port, view(witness_agent).svid, WITNESS_ID, "/ca/new-witness-after-revoke")
            assert_accepted(inbound_port, view(client_agent).svid, ROTATION_CLIENT_ID, "/ca/after-revoke")
            sent_by_step["revoke"] = traffic.sent
        finally:
            traffic.stop()

    assert traffic.failures == []
    steps = list(sent_by_step.values())
    assert all(later > earlier for earlier, later in zip(steps, steps[1:])), sent_by_step


# Several SVIDs for one workload.


@pytest.fixture(scope="module")
def multi_agent(lab):
    """An agent that serves two SVIDs, multi-a and multi-b, to the same process."""
    agent = lab.add_agent("node-multi")
    entry_ids = [lab.register_workload(agent, spiffe_id) for spiffe_id in (MULTI_A_ID, MULTI_B_ID)]
    try:
        wait_until(
            agent.served_spiffe_ids,
            PROPAGATION_TIMEOUT_SECONDS,
            "node-multi to serve both multi-a and multi-b",
            accept=lambda served: {MULTI_A_ID, MULTI_B_ID} <= set(served),
        )
        yield agent
    finally:
        for entry_id in entry_ids:
            lab.server.delete_entry(entry_id)


@pytest.mark.parametrize("spiffe_id", [MULTI_A_ID, MULTI_B_ID])
def test_svid_spiffe_id_selects_served_svid(multi_agent, lab, app_port, start_proxy, svid_files, spiffe_id):
    port = free_port()
    config = inbound_config(multi_agent.socket_path, port, app_port)
    config["spire"]["svid_spiffe_id"] = spiffe_id
    start_proxy(f"trust-{spiffe_id.rsplit('/', 1)[1]}", config, port)

    client = svid_files(lab.node_a)
    assert uri_sans(presented_certificate(port, client)) == [spiffe_id]
    assert_accepted(port, client, CLIENT_ID, "/multi")


def test_svid_spiffe_id_not_served_fails_start(multi_agent, app_port, workdir):
    missing_id = "spiffe://example.org/multi-missing"
    config = inbound_config(multi_agent.socket_path, free_port(), app_port)
    config["spire"]["svid_spiffe_id"] = missing_id
    config["spire"]["initial_fetch_timeout"] = "3s"
    path = write_config(workdir / "trust-multi-missing.yaml", config)

    result = subprocess.run(
        [sys.executable, "-m", "e5s_proxy.cli", "run", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert missing_id in result.stderr
    assert MULTI_A_ID in result.stderr
    assert MULTI_B_ID in result.stderr
