#!/usr/bin/env python3
"""Evaluates a CRD's CEL validation rules (`x-kubernetes-validations`) on objects, offline.

    ~/.cache/klio-venv/bin/python scripts/crd-cel-check.py CRD.yaml OBJECT.yaml...

Uses the PyPI package `cel-python` (module `celpy`, pure Python), which
`source scripts/setup.sh && klio_install_cel` installs into Klio's virtualenv.

What the API server does on create, as far as it can be done without one:
- each document of each OBJECT file is matched to the CRD version its `apiVersion`
  names (the kind must be the CRD's);
- the schema's `default`s are applied first (the API server defaults before it
  validates);
- the schema and the object are walked together: a rule on the root schema sees the
  object as `self`, a rule on a sub-schema is evaluated wherever that field is present
  (for each item of a list, each value of a map) with the field's value as `self`;
- a rule that fails (or cannot be evaluated) reports its `message`, else its
  `messageExpression`, else `failed rule: <rule>` as the API server words it.
Transition rules (those using `oldSelf`) need the stored object and are skipped with a
note. Every rule of the CRD is compiled first, present field or not: one that cel-python
cannot parse is an error (exit 2), never a silent pass.

Prints `ok <file>#<n> <path>: <rule>` or `FAIL <file>#<n> <path>: <message>` per
evaluated rule and a summary; exits 1 when a rule fails, 2 on unusable input.
"""

import copy
import sys

try:
    import celpy
    import yaml
    from celpy.adapter import json_to_cel
    from celpy.celtypes import BoolType
except ImportError as e:
    print(
        f"crd-cel-check: cannot import cel-python ({e}): install it with "
        "`source scripts/setup.sh && klio_install_cel` and run this script with "
        "~/.cache/klio-venv/bin/python",
        file=sys.stderr,
    )
    sys.exit(2)

ENV = celpy.Environment()


def die(message):
    """Unusable input or rules: exit 2 (1 is kept for rules that fail)."""
    print(f"crd-cel-check: {message}", file=sys.stderr)
    sys.exit(2)


