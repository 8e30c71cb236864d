"""The cluster configs: cluster/config.yaml checked against the launcher's schema, and cluster/local.yaml run
end to end on this machine with `ray up` / `ray exec` / `ray submit` / `ray down` (slow).

The "head" is this machine, reached over real SSH: the test starts its own OpenSSH server on 127.0.0.1 (a free
port; the launcher reaches it through `auth.ssh_proxy_command: nc %h PORT`, as it has no port option) in new
PID and mount namespaces, with a throwaway home bind-mounted over ~ and a throwaway /tmp/ray. So everything
the launcher does on the head (~/.bashrc, ~/run.py, the bootstrap key, `ray stop`, which stops every Ray
process it can see) stays inside the test: nothing of this machine's home or of other Ray instances is
touched, and stopping that sshd (by PID) ends every process started over SSH.

The end-to-end test needs root and Debian's openssh-server, rsync and netcat-openbsd
(scripts/setup_system.sh installs them); it skips without them."""

from __future__ import annotations

import contextlib
import dataclasses
import getpass
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from rift_sweep.names import SWEEP_TAG
from rift_sweep.orchestration.devices import FAKE_GPUS_ENV

from conftest import gpu_jobs, wait_for, write_digits_config
from helpers import SSHD, missing

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
GPU_LOG = "gpu_jobs.jsonl"  # in the head's home
RAY = str(Path(sys.executable).parent / "ray")
SPACE = {
    "lr": {"low": 0.001, "high": 0.1, "log": True},
    "epochs": {"low": 1, "high": 2},
}  # α: searched among alpha.grid


