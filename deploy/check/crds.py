"""Checks prometheus-operator objects (ServiceMonitor, PodMonitor,
PrometheusRule) against the operator's CRD schemas, which
kubernetes-validate does not have.

The schemas come as the pydantic models cloudcoil generates from the CRDs'
OpenAPI (PyPI: cloudcoil-models-prometheus-operator, pinned in
deploy/python-requirements.txt). Each object must validate, and must come
back unchanged from a round trip through its model: pydantic ignores
unknown fields, so a misspelt or misplaced key shows up as a difference
(the API server, with kubectl's default strict field validation, would
reject it).

    python crds.py FILE...    (YAML, several documents per file allowed)

Prints one line per object; exits 1 if any fails, 2 if there was none.
"""

import sys

import pydantic
import yaml
from cloudcoil.models.prometheus_operator import v1

KINDS = {
    "ServiceMonitor": v1.ServiceMonitor,
    "PodMonitor": v1.PodMonitor,
    "PrometheusRule": v1.PrometheusRule,
}


def differences(want, got, path="$"):
    """Where `got` differs from `want`, as JSON-path-like strings."""
    if isinstance(want, dict) and isinstance(got, dict):
        out = []
        for key in sorted(set(want) | set(got), key=str):
            if key not in got:
                out.append(f"{path}.{key}: unknown to the schema (dropped)")
            elif key not in want:
                out.append(f"{path}.{key}: added by the schema")
            else:
                out.extend(differences(want[key], got[key], f"{path}.{key}"))
        return out
    if isinstance(want, list) and isinstance(got, list) and len(want) == len(got):
        out = []
        for i, (w, g) in enumerate(zip(want, got)):
            out.extend(differences(w, g, f"{path}[{i}]"))
        return out
    if want != got or type(want) is not type(got):
        return [f"{path}: {want!r} became {got!r}"]
    return []


def check(doc):
    """Returns (name, problems) for a monitoring.coreos.com object, else None."""
    api = doc.get("apiVersion", "")
    if not api.startswith("monitoring.coreos.com/"):
        return None
    kind = doc.get("kind")
    name = f"{kind}/{doc.get('metadata', {}).get('name')}"
    model = KINDS.get(kind) if api == "monitoring.coreos.com/v1" else None
    if model is None:
        return name, [f"no schema for {api} {kind}"]
    try:
        obj = model.model_validate(doc)
    except pydantic.ValidationError as e:
        return name, [str(e)]
    back = obj.model_dump(mode="json", by_alias=True, exclude_unset=True)
    return name, differences(doc, back)


def main(paths):
    seen = failed = 0
    for path in paths:
        with open(path, encoding="utf-8") as f:
            docs = [d for d in yaml.safe_load_all(f) if d]
        for doc in docs:
            result = check(doc)
            if result is None:
                continue
            name, problems = result
            seen += 1
            if problems:
                failed += 1
                print(f"FAIL {path}: {name}")
                for p in problems:
                    print(f"  {p}")
            else:
                print(f"ok   {path}: {name}")
    if seen == 0:
        print("no prometheus-operator objects found")
        return 2
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
