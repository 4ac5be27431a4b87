"""Check that the SPIRE harness gives each simulated node its own workload identity."""

from pathlib import Path

import pytest

from harness.spire import SpireLab

CLIENT_ID = "spiffe://example.org/client"
SERVER_ID = "spiffe://example.org/server"


@pytest.mark.spire
def test_each_agent_serves_own_id(tmp_path: Path):
    with SpireLab() as lab:
        lab.register_workload(lab.node_a, CLIENT_ID)
        lab.register_workload(lab.node_b, SERVER_ID)

        lab.wait_for_svid(lab.node_a, CLIENT_ID)
        lab.wait_for_svid(lab.node_b, SERVER_ID)

        node_a_output = lab.node_a.fetch_x509()
        node_b_output = lab.node_b.fetch_x509()

        assert CLIENT_ID in node_a_output
        assert SERVER_ID not in node_a_output
        assert SERVER_ID in node_b_output
        assert CLIENT_ID not in node_b_output
        assert lab.node_a.served_spiffe_ids() == [CLIENT_ID]
        assert lab.node_b.served_spiffe_ids() == [SERVER_ID]

        lab.node_a.fetch_x509(write_dir=tmp_path)
        assert (tmp_path / "svid.0.pem").read_text().startswith("-----BEGIN CERTIFICATE-----")
        assert (tmp_path / "svid.0.key").exists()
        assert (tmp_path / "bundle.0.pem").exists()
