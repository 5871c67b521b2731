"""Print the pinned requirements of cxrlab and the named extras, one per line, from pyproject.toml.

The image installs these before copying the source, so a code change does not reinstall
gigabytes of wheels (the layer with the dependencies is reused). ``--only torch torchvision``
prints just those pins (the Dockerfile installs them first when TORCH_INDEX_URL is given).

    python docker/requirements.py pyproject.toml serve
"""

import argparse
import re
import sys

import tomllib  # Python 3.11+: the image's Python


def requirements(pyproject: str, extras: list[str]) -> list[str]:
    with open(pyproject, "rb") as f:
        project = tomllib.load(f)["project"]
    name, optional = project["name"], project.get("optional-dependencies", {})
    out, todo, seen = list(project["dependencies"]), list(extras), set()
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        if extra not in optional:
            raise SystemExit(f"{pyproject}: no extra named {extra!r} (has: {', '.join(optional)})")
        seen.add(extra)
        for req in optional[extra]:
            own = re.fullmatch(rf"{name}\[(.+)\]", req.strip())
            if own:  # cxrlab[postgres,slurm]: the project's own extras
                todo += [e.strip() for e in own.group(1).split(",")]
            else:
                out.append(req)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("pyproject")
    p.add_argument("extras", nargs="*")
    p.add_argument("--only", nargs="+", help="print only these packages' pins")
    args = p.parse_args()
    reqs = requirements(args.pyproject, args.extras)
    if args.only:
        reqs = [r for r in reqs if re.split(r"[\s=<>!~\[;]", r, maxsplit=1)[0] in args.only]
    sys.stdout.write("".join(r + "\n" for r in reqs))


if __name__ == "__main__":
    main()
