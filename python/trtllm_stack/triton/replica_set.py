"""Several CPU tritonservers on one model repository (demo and benchmark replicas).

Each replica is its own process group with its own ports (the leader-mode layout of
tensorrtllm_backend's docs/llama_multi_instance.md, one server per engine copy, with the
proxy as the load balancer in front). They start in parallel; if one fails, all stop.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from trtllm_stack.triton.server import TritonEndpoints, TritonServer, free_port


def _distinct_free_ports(n: int) -> list[int]:
    # free_port() closes its socket, so two calls may return the same port: keep them apart.
    ports: list[int] = []
    for _ in range(20 * n):
        port = free_port()
        if port not in ports:
            ports.append(port)
        if len(ports) == n:
            return ports
    raise RuntimeError(f"could not find {n} distinct free ports")


class ReplicaSet:
    def __init__(self, model_repository: Path, count: int, log_dir: Path) -> None:
        if count < 1:
            raise ValueError("at least one replica")
        ports = _distinct_free_ports(3 * count)
        self.servers = [
            TritonServer(
                model_repository,
                http_port=ports[3 * i],
                grpc_port=ports[3 * i + 1],
                metrics_port=ports[3 * i + 2],
                log_path=log_dir / (f"tritonserver-{i}.log" if count > 1 else "tritonserver.log"),
            )
            for i in range(count)
        ]

    def start(self, timeout: float = 180.0) -> list[TritonEndpoints]:
        try:
            # Launched from this thread (PR_SET_PDEATHSIG is per forking thread), waited on
            # in parallel.
            for server in self.servers:
                server.launch()
            with ThreadPoolExecutor(len(self.servers)) as pool:
                futures = [pool.submit(s.wait_ready, timeout) for s in self.servers]
                return [f.result() for f in futures]
        except BaseException:
            self.stop()
            raise

    @property
    def grpc_urls(self) -> str:
        return ",".join(s.endpoints.grpc_url for s in self.servers)

    def stop(self) -> None:
        for server in self.servers:
            server.stop()

    def __enter__(self) -> list[TritonEndpoints]:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