@dataclasses.dataclass
class SshHead:
    port: int
    key: Path  # the client's private key
    home: Path  # what the head's ~ is, seen from outside
    sshd_pid: int

    def run(self, command: str) -> str:
        """A command on the head, over SSH, outside the launcher."""
        result = subprocess.run(
            [
                "ssh",
                "-i",
                str(self.key),
                "-p",
                str(self.port),
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "LogLevel=ERROR",
                "root@127.0.0.1",
                command,
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        return result.stdout


@pytest.fixture()
def ssh_head(tmp_path) -> Iterator[SshHead]:
    reason = missing("sshd")
    if reason:
        pytest.skip(reason)
    folder, home, ray_tmp = tmp_path / "sshd", tmp_path / "home", tmp_path / "ray-tmp"
    for path in (folder, home, home / ".ssh", ray_tmp):
        path.mkdir(mode=0o700)
    for key in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(folder / key)], check=True)
    (home / ".ssh" / "authorized_keys").write_text((folder / "client_key.pub").read_text())
    (home / ".ssh" / "authorized_keys").chmod(0o600)
    port = free_port()
    (folder / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {folder / 'host_key'}\nPidFile none\nUsePAM no\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n"
        "AuthorizedKeysFile .ssh/authorized_keys\n"
    )
    made_privsep = not Path("/run/sshd").exists()  # sshd refuses to start without it (the package's init makes it)
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    Path("/tmp/ray").mkdir(exist_ok=True)  # a mount point for the head's own /tmp/ray
    inside = " && ".join(
        [
            *_keep_visible(home),
            f"mount --rbind {home} {Path.home()}",
            f"mount --bind {ray_tmp} /tmp/ray",
            f"exec {SSHD} -D -e -f {folder / 'sshd_config'}",
        ]
    )
    with open(folder / "sshd.log", "w") as log:
        namespace = subprocess.Popen(
            ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child", "sh", "-c", inside],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    sshd_pid = 0
    try:
        sshd_pid = wait_for(lambda: _sshd_up(namespace, port, folder / "sshd.log"), timeout=20)
        yield SshHead(port, folder / "client_key", home, sshd_pid)
    finally:
        # sshd is PID 1 of its namespace: when it ends, the kernel ends every process left there (Ray, MLflow).
        if sshd_pid:
            os.kill(sshd_pid, signal.SIGTERM)
        elif namespace.poll() is None:
            os.kill(namespace.pid, signal.SIGKILL)
        namespace.wait(timeout=30)
        if made_privsep:
            Path("/run/sshd").rmdir()


def _keep_visible(home: Path) -> list[str]:
    """Mount commands that keep this Python (and the repository) visible under the throwaway home, read-only:
    a venv's base interpreter often lives in ~ (pyenv)."""
    real_home = Path.home().resolve()
    candidates = (Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve(), REPO)
    needed = {p for p in candidates if p.is_relative_to(real_home)}
    commands = []
    for path in sorted(p for p in needed if not any(p != q and p.is_relative_to(q) for q in needed)):
        target = home / path.relative_to(real_home)
        target.mkdir(parents=True)
        commands += [f"mount --bind {path} {target}", f"mount -o remount,bind,ro {target}"]
    return commands


def _sshd_up(namespace: subprocess.Popen, port: int, log: Path) -> int | None:
    """sshd's PID once it listens; its log as the error if it could not start."""
    if namespace.poll() is not None:
        raise RuntimeError(f"the test's sshd did not start:\n{log.read_text()}")
    return _child_pid(namespace.pid) if _listening(port) else None


def _child_pid(pid: int) -> int | None:
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return int(children[0]) if children else None


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def local_cluster_config(head: SshHead, name: str, gcs_port: int, mlflow_port: int) -> dict:
    """cluster/local.yaml with its EDIT fields set for this machine.

    Its setup_commands would build a venv and pip-install torch on the head (minutes, gigabytes); here the head
    already has this test's environment, so they are replaced by two lines in the head's ~/.bashrc: this
    Python first on PATH, and the synced copy of the package first on PYTHONPATH (what `pip install -e` does).
    Ports are made free ones: other Ray instances and servers may run on this machine.
    """
    config = load_cluster_config("local.yaml")
    assert config["provider"]["type"] == "local" and "available_node_types" not in config
    config["cluster_name"] = name
    config["provider"].update(head_ip="127.0.0.1", worker_ips=[])
    config["auth"] = {"ssh_user": "root", "ssh_private_key": str(head.key), "ssh_proxy_command": f"nc %h {head.port}"}
    environment = [
        f"export PATH={Path(sys.executable).parent}:$PATH",
        "export PYTHONPATH=~/rift-sweep",
        "export RAY_USAGE_STATS_ENABLED=0",
        f"export {FAKE_GPUS_ENV}=~/{GPU_LOG}",  # the head's declared GPU computes on the CPU (tests only)
    ]
    config["setup_commands"] = [f"echo '{line}' >> ~/.bashrc" for line in environment]
    config["head_start_ray_commands"] = _substitute(
        config["head_start_ray_commands"],
        {
            "--port=6379": f"--port={gcs_port} --num-gpus=1 --include-dashboard=false "
            f"--dashboard-agent-listen-port={free_port()}",
            "--port 5000": f"--port {mlflow_port}",
        },
    )
    return config


def _substitute(commands: list[str], replacements: dict[str, str]) -> list[str]:
    out = []
    for command in commands:
        for old, new in replacements.items():
            command = command.replace(old, new)
        out.append(command)
    for old, new in replacements.items():
        assert sum(new in c for c in out) == 1, f"cluster/local.yaml's head_start_ray_commands lost {old!r}"
    return out


def launcher(*args: str, timeout: float) -> subprocess.CompletedProcess:
    """A `ray` cluster-launcher command run from the repository root, as the README says."""
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    result = subprocess.run(
        [RAY, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env, check=False
    )
    assert result.returncode == 0, f"ray {' '.join(args)}\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result


def remove_launcher_files(name: str) -> None:
    """What the launcher left on this (client) side for the cluster: node state and lock, cached bootstrapped
    configs (`ray down` has no --no-config-cache), the SSH control-socket folder."""
    ray_tmp = Path("/tmp/ray")
    for path in (ray_tmp / f"cluster-{name}.state", ray_tmp / f"cluster-{name}.lock"):
        path.unlink(missing_ok=True)
    for cached in Path(tempfile.gettempdir()).glob("ray-config-*"):
        try:
            ours = json.loads(cached.read_text())["config"]["cluster_name"] == name
        except (OSError, ValueError, KeyError, TypeError):
            ours = False
        if ours:
            cached.unlink()
    # The launcher's ControlPath: /tmp/ray_ssh_<user hash>/<cluster hash> (ray/autoscaler/_private/command_runner.py)
    users = Path("/tmp") / f"ray_ssh_{hashlib.sha256(getpass.getuser().encode()).hexdigest()[:10]}"
    shutil.rmtree(users / hashlib.sha256(name.encode()).hexdigest()[:10], ignore_errors=True)
    with contextlib.suppress(OSError):
        users.rmdir()  # only when no other cluster uses it


def test_cloud_config_is_a_valid_autoscaling_gpu_cluster():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = load_cluster_config("config.yaml")
    validate_config(prepare_config(config))  # the launcher's own schema and checks
    types = config["available_node_types"]
    head, workers = types[config["head_node_type"]], [t for n, t in types.items() if n != config["head_node_type"]]
    assert "GPU" not in head["resources"] and len(workers) == 1
    assert workers[0]["min_workers"] == 0 and workers[0]["max_workers"] >= 1
    assert config["file_mounts"] == load_cluster_config("local.yaml")["file_mounts"]
    assert any("pip install -q -e ~/rift-sweep" in c for c in config["setup_commands"])
    [server] = [c for c in config["head_start_ray_commands"] if "mlflow server" in c]
    assert "--host 127.0.0.1 --port 5000" in server and "postgresql://" in server


@pytest.mark.parametrize("name", ["config.yaml", "local.yaml"])
def test_torch_is_installed_for_the_driver_before_the_package(name):
    """The package's plain `torch` would take PyPI's newest CUDA build, which an older NVIDIA driver cannot run."""
    commands = load_cluster_config(name)["setup_commands"]
    [torch_at] = [i for i, c in enumerate(commands) if "download.pytorch.org/whl/cu" in c and "torch" in c]
    [package_at] = [i for i, c in enumerate(commands) if "pip install -q -e ~/rift-sweep" in c]
    assert torch_at < package_at


def test_file_mounts_sync_what_pip_install_needs():
    for name in ("config.yaml", "local.yaml"):
        mounts = load_cluster_config(name)["file_mounts"]
        assert all((REPO / local).exists() for local in mounts.values())
        synced = {Path(remote).name for remote in mounts}
        assert {"rift_sweep", "pyproject.toml", "README.md", "search_spaces", "checkpoints"} <= synced


def load_cluster_config(name: str) -> dict:
    return yaml.safe_load((REPO / "cluster" / name).read_text())


@pytest.mark.slow
def test_ray_up_submit_down_on_this_machine(ssh_head, tmp_path, digits_checkpoint):
    name = f"rift-e2e-{uuid.uuid4().hex[:8]}"
    mlflow_port = free_port()
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text(yaml.safe_dump(local_cluster_config(ssh_head, name, free_port(), mlflow_port)))
    (tmp_path / "sweep").mkdir()
    sweep_config = write_digits_config(
        tmp_path / "sweep",
        digits_checkpoint,
        name="cluster-e2e",
        device="auto",
        search={"space": SPACE, "num_samples": 4, "max_concurrent": 2},
    )
    output = tmp_path / "sweep" / "shared-output"  # on a cluster: an NFS folder at the same path on every node
    try:
        launcher("up", "-y", "--no-config-cache", str(cluster), timeout=120)
        where = launcher(
            "exec",
            "--no-config-cache",
            str(cluster),
            "python -c 'import rift_sweep; print(rift_sweep.__file__)'",
            timeout=60,
        )
        assert f"{Path.home()}/rift-sweep/rift_sweep/__init__.py" in where.stdout  # the copy file_mounts synced
        submitted = launcher(
            "submit",
            "--no-config-cache",
            str(cluster),
            "rift_sweep/run.py",
            "--",
            "--config",
            str(sweep_config),
            "--num-samples",
            "2",
            "--output",
            str(output),
            "--tracking-uri",
            f"http://127.0.0.1:{mlflow_port}",
            "--gpus",  # the README's launch: the driver on the head, no --address, GPUs asked for
            "1",
            timeout=240,
        )
        assert "Pareto front" in submitted.stdout
        assert "fake GPU (tests)" in submitted.stdout, submitted.stdout[-3000:]
    finally:
        try:
            launcher("down", "-y", str(cluster), timeout=60)
        finally:
            remove_launcher_files(name)
    running = ssh_head.run("ps -eo comm").split()
    assert "raylet" not in running and "gcs_server" not in running  # `ray down` stopped the head's Ray

    client = MlflowClient(f"sqlite:///{ssh_head.home / 'mlflow' / 'mlflow.db'}")  # the head's MLflow store
    [experiment] = [e for e in client.search_experiments() if e.name == "rift-digits-small_cnn"]
    [parent] = client.search_runs([experiment.experiment_id], f"tags.`{SWEEP_TAG}` = 'cluster-e2e'")
    assert parent.info.status == "FINISHED"
    trials = client.search_runs(
        [experiment.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}' and tags.`rift.kind` = 'trial'"
    )
    assert [c.info.status for c in trials] == ["FINISHED", "FINISHED"]
    assert len({c.data.tags["rift_sweep.trial_id"] for c in trials}) == 2
    models = client.search_runs([experiment.experiment_id], f"tags.`rift.sweep_run` = '{parent.info.run_id}'")
    assert "true" in {m.data.tags["pareto"] for m in models}  # every evaluated model, its front tagged
    assert list((ssh_head.home / "mlflow" / "artifacts").rglob("front.html"))  # artifacts through the server
    assert list((output / "cache" / "finetune").glob("*.pt"))  # trials wrote the shared output folder
    jobs = gpu_jobs(ssh_head.home / GPU_LOG)  # MRC, the trials and the front ran on the head's one (declared) GPU
    assert {j["what"].split()[0] for j in jobs} >= {"mrc", "trial", "test"}
    assert {j["cuda_visible_devices"] for j in jobs} == {"0"}
