"""Build and run ``docker/compose.yaml`` with podman, where no compose engine is at hand.

``python -m demo.containers build|up|down|status [--project P]``. The compose
file stays the one source of truth: this reads its services (image, build,
command/entrypoint, user, volumes, ports, read-only root, tmpfs, dropped
capabilities, security options, restart policy, health checks, depends_on
with conditions) and runs each as one podman container on a project network
where the service name resolves — what ``docker compose up`` does, without a
daemon, a compose plugin or systemd.

Why not podman-compose: with the podman of Debian 12 (4.3) it ignores
``condition: service_healthy`` and cannot run health checks without systemd,
so the one-shot ``enrol`` raced the TPM. Here health checks are run by the
runner itself (``podman exec`` of the service's own ``test`` command, at its
``interval``, within ``start_period + retries · interval``) and a dependency
is started only once its condition holds.

Host facts this works around, each configurable:

* no image registry is reachable: every image builds from ``BASE_IMAGE``
  (:func:`base_image` bootstraps Debian 12 with debootstrap once and imports
  it as ``localhost/debian:bookworm``);
* crun fails on hybrid cgroups: the OCI runtime is runc when installed
  (``TECC_PODMAN_RUNTIME`` overrides);
* ``podman run`` fails on setrlimit without explicit ulimits: 4096 open files
  and processes;
* a TLS-inspecting proxy: the host's CA bundle is passed to pip in the build
  as the ``ca-bundle`` secret.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker" / "compose.yaml"
BASE_TAG = "localhost/debian:bookworm"
BASE_DIR = Path(os.environ.get("TECC_BASE_DIR", str(ROOT / "var" / "containers" / "base")))
MIRROR = os.environ.get("TECC_DEBIAN_MIRROR", "http://deb.debian.org/debian")
CA_BUNDLE = Path(os.environ.get("TECC_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt"))


class ContainerError(RuntimeError):
    """A podman step failed; the message says which and how to look closer."""


@dataclass(frozen=True, slots=True)
class Built:
    """One image built: tag, seconds it took, size in bytes."""

    image: str
    seconds: float
    size: int


def _runtime() -> str | None:
    explicit = os.environ.get("TECC_PODMAN_RUNTIME")
    if explicit:
        return explicit
    return "runc" if shutil.which("runc") else None


def podman_env(state: Path) -> dict[str, str]:
    """The environment for podman: a containers.conf with the runtime and ulimits above."""
    state.mkdir(parents=True, exist_ok=True)
    conf = state / "containers.conf"
    runtime = _runtime()
    lines = [
        "[containers]",
        'default_ulimits = ["nofile=4096:4096", "nproc=4096:4096"]',
    ]
    lines += ["[network]", 'network_backend = "netavark"']  # aardvark-dns: service names resolve
    if runtime:
        lines += ["[engine]", f'runtime = "{runtime}"']
    conf.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {**os.environ, "CONTAINERS_CONF": str(conf)}


def _bin(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise ContainerError(f"{name} is not installed: apt-get install podman runc debootstrap")
    return found


def _run(
    argv: Sequence[str], env: Mapping[str, str], *, timeout: float | None = None
) -> subprocess.CompletedProcess[str]:
    """Run one host command (absolute executable, no shell), capturing its output."""
    return subprocess.run(  # noqa: S603 - fixed argv from this module, no shell
        [_bin(argv[0]), *argv[1:]],
        env=dict(env),
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )


def podman(
    env: Mapping[str, str], *args: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    proc = _run(["podman", *args], env)
    if check and proc.returncode != 0:
        what = " ".join(args[:3])
        hint = ""
        if "netavark" in proc.stderr and "No such file or directory" in proc.stderr:
            hint = " (netavark sets up the network with iptables: apt-get install iptables)"
        raise ContainerError(
            f"podman {what} … failed ({proc.returncode}): {proc.stderr[-800:]}{hint}"
        )
    return proc


def load(path: Path = COMPOSE) -> dict[str, Any]:
    """The compose document (only the keys this runner understands are used)."""
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(doc, dict) or not isinstance(doc.get("services"), dict):
        raise ContainerError(f"{path}: not a compose file with services")
    return doc


def order(services: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Service names with every dependency before its dependents (compose's start order)."""
    done: list[str] = []
    visiting: set[str] = set()

    def visit(name: str) -> None:
        if name in done:
            return
        if name in visiting:
            raise ContainerError(f"depends_on cycle through {name!r}")
        visiting.add(name)
        for dep in _depends(services[name]):
            if dep not in services:
                raise ContainerError(f"service {name!r} depends on unknown service {dep!r}")
            visit(dep)
        visiting.discard(name)
        done.append(name)

    for name in services:
        visit(name)
    return done


