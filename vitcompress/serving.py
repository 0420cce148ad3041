"""A local Triton Inference Server for one exported model, and a client for it.

The server is NVIDIA's ``tritonserver`` as shipped in the ``nvidia-pytriton`` wheel: the model is
bound through PyTriton's Python backend and runs in a vitcompress runtime (ONNX Runtime for an ONNX
export, TensorRT for an engine), with dynamic batching. It speaks Triton's standard HTTP and gRPC
protocols on 127.0.0.1, so any Triton client works against it.

PyTriton's Python backend stub links the system ``libpython3.X``: it starts only from a Python
whose version matches it (a virtualenv made from ``/usr/bin/python3.11`` on Debian, which is what
``make`` uses when it exists). Otherwise :meth:`TritonServer.start` fails with the reason.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import signal
import socket
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from vitcompress import memory
from vitcompress.errors import UserError
from vitcompress.sources import ModelSource

HOST = "127.0.0.1"
START_TIMEOUT_S = 120
REQUEST_TIMEOUT_S = 60
DEFAULT_MAX_BATCH_SIZE = 32
EXIT_TIMEOUT_S = 5  # how long a stopping server waits for its clients to hang up (Triton's default: 30)
MONITOR_PERIOD_S = 1.0  # how often a foreground server checks that Triton still runs


def server_unavailable() -> str | None:
    """Why no Triton server can start here (``None`` when the pieces are installed)."""
    for module, package in (("pytriton", "nvidia-pytriton"), ("tritonclient", "tritonclient[http]")):
        if importlib.util.find_spec(module) is None:
            return f"{package} is not installed (pip install 'vitcompress[serve]')"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def port_in_use(port: int) -> bool:
    """Whether a server listens on ``port``. Connections a stopped server left in TIME_WAIT do not count:
    Triton binds with SO_REUSEADDR, as this check does."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError:
            return True
    return False


def start_failure_fix(reason: str) -> str:
    """What to do about a server that did not start, from Triton's reason."""
    if "shared memory" in reason:  # the Python backend's tensors go through /dev/shm: 64 MB in a container
        return "start the container with --ipc=host or --shm-size=1g (Triton's Python backend needs /dev/shm)"
    return "make the virtualenv from the system Python (/usr/bin/python3.11 on Debian), as `make setup` does; see docs/bench.md"


