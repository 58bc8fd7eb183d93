"""The local development stack: Apache Kafka (KRaft, from Maven Central jars) and PostgreSQL 15.

Owned by ``cronorch dev up|down|status``; the test suite and CI use the same functions.
Everything lives in throwaway directories: the jars in ``$CRONORCH_CACHE_DIR`` (default
``~/.cache/cronorch``), data, logs and pid files in ``$CRONORCH_STATE_DIR`` (default
``/var/tmp/cronorch``). Both servers listen on 127.0.0.1 only. Readiness is polled, never slept
for, and every failure ends in an ``InfrastructureError`` that says what to do.

With ``CRONORCH_DEV_KAFKA_SECURE_PORT`` set, the broker also serves a SASL_SSL listener there
(SCRAM-SHA-256, SCRAM-SHA-512 and PLAIN; user ``cronorch``, password ``SECURE_PASSWORD``),
with a certificate signed by a throwaway CA made by openssl in ``<state>/kafka/tls/ca.pem``:
the stand-in for a managed Kafka in the security tests (docs/operations.md). With
``CRONORCH_DEV_PG_TLS=1``, PostgreSQL serves TLS only (a certificate from the same kind of CA
in ``<state>/postgres/tls/ca.pem``; plaintext TCP connections are rejected).

Over 400 lines on purpose: both servers share the state layout, the pid/port waiting, the
throwaway CA and the error texts, and the tests, CI and ``cronorch dev`` call these functions
by module (``devstack.start_postgres``); it is subprocess plumbing read top to bottom.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from streams.errors import InfrastructureError

KAFKA_VERSION = "4.4.0"
SECURE_USER = "cronorch"
SECURE_PASSWORD = "cronorch-dev-secret"  # a throwaway local broker's, never a real one's
_KEYSTORE_PASSWORD = "cronorch-dev-keystore"
_DETACHED: list[subprocess.Popen[bytes]] = []
PG_BIN = Path("/usr/lib/postgresql/15/bin")


@dataclass(frozen=True)
class Stack:
    state_dir: Path
    cache_dir: Path
    kafka_port: int
    controller_port: int
    pg_port: int
    secure_port: int | None = None
    pg_tls: bool = False

    @classmethod
    def from_env(cls) -> Stack:
        env = os.environ
        return cls(
            state_dir=Path(env.get("CRONORCH_STATE_DIR", "/var/tmp/cronorch")),
            cache_dir=Path(env.get("CRONORCH_CACHE_DIR", Path.home() / ".cache" / "cronorch")),
            kafka_port=int(env.get("CRONORCH_DEV_KAFKA_PORT", "19092")),
            controller_port=int(env.get("CRONORCH_DEV_CONTROLLER_PORT", "19093")),
            pg_port=int(env.get("CRONORCH_DEV_PG_PORT", "15432")),
            secure_port=(int(env["CRONORCH_DEV_KAFKA_SECURE_PORT"])
                         if env.get("CRONORCH_DEV_KAFKA_SECURE_PORT") else None),
            pg_tls=env.get("CRONORCH_DEV_PG_TLS", "") in ("1", "true"),
        )

    @property
    def kafka_dir(self) -> Path:
        return self.state_dir / "kafka"

    @property
    def pg_dir(self) -> Path:
        return self.state_dir / "postgres"

    @property
    def jars_dir(self) -> Path:
        return self.cache_dir / f"kafka-{KAFKA_VERSION}" / "lib"

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.kafka_port}"

    @property
    def tls_dir(self) -> Path:
        return self.kafka_dir / "tls"

    @property
    def secure_bootstrap(self) -> str:
        return f"127.0.0.1:{self.secure_port}"

    @property
    def database_url(self) -> str:
        return f"postgresql://cronorch@127.0.0.1:{self.pg_port}/cronorch"


# --- helpers -----------------------------------------------------------------------------


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _pid_alive(pidfile: Path) -> int | None:
    try:
        pid = int(pidfile.read_text().strip())
        os.kill(pid, 0)
    except (FileNotFoundError, ValueError, ProcessLookupError):
        return None
    except PermissionError:
        pass
    return pid


def _wait(what: str, ready: object, timeout_s: float, alive: object = None) -> float:
    """Poll ``ready()`` until true; fail early when ``alive()`` turns false. Returns seconds."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if ready():  # type: ignore[operator]
            return time.monotonic() - start
        if alive is not None and not alive():  # type: ignore[operator]
            raise InfrastructureError(f"{what} exited during start-up")
        time.sleep(0.1)
    raise InfrastructureError(f"{what} was not ready within {timeout_s:.0f} s")


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return ""


