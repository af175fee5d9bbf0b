"""What the CPU lane replaces because it physically cannot run it: the one place, named and reported.

SERVER_WEIGHT_SYNC. In server mode TRL's trainers push their weights to `trl vllm-serve` over NCCL:
`VLLMClient.init_communicator` (POST /init_communicator/, then a StatelessProcessGroup + PyNcclCommunicator on the
trainer's CUDA device), `update_named_param` (POST /update_named_param/ {name, dtype, shape}, then an NCCL
broadcast the server's workers wait for) and `close_communicator`. None of it can run without CUDA, and half of
it cannot be sent to a CPU server either: its workers would try to open an NCCL communicator, or wait forever for
a broadcast. `replace_server_weight_transport()` swaps exactly those three methods of `VLLMClient` for recorders
and nothing else; every other request the trainer makes (/health/, /get_world_size/, /generate/, /chat/,
/reset_prefix_cache/) stays real, with the trainer's own arguments. The device argument the trainer computes for
`init_communicator` (`torch.cuda.current_device()`, evaluated in `VLLMGeneration._init_vllm`) is part of the
transport: on a CPU torch it raises before the call, so `torch.cuda.current_device` answers 0 (VLLMClient's
default device) while no CUDA device exists, and the record says how often it was asked.

TRL 1.11+ (`trl vllm-serve` runs stock `vllm serve`) streams the weights with `update_named_params` (POST
/update_weights, then an NCCL stream into vLLM's weight-transfer engine), which is replaced the same way;
`init_communicator` gets the accelerator's device there, and its GET /get_world_size stays real.

Tests that use it declare `SERVER_WEIGHT_SYNC` (the `vllm_lane_substitute` fixture): the test's report and the
cell's results then say "server weight sync not exercised on the cpu lane". The CUDA lane runs the same tests
without this module.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

SERVER_WEIGHT_SYNC = "server weight sync not exercised on the cpu lane"


@dataclass
class WeightTransportRecord:
    """What the trainer asked the (replaced) transport to do, in order."""

    init_devices: list[Any] = field(default_factory=list)
    world_sizes: list[int] = field(default_factory=list)  # from the real GET /get_world_size/
    syncs: list[dict[str, dict[str, Any]]] = field(default_factory=list)  # one {name: {dtype, shape, sha1}} per round
    closes: int = 0
    current_device_calls: int = 0

    def clear(self) -> None:
        """Start the record of the next trainer run."""
        self.init_devices, self.world_sizes, self.syncs = [], [], []
        self.closes = self.current_device_calls = 0

    def param(self, name: str, weights: Any) -> None:
        if not self.syncs or name in self.syncs[-1]:  # a name seen again starts the next sync round
            self.syncs.append({})
        self.syncs[-1][name] = tensor_digest(weights)

    def to_json(self) -> dict[str, Any]:
        return {"substituted": SERVER_WEIGHT_SYNC, "init_devices": [str(d) for d in self.init_devices],
                "world_sizes": self.world_sizes, "syncs": self.syncs, "closes": self.closes,
                "current_device_calls": self.current_device_calls}


def tensor_digest(weights: Any) -> dict[str, Any]:
    """{dtype, shape, sha1 of the raw bytes}: equal exactly when two tensors hold the same values."""
    import torch

    raw = weights.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)  # bytes of any dtype (bf16 too)
    return {"dtype": str(weights.dtype), "shape": list(weights.shape), "sha1": hashlib.sha1(raw.numpy().tobytes()).hexdigest()}


def replace_server_weight_transport(client_cls: Any) -> WeightTransportRecord:
    """Replace `client_cls`'s (TRL's VLLMClient) NCCL weight transport with recorders; return the record.

    Call before the trainer is built, in a process that runs only CPU-lane trainer runs."""
    import torch

    record = WeightTransportRecord()

    def init_communicator(self: Any, device: Any = 0) -> None:
        record.init_devices.append(device)
        if hasattr(client_cls, "get_world_size"):  # TRL 1.11+: GET /get_world_size of vLLM's dev endpoints
            record.world_sizes.append(int(self.get_world_size()))  # read-only; kept real
            return
        with self.session.get(f"{self.base_url}/get_world_size/") as response:  # read-only; kept real
            response.raise_for_status()
            record.world_sizes.append(int(response.json()["world_size"]))

    def update_named_param(self: Any, name: str, weights: Any) -> None:
        record.param(name, weights)

    def update_named_params(self: Any, metadata: Any, named_params: Any) -> None:
        """TRL 1.11+: announce every tensor (POST /update_weights), then stream them over NCCL; here: record each."""
        for name, weights in named_params:
            record.param(name, weights)

    def close_communicator(self: Any) -> None:
        record.closes += 1

    client_cls.init_communicator = init_communicator
    client_cls.update_named_param = update_named_param
    if hasattr(client_cls, "update_named_params"):
        client_cls.update_named_params = update_named_params
    client_cls.close_communicator = close_communicator
    if not torch.cuda.is_available():
        def current_device() -> int:
            record.current_device_calls += 1
            return 0

        torch.cuda.current_device = current_device
    return record
