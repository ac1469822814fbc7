#!/usr/bin/env python3
"""Renders or lints a Helm chart offline, without a helm binary.

Uses the PyPI package `helm-python-sdk` (module `helm_python`: Helm's Go SDK behind a C
ABI, shipped inside the wheel), which `scripts/setup.sh` installs into Klio's virtualenv
(`source scripts/setup.sh && klio_install_helm_renderer`). Run it with that
virtualenv's Python:

    ~/.cache/klio-venv/bin/python scripts/helm-render.py deploy/helm/klio-operator \
        --set rbac.scope=namespace --namespace klio-system [--include-crds]
    ~/.cache/klio-venv/bin/python scripts/helm-render.py --lint deploy/helm/klio-operator

Rendering prints the manifests as one multi-document YAML stream, each document after a
`# Source: <template>` line as `helm template` prints them (templates that render to
nothing are left out; `--include-crds` puts the chart's `crds/` first). Linting prints
one line per finding, `[INFO|WARNING|ERROR] <path>: <message>`, and fails on an error
(with `--strict` on a warning too). Any failure exits 1 with the error on stderr.
"""

import argparse
import re
import sys

SEVERITY = {0: "UNKNOWN", 1: "INFO", 2: "WARNING", 3: "ERROR"}


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("chart", help="the chart's directory (or .tgz)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE[,...]",
        help="values as `helm --set` takes them (repeatable; later ones win)",
    )
    p.add_argument("--name", default="klio-operator", help="the release name")
    p.add_argument("--namespace", default="default", help="the release namespace")
    p.add_argument(
        "--include-crds", action="store_true", help="also print the chart's crds/"
    )
    p.add_argument("--lint", action="store_true", help="lint instead of rendering")
    p.add_argument(
        "--strict", action="store_true", help="with --lint: warnings fail too"
    )
    return p.parse_args(argv)


def merge(into, new):
    """Merges `new` into `into` key by key, as successive `--set` flags combine."""
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            merge(into[k], v)
        else:
            into[k] = v
    return into


def main(argv):
    args = parse_args(argv)
    try:
        import helm_python as helm
    except ImportError as e:
        sys.exit(
            f"helm-render: cannot import helm_python ({e}): install it with "
            "`source scripts/setup.sh && klio_install_helm_renderer` and run this "
            "script with ~/.cache/klio-venv/bin/python"
        )

    try:
        values = {}
        for expr in args.set:
            merge(values, helm.parse_set_string(expr))

        if args.lint:
            report = helm.lint(
                args.chart, values, strict=args.strict, namespace=args.namespace
            )
            failing = 3 if not args.strict else 2
            bad = []
            for m in report.get("messages") or []:
                sev = m.get("severity", 0)
                line = f"[{SEVERITY.get(sev, sev)}] {m.get('path')}: {m.get('error')}"
                print(line)
                if sev >= failing:
                    bad.append(line)
            # `errors` repeats the error findings; alone it means the lint itself broke.
            if not bad:
                bad = [str(e) for e in report.get("errors") or []]
            print(f"{report.get('total_charts_linted', 0)} chart(s) linted, "
                  f"{len(bad)} failing finding(s)")
            if bad:
                sys.exit("helm-render: lint failed:\n" + "\n".join(map(str, bad)))
            return

        with helm.Chart.load(args.chart) as chart:
            docs = []
            if args.include_crds:
                for crd in chart.crds:
                    docs.append((crd["filename"], crd["data"]))
            rendered = chart.render(
                values, name=args.name, namespace=args.namespace, is_install=True
            )
            for path in sorted(rendered):
                # Partials (`_helpers.tpl`) and disabled templates render to nothing.
                for doc in re.split(r"^---[ \t]*$", rendered[path], flags=re.M):
                    if any(
                        ln.strip() and not ln.lstrip().startswith("#")
                        for ln in doc.splitlines()
                    ):
                        docs.append((path, doc.strip("\n")))
    except helm.HelmError as e:
        sys.exit(f"helm-render: {type(e).__name__}: {e}")

    if not docs:
        sys.exit("helm-render: the chart rendered no manifest")
    out = []
    for path, doc in docs:
        out.append(f"---\n# Source: {path}\n{doc.strip()}\n")
    sys.stdout.write("".join(out))


if __name__ == "__main__":
    main(sys.argv[1:])