# --- Kafka -------------------------------------------------------------------------------


def resolve_kafka_jars(stack: Stack) -> Path:
    """Resolve the broker's jars with Maven into the cache (once); return the folder."""
    marker = stack.jars_dir / ".complete"
    if marker.exists():
        return stack.jars_dir
    if shutil.which("mvn") is None or shutil.which("java") is None:
        raise InfrastructureError("java and mvn are needed: apt-get install openjdk-17-jre maven")
    stack.jars_dir.mkdir(parents=True, exist_ok=True)
    pom_file = resources.files("streams.cli") / "resources" / "kafka" / "pom.xml"
    with resources.as_file(pom_file) as pom:
        proc = subprocess.run(
            ["mvn", "-q", "-B", "-f", str(pom), "dependency:copy-dependencies",
             f"-DoutputDirectory={stack.jars_dir}", f"-Dkafka.version={KAFKA_VERSION}"],
            capture_output=True, text=True, check=False,
        )
    if proc.returncode != 0:
        raise InfrastructureError(
            f"resolving Apache Kafka {KAFKA_VERSION} from Maven Central failed:\n"
            f"{(proc.stdout + proc.stderr)[-2000:]}"
        )
    marker.write_text(KAFKA_VERSION)
    return stack.jars_dir


def _kafka_properties(stack: Stack) -> str:
    listeners = f"PLAINTEXT://127.0.0.1:{stack.kafka_port}"
    advertised = listeners
    protocols = "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT"
    secure = ""
    if stack.secure_port is not None:
        listeners += f",SECURE://127.0.0.1:{stack.secure_port}"
        advertised += f",SECURE://127.0.0.1:{stack.secure_port}"
        protocols += ",SECURE:SASL_SSL"
        secure = _secure_properties(stack)
    return f"""\
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:{stack.controller_port}
listeners={listeners},CONTROLLER://127.0.0.1:{stack.controller_port}
advertised.listeners={advertised}
controller.listener.names=CONTROLLER
listener.security.protocol.map={protocols}
inter.broker.listener.name=PLAINTEXT
log.dirs={stack.kafka_dir / "data"}
num.partitions=1
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=10
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
group.consumer.heartbeat.interval.ms=1000
group.consumer.min.heartbeat.interval.ms=1000
transaction.max.timeout.ms=900000
log.flush.interval.messages=9223372036854775807
{secure}"""


def _secure_properties(stack: Stack) -> str:
    scram = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
    plain = ("org.apache.kafka.common.security.plain.PlainLoginModule required "
             f'user_{SECURE_USER}="{SECURE_PASSWORD}";')
    return f"""\
sasl.enabled.mechanisms=SCRAM-SHA-256,SCRAM-SHA-512,PLAIN
listener.name.secure.scram-sha-256.sasl.jaas.config={scram}
listener.name.secure.scram-sha-512.sasl.jaas.config={scram}
listener.name.secure.plain.sasl.jaas.config={plain}
listener.name.secure.ssl.keystore.type=PKCS12
listener.name.secure.ssl.keystore.location={stack.tls_dir / "broker.p12"}
listener.name.secure.ssl.keystore.password={_KEYSTORE_PASSWORD}
listener.name.secure.ssl.key.password={_KEYSTORE_PASSWORD}
"""


def make_tls(folder: Path) -> Path:
    """A throwaway CA and a server certificate for 127.0.0.1 signed by it (openssl):
    ``server.pem``/``server.key`` and the same as PKCS#12 in ``broker.p12`` (Kafka's
    keystore); returns the CA file clients trust. Idempotent: an existing CA is kept."""
    ca = folder / "ca.pem"
    if ca.exists() and (folder / "broker.p12").exists():
        return ca
    if shutil.which("openssl") is None:
        raise InfrastructureError(
            "openssl is needed for the secure listener: apt-get install openssl")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    steps = [
        ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
         "-days", "30", "-subj", "/CN=cronorch-dev-ca"],
        ["req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
         "-subj", "/CN=127.0.0.1"],
        ["x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
         "-CAcreateserial", "-out", "server.pem", "-days", "30", "-extfile", "san.cnf"],
        ["pkcs12", "-export", "-in", "server.pem", "-inkey", "server.key", "-certfile", "ca.pem",
         "-out", "broker.p12", "-passout", f"pass:{_KEYSTORE_PASSWORD}"],
    ]
    for args in steps:
        proc = subprocess.run(["openssl", *args], cwd=folder, capture_output=True, text=True,
                              check=False)
        if proc.returncode != 0:
            raise InfrastructureError(f"openssl {args[0]} failed:\n{proc.stderr[-1000:]}")
    return ca




