"""A real single-node Apache Kafka (KRaft, combined broker+controller) from Maven Central jars.

The jars are fetched once with Maven into the user's cache; each stack has its own state directory
(config, data, log, pid). See docs/kafka.md for the recipe and the reasons behind each setting.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from defectloop.cli import kafka_acls
from defectloop.cli.processes import pid_from_file, port_open, start_daemon, stop_by_pid_file
from defectloop.common.errors import ComponentError
from defectloop.common.kafka_admin import ensure_topics
from defectloop.common.kafka_auth import SCRAM_MECHANISM, ScramCredentials
from defectloop.common.paths import cache_home, state_home
from defectloop.common.topics import topic_specs

KAFKA_VERSION = os.environ.get("DEFECTLOOP_KAFKA_VERSION", "4.3.1")
LOG4J_VERSION = os.environ.get("DEFECTLOOP_LOG4J_VERSION", "2.25.4")

_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>io.defectloop</groupId>
  <artifactId>kafka-runtime</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_2.13</artifactId>
      <version>{kafka}</version>
    </dependency>
    <!-- The slf4j 1.x -> log4j2 binding ships only in Kafka's tarball, not its POM. -->
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j-impl</artifactId>
      <version>{log4j}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-core</artifactId>
      <version>{log4j}</version>
    </dependency>
  </dependencies>
</project>
"""

_LOG4J2 = """status = warn
appender.console.type = Console
appender.console.name = STDOUT
appender.console.target = SYSTEM_OUT
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.stdout.ref = STDOUT
logger.request.name = kafka.request.logger
logger.request.level = WARN
"""


@dataclass(frozen=True)
class KafkaLayout:
    """Where one local broker keeps its files, and its ports."""

    home: Path
    port: int = 9092
    controller_port: int = 9093
    profile: Literal["local", "production"] = "local"
    """``production``: every listener requires SASL, ACLs per principal (docs/security.md)."""
    sites: tuple[str, ...] = ()
    """Production: the sites whose MES principal and ``decisions.<site>`` topic are created."""

    @property
    def secured(self) -> bool:
        return self.profile == "production"

    @property
    def credentials_file(self) -> Path:
        """Production: each principal's SCRAM password (mode 0600), written before formatting."""
        return self.home / "credentials.json"

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def config(self) -> Path:
        return self.home / "server.properties"

    @property
    def log4j(self) -> Path:
        return self.home / "log4j2.properties"

    @property
    def log_file(self) -> Path:
        return self.home / "broker.log"

    @property
    def pid_file(self) -> Path:
        return self.home / "broker.pid"


def default_layout() -> KafkaLayout:
    """The stack's broker; ``DEFECTLOOP_KAFKA_PROFILE=production`` with
    ``DEFECTLOOP_KAFKA_SITES=A,B`` secures it (docs/security.md)."""
    port = int(os.environ.get("DEFECTLOOP_KAFKA_PORT", "9092"))
    profile = os.environ.get("DEFECTLOOP_KAFKA_PROFILE", "local")
    if profile not in ("local", "production"):
        raise ComponentError(
            f"unknown Kafka profile {profile!r}",
            hint="set DEFECTLOOP_KAFKA_PROFILE to local or production",
        )
    sites = tuple(s for s in os.environ.get("DEFECTLOOP_KAFKA_SITES", "").split(",") if s)
    return KafkaLayout(
        state_home() / "kafka",
        port=port,
        controller_port=port + 1,
        profile="production" if profile == "production" else "local",
        sites=sites,
    )


def jars_dir(version: str = KAFKA_VERSION) -> Path:
    return cache_home() / "kafka" / version / "libs"


