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


#: nginx's temporary folders, each set to a path of the private folder.
_TEMP_KINDS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")


def main_config(workdir: Path, include: Path, *, access_log: bool = True) -> str:
    """nginx's main configuration around the http{}-level ``include``: one worker,
    foreground, private paths, an access log in ``workdir`` unless ``access_log`` is
    false (the benchmarks pay for none); as root the workers stay root too, so they can
    use the private folder."""
    user = "user root;\n" if os.geteuid() == 0 else ""
    temp = "\n".join(f"    {kind}_temp_path {workdir / 'temp' / kind};" for kind in _TEMP_KINDS)
    access = f"access_log {workdir / 'access.log'};" if access_log else "access_log off;"
    return f"""{user}daemon off;
master_process on;
worker_processes 1;
pid {workdir / "nginx.pid"};
error_log {workdir / "error.log"} warn;
events {{
    worker_connections 1024;
}}
http {{
    {access}
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


def start_site(
    site: str,
    port: int,
    ready_path: str,
    ready_status: int,
    *,
    access_log: bool = True,
    timeout: float = 15.0,
) -> HTTPProcess:
    """nginx serving the http{}-level configuration ``site`` (listening on ``port``) in
    a private folder that ``stop()`` removes; returns once ``GET ready_path`` answers
    ``ready_status``. Its logs are in its :attr:`~HTTPProcess.workdir`."""
    executable = find_nginx()
    workdir = Path(tempfile.mkdtemp(prefix="broker-nginx-"))
    for kind in _TEMP_KINDS:
        (workdir / "temp" / kind).mkdir(parents=True)
    (workdir / "site.conf").write_text(site)
    conf = workdir / "nginx.conf"
    conf.write_text(main_config(workdir, workdir / "site.conf", access_log=access_log))
    argv = [executable, "-p", str(workdir), "-e", str(workdir / "error.log"), "-c", str(conf)]
    nginx = HTTPProcess(
        "nginx", argv, env={"PATH": os.environ.get("PATH", "")}, workdir=workdir, port=port
    )
    return nginx.ready(ready_path, timeout, status=ready_status)


def start_nginx(
    *, broker_url: str, cube_url: str, access_log: bool = True, timeout: float = 15.0
) -> HTTPProcess:
    """nginx with ``deploy/nginx``'s template on a free port of 127.0.0.1 in front of
    ``cube_url``, asking the broker's public listener at ``broker_url``; returns once
    nginx answers (its own 404 for an unknown path: neither the broker nor Cube need be
    up). Its logs (``error.log``, ``access.log``) are in its :attr:`~HTTPProcess.workdir`."""
    port = free_port()
    site = render_template(
        {
            "NGINX_LISTEN": f"127.0.0.1:{port}",
            "BROKER_UPSTREAM": host_port(broker_url),
            "CUBE_UPSTREAM": host_port(cube_url),
        }
    )
    return start_site(
        site, port, "/nginx-harness-ready", 404, access_log=access_log, timeout=timeout
    )


def host_port(url: str) -> str:
    """``host:port`` of a base URL (``http://127.0.0.1:8080``)."""
    match = re.fullmatch(r"https?://([^/]+)/?", url)
    if match is None:
        raise ValueError(f"not a base URL: {url!r}")
    return match.group(1)
