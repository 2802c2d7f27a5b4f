#!/usr/bin/env python3
"""Checks deploy/ against what the server does (run by .ci/run, after
kubernetes-validate has checked the manifests against the API schemas).

- The timing rule: terminationGracePeriodSeconds > SHUTDOWN_DELAY +
  SHUTDOWN_TIMEOUT (each from the container's env, else the server's default),
  so that SIGKILL never cuts the delay or the drain short.
- Readiness probes /ready and liveness probes /health, on the container's port.
- The Service targets a port the container declares.
- The image runs as a non-root user: the Dockerfile's last stage has a
  numeric USER other than 0, and the pod asks for runAsNonRoot.

Exits 1 with one line per problem. Needs PyYAML (a dependency of
kubernetes-validate).
"""

import pathlib
import re
import sys

import yaml

DEPLOY = pathlib.Path(__file__).resolve().parent
ROOT = DEPLOY.parent


def server_default(name):
    """The default of a variable, as config.example.env (kept in step with
    the code by a unit test) states it."""
    text = (ROOT / "config.example.env").read_text()
    match = re.search(rf"^{name}=(\d+)$", text, re.MULTILINE)
    if not match:
        sys.exit(f"config.example.env has no {name}=<seconds> line")
    return int(match.group(1))


def check_deployment(doc, problems):
    name = doc["metadata"]["name"]
    pod = doc["spec"]["template"]["spec"]
    grace = pod.get("terminationGracePeriodSeconds", 30)
    security = pod.get("securityContext", {})
    if not security.get("runAsNonRoot"):
        problems.append(f"deployment/{name}: securityContext.runAsNonRoot is not true")
    ports = set()
    for container in pod["containers"]:
        where = f"deployment/{name} container {container['name']}"
        env = {e["name"]: e.get("value") for e in container.get("env", [])}
        delay = int(env.get("SHUTDOWN_DELAY", server_default("SHUTDOWN_DELAY")))
        timeout = int(env.get("SHUTDOWN_TIMEOUT", server_default("SHUTDOWN_TIMEOUT")))
        if not grace > delay + timeout:
            problems.append(
                f"{where}: terminationGracePeriodSeconds {grace} is not above "
                f"SHUTDOWN_DELAY {delay} + SHUTDOWN_TIMEOUT {timeout}"
            )
        else:
            print(f"ok: {where}: grace {grace}s > delay {delay}s + timeout {timeout}s")
        declared = {p.get("name") for p in container.get("ports", [])}
        declared |= {p["containerPort"] for p in container.get("ports", [])}
        ports |= declared
        for probe, path in (("readinessProbe", "/ready"), ("livenessProbe", "/health")):
            get = container.get(probe, {}).get("httpGet")
            if not get:
                problems.append(f"{where}: no {probe} with httpGet")
                continue
            if get.get("path") != path:
                problems.append(f"{where}: {probe} asks {get.get('path')}, not {path}")
            if get.get("port") not in declared:
                problems.append(f"{where}: {probe} port {get.get('port')} is not declared")
        if container.get("securityContext", {}).get("allowPrivilegeEscalation", True):
            problems.append(f"{where}: allowPrivilegeEscalation is not false")
        if "resources" not in container:
            problems.append(f"{where}: no resources")
    return ports


def check_dockerfile(problems):
    stages = re.split(r"^FROM\s", (DEPLOY / "Dockerfile").read_text(), flags=re.MULTILINE)
    if len(stages) < 3:
        problems.append("Dockerfile: not a multi-stage build")
    users = re.findall(r"^USER\s+(\S+)", stages[-1], re.MULTILINE)
    if not users:
        problems.append("Dockerfile: the final stage sets no USER (it would run as root)")
    elif not re.fullmatch(r"[1-9]\d*(:\d+)?", users[-1]):
        problems.append(f"Dockerfile: USER {users[-1]} is not a numeric non-root user")


def main():
    problems = []
    docs = [d for d in yaml.safe_load_all((DEPLOY / "kubernetes.yaml").read_text()) if d]
    kinds = [d["kind"] for d in docs]
    for kind in ("Deployment", "Service"):
        if kind not in kinds:
            problems.append(f"kubernetes.yaml has no {kind}")
    ports = set()
    for doc in docs:
        if doc["kind"] == "Deployment":
            ports |= check_deployment(doc, problems)
    for doc in docs:
        if doc["kind"] == "Service":
            for port in doc["spec"]["ports"]:
                if port.get("targetPort", port["port"]) not in ports:
                    problems.append(
                        f"service/{doc['metadata']['name']}: targetPort "
                        f"{port.get('targetPort')} is not a container port"
                    )
    check_dockerfile(problems)
    for problem in problems:
        print(f"deploy/check.py: {problem}", file=sys.stderr)
    if problems:
        sys.exit(1)
    print("ok: deploy/ agrees with the server")


if __name__ == "__main__":
    main()