def ensure_jars(version: str = KAFKA_VERSION) -> Path:
    """Fetch the broker jars from Maven Central once; return the directory holding them."""
    target = jars_dir(version)
    if target.is_dir() and any(target.glob("kafka_2.13-*.jar")):
        return target
    mvn = shutil.which("mvn")
    if mvn is None:
        raise ComponentError(
            "Maven (mvn) is needed once to fetch Kafka's jars",
            hint="install it: apt-get install -y maven (Java 17 is needed too)",
        )
    work = target.parent
    work.mkdir(parents=True, exist_ok=True)
    (work / "pom.xml").write_text(_POM.format(kafka=version, log4j=LOG4J_VERSION))
    staging = work / "libs.partial"
    shutil.rmtree(staging, ignore_errors=True)
    proc = subprocess.run(
        [
            mvn,
            "-q",
            "-B",
            "-f",
            str(work / "pom.xml"),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={staging}",
            "-DincludeScope=runtime",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-5:]
        raise ComponentError(
            f"Maven could not fetch Kafka {version}: {' / '.join(tail)}",
            hint="check that Maven Central is reachable and DEFECTLOOP_KAFKA_VERSION is a release",
        )
    staging.rename(target)  # atomic: a half-fetched directory is never mistaken for a full one
    return target


def _java() -> str:
    java = shutil.which("java")
    if java is None:
        raise ComponentError(
            "Java 17+ is needed to run Kafka", hint="apt-get install -y openjdk-17-jre-headless"
        )
    return java


def _classpath(libs: Path) -> str:
    return str(libs / "*")


def _new_cluster_id() -> str:
    # Kafka's Uuid format: 22 chars URL-safe base64, never starting with '-' (parsed as a flag).
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


def _secured_props(layout: KafkaLayout) -> dict[str, str]:
    """SASL on both listeners and the StandardAuthorizer: no anonymous door.

    Clients use SCRAM-SHA-256 (credentials stored in the cluster metadata, created at format
    time). The controller listener cannot use SCRAM (the controller needs the credentials before
    it has read them), so the broker authenticates to its controller with PLAIN, user admin.
    """
    admin = credentials(layout)[kafka_acls.ADMIN].password
    scram = "org.apache.kafka.common.security.scram.ScramLoginModule"
    plain = "org.apache.kafka.common.security.plain.PlainLoginModule"
    return {
        "listeners": f"SASL_PLAINTEXT://127.0.0.1:{layout.port},CONTROLLER://127.0.0.1:{layout.controller_port}",
        "advertised.listeners": (
            f"SASL_PLAINTEXT://127.0.0.1:{layout.port},CONTROLLER://127.0.0.1:{layout.controller_port}"
        ),
        "inter.broker.listener.name": "SASL_PLAINTEXT",
        "listener.security.protocol.map": "CONTROLLER:SASL_PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT",
        "sasl.enabled.mechanisms": SCRAM_MECHANISM,
        "sasl.mechanism.inter.broker.protocol": SCRAM_MECHANISM,
        "listener.name.controller.sasl.enabled.mechanisms": "PLAIN",
        "sasl.mechanism.controller.protocol": "PLAIN",
        "listener.name.sasl_plaintext.scram-sha-256.sasl.jaas.config": (
            f'{scram} required username="admin" password="{admin}";'
        ),
        "listener.name.controller.plain.sasl.jaas.config": (
            f'{plain} required username="admin" password="{admin}" user_admin="{admin}";'
        ),
        "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        "super.users": f"User:{kafka_acls.ADMIN}",
        "allow.everyone.if.no.acl.found": "false",
    }


def credentials(layout: KafkaLayout) -> dict[str, ScramCredentials]:
    """Production: each principal's credentials (admin, the services, each site's MES), created
    on first use."""
    names = [kafka_acls.ADMIN, *(p.name for p in kafka_acls.principals(layout.sites))]
    path = layout.credentials_file
    stored: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
    missing = [n for n in names if n not in stored]
    if missing:
        if (layout.data_dir / "meta.properties").exists():
            # SCRAM users are written into the metadata at format time (see docs/security.md).
            raise ComponentError(
                f"principals {', '.join(missing)} are not in this broker's credentials",
                hint=f"stop Kafka and remove {layout.home} to format it with the new sites",
            )
        stored |= kafka_acls.new_passwords(missing)
        layout.home.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(json.dumps(stored, indent=2))
    return {n: ScramCredentials(n, stored[n]) for n in stored}


def write_config(layout: KafkaLayout) -> None:
    layout.home.mkdir(parents=True, exist_ok=True)
    props = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.bootstrap.servers": f"127.0.0.1:{layout.controller_port}",
        "listeners": f"PLAINTEXT://127.0.0.1:{layout.port},CONTROLLER://127.0.0.1:{layout.controller_port}",
        "advertised.listeners": (
            f"PLAINTEXT://127.0.0.1:{layout.port},CONTROLLER://127.0.0.1:{layout.controller_port}"
        ),
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "log.dirs": str(layout.data_dir),
        "num.partitions": "6",
        "num.recovery.threads.per.data.dir": "1",
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "6",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "transaction.state.log.num.partitions": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
        # Topics are created explicitly (partitions, compaction); a typo must not invent one.
        "auto.create.topics.enable": "false",
        "num.network.threads": "2",
        "num.io.threads": "2",
        "log.cleaner.dedupe.buffer.size": "16777216",
        "message.max.bytes": "1048588",
    }
    if layout.secured:
        props |= _secured_props(layout)
    layout.config.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
    layout.log4j.write_text(_LOG4J2)


