#!/usr/bin/env python3
"""Validates custom resources against their CRDs' OpenAPI v3 schemas, offline.

Usage: crd-schema-check.py CRD.yaml [CRD.yaml ...] -- OBJECTS.yaml [OBJECTS.yaml ...]

Each document of the OBJECTS files is matched to a CRD by apiVersion and kind and
checked against that version's `openAPIV3Schema` with `jsonschema` (installed with
kubernetes-validate by scripts/setup.sh), plus what the API server's strict field
validation adds: a field the schema does not declare is an error (unless the schema
preserves unknown fields). Prints one line per document ("passed" or the errors) and
exits 1 if any document fails or matches no CRD.
"""
import sys

import jsonschema
import yaml


def schemas(crd_files):
    out = {}
    for path in crd_files:
        with open(path) as f:
            for crd in yaml.safe_load_all(f):
                if not crd:
                    continue
                group = crd["spec"]["group"]
                kind = crd["spec"]["names"]["kind"]
                for v in crd["spec"]["versions"]:
                    out[(f"{group}/{v['name']}", kind)] = v["schema"]["openAPIV3Schema"]
    return out


def unknown_fields(schema, value, path):
    """Fields of `value` its schema does not declare (strict field validation)."""
    errors = []
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return errors
    if isinstance(value, dict) and schema.get("type") == "object":
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        for k, v in value.items():
            if props is not None and k in props:
                errors += unknown_fields(props[k], v, f"{path}.{k}")
            elif isinstance(extra, dict):
                errors += unknown_fields(extra, v, f"{path}.{k}")
            elif path == "" and k in ("apiVersion", "kind", "metadata"):
                continue
            elif props is not None:
                errors.append(f"{path}.{k}: unknown field")
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, v in enumerate(value):
            errors += unknown_fields(schema["items"], v, f"{path}[{i}]")
    return errors


def main(argv):
    if "--" not in argv:
        print(__doc__, file=sys.stderr)
        return 2
    cut = argv.index("--")
    known = schemas(argv[:cut])
    failed = 0
    for path in argv[cut + 1:]:
        with open(path) as f:
            docs = [d for d in yaml.safe_load_all(f) if d]
        for d in docs:
            name = f"{path}: {d.get('kind')} {d.get('metadata', {}).get('name')}"
            schema = known.get((d.get("apiVersion"), d.get("kind")))
            if schema is None:
                print(f"{name}: FAILED: no CRD for {d.get('apiVersion')} {d.get('kind')}")
                failed += 1
                continue
            errors = [
                f"{'.'.join(str(p) for p in e.absolute_path) or '(root)'}: {e.message}"
                for e in jsonschema.Draft4Validator(schema).iter_errors(d)
            ]
            errors += unknown_fields(schema, d, "")
            if errors:
                failed += 1
                print(f"{name}: FAILED:")
                for e in errors:
                    print(f"  {e}")
            else:
                print(f"{name}: passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
