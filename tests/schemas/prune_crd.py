"""Writes the validation schema of a CustomResourceDefinition as JSON Schema, pruned.

Usage: prune_crd.py CRD.yaml KIND OUT.json

Takes the served version's `openAPIV3Schema` of the CRD for KIND from a project's own CRD file
and drops what the manifests here never use, so the committed schema stays small: every
`description`, and the embedded Kubernetes pod and job specs (a Rollout's `spec.template`, an
AnalysisTemplate metric's `provider.job`, which become free-form objects). Everything else is
kept as the project wrote it, `required` fields and enums included; `additionalProperties: false`
is added to every object with `properties` (the API server prunes unknown fields; here they are
errors, so a misspelled field cannot pass).
"""

import json
import sys

import yaml

crd_file, kind, out = sys.argv[1], sys.argv[2], sys.argv[3]
crds = [d for d in yaml.safe_load_all(open(crd_file)) if d and d.get("kind") == "CustomResourceDefinition"]
crd = next(d for d in crds if d["spec"]["names"]["kind"] == kind)
version = next(v for v in crd["spec"]["versions"] if v.get("served", True) and v.get("storage", True))
schema = version["schema"]["openAPIV3Schema"]

FREE = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}


def prune(node, path):
    if isinstance(node, dict):
        if path in (("spec", "template"), ("spec", "metrics", "[]", "provider", "job")):
            return dict(FREE)
        result = {}
        for key, value in node.items():
            if key == "description":
                continue
            if key == "properties":
                result[key] = {name: prune(sub, path + (name,)) for name, sub in value.items()}
            elif key == "items":
                result[key] = prune(value, path + ("[]",))
            else:
                result[key] = prune(value, path)
        if "properties" in result and "additionalProperties" not in result \
                and not result.get("x-kubernetes-preserve-unknown-fields"):
            result["additionalProperties"] = False
        return result
    if isinstance(node, list):
        return [prune(item, path) for item in node]
    return node


pruned = prune(schema, ())
pruned["$comment"] = f"{crd['metadata']['name']} {version['name']}, pruned by tests/schemas/prune_crd.py"
# The API server fills these in; manifests may carry them.
json.dump(pruned, open(out, "w"), indent=1, sort_keys=True)
print(f"{out}: {len(json.dumps(pruned))} bytes")