def sub_schemas(schema, path):
    """(path, sub-schema) pairs of every schema nested in `schema`, itself first."""
    yield path, schema
    for name, sub in (schema.get("properties") or {}).items():
        yield from sub_schemas(sub, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        yield from sub_schemas(schema["items"], f"{path}[*]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from sub_schemas(schema["additionalProperties"], f"{path}[*]")
    for key in ("allOf", "anyOf", "oneOf"):
        for sub in schema.get(key) or []:
            yield from sub_schemas(sub, path)


def compile_rules(schema):
    """Compiles every rule (and messageExpression) of the schema, keyed by id(rule).

    Exits 2 naming the rule when cel-python cannot parse one."""
    programs = {}
    for path, sub in sub_schemas(schema, "self"):
        for rule in sub.get("x-kubernetes-validations") or []:
            for key in ("rule", "messageExpression"):
                if key not in rule:
                    continue
                try:
                    programs[(id(rule), key)] = ENV.program(ENV.compile(rule[key]))
                except Exception as e:  # CELParseError and cel-python's own gaps
                    die(
                        f"cel-python cannot compile the {key} at {path}: "
                        f"{rule[key]!r}: {type(e).__name__}: {e}"
                    )
    return programs


def apply_defaults(schema, value):
    """Fills absent fields that have a schema `default`, recursively, in place."""
    if isinstance(value, dict):
        for name, sub in (schema.get("properties") or {}).items():
            if name not in value and "default" in sub:
                value[name] = copy.deepcopy(sub["default"])
            if name in value:
                apply_defaults(sub, value[name])
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for name in value:
                if name not in (schema.get("properties") or {}):
                    apply_defaults(extra, value[name])
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for item in value:
            apply_defaults(schema["items"], item)


def evaluate(program, value):
    """The program's result on `self` = value; a CELEvalError is returned, not raised."""
    try:
        return program.evaluate({"self": json_to_cel(value)})
    except celpy.CELEvalError as e:
        return e


def check(schema, value, path, programs, report):
    """Evaluates the rules of `schema` on `value` and walks into its fields."""
    if value is None:
        return
    for rule in schema.get("x-kubernetes-validations") or []:
        text = rule["rule"]
        if "oldSelf" in text:
            report("skip", path, f"transition rule (needs oldSelf): {text}")
            continue
        result = evaluate(programs[(id(rule), "rule")], value)
        if isinstance(result, BoolType) and result:
            report("ok", path, text)
            continue
        message = rule.get("message")
        if message is None and "messageExpression" in rule:
            m = evaluate(programs[(id(rule), "messageExpression")], value)
            message = str(m) if isinstance(m, str) else None
        if message is None:
            message = f"failed rule: {text}"
        if isinstance(result, celpy.CELEvalError):
            message += f" (evaluation error: {result.args[0] if result.args else result})"
        elif not isinstance(result, BoolType):
            message += f" (not a bool: {result!r})"
        if rule.get("fieldPath"):
            path += rule["fieldPath"]
        report("FAIL", path, message)
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        for name, sub in props.items():
            if name in value:
                check(sub, value[name], f"{path}.{name}", programs, report)
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for name, v in value.items():
                if name not in props:
                    check(extra, v, f"{path}[{name!r}]", programs, report)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            check(schema["items"], item, f"{path}[{i}]", programs, report)
    for key in ("allOf", "anyOf", "oneOf"):
        for sub in schema.get(key) or []:
            if sub.get("x-kubernetes-validations"):
                check({"x-kubernetes-validations": sub["x-kubernetes-validations"]},
                      value, path, programs, report)


def main(argv):
    if len(argv) < 2:
        die("usage: crd-cel-check.py CRD.yaml OBJECT.yaml...\n" + __doc__)
    with open(argv[0]) as f:
        crd = yaml.safe_load(f)
    if not isinstance(crd, dict) or crd.get("kind") != "CustomResourceDefinition":
        die(f"{argv[0]} is not a CustomResourceDefinition")
    spec = crd["spec"]
    versions = {}
    programs = {}
    for v in spec["versions"]:
        schema = v["schema"]["openAPIV3Schema"]
        versions[f"{spec['group']}/{v['name']}"] = schema
        programs.update(compile_rules(schema))

    counts = {"ok": 0, "FAIL": 0, "skip": 0}
    failures = []
    for path in argv[1:]:
        with open(path) as f:
            docs = [d for d in yaml.safe_load_all(f) if d is not None]
        for n, doc in enumerate(docs):
            where = f"{path}#{n}"
            schema = versions.get(doc.get("apiVersion"))
            if doc.get("kind") != spec["names"]["kind"] or schema is None:
                die(
                    f"{where} is a {doc.get('apiVersion')} "
                    f"{doc.get('kind')}, not one of this CRD's {spec['names']['kind']} "
                    f"versions {sorted(versions)}"
                )
            # At the root, rules see only name and generateName of the metadata.
            obj = copy.deepcopy(doc)
            meta = obj.get("metadata") or {}
            obj["metadata"] = {k: meta[k] for k in ("name", "generateName") if k in meta}
            apply_defaults(schema, obj)

            def report(status, at, text, where=where):
                counts[status] += 1
                line = f"{status} {where} {at}: {text}"
                print(line)
                if status == "FAIL":
                    failures.append(line)

            check(schema, obj, "self", programs, report)

    print(f"rules: {counts['ok']} held, {counts['FAIL']} failed, {counts['skip']} skipped "
          f"({len(programs)} CEL program(s) compiled)")
    if failures:
        sys.exit("crd-cel-check: rules failed:\n" + "\n".join(failures))


if __name__ == "__main__":
    main(sys.argv[1:])
