"""The real nginx (Debian's ``nginx-light``) with the configuration of ``deploy/nginx``, in
front of Cube (real or a stand-in), the broker deciding.

The template is rendered as the nginx image's envsubst would render it (its three
variables substituted, nothing else), then included in a main configuration of the
harness's own: in the foreground (``daemon off``) under the harness's process control,
every path nginx writes (pid, logs, temporary files) in a private folder.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

from tests.harness import REPO
from tests.harness.ports import free_port
from tests.harness.process import HTTPProcess

TEMPLATE = REPO / "deploy" / "nginx" / "templates" / "default.conf.template"
#: The variables of the template (deploy/nginx/README.md), and nothing else.
VARIABLES = ("NGINX_LISTEN", "BROKER_UPSTREAM", "CUBE_UPSTREAM")
_VARIABLE = re.compile(r"\$\{(\w+)\}")


def render_template(values: dict[str, str], template: Path = TEMPLATE) -> str:
    """The template with ``${NAME}`` replaced for each of :data:`VARIABLES`; any other
    ``${…}`` is an error (envsubst would leave or blank it)."""
    if set(values) != set(VARIABLES):
        raise ValueError(f"values for exactly {VARIABLES} are needed, got {sorted(values)}")

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in values:
            raise ValueError(f"{template}: unknown variable ${{{name}}}")
        return values[name]

    return _VARIABLE.sub(substitute, template.read_text())


def main_config(workdir: Path, include: Path) -> str:
    """nginx's main configuration around the rendered ``include``: foreground, private
    paths; as root the workers stay root too, so they can use the private folder."""
    user = "user root;\n" if os.geteuid() == 0 else ""
    temp = "\n".join(
        f"    {kind}_temp_path {workdir / 'temp' / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""{user}daemon off;
master_process on;
worker_processes 1;
pid {workdir / "nginx.pid"};
error_log {workdir / "error.log"} warn;
events {{
    worker_connections 256;
}}
http {{
    access_log {workdir / "access.log"};
{temp}
    include {include};
}}
"""


def find_nginx() -> str:
    """The nginx executable (Debian installs it in /usr/sbin, not always on PATH)."""
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        raise RuntimeError("nginx is not installed; run: WITH_TEST_SERVICES=1 scripts/setup.sh")
    return found


def start_nginx(*, broker_url: str, cube_url: str, timeout: float = 15.0) -> HTTPProcess:
    """nginx on a free port of 127.0.0.1 in front of ``cube_url``, asking the broker's
    public listener at ``broker_url``; returns once nginx answers (its own 404 for an
    unknown path: neither the broker nor Cube need be up). ``stop()`` removes its folder.
    Its logs (``error.log``, ``access.log``) are in its :attr:`~HTTPProcess.workdir`."""
    executable = find_nginx()
    workdir = Path(tempfile.mkdtemp(prefix="broker-nginx-"))
    for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (workdir / "temp" / kind).mkdir(parents=True)
    port = free_port()
    site = workdir / "cube-broker.conf"
    site.write_text(
        render_template(
            {
                "NGINX_LISTEN": f"127.0.0.1:{port}",
                "BROKER_UPSTREAM": _host_port(broker_url),
                "CUBE_UPSTREAM": _host_port(cube_url),
            }
        )
    )
    conf = workdir / "nginx.conf"
    conf.write_text(main_config(workdir, site))
    argv = [executable, "-p", str(workdir), "-e", str(workdir / "error.log"), "-c", str(conf)]
    nginx = HTTPProcess("nginx", argv, env={"PATH": os.environ.get("PATH", "")}, workdir=workdir,
                        port=port)  # fmt: skip
    return nginx.ready("/nginx-harness-ready", timeout, status=404)


def _host_port(url: str) -> str:
    match = re.fullmatch(r"https?://([^/]+)/?", url)
    if match is None:
        raise ValueError(f"not a base URL: {url!r}")
    return match.group(1)