def _format_storage(layout: KafkaLayout, libs: Path) -> None:
    if (layout.data_dir / "meta.properties").exists():
        return
    layout.data_dir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [
            _java(),
            "-Xmx256m",
            f"-Dlog4j2.configurationFile={layout.log4j}",
            "-cp",
            _classpath(libs),
            "kafka.tools.StorageTool",
            "format",
            "--standalone",
            "-t",
            _new_cluster_id(),
            "-c",
            str(layout.config),
            *_scram_users(layout),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise ComponentError(
            f"formatting Kafka storage failed: {(proc.stderr or proc.stdout).strip()[-500:]}",
            hint=f"remove {layout.data_dir} and retry",
        )


def _scram_users(layout: KafkaLayout) -> list[str]:
    """``--add-scram`` arguments: every principal's SCRAM credential, in the first metadata."""
    if not layout.secured:
        return []
    args = []
    for name, cred in credentials(layout).items():
        args += ["--add-scram", f"{SCRAM_MECHANISM}=[name={name},password={cred.password}]"]
    return args


def _ensure_topics(layout: KafkaLayout, partitions: int) -> None:
    if layout.secured:
        admin = credentials(layout)[kafka_acls.ADMIN]
        asyncio.run(
            kafka_acls.secure_setup(
                layout.bootstrap, admin, sites=layout.sites, partitions=partitions
            )
        )
    else:
        specs = topic_specs(partitions) + kafka_acls.site_topic_specs(layout.sites, partitions)
        asyncio.run(ensure_topics(layout.bootstrap, specs))


def read_pid(layout: KafkaLayout) -> int | None:
    return pid_from_file(layout.pid_file)


def is_running(layout: KafkaLayout) -> bool:
    return read_pid(layout) is not None and port_open(layout.port)


def start(layout: KafkaLayout, *, timeout_s: float = 120.0, partitions: int = 6) -> bool:
    """Start the broker unless it runs; return True if this call started it.

    Returns only when the broker accepts clients (the plaintext port opens only once the broker
    is unfenced) and the stack's topics exist.
    """
    if is_running(layout):
        _ensure_topics(layout, partitions)
        return False
    if read_pid(layout) is None and port_open(layout.port):
        raise ComponentError(
            f"port {layout.port} is taken by another process",
            hint="stop it, or set DEFECTLOOP_KAFKA_PORT to another port",
        )
    libs = ensure_jars()
    write_config(layout)
    _format_storage(layout, libs)
    heap = os.environ.get("DEFECTLOOP_KAFKA_HEAP", "-Xms256m -Xmx1g").split()
    start_daemon(
        [
            _java(),
            *heap,
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={layout.log4j}",
            f"-Dkafka.logs.dir={layout.home}",
            "-cp",
            _classpath(libs),
            "kafka.Kafka",
            str(layout.config),
        ],
        name="Kafka",
        port=layout.port,
        pid_file=layout.pid_file,
        log_file=layout.log_file,
        timeout_s=timeout_s,
    )
    _ensure_topics(layout, partitions)
    return True


def stop(layout: KafkaLayout, *, timeout_s: float = 60.0) -> bool:
    """Stop the broker by its pid (SIGTERM = clean shutdown; SIGKILL after ``timeout_s``)."""
    return stop_by_pid_file(layout.pid_file, timeout_s=timeout_s)
