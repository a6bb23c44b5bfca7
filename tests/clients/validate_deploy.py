"""Validates Kubernetes manifests and reports what they expect of the host.

Usage: validate_deploy.py KUBERNETES_VERSION SPINAPP_SCHEMA FILE...

Each FILE holds YAML documents (a rendered kustomize overlay, or a plain manifest). Built-in kinds
are validated strictly against that Kubernetes version's schemas with `kubernetes-validate` (unknown
fields are errors); SpinApp against spin-operator's spec (SPINAPP_SCHEMA, with `jsonschema`);
the other custom resources (ServiceMonitor, ScaledObject, ClusterServingRuntime, cert-manager's
Certificate) by the fields the host depends on. Prints, as the last line, JSON: the documents checked and, for the test to check
against a running host, every probe path, port, listen address and metric name they use.
"""

import json
import re
import sys

import jsonschema
import kubernetes_validate
import yaml

version, schema_path, files = sys.argv[1], sys.argv[2], sys.argv[3:]
spinapp_schema = json.load(open(schema_path))
report = {"documents": [], "probes": [], "containers": [], "runtime_configs": [], "metrics": [], "metrics_paths": [],
          "certificates": []}
failures = []


def containers_of(doc):
    kind = doc["kind"]
    if kind == "Deployment":
        return doc["spec"]["template"]["spec"]["containers"]
    if kind == "ClusterServingRuntime":
        return doc["spec"]["containers"]
    return []


def check_custom(doc):
    kind, spec = doc["kind"], doc.get("spec", {})
    if kind == "SpinApp":
        jsonschema.validate(doc, spinapp_schema)
        for probe in spec.get("checks", {}).values():
            report["probes"].append({"path": probe["httpGet"]["path"], "runtime": "spin"})
    elif kind == "ServiceMonitor":
        assert doc["apiVersion"] == "monitoring.coreos.com/v1", doc["apiVersion"]
        for endpoint in spec["endpoints"]:
            report["metrics_paths"].append(endpoint["path"])
    elif kind == "ScaledObject":
        assert doc["apiVersion"] == "keda.sh/v1alpha1", doc["apiVersion"]
        assert spec["scaleTargetRef"]["name"], spec
        for trigger in spec["triggers"]:
            if trigger["type"] == "prometheus":
                report["metrics"] += re.findall(r"edgeinfer_[a-z_]+", trigger["metadata"]["query"])
    elif kind == "Certificate":
        assert doc["apiVersion"] == "cert-manager.io/v1", doc["apiVersion"]
        assert spec["secretName"] and spec["issuerRef"]["name"], spec
        assert spec.get("dnsNames") or spec.get("ipAddresses"), spec
        assert set(spec.get("usages", [])) <= {"server auth", "client auth", "digital signature", "key encipherment"}, spec
        assert spec.get("privateKey", {}).get("algorithm", "RSA") in ("RSA", "ECDSA", "Ed25519"), spec
        report["certificates"].append({"secret": spec["secretName"]})
    elif kind == "ClusterServingRuntime":
        assert doc["apiVersion"] == "serving.kserve.io/v1alpha1", doc["apiVersion"]
        assert "v2" in spec["protocolVersions"], spec
        assert any(f["name"] == "onnx" for f in spec["supportedModelFormats"]), spec
    else:
        raise AssertionError(f"no check for custom resource {kind}")


for path in files:
    with open(path) as f:
        text = f.read()
    documents = [d for d in yaml.safe_load_all(text) if d]
    for doc in documents:
        if "kind" not in doc:
            # prometheus-adapter's Helm values: its rules' metric names.
            for rule in doc.get("rules", {}).get("custom", []):
                report["metrics"] += re.findall(r"edgeinfer_[a-z_]+", rule["seriesQuery"])
            report["documents"].append({"file": path, "kind": "prometheus-adapter rules"})
            continue
        name = f'{doc["kind"]}/{doc["metadata"]["name"]}'
        try:
            if doc["kind"] in ("SpinApp", "ServiceMonitor", "ScaledObject", "ClusterServingRuntime", "Certificate"):
                check_custom(doc)
            else:
                kubernetes_validate.validate(doc, version, strict=True)
        except Exception as e:  # every failure is reported, not just the first
            failures.append(f"{path}: {name}: {type(e).__name__}: {e}")
            continue
        report["documents"].append({"file": path, "kind": doc["kind"], "name": doc["metadata"]["name"]})
        secrets = {}
        if doc["kind"] == "Deployment":
            secrets = {v["name"]: v["secret"]["secretName"] for v in doc["spec"]["template"]["spec"].get("volumes", [])
                       if "secret" in v}
        for container in containers_of(doc):
            schemes = []
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                if probe in container:
                    report["probes"].append({"path": container[probe]["httpGet"]["path"], "runtime": "edgeinfer"})
                    schemes.append(container[probe]["httpGet"].get("scheme", "HTTP"))
            env = {e["name"]: e.get("value") for e in container.get("env", [])}
            tls_variables = ("EDGEINFER_TLS_CERT", "EDGEINFER_TLS_KEY")
            report["containers"].append({
                "name": name,
                "ports": [p["containerPort"] for p in container.get("ports", [])],
                "listen": [env[k] for k in ("EDGEINFER_LISTEN", "EDGEINFER_ADMIN_LISTEN") if k in env],
                "probe_schemes": schemes,
                "tls_files": [env[k] for k in tls_variables if k in env],
                "client_ca": env.get("EDGEINFER_ADMIN_CLIENT_CA"),
                # Where each mounted Secret appears in the container.
                "secret_mounts": {m["mountPath"]: secrets[m["name"]] for m in container.get("volumeMounts", [])
                                  if m["name"] in secrets},
            })
            if "EDGEINFER_RUNTIME_CONFIG" in env:
                report["runtime_configs"].append(env["EDGEINFER_RUNTIME_CONFIG"])
        if doc["kind"] == "HorizontalPodAutoscaler":
            for metric in doc["spec"]["metrics"]:
                if metric["type"] == "Pods":
                    report["metrics"].append(metric["pods"]["metric"]["name"])

if failures:
    print("\n".join(failures), file=sys.stderr)
    sys.exit(1)
print(json.dumps(report))
