"""Run the compose balancer (deploy/nginx/nginx.conf) as a user process, without Docker.

Renders a private nginx prefix in a directory: the same ``nginx.conf`` the
compose ``lb`` service mounts, with its three include files written for local
addresses (``listen.conf``, ``status-listen.conf``, and ``upstreams.conf`` with
the compose server parameters applied to each replica address), then runs the
compose service's own nginx command with ``-p``/``-c`` pointing there.
tests/test_balancer.py uses it; by hand::

    python deploy/local_lb.py --listen 127.0.0.1:50050 --status 127.0.0.1:8080 \\
        --upstream 127.0.0.1:50051 --upstream 127.0.0.1:50061

Only loopback (or other local) addresses; nothing outside the prefix is touched.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

DEPLOY = Path(__file__).resolve().parent
ROOT = DEPLOY.parent
NGINX_DIR = DEPLOY / "nginx"
COMPOSE_FILE = ROOT / "docker-compose.yml"
COMPOSE_UPSTREAM = "cloud:50051"
"""The replica address in deploy/nginx/upstreams.conf (the compose service name)."""


def compose_services() -> dict:
    """The services of docker-compose.yml."""
    return yaml.safe_load(COMPOSE_FILE.read_text())["services"]


def nginx_binary() -> str | None:
    """The nginx executable (Debian installs it in /usr/sbin, not always on PATH)."""
    return shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin:/usr/local/nginx/sbin")


def upstream_lines(addresses: list[str]) -> str:
    """deploy/nginx/upstreams.conf with its `cloud:50051` server line repeated for each address."""
    lines = []
    for line in (NGINX_DIR / "upstreams.conf").read_text().splitlines():
        if line.strip().startswith("server ") and COMPOSE_UPSTREAM in line:
            lines += [line.replace(COMPOSE_UPSTREAM, addr) for addr in addresses]
        else:
            lines.append(line)
    if not any(line.strip().startswith("server ") for line in lines):
        raise ValueError(f"deploy/nginx/upstreams.conf has no `server {COMPOSE_UPSTREAM} ...;` line")
    return "\n".join(lines) + "\n"


def render_prefix(prefix: Path, listen: str, status: str, upstreams: list[str]) -> Path:
    """Write conf/ under ``prefix``; return the path of its nginx.conf."""
    conf = prefix / "conf"
    conf.mkdir(parents=True, exist_ok=True)
    prefix.chmod(0o755)  # nginx workers (nobody, when started as root) must reach their temp dirs
    shutil.copy(NGINX_DIR / "nginx.conf", conf / "nginx.conf")
    (conf / "listen.conf").write_text(f"listen {listen} http2;\n")
    (conf / "status-listen.conf").write_text(f"listen {status};\n")
    (conf / "upstreams.conf").write_text(upstream_lines(upstreams))
    return conf / "nginx.conf"


def nginx_argv(prefix: Path, conf: Path, binary: str = "nginx") -> list[str]:
    """The compose `lb` command with its prefix (-p) and config (-c) pointed at ours."""
    argv = list(compose_services()["lb"]["command"])
    if argv[0] != "nginx" or "-p" not in argv or "-c" not in argv:
        raise ValueError(f"unexpected lb command in docker-compose.yml: {argv}")
    argv[0] = binary
    argv[argv.index("-p") + 1] = f"{prefix}/"
    argv[argv.index("-c") + 1] = str(conf)
    return argv


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--listen", required=True, help="gRPC address, e.g. 127.0.0.1:50050")
    p.add_argument("--status", required=True, help="HTTP status address, e.g. 127.0.0.1:8080")
    p.add_argument("--upstream", action="append", required=True, help="a cloud replica's gRPC address")
    p.add_argument("--prefix", type=Path, default=Path("results/local-lb"), help="nginx prefix directory")
    args = p.parse_args(argv)
    binary = nginx_binary()
    if binary is None:
        print("local_lb: nginx is not installed (apt-get install nginx-light)", file=sys.stderr)
        return 2
    prefix = args.prefix.resolve()
    conf = render_prefix(prefix, args.listen, args.status, args.upstream)
    return subprocess.call(nginx_argv(prefix, conf, binary))


if __name__ == "__main__":
    sys.exit(main())