def _depends(svc: Mapping[str, Any]) -> dict[str, str]:
    deps = svc.get("depends_on") or {}
    if isinstance(deps, list):
        return dict.fromkeys(deps, "service_started")
    return {k: str((v or {}).get("condition", "service_started")) for k, v in deps.items()}


def base_image(env: Mapping[str, str]) -> str:
    """``localhost/debian:bookworm``, bootstrapped with debootstrap once (about a minute)."""
    if podman(env, "image", "exists", BASE_TAG, check=False).returncode == 0:
        return BASE_TAG
    root = BASE_DIR / "root"
    if not (root / "etc" / "debian_version").exists():
        shutil.rmtree(root, ignore_errors=True)
        root.parent.mkdir(parents=True, exist_ok=True)
        boot = _run(["debootstrap", "--variant=minbase", "bookworm", str(root), MIRROR], env)
        if boot.returncode != 0:
            raise ContainerError(f"debootstrap failed: {boot.stderr[-800:]}")
    tarball = BASE_DIR / "bookworm.tar"
    packed = _run(["tar", "-C", str(root), "-cf", str(tarball), "."], env)
    if packed.returncode != 0:
        raise ContainerError(f"tar of the base failed: {packed.stderr[-800:]}")
    try:
        podman(env, "import", str(tarball), BASE_TAG)
    finally:
        tarball.unlink(missing_ok=True)
    return BASE_TAG


def build(
    doc: Mapping[str, Any], env: Mapping[str, str], *, base: str, compose: Path = COMPOSE
) -> list[Built]:
    """Build every image the compose file builds (each tag once), from ``base``."""
    out: list[Built] = []
    seen: set[str] = set()
    for name in order(doc["services"]):
        svc = doc["services"][name]
        spec, image = svc.get("build"), svc.get("image")
        if not spec or not image or image in seen:
            continue
        seen.add(image)
        context = (compose.parent / spec.get("context", ".")).resolve()
        args = ["build", "--network", "host", "-t", image]
        if spec.get("dockerfile"):
            dockerfile = context / spec["dockerfile"]
            args += ["-f", str(dockerfile)]
            ignore = dockerfile.with_name(dockerfile.name + ".dockerignore")
            if ignore.exists():
                args += ["--ignorefile", str(ignore)]
        if spec.get("target"):
            args += ["--target", spec["target"]]
        for key in spec.get("args") or {}:
            args += ["--build-arg", f"{key}={base}"] if key == "BASE_IMAGE" else []
        if CA_BUNDLE.is_file():
            args += ["--secret", f"id=ca-bundle,src={CA_BUNDLE}"]
        started = time.monotonic()
        podman(env, *args, str(context))
        size = json.loads(podman(env, "image", "inspect", image).stdout)[0]["Size"]
        out.append(Built(image, time.monotonic() - started, int(size)))
    return out


def _container(project: str, service: str) -> str:
    return f"{project}_{service}_1"


