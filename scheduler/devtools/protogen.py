"""Regenerate the crawler gRPC code from ``proto/crawler.proto`` (``python -m scheduler.devtools.protogen``).

Writes ``scheduler/_proto/crawler_pb2.py``, ``crawler_pb2_grpc.py`` and their ``.pyi`` stubs (mypy-protobuf,
so mypy --strict sees typed messages *and* a typed stub/servicer). ``--check`` regenerates into a temporary
directory and exits 1 when the committed files differ, so a proto edit without regeneration fails the tests.

protoc writes ``import crawler_pb2`` (a top-level module); we rewrite it to a package import because
``scheduler/_proto`` is not on ``sys.path`` and must not be.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROTO_DIR = ROOT / "proto"
OUT_DIR = ROOT / "scheduler" / "_proto"
PACKAGE = "scheduler._proto"
PROTO_FILES = ("crawler.proto",)
GENERATED = ("crawler_pb2.py", "crawler_pb2.pyi", "crawler_pb2_grpc.py", "crawler_pb2_grpc.pyi")

# `import crawler_pb2 as crawler__pb2` (grpc plugin) and `import crawler_pb2` (mypy-protobuf grpc stub)
_TOP_LEVEL_IMPORT = re.compile(r"^import (crawler_pb2)\b", re.MULTILINE)


def _plugin(name: str) -> str:
    # The plugins are console scripts of mypy-protobuf, installed next to this interpreter; PATH may not
    # include the virtualenv (e.g. `.venv/bin/python -m scheduler.devtools.protogen`).
    path = Path(sys.executable).parent / name
    if not path.exists():
        raise SystemExit(f"protogen: {name} not found next to {sys.executable}; install mypy-protobuf")
    return str(path)


def generate(out_dir: Path) -> None:
    """Run protoc for every proto file into ``out_dir`` and fix the imports."""
    from grpc_tools import protoc  # type: ignore[import-untyped]  # late: only this dev tool needs it

    out_dir.mkdir(parents=True, exist_ok=True)
    well_known = Path(protoc.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_DIR}",
        f"-I{well_known}",
        f"--plugin=protoc-gen-mypy={_plugin('protoc-gen-mypy')}",
        f"--plugin=protoc-gen-mypy_grpc={_plugin('protoc-gen-mypy_grpc')}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--mypy_out=quiet:{out_dir}",
        f"--mypy_grpc_out=quiet:{out_dir}",
        *PROTO_FILES,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protogen: protoc failed (see the messages above)")
    for name in GENERATED:
        path = out_dir / name
        path.write_text(_TOP_LEVEL_IMPORT.sub(rf"from {PACKAGE} import \1", path.read_text()))


def differing_files(committed_dir: Path, fresh_dir: Path) -> list[str]:
    """Names of generated files that are missing from ``committed_dir`` or differ from ``fresh_dir``."""
    differ = []
    for name in GENERATED:
        committed = committed_dir / name
        if not committed.exists() or committed.read_bytes() != (fresh_dir / name).read_bytes():
            differ.append(name)
    return differ


def check() -> int:
    with tempfile.TemporaryDirectory(prefix="protogen-") as tmp:
        generate(Path(tmp))
        stale = differing_files(OUT_DIR, Path(tmp))
    if stale:
        print(
            f"protogen: generated code in {OUT_DIR.relative_to(ROOT)} is out of date with "
            f"proto/ ({', '.join(stale)}); run `python -m scheduler.devtools.protogen` and commit the result "
            "(or the installed grpcio-tools/mypy-protobuf differ from the ones that generated it)",
            file=sys.stderr,
        )
        return 1
    print(f"protogen: {OUT_DIR.relative_to(ROOT)} is up to date")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m scheduler.devtools.protogen", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed code is stale")
    args = parser.parse_args(argv)
    if args.check:
        return check()
    generate(OUT_DIR)
    print(f"protogen: wrote {', '.join(GENERATED)} to {OUT_DIR.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
