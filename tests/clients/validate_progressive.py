"""Validates the progressive-delivery manifests (Argo Rollouts, Flagger) and lists their queries.

Usage: validate_progressive.py SCHEMA_DIR FILE...

Each document is validated with `jsonschema` against its project's CRD schema (SCHEMA_DIR/
argo-rollouts/*.json, SCHEMA_DIR/flagger/*.json, pruned from the projects' own CRD files by
tests/schemas/prune_crd.py); references between them are checked (a Rollout's analysis template
and its args, a Canary's metric templates). Prints, as the last line, JSON: the documents checked
and every Prometheus query with its success condition, for the test to run against a Prometheus
scraping a real host.
"""

import json
import os
import sys

import jsonschema
import yaml

schema_dir, files = sys.argv[1], sys.argv[2:]
SCHEMAS = {
    ("argoproj.io/v1alpha1", "Rollout"): "argo-rollouts/rollout.json",
    ("argoproj.io/v1alpha1", "AnalysisTemplate"): "argo-rollouts/analysistemplate.json",
    ("flagger.app/v1beta1", "Canary"): "flagger/canary.json",
    ("flagger.app/v1beta1", "MetricTemplate"): "flagger/metrictemplate.json",
}
docs = [d for f in files for d in yaml.safe_load_all(open(f)) if d]
report = {"documents": [], "queries": []}
by_kind = {}
for doc in docs:
    key = (doc["apiVersion"], doc["kind"])
    if key not in SCHEMAS:
        sys.exit(f"{doc['kind']} {doc['apiVersion']}: no schema for it")
    schema = json.load(open(os.path.join(schema_dir, SCHEMAS[key])))
    jsonschema.validate(doc, schema)
    by_kind.setdefault(doc["kind"], {})[doc["metadata"]["name"]] = doc
    report["documents"].append(f"{doc['kind']}/{doc['metadata']['name']}")

for name, rollout in by_kind.get("Rollout", {}).items():
    analysis = rollout["spec"]["strategy"]["canary"]["analysis"]
    given = {a["name"] for a in analysis.get("args", [])}
    for ref in analysis["templates"]:
        template = by_kind.get("AnalysisTemplate", {}).get(ref["templateName"])
        assert template, f"Rollout {name}: no AnalysisTemplate {ref['templateName']}"
        for arg in template["spec"].get("args", []):
            assert arg["name"] in given or "value" in arg, f"Rollout {name} gives no {arg['name']}"
for name, template in by_kind.get("AnalysisTemplate", {}).items():
    for metric in template["spec"]["metrics"]:
        report["queries"].append({
            "source": f"AnalysisTemplate/{name}/{metric['name']}",
            "query": metric["provider"]["prometheus"]["query"],
            "condition": metric["successCondition"],
        })
for name, canary in by_kind.get("Canary", {}).items():
    for metric in canary["spec"]["analysis"]["metrics"]:
        template = by_kind.get("MetricTemplate", {}).get(metric["templateRef"]["name"])
        assert template, f"Canary {name}: no MetricTemplate {metric['templateRef']['name']}"
        report["queries"].append({
            "source": f"Canary/{name}/{metric['name']}",
            "query": template["spec"]["query"],
            "condition": f"result <= {metric['thresholdRange']['max']}",
        })
print(json.dumps(report))