class TritonServer:
    """Triton hosting ``source`` under ``model_name``: ``start()``, call, ``stop()`` (or ``serve()`` to block)."""

    def __init__(self, source: ModelSource, model_name: str = "model", runtime: str | None = None,
                 threads: int | None = None, http_port: int = 8000, grpc_port: int = 8001, metrics_port: int = 8002,
                 max_batch_size: int = DEFAULT_MAX_BATCH_SIZE, max_queue_delay_us: int = 100, quiet: bool = True) -> None:
        reason = server_unavailable()
        if reason:
            raise UserError(f"cannot start a Triton server: {reason}", "pip install 'vitcompress[serve]'")
        from vitcompress.runtimes import DEFAULT_RUNTIME

        self.source, self.model_name = source, model_name
        self.runtime_name = runtime or DEFAULT_RUNTIME[source.kind]
        # an engine takes no more than its profile's largest batch, and Triton must not send it more
        self.threads, self.max_batch_size = threads, source.batch_limit(max_batch_size)
        self.max_queue_delay_us = max_queue_delay_us
        self.http_port, self.grpc_port, self.metrics_port = (p or free_port() for p in (http_port, grpc_port, metrics_port))
        self.quiet = quiet
        self._triton: Any = None
        self._clients: list[TritonClient] = []

    @property
    def url(self) -> str:
        return f"{HOST}:{self.http_port}"

    def _bind(self) -> Any:
        from pytriton.decorators import batch
        from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
        from pytriton.triton import Triton, TritonConfig

        from vitcompress.runtimes import RUNTIMES

        runtime = RUNTIMES[self.runtime_name](self.source, threads=self.threads)
        input_name = self.source.input_name

        @batch
        def infer(**inputs: np.ndarray) -> dict[str, np.ndarray]:
            return {"logits": runtime.run(inputs[input_name])}

        size = self.source.img_size
        shape = (size, size, 3) if self.source.takes_pixels else (3, size, size)
        dtype = np.uint8 if self.source.takes_pixels else np.float32
        config = TritonConfig(http_address=HOST, http_port=self.http_port, grpc_address=HOST, grpc_port=self.grpc_port,
                              metrics_address=HOST, metrics_port=self.metrics_port, log_verbose=0,
                              exit_timeout_secs=EXIT_TIMEOUT_S)
        triton = Triton(config=config)
        triton.bind(model_name=self.model_name, infer_func=infer,
                    inputs=[Tensor(name=input_name, dtype=dtype, shape=shape)],
                    outputs=[Tensor(name="logits", dtype=np.float32, shape=(len(self.source.classes),))],
                    config=ModelConfig(max_batch_size=self.max_batch_size,
                                       batcher=DynamicBatcher(max_queue_delay_microseconds=self.max_queue_delay_us)),
                    strict=True)
        return triton

    def start(self) -> None:
        """Start in the background and wait until the model answers; a one-line error if it cannot."""
        self._check_ports_free()
        if self.quiet:
            logging.getLogger("pytriton").setLevel(logging.ERROR)
        triton = self._bind()
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                triton.run()
            self._triton = triton
            self._wait_ready()
        except Exception as exc:
            with contextlib.suppress(Exception):
                triton.stop()
            self._triton = None
            reason = str(exc).splitlines()[0]
            raise UserError(f"the Triton server did not start ({reason[:300]})", start_failure_fix(reason)) from None

    def _wait_ready(self) -> None:
        import tritonclient.http as httpclient

        client = httpclient.InferenceServerClient(self.url)
        try:
            if not client.is_model_ready(self.model_name):
                raise RuntimeError(f"model {self.model_name} is not ready")
        finally:
            client.close()

    def _check_ports_free(self) -> None:
        """Triton would log a taken port and wait; say which one at once."""
        for flag, port in (("--http-port", self.http_port), ("--grpc-port", self.grpc_port),
                           ("--metrics-port", self.metrics_port)):
            if port_in_use(port):
                raise UserError(f"port {port} on {HOST} is in use (another server?)",
                                f"stop it, or pass {flag} with a free port (0: any free port)")

    def serve_until_stopped(self, on_ready: Callable[[], None]) -> None:
        """Start, call ``on_ready``, and serve until Ctrl-C or SIGTERM; then stop the server."""
        self.start()
        on_ready()
        previous = signal.signal(signal.SIGTERM, signal.default_int_handler)  # `kill` stops it as Ctrl-C does
        try:
            while self._triton.is_alive():
                time.sleep(MONITOR_PERIOD_S)
        except KeyboardInterrupt:
            return
        finally:
            signal.signal(signal.SIGTERM, previous)
            self.stop()
        raise UserError("the Triton server stopped on its own", "run `vitcompress serve` again with --triton-log to see why")

    def stop(self) -> None:
        """Unload the model, then stop Triton, waiting at most ``EXIT_TIMEOUT_S`` for clients to hang up.

        Triton's shutdown waits for every open HTTP connection (a client's idle keep-alive one too) for up to
        its exit timeout, 30 s by default, and a model still loaded when that expires keeps its copy in /tmp.
        """
        while self._clients:
            self._clients.pop().close()
        if self._triton is not None:
            with contextlib.suppress(Exception), contextlib.redirect_stdout(io.StringIO()):
                self._unload_model()
            with contextlib.suppress(Exception), contextlib.redirect_stdout(io.StringIO()):
                self._triton.stop()
            self._triton = None

    def _unload_model(self) -> None:
        import tritonclient.http as httpclient
        from pytriton.triton import TRITON_ACCESS_HEADER

        admin = httpclient.InferenceServerClient(self.url)
        try:  # PyTriton restricts the model-control API to its own access token
            admin.unload_model(self.model_name, headers={TRITON_ACCESS_HEADER: self._triton.get_access_token()})
        finally:
            admin.close()

    def peak_rss(self) -> int | None:
        """The peak RSS of this server's tritonserver and its Python backend stubs, summed (``None`` where /proc
        cannot tell). Its HTTP port tells it from other servers this process runs."""
        if self._triton is None:
            return None
        return memory.peak_rss_sum(memory.descendants_named("tritonserver", ("--http-port", str(self.http_port))))

    def client(self) -> TritonClient:
        """A function sending one batch over HTTP and returning the logits; closed by :meth:`stop`."""
        self._clients.append(TritonClient(self.url, self.model_name, self.source.input_name))
        return self._clients[-1]


