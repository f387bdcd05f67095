from __future__ import annotations

from pathlib import Path

from tests.integration.conftest import RunningCoordinator, enrol_site, wait_for


def test_enrol_connect_list(coord: RunningCoordinator, tmp_path: Path, run_site) -> None:
    s = enrol_site(coord, "hospital-a", tmp_path / "a")
    site = run_site(s.site_dir)
    wait_for(lambda: site.status().get("connected") is True, what="site connected")
    with coord.admin() as admin:
        assert admin.health() == "SERVING"
        sites = admin.list_sites()
    assert [x.site_id for x in sites] == ["hospital-a"]
    assert sites[0].connected