def _run_args(
    project: str, name: str, svc: Mapping[str, Any], compose: Path, ports: Mapping[int, int]
) -> list[str]:
    args = ["run", "-d", "--name", _container(project, name)]
    for net in svc.get("networks") or ["default"]:
        args += ["--network", f"{project}_{net}"]
    args += ["--network-alias", name, "--hostname", name]
    restart = svc.get("restart")
    if restart and restart != "no":
        args += ["--restart", str(restart)]
    if svc.get("read_only"):
        args.append("--read-only")
    for t in svc.get("tmpfs") or []:
        args += ["--tmpfs", str(t)]
    for cap in svc.get("cap_drop") or []:
        args += ["--cap-drop", str(cap)]
    for opt in svc.get("security_opt") or []:
        args += ["--security-opt", str(opt)]
    if svc.get("user"):
        args += ["--user", str(svc["user"])]
    for key, value in (svc.get("environment") or {}).items():
        args += ["-e", f"{key}={value}"]
    args += _mounts(project, svc, compose)
    args += _ports(svc, ports)
    if svc.get("entrypoint"):
        args += ["--entrypoint", json.dumps(list(svc["entrypoint"]))]
    args.append(str(svc["image"]))
    args += [str(c) for c in svc.get("command") or []]
    return args


def _mounts(project: str, svc: Mapping[str, Any], compose: Path) -> list[str]:
    """``-v`` arguments: bind paths relative to the compose file, named volumes prefixed."""
    out: list[str] = []
    for vol in svc.get("volumes") or []:
        source, _, rest = str(vol).partition(":")
        if source.startswith((".", "/")):
            source = str((compose.parent / source).resolve())
        else:
            source = f"{project}_{source}"
        out += ["-v", f"{source}:{rest}"]
    return out


def _ports(svc: Mapping[str, Any], ports: Mapping[int, int]) -> list[str]:
    """``-p`` arguments, host ports remapped through ``ports``."""
    out: list[str] = []
    for port in svc.get("ports") or []:
        host_ip, host_port, inner = (
            str(port).rsplit(":", 2) if str(port).count(":") == 2 else ("", *str(port).split(":"))
        )
        mapped = ports.get(int(host_port), int(host_port))
        out += ["-p", f"{host_ip + ':' if host_ip else ''}{mapped}:{inner}"]
    return out


def _seconds(value: object, default: float) -> float:
    text = str(value or "").strip()
    if not text:
        return default
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    for suffix in ("ms", "s", "m", "h"):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * units[suffix]
    return float(text)


def healthy(project: str, name: str, svc: Mapping[str, Any], env: Mapping[str, str]) -> bool:
    """Run the service's health check once, as the engine would (``CMD`` form)."""
    check = svc.get("healthcheck") or {}
    test = check.get("test")
    if check.get("disable") or not test:
        return True
    if test[0] == "CMD":
        cmd = [str(t) for t in test[1:]]
    elif test[0] == "CMD-SHELL":
        cmd = ["sh", "-c", str(test[1])]
    else:
        raise ContainerError(f"{name}: unsupported healthcheck test {test[0]!r}")
    timeout = _seconds(check.get("timeout"), 30)
    try:
        proc = _run(["podman", "exec", _container(project, name), *cmd], env, timeout=timeout + 5)
    except subprocess.TimeoutExpired:
        return False
    return proc.returncode == 0


def _wait_condition(
    project: str, dep: str, condition: str, svc: Mapping[str, Any], env: Mapping[str, str]
) -> None:
    name = _container(project, dep)
    if condition == "service_completed_successfully":
        rc = podman(env, "wait", name).stdout.strip()
        if rc != "0":
            logs = podman(env, "logs", name, check=False).stderr[-1500:]
            raise ContainerError(f"{dep} exited with {rc}; its log ends:\n{logs}")
        return
    if condition != "service_healthy":
        return
    check = svc.get("healthcheck") or {}
    interval = _seconds(check.get("interval"), 30)
    budget = _seconds(check.get("start_period"), 0) + interval * int(check.get("retries", 3)) + 30
    deadline = time.monotonic() + budget
    while time.monotonic() < deadline:
        if healthy(project, dep, svc, env):
            return
        time.sleep(min(1.0, interval))
    log = podman(env, "logs", name, check=False)
    tail = (log.stdout + log.stderr)[-1500:]
    raise ContainerError(f"{dep} not healthy after {budget:.0f} s; its log ends:\n{tail}")


