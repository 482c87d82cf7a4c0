"""Generate everything that derives from protos/: Python stubs, typing stubs, the Envoy descriptor
and, from that descriptor, the OpenAPI document and docs page the gateway serves.

Run by `make proto`. Output goes to gen/ (gitignored); nothing here is ever edited by hand.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import grpc_tools
from grpc_tools import protoc

from gateway.openapi import write_web_files

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
GEN = ROOT / "gen"
PYTHON_OUT = GEN / "python"
ENVOY_OUT = GEN / "envoy"
THIRD_PARTY = GEN / "third_party"
DESCRIPTOR = ENVOY_OUT / "jobs.binpb"

# googleapis protos our contract imports, plus the error types Envoy must know to
# turn google.rpc.Status details into JSON.
GOOGLEAPIS_FILES = (
    "google/api/annotations.proto",
    "google/api/http.proto",
    "google/api/field_behavior.proto",
    "google/rpc/status.proto",
    "google/rpc/error_details.proto",
    "google/rpc/code.proto",
)


def _googleapis_root() -> Path:
    """The site-packages folder holding googleapis-common-protos' .proto files."""
    import google.api.annotations_pb2 as annotations  # noqa: PLC0415

    return Path(annotations.__file__).resolve().parent.parent.parent


def _run_protoc(args: list[str]) -> None:
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    # The mypy-protobuf plugins sit beside this interpreter, which may not be on PATH.
    scripts = Path(sys.executable).parent
    plugins = [
        f"--plugin={name}={scripts / name}" for name in ("protoc-gen-mypy", "protoc-gen-mypy_grpc")
    ]
    argv = ["protoc", *plugins, f"-I{PROTOS}", f"-I{THIRD_PARTY}", f"-I{well_known}", *args]
    if protoc.main(argv) != 0:
        sys.exit(f"protoc failed: {' '.join(argv)}")


def main() -> None:
    """Regenerate gen/ from scratch so stale files never linger."""
    shutil.rmtree(GEN, ignore_errors=True)
    for folder in (PYTHON_OUT, ENVOY_OUT, THIRD_PARTY):
        folder.mkdir(parents=True)
    googleapis = _googleapis_root()
    for name in GOOGLEAPIS_FILES:
        target = THIRD_PARTY / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(googleapis / name, target)

    contract = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    _run_protoc(
        [
            f"--python_out={PYTHON_OUT}",
            f"--grpc_python_out={PYTHON_OUT}",
            f"--mypy_out={PYTHON_OUT}",
            f"--mypy_grpc_out={PYTHON_OUT}",
            *contract,
        ]
    )
    _run_protoc(
        [
            "--include_imports",
            "--include_source_info",
            f"--descriptor_set_out={DESCRIPTOR}",
            *contract,
            "google/rpc/status.proto",
            "google/rpc/error_details.proto",
        ]
    )
    # Beside the descriptor: the gateway serves them from its folder (see GatewayOptions).
    write_web_files(DESCRIPTOR, ENVOY_OUT)
    print(
        f"generated {PYTHON_OUT.relative_to(ROOT)} and {ENVOY_OUT.relative_to(ROOT)} "
        "(descriptor, OpenAPI document, docs page)"
    )


if __name__ == "__main__":
    main()