def start_kafka(stack: Stack) -> float:
    """Start the broker unless running; returns start-up seconds (0 when already up)."""
    pidfile = stack.kafka_dir / "kafka.pid"
    if _pid_alive(pidfile) and _port_open(stack.kafka_port):
        return 0.0
    for port in (stack.kafka_port, stack.controller_port, stack.secure_port):
        if port is not None and _port_open(port):
            raise InfrastructureError(
                f"port {port} is taken by another process; stop it or set "
                "CRONORCH_DEV_KAFKA_PORT / CRONORCH_DEV_CONTROLLER_PORT"
            )
    jars = resolve_kafka_jars(stack)
    stack.kafka_dir.mkdir(parents=True, exist_ok=True)
    props = stack.kafka_dir / "server.properties"
    if stack.secure_port is not None:
        make_tls(stack.tls_dir)
    props.write_text(_kafka_properties(stack))
    classpath = f"{jars}/*"
    java = ["java", "-Xms256m", "-Xmx768m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1"]
    if not (stack.kafka_dir / "data" / "meta.properties").exists():
        proc = subprocess.run(
            [*java, "-cp", classpath, "kafka.tools.StorageTool", "format",
             f"--cluster-id={_cluster_id()}", "-c", str(props), *_scram_users(stack)],
            capture_output=True, text=True, check=False,
        )
        if proc.returncode != 0:
            raise InfrastructureError(f"formatting Kafka storage failed:\n{proc.stderr[-2000:]}")
    with resources.as_file(
        resources.files("streams.cli") / "resources" / "kafka" / "log4j2.properties"
    ) as log4j, (stack.kafka_dir / "kafka.log").open("ab") as log:
        proc_ = subprocess.Popen(
            [*java, f"-Dlog4j2.configurationFile={log4j}", "-cp", classpath,
             "kafka.Kafka", str(props)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    _DETACHED.append(proc_)  # the broker outlives this call (and usually this process)
    pidfile.write_text(str(proc_.pid))
    try:
        return _wait("Kafka", lambda: _port_open(stack.kafka_port), 90,
                     alive=lambda: proc_.poll() is None)
    except InfrastructureError as exc:
        tail = _tail(stack.kafka_dir / "kafka.log")
        raise InfrastructureError(f"{exc}; broker log:\n{tail}") from None


def _scram_users(stack: Stack) -> list[str]:
    """StorageTool arguments that create the secure listener's SCRAM user at format time."""
    if stack.secure_port is None:
        return []
    return [arg for mechanism in ("SCRAM-SHA-256", "SCRAM-SHA-512") for arg in (
        "--add-scram", f"{mechanism}=[name={SECURE_USER},password={SECURE_PASSWORD}]")]


def _cluster_id() -> str:
    """A random cluster id, as ``kafka-storage random-uuid`` makes one. One in 64 starts
    with ``-``: it is passed as ``--cluster-id=<id>`` so the parser never takes it for a flag."""
    import base64

    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


# --- PostgreSQL --------------------------------------------------------------------------


def _pg_user() -> str | None:
    """PostgreSQL refuses to run as root: as root, run it as the ``postgres`` user."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise InfrastructureError("no 'postgres' user: apt-get install postgresql-15") from None
    return "postgres"


def _pg_cmd(args: list[str]) -> list[str]:
    user = _pg_user()
    return ["runuser", "-u", user, "--", *args] if user else args


def start_postgres(stack: Stack) -> float:
    if not (PG_BIN / "postgres").exists():
        raise InfrastructureError(
            f"PostgreSQL 15 not found in {PG_BIN}: apt-get install postgresql-15")
    data = stack.pg_dir / "data"
    if _pg_ready(stack):
        return 0.0
    if _port_open(stack.pg_port):
        raise InfrastructureError(
            f"port {stack.pg_port} is taken by another process; set CRONORCH_DEV_PG_PORT"
        )
    stack.state_dir.mkdir(parents=True, exist_ok=True)
    stack.state_dir.chmod(0o755)
    stack.pg_dir.mkdir(parents=True, exist_ok=True)
    user = _pg_user()
    if user:
        shutil.chown(stack.pg_dir, user)
    if not (data / "PG_VERSION").exists():
        proc = subprocess.run(
            _pg_cmd([str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres",
                     "--auth=trust", "-E", "UTF8", "--locale=C.UTF-8"]),
            capture_output=True, text=True, check=False,
        )
        if proc.returncode != 0:
            raise InfrastructureError(f"initdb failed:\n{proc.stderr[-2000:]}")
    tls = _pg_tls_options(stack, data, user) if stack.pg_tls else ""
    start = time.monotonic()
    proc = subprocess.run(
        _pg_cmd([str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(stack.pg_dir / "postgres.log"),
                 "-w", "-t", "60", "-o",
                 f"-p {stack.pg_port} -k {stack.pg_dir} -c listen_addresses=127.0.0.1 "
                 "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
                 f"-c max_connections=200{tls}", "start"]),
        capture_output=True, text=True, check=False,
    )
    if proc.returncode != 0:
        raise InfrastructureError(
            f"PostgreSQL did not start:\n{proc.stderr[-1000:]}\n"
            f"{_tail(stack.pg_dir / 'postgres.log')}"
        )
    _psql(stack, "DO $$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname='cronorch') "
                 "THEN CREATE ROLE cronorch LOGIN SUPERUSER; END IF; END$$;")
    exists = _psql(stack, "SELECT 1 FROM pg_database WHERE datname='cronorch'").strip()
    if exists != "1":
        _psql(stack, "CREATE DATABASE cronorch OWNER cronorch")
    return time.monotonic() - start


def _pg_tls_options(stack: Stack, data: Path, user: str | None) -> str:
    """Make the server certificate, refuse plaintext TCP in pg_hba.conf; the -c options."""
    folder = stack.pg_dir / "tls"
    make_tls(folder)
    key = folder / "server.key"
    key.chmod(0o600)  # PostgreSQL refuses a key that others can read
    if user:
        for path in (folder, key, folder / "server.pem"):
            shutil.chown(path, user)
    hba = data / "pg_hba.conf"
    text = hba.read_text()
    reject = "hostnossl all all 0.0.0.0/0 reject\nhostnossl all all ::/0 reject\n"
    if reject not in text:
        hba.write_text(reject + text)
    return f" -c ssl=on -c ssl_cert_file={folder / 'server.pem'} -c ssl_key_file={key}"


def _psql(stack: Stack, sql: str) -> str:
    proc = subprocess.run(
        [str(PG_BIN / "psql"), "-X", "-A", "-t", "-h", "127.0.0.1", "-p", str(stack.pg_port),
         "-U", "postgres", "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-c", sql],
        capture_output=True, text=True, check=False,
    )
    if proc.returncode != 0:
        raise InfrastructureError(f"psql failed: {proc.stderr.strip()}")
    return proc.stdout


def _pg_ready(stack: Stack) -> bool:
    if not (PG_BIN / "pg_isready").exists():
        return False
    return subprocess.run(
        [str(PG_BIN / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(stack.pg_port)],
        check=False,
    ).returncode == 0


def stop_postgres(stack: Stack) -> bool:
    data = stack.pg_dir / "data"
    if not (data / "postmaster.pid").exists():
        return False
    subprocess.run(_pg_cmd([str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]),
                   capture_output=True, check=False)
    return True


# --- the stack ---------------------------------------------------------------------------


def up(stack: Stack) -> dict[str, float]:
    """Start both servers (idempotent); returns start-up seconds per server."""
    return {"kafka_s": start_kafka(stack), "postgres_s": start_postgres(stack)}


def stop_kafka(stack: Stack, *, sig: int = signal.SIGTERM, timeout_s: float = 30) -> bool:
    pidfile = stack.kafka_dir / "kafka.pid"
    pid = _pid_alive(pidfile)
    if pid is None:
        return False
    os.kill(pid, sig)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and _pid_alive(pidfile):
        for child in _DETACHED:  # a broker this process started is reaped, not left a zombie
            child.poll()
        time.sleep(0.1)
    if _pid_alive(pidfile):
        os.kill(pid, signal.SIGKILL)
    pidfile.unlink(missing_ok=True)
    return True


def down(stack: Stack, *, wipe: bool = False) -> None:
    """Stop both servers (idempotent); ``wipe`` also deletes their data."""
    stop_kafka(stack)
    stop_postgres(stack)
    if wipe:
        shutil.rmtree(stack.kafka_dir, ignore_errors=True)
        shutil.rmtree(stack.pg_dir, ignore_errors=True)


def status(stack: Stack) -> dict[str, str]:
    running = _pid_alive(stack.kafka_dir / "kafka.pid") and _port_open(stack.kafka_port)
    kafka = "up" if running else "down"
    pg = "up" if _pg_ready(stack) else "down"
    return {
        "kafka": f"{kafka} ({stack.bootstrap}, Apache Kafka {KAFKA_VERSION})",
        "postgres": f"{pg} ({stack.database_url})",
        "state_dir": str(stack.state_dir),
    }
