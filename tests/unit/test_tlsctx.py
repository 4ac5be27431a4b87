"""Handshakes between the inbound and outbound TLS creators, pumped in memory."""

from __future__ import annotations

import pytest
from OpenSSL import SSL

from e5s_proxy.spiffeid import SpiffeId
from e5s_proxy.svid import ChainVerifier, authorize_ids, authorize_trust_domains
from e5s_proxy.tlsctx import ClientConnectionCreator, ServerConnectionCreator, build_client_context, describe_tls_error
from tests.pki import make_authority, make_snapshot

EXAMPLE = make_authority("example.org")
OTHER = make_authority("other.org")
SERVER_ID = "spiffe://example.org/server"
CLIENT_ID = "spiffe://example.org/client"


class FakeTLSProtocol:
    """Stands in for Twisted's TLSMemoryBIOProtocol as the connection's app data."""


def handshake(server: SSL.Connection, client: SSL.Connection) -> tuple[Exception | None, Exception | None]:
    """Pump both ends until each finishes or fails; return each side's error."""
    errors: dict[str, Exception | None] = {"server": None, "client": None}
    done = {"server": False, "client": False}
    for _ in range(20):
        for name, connection in (("client", client), ("server", server)):
            if done[name] or errors[name]:
                continue
            try:
                connection.do_handshake()
                done[name] = True
            except SSL.WantReadError:
                pass
            except SSL.Error as error:
                errors[name] = error
        for source, target in ((client, server), (server, client)):
            try:
                data = source.bio_read(65536)
            except SSL.WantReadError:
                continue
            target.bio_write(data)
        if (done["server"] or errors["server"]) and (done["client"] or errors["client"]):
            break
    # TLS 1.3 clients finish before the server checks their certificate:
    # the server's alert shows up on the client's first read.
    if errors["server"] and not errors["client"]:
        try:
            client.recv(1)
        except SSL.Error as error:
            errors["client"] = error
    return errors["server"], errors["client"]


def connect(server_creator, client_snapshot, authorizer=None, server_name="server.example"):
    authorizer = authorizer or authorize_ids([SpiffeId("example.org", "/server")])
    client_creator = ClientConnectionCreator(
        ChainVerifier(client_snapshot.bundles), build_client_context(client_snapshot), authorizer, server_name
    )
    server_protocol = FakeTLSProtocol()
    server = server_creator.serverConnectionForTLS(server_protocol)
    server.set_accept_state()
    client = client_creator.clientConnectionForTLS(FakeTLSProtocol())
    client.set_connect_state()
    server_error, client_error = handshake(server, client)
    return server_creator.verdict_for(server_protocol), client_creator.verdict, server_error, client_error


def test_inbound_accepts_allowed_client():
    creator = ServerConnectionCreator(make_snapshot(EXAMPLE, SERVER_ID), authorize_trust_domains(["example.org"]))
    server_verdict, _, server_error, _ = connect(creator, make_snapshot(EXAMPLE, CLIENT_ID))
    assert server_error is None
    assert server_verdict.spiffe_id == SpiffeId("example.org", "/client")


def test_outbound_verifies_server_id():
    creator = ServerConnectionCreator(make_snapshot(EXAMPLE, SERVER_ID), authorize_trust_domains(["example.org"]))
    _, client_verdict, _, client_error = connect(creator, make_snapshot(EXAMPLE, CLIENT_ID))
    assert client_error is None
    assert client_verdict.spiffe_id == SpiffeId("example.org", "/server")


def test_inbound_rejects_client_outside_allowed_ids():
    creator = ServerConnectionCreator(
        make_snapshot(EXAMPLE, SERVER_ID), authorize_ids([SpiffeId("example.org", "/someone-else")])
    )
    server_verdict, _, server_error, client_error = connect(creator, make_snapshot(EXAMPLE, CLIENT_ID))
    assert server_error is not None
    assert client_error is not None
    assert server_verdict.presented_id == SpiffeId("example.org", "/client")
    assert "not one of the allowed IDs" in server_verdict.error


