from minictr.runtime import idmap


def test_single_id_map_without_helpers(tmp_path):
    u, g = idmap.rootless_mappings(uid=1234, gid=555, have_helpers=False)
    assert u == [{"containerID": 0, "hostID": 1234, "size": 1}]
    assert g == [{"containerID": 0, "hostID": 555, "size": 1}]


def test_subordinate_range_maps_the_rest(tmp_path):
    (tmp_path / "subuid").write_text("other:1:5\n1234:100000:65536\n")
    (tmp_path / "subgid").write_text("1234:200000:65536\n")
    u, g = idmap.rootless_mappings(uid=1234, gid=555, subuid=str(tmp_path / "subuid"),
                                   subgid=str(tmp_path / "subgid"), have_helpers=True)
    assert u == [{"containerID": 0, "hostID": 1234, "size": 1},
                 {"containerID": 1, "hostID": 100000, "size": 65536}]
    assert g[1] == {"containerID": 1, "hostID": 200000, "size": 65536}


def test_range_ignored_without_newuidmap(tmp_path):
    (tmp_path / "subuid").write_text("1234:100000:65536\n")
    (tmp_path / "subgid").write_text("1234:200000:65536\n")
    u, _ = idmap.rootless_mappings(uid=1234, gid=555, subuid=str(tmp_path / "subuid"),
                                   subgid=str(tmp_path / "subgid"), have_helpers=False)
    assert len(u) == 1


def test_keep_id_with_range_covers_ids_around_own(tmp_path):
    (tmp_path / "subuid").write_text("1234:100000:65536\n")
    (tmp_path / "subgid").write_text("1234:200000:65536\n")
    u, _ = idmap.rootless_mappings("keep-id", uid=1234, gid=555,
                                   subuid=str(tmp_path / "subuid"),
                                   subgid=str(tmp_path / "subgid"), have_helpers=True)
    assert u[0] == {"containerID": 1234, "hostID": 1234, "size": 1}
    assert {"containerID": 0, "hostID": 100000, "size": 1234} in u
    assert {"containerID": 1235, "hostID": 101234, "size": 65536 - 1234} in u
    covered = sum(m["size"] for m in u)
    assert covered == 65537


def test_keep_id_single():
    u, g = idmap.rootless_mappings("keep-id", uid=1234, gid=555, have_helpers=False)
    assert u == [{"containerID": 1234, "hostID": 1234, "size": 1}]
