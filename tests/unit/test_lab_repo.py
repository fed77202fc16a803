"""Unit tests of lab.repo's pure parts: the repository container's arguments, inspect parsing,
when to recreate it, and the status line without an engine."""

from dataclasses import replace
from pathlib import Path

from lab.hosts import parse_container, parse_index
from lab.repo import (
    REPO_CONTAINER,
    RepoContainer,
    parse_repo_container,
    recreate_reason,
    repo_create_args,
    repo_paths,
    repo_url,
    spec_of,
    status_line,
)

SOURCE = Path("/work/x/.lab/standin-toolkit-repo")


def test_paths_and_url(tmp_path):
    assert repo_paths(tmp_path) == (
        tmp_path.resolve() / ".lab/standin-toolkit-repo",
        tmp_path.resolve() / ".lab/standin-toolkit-gnupg",
    )
    assert repo_url("172.17.0.5") == "http://172.17.0.5:8080"


def test_create_args_serve_read_only_and_publish_nothing():
    args = repo_create_args(SOURCE)
    joined = " ".join(args)
    assert args[0] == "create"
    assert f"--name {REPO_CONTAINER}" in joined
    assert "--label gpufleet-lab=1" in joined
    assert "--label gpufleet-lab.role=standin-toolkit-repo" in joined
    assert f"-v {SOURCE}:/srv/repo:ro" in joined
    assert "--read-only" in args and "--cap-drop ALL" in joined
    assert "-p" not in args and "--publish" not in args and "-P" not in args
    assert "--network" not in joined  # the default bridge, like the hosts
    assert joined.endswith(
        "--entrypoint python3 gpufleet-lab:debian12 -m http.server 8080 --bind 0.0.0.0 "
        "--directory /srv/repo"
    )


def test_spec_label_follows_the_settings():
    args = repo_create_args(SOURCE)
    assert len(spec_of(args)) == 16
    assert spec_of(args) == spec_of(repo_create_args(SOURCE))
    assert spec_of(args) != spec_of(repo_create_args(Path("/elsewhere")))
    assert spec_of(args) != spec_of(repo_create_args(SOURCE, port=8081))
    assert spec_of(["create"]) == ""


def _inspect(status="running", ip="172.17.0.5", source=str(SOURCE), spec="abc"):
    return {
        "Name": f"/{REPO_CONTAINER}",
        "Image": "sha256:img",
        "State": {"Status": status},
        "Config": {"Labels": {"gpufleet-lab": "1", "gpufleet-lab.spec": spec}},
        "Mounts": [{"Type": "bind", "Source": source, "Destination": "/srv/repo", "RW": False}],
        "NetworkSettings": {"IPAddress": "", "Networks": {"bridge": {"IPAddress": ip}}},
    }


def test_parse_repo_container():
    found = parse_repo_container(_inspect())
    assert found == RepoContainer("running", "sha256:img", str(SOURCE), "172.17.0.5", "abc")
    stopped = parse_repo_container(_inspect(status="exited", ip=""))
    assert (stopped.status, stopped.ip) == ("exited", "")
    bare = parse_repo_container({"NetworkSettings": {"IPAddress": "10.0.0.2"}})
    assert (bare.ip, bare.source, bare.spec, bare.status) == ("10.0.0.2", "", "", "unknown")


def test_the_host_listing_ignores_the_repo_container():
    assert parse_index(REPO_CONTAINER) is None
    assert parse_container(_inspect()) is None


def test_recreate_reason():
    args = repo_create_args(SOURCE)
    keep = RepoContainer("running", "sha256:img", str(SOURCE), "172.17.0.5", spec_of(args))
    assert recreate_reason(keep, args, "sha256:img", SOURCE) is None
    assert recreate_reason(keep, args, None, SOURCE) is None  # image unknown: keep it
    for status in ("exited", "paused"):  # `up` starts these again
        assert recreate_reason(replace(keep, status=status), args, "sha256:img", SOURCE) is None
    assert recreate_reason(None, args, "sha256:img", SOURCE) == "missing"
    dead = RepoContainer("dead", "sha256:img", str(SOURCE), "", spec_of(args))
    assert recreate_reason(dead, args, "sha256:img", SOURCE) == "it is dead"
    assert recreate_reason(keep, args, "sha256:new", SOURCE) == "the lab image changed"
    other = repo_create_args(Path("/elsewhere"))
    assert recreate_reason(keep, other, "sha256:img", Path("/elsewhere")) == (
        "its settings changed"
    )
    moved = RepoContainer("running", "sha256:img", "/old", "172.17.0.5", spec_of(args))
    assert recreate_reason(moved, args, "sha256:img", SOURCE) == "the mounted repository moved"


def test_status_line_without_engine():
    recorded = {"url": "http://172.17.0.5:8080", "fingerprint": "A" * 40}
    assert status_line(recorded, engine=False) == (
        "stand-in toolkit repo: http://172.17.0.5:8080 (no Docker engine answers)"
    )
    assert status_line(None, engine=False) == "stand-in toolkit repo: - (no Docker engine answers)"