def test_inbound_rejects_client_of_unknown_trust_domain():
    creator = ServerConnectionCreator(make_snapshot(EXAMPLE, SERVER_ID), authorize_trust_domains(["example.org"]))
    # The client trusts example.org so that it accepts the server.
    foreign = make_snapshot(OTHER, "spiffe://other.org/client", EXAMPLE)
    server_verdict, _, server_error, _ = connect(creator, foreign)
    assert server_error is not None
    assert "no bundle for trust domain 'other.org'" in server_verdict.error


def test_inbound_rejects_client_without_certificate():
    creator = ServerConnectionCreator(make_snapshot(EXAMPLE, SERVER_ID), authorize_trust_domains(["example.org"]))
    context = SSL.Context(SSL.TLS_METHOD)
    context.set_verify(SSL.VERIFY_NONE, lambda *args: True)
    server_protocol = FakeTLSProtocol()
    server = creator.serverConnectionForTLS(server_protocol)
    server.set_accept_state()
    client = SSL.Connection(context, None)
    client.set_connect_state()
    server_error, _ = handshake(server, client)
    assert server_error is not None
    assert creator.verdict_for(server_protocol).spiffe_id is None


def test_outbound_rejects_server_with_wrong_id():
    creator = ServerConnectionCreator(make_snapshot(EXAMPLE, "spiffe://example.org/impostor"), authorize_trust_domains(["example.org"]))
    _, client_verdict, _, client_error = connect(creator, make_snapshot(EXAMPLE, CLIENT_ID))
    assert client_error is not None
    assert client_verdict.presented_id == SpiffeId("example.org", "/impostor")


def test_inbound_update_serves_new_svid_to_new_connections():
    creator = ServerConnectionCreator(make_snapshot(EXAMPLE, SERVER_ID), authorize_trust_domains(["example.org"]))
    creator.update(make_snapshot(EXAMPLE, "spiffe://example.org/rotated"))
    authorizer = authorize_ids([SpiffeId("example.org", "/rotated")])
    _, client_verdict, _, client_error = connect(creator, make_snapshot(EXAMPLE, CLIENT_ID), authorizer)
    assert client_verdict.spiffe_id == SpiffeId("example.org", "/rotated")


def test_inbound_update_replaces_bundles():
    creator = ServerConnectionCreator(make_snapshot(EXAMPLE, SERVER_ID, OTHER), authorize_trust_domains(["other.org"]))
    creator.update(make_snapshot(EXAMPLE, SERVER_ID))
    foreign = make_snapshot(OTHER, "spiffe://other.org/client", EXAMPLE)
    server_verdict, _, server_error, _ = connect(creator, foreign)
    assert "no bundle for trust domain 'other.org'" in server_verdict.error


@pytest.mark.parametrize("version", [SSL.TLS1_2_VERSION])
def test_inbound_rejects_old_tls_versions(version):
    creator = ServerConnectionCreator(make_snapshot(EXAMPLE, SERVER_ID), authorize_trust_domains(["example.org"]))
    snapshot = make_snapshot(EXAMPLE, CLIENT_ID)
    context = build_client_context(snapshot)
    context.set_max_proto_version(version)
    context.set_min_proto_version(version)
    client_creator = ClientConnectionCreator(
        ChainVerifier(snapshot.bundles), context, authorize_trust_domains(["example.org"]), None
    )
    server = creator.serverConnectionForTLS(FakeTLSProtocol())
    server.set_accept_state()
    client = client_creator.clientConnectionForTLS(FakeTLSProtocol())
    client.set_connect_state()
    server_error, _ = handshake(server, client)
    assert server_error is not None


def test_describe_tls_error_joins_reasons():
    error = SSL.Error([("SSL routines", "", "tlsv1 alert unknown ca"), ("SSL routines", "", "second")])
    assert describe_tls_error(error) == "tlsv1 alert unknown ca; second"


def test_describe_tls_error_other_exception():
    assert describe_tls_error(ValueError("plain")) == "plain"