class TritonClient:
    """Triton's standard HTTP client for one model: ``client(batch) -> logits``."""

    def __init__(self, url: str, model_name: str, input_name: str, concurrency: int = 1) -> None:
        import tritonclient.http as httpclient

        self._http = httpclient
        self.client = httpclient.InferenceServerClient(url, concurrency=concurrency, network_timeout=REQUEST_TIMEOUT_S,
                                                       connection_timeout=REQUEST_TIMEOUT_S)
        self.model_name, self.input_name = model_name, input_name

    def request(self, batch: np.ndarray) -> Any:
        from tritonclient.utils import np_to_triton_dtype

        tensor = self._http.InferInput(self.input_name, list(batch.shape), np_to_triton_dtype(batch.dtype))
        tensor.set_data_from_numpy(batch, binary_data=True)
        return tensor

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        result = self.client.infer(self.model_name, [self.request(batch)],
                                   outputs=[self._http.InferRequestedOutput("logits", binary_data=True)])
        return np.array(result.as_numpy("logits"))  # a writable copy: the client's array views its receive buffer

    def close(self) -> None:
        self.client.close()


def serve(cfg: Any) -> None:
    """``vitcompress serve``: host ``cfg.src`` until interrupted (a ``ServeConfig``)."""
    from vitcompress.sources import open_source

    cfg.validate()
    source = open_source(cfg.src)
    name = served_model_name(cfg.model_name, source)  # an artifact's own name, not its export's cache folder's
    if source.kind == "artifact":  # Triton serves exports: this one's default export, made (verified) once
        from vitcompress.export.exporter import cached_export

        source = open_source(cached_export(cfg.src, cfg.cache_dir, on_build=lambda path: print(
            f"exporting {cfg.src} for serving (ONNX, verified against PyTorch) into {path} ...", flush=True)))
    server = TritonServer(source, name, threads=cfg.threads or None, http_port=cfg.http_port, grpc_port=cfg.grpc_port,
                          metrics_port=cfg.metrics_port, max_batch_size=served_max_batch_size(cfg.max_batch_size, source),
                          max_queue_delay_us=cfg.max_queue_delay_us, quiet=not cfg.triton_log)
    print(f"starting Triton with {source.path} ({server.runtime_name}) ...", flush=True)
    server.serve_until_stopped(lambda: print(ready_message(server), flush=True))
    print("stopped", flush=True)


def served_model_name(requested: str, source: ModelSource) -> str:
    """``--model-name``, else the name a Triton repository export already gave it, else the directory's name."""
    from vitcompress.export.triton import model_name_for

    return requested or source.triton.get("name") or model_name_for(source.path)


def served_max_batch_size(requested: int, source: ModelSource) -> int:
    """``--max-batch-size``, else a Triton repository export's own, else :data:`DEFAULT_MAX_BATCH_SIZE`
    (for an engine, no more than its profile takes: asking for more is an error)."""
    if requested and source.batch_limit(requested) < requested:
        raise UserError(f"--max-batch-size {requested} is above the engine's profile maximum {source.max_batch}",
                        f"pass --max-batch-size {source.max_batch} or less, or rebuild with export --batch ...,{requested}")
    return source.batch_limit(requested or source.triton.get("max_batch_size") or DEFAULT_MAX_BATCH_SIZE)


def ready_message(server: TritonServer) -> str:
    """What a client needs to call the served model, printed once it answers."""
    source, name, url = server.source, server.model_name, f"http://{server.url}"
    size = source.img_size
    dtype, shape = ("UINT8", f"[N, {size}, {size}, 3]") if source.takes_pixels else ("FP32", f"[N, 3, {size}, {size}]")
    return (f"model '{name}' ready on {url} (HTTP) and {HOST}:{server.grpc_port} (gRPC); Ctrl-C stops\n"
            f"  input  '{source.input_name}' {dtype} {shape}, N up to {server.max_batch_size} (dynamic batching)\n"
            f"  output 'logits' FP32 [N, {len(source.classes)}], classes: {', '.join(source.classes)}\n"
            f"  check: curl {url}/v2/health/ready; metadata: curl {url}/v2/models/{name}")
