"""Regenerate the Python modules from the .proto sources in this folder.

    python proto/generate.py          # rewrite *_pb2*.py next to the sources
    python proto/generate.py --check  # exit 1 if the committed modules are stale

The sources are compiled under the virtual path `pyctr/proto/`, so generated
imports read `from pyctr.proto import x_pb2` and work from the installed package.
"""

from __future__ import annotations

import argparse
import filecmp
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def generate(out: Path) -> list[Path]:
    from grpc_tools import protoc  # test/dev dependency only

    sources = sorted(HERE.glob("*.proto"))
    args = [
        "protoc",
        f"-Ipyctr/proto={HERE}",
        f"-I{Path(protoc.__file__).parent / '_proto'}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *(str(s) for s in sources),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    return sorted((out / "pyctr" / "proto").glob("*_pb2*.py*"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="only compare, write nothing")
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        generated = generate(Path(tmp))
        stale = []
        for path in generated:
            target = HERE / path.name
            if not target.exists() or not filecmp.cmp(path, target, shallow=False):
                stale.append(target.name)
                if not opts.check:
                    target.write_bytes(path.read_bytes())
        names = {p.name for p in generated}
        extra = [p.name for p in HERE.glob("*_pb2*.py*") if p.name not in names]
        for name in extra:
            stale.append(name)
            if not opts.check:
                (HERE / name).unlink()
    if opts.check and stale:
        print("stale generated modules: " + ", ".join(stale), file=sys.stderr)
        print("run: python proto/generate.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