def up(
    doc: Mapping[str, Any],
    env: Mapping[str, str],
    *,
    project: str,
    compose: Path = COMPOSE,
    ports: Mapping[int, int] | None = None,
) -> list[str]:
    """Create the network and volumes, then start every service once its dependencies hold."""
    services = doc["services"]
    networks = {"default": {}, **(doc.get("networks") or {})}
    for net, spec in networks.items():
        if podman(env, "network", "exists", f"{project}_{net}", check=False).returncode != 0:
            internal = ["--internal"] if (spec or {}).get("internal") else []
            podman(env, "network", "create", *internal, f"{project}_{net}")
    for vol in doc.get("volumes") or {}:
        if podman(env, "volume", "exists", f"{project}_{vol}", check=False).returncode != 0:
            podman(env, "volume", "create", f"{project}_{vol}")
    started: list[str] = []
    for name in order(services):
        for dep, condition in _depends(services[name]).items():
            _wait_condition(project, dep, condition, services[dep], env)
        podman(env, *_run_args(project, name, services[name], compose, ports or {}))
        started.append(name)
    return started


def wait_healthy(
    doc: Mapping[str, Any], env: Mapping[str, str], *, project: str, timeout_s: float
) -> dict[str, bool]:
    """Every long-running service's health check, polled until all pass or ``timeout_s``."""
    services = {n: s for n, s in doc["services"].items() if (s.get("restart") or "no") != "no"}
    deadline = time.monotonic() + timeout_s
    state = dict.fromkeys(services, False)
    while True:
        for name, svc in services.items():
            if not state[name]:
                state[name] = healthy(project, name, svc, env)
        if all(state.values()) or time.monotonic() >= deadline:
            return state
        time.sleep(1.0)


def down(
    doc: Mapping[str, Any], env: Mapping[str, str], *, project: str, volumes: bool = True
) -> None:
    """Remove the project's containers, network and (by default) volumes."""
    for name in reversed(order(doc["services"])):
        podman(env, "rm", "-f", "-t", "5", _container(project, name), check=False)
    for net in {"default": {}, **(doc.get("networks") or {})}:
        podman(env, "network", "rm", "-f", f"{project}_{net}", check=False)
    if volumes:
        for vol in doc.get("volumes") or {}:
            podman(env, "volume", "rm", "-f", f"{project}_{vol}", check=False)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: build, up, down, status."""
    parser = argparse.ArgumentParser(
        prog="python -m demo.containers", description=__doc__.split("\n")[0]
    )
    parser.add_argument("command", choices=["build", "up", "down", "status"])
    parser.add_argument("--project", default="tecc")
    parser.add_argument("--state", type=Path, default=ROOT / "var" / "containers")
    args = parser.parse_args(argv)
    if shutil.which("podman") is None:
        print("podman is not installed: apt-get install podman runc debootstrap", file=sys.stderr)
        return 2
    env = podman_env(args.state)
    doc = load()
    try:
        if args.command == "build":
            for b in build(doc, env, base=base_image(env)):
                print(f"{b.image}: {b.size / 1e6:.0f} MB, {b.seconds:.0f} s")
        elif args.command == "up":
            up(doc, env, project=args.project)
            bad = [
                n
                for n, ok in wait_healthy(doc, env, project=args.project, timeout_s=180).items()
                if not ok
            ]
            print("all services healthy" if not bad else f"not healthy: {', '.join(bad)}")
            return 1 if bad else 0
        elif args.command == "down":
            down(doc, env, project=args.project)
        else:
            for n, ok in wait_healthy(doc, env, project=args.project, timeout_s=0).items():
                print(f"{n}: {'healthy' if ok else 'not healthy'}")
    except ContainerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
