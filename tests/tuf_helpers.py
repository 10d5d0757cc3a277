"""Shared helpers for the bundle / TUF tests: tiny export dirs, repositories, a loopback server.

Everything is real: real ONNX files (built with ``onnx.helper``, runnable by onnxruntime and
following docs/policy-contract.md), real ed25519 keys, real TUF metadata, a real HTTP server.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import socketserver
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

ACTIONS = ["steering", "throttle"]
H, W = 24, 32


def tiny_onnx(path: Path, *, bias: float = 0.0, pad_bytes: int = 0) -> Path:
    """A contract-following step graph: action = tanh(mean(image)/255 * w + b), state passthrough.

    ``pad_bytes`` adds an unused initializer so tests can make bundles of a chosen size.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    image = helper.make_tensor_value_info("image", TensorProto.UINT8, [1, H, W, 3])
    state = helper.make_tensor_value_info("state", TensorProto.FLOAT, [1, 4])
    action = helper.make_tensor_value_info("action", TensorProto.FLOAT, [1, 2])
    state_out = helper.make_tensor_value_info("state_out", TensorProto.FLOAT, [1, 4])
    inits = [
        numpy_helper.from_array(np.array([[0.5, -0.25]], np.float32), "w"),
        numpy_helper.from_array(np.array([[bias, bias]], np.float32), "b"),
        numpy_helper.from_array(np.array([255.0], np.float32), "scale"),
    ]
    if pad_bytes:
        rng = np.random.default_rng(0)
        inits.append(numpy_helper.from_array(rng.random(pad_bytes // 4, dtype=np.float32), "pad"))
    nodes = [
        helper.make_node("Cast", ["image"], ["imf"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["imf"], ["m"], keepdims=0),
        helper.make_node("Div", ["m", "scale"], ["mn"]),
        helper.make_node("Mul", ["mn", "w"], ["x"]),
        helper.make_node("Add", ["x", "b"], ["y"]),
        helper.make_node("Tanh", ["y"], ["action"]),
        helper.make_node("Identity", ["state"], ["state_out"]),
    ]
    graph = helper.make_graph(nodes, "tiny", [image, state], [action, state_out], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    meta = model.metadata_props.add()
    meta.key, meta.value = "action_names", ",".join(ACTIONS)
    onnx.save(model, path)
    return path


def write_report(export_dir: Path, files: dict[str, str], **extra: Any) -> Path:
    """export_report.json in the export helper's format for the given {file: backend}."""
    arts = []
    for name, backend in files.items():
        data = (export_dir / name).read_bytes()
        arts.append(
            {
                "backend": backend,
                "file": name,
                "sha256": hashlib.sha256(data).hexdigest(),
                "size": len(data),
            }
        )
    report = {
        "model_version": "test",
        "preset": "tiny",
        "action_names": ACTIONS,
        "image": {"height": H, "width": W, "channels": 3, "dtype": "uint8", "layout": "NHWC"},
        "recurrent": {"state": [1, 4]},
        "artifacts": arts,
        "preferred_backends": [a["backend"] for a in arts],
        "parity": {},
        "closed_loop": {},
        "source": {"checkpoint": "ckpt.safetensors", "checkpoint_sha256": "ab" * 32},
        **extra,
    }
    path = export_dir / "export_report.json"
    path.write_text(json.dumps(report))
    return path


def make_export_dir(export_dir: Path, *, bias: float = 0.0, pad_bytes: int = 0) -> Path:
    export_dir.mkdir(parents=True, exist_ok=True)
    tiny_onnx(export_dir / "model_fp32.onnx", bias=bias, pad_bytes=pad_bytes)
    write_report(export_dir, {"model_fp32.onnx": "onnx_fp32"})
    return export_dir


FIXED_PROVENANCE = {"created_utc": "2026-01-01T00:00:00Z"}


def make_bundle(
    tmp: Path,
    *,
    version: str = "1.0.0",
    release_counter: int = 1,
    hardware_id: str = "donkey-pi5",
    bias: float = 0.0,
    pad_bytes: int = 0,
) -> Path:
    from brain.bundle.pack import build_bundle

    export = make_export_dir(
        tmp / f"export-{version}-{hardware_id}", bias=bias, pad_bytes=pad_bytes
    )
    return build_bundle(
        export,
        tmp / f"{hardware_id}-{version}.tar",
        version=version,
        release_counter=release_counter,
        hardware_id=hardware_id,
        provenance=FIXED_PROVENANCE,
    )


# ----------------------------------------------------------------------------- TUF


def make_repo(tmp: Path, **init_kwargs: Any) -> tuple[Any, Any]:
    """(KeyStore, Repository) with fresh keys; ``init_kwargs`` go to ``KeyStore.init``."""
    from cloud_jobs.publish.keys import KeyStore
    from cloud_jobs.publish.repository import Repository

    keys = KeyStore.init(tmp / "keys", **init_kwargs)
    repo = Repository.create(tmp / "repo", keys)
    return keys, repo


def provision(tmp: Path, repo_dir: Path, name: str = "robot") -> Path:
    """A robot metadata dir initialised with the repository's root.json; returns it."""
    from brain.ota.trust import init_trust

    md = tmp / name / "tuf"
    init_trust(md, (repo_dir / "metadata" / "1.root.json").read_bytes())
    return md


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Static files with Range support and hooks for misbehaving (slow, truncating) servers."""

    server: _Server

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.server.requests.append((self.path, self.headers.get("Range")))
        hook = self.server.hook
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        start = 0
        rng = self.headers.get("Range")
        if rng and self.server.ranges and rng.startswith("bytes=") and rng.endswith("-"):
            start = int(rng[6:-1])
            if start >= len(data):
                self.send_error(416)
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        if hook is not None:
            body = hook(self.path, body) or b""
            if isinstance(body, _Trickle):
                self.send_header("Content-Length", str(body.total))
                self.end_headers()
                for piece in body:
                    try:
                        self.wfile.write(piece)
                        self.wfile.flush()
                    except OSError:
                        return
                return
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _Trickle:
    def __init__(self, data: bytes, every_s: float, piece: int) -> None:
        self.data, self.every_s, self.piece, self.total = data, every_s, piece, len(data)

    def __iter__(self) -> Iterator[bytes]:
        for i in range(0, len(self.data), self.piece):
            time.sleep(self.every_s)
            yield self.data[i : i + self.piece]


def trickle(data: bytes, every_s: float = 0.05, piece: int = 16) -> Any:
    return _Trickle(data, every_s, piece)


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    hook: Callable[[str, bytes], Any] | None = None
    ranges = True

    def __init__(self, directory: Path) -> None:
        self.requests: list[tuple[str, str | None]] = []
        handler = lambda *a: _Handler(*a, directory=str(directory))  # noqa: E731
        super().__init__(("127.0.0.1", 0), handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@contextmanager
def serve(directory: Path) -> Iterator[_Server]:
    """Serve ``directory`` on loopback in a thread; yields the server (``.url``, ``.hook``)."""
    srv = _Server(directory)
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        t.join(5)
