"""Safetensors files → state dicts: the one place weights are read (never pickle). Assigning them into modules
is :mod:`dsmcli.nn.state`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy
import torch

from dsmcli.errors import ModelLoadError


def read_safetensors(path: Path | str, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file; a corrupt or non-safetensors file is a ModelLoadError."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if path.suffix not in (".safetensors", ".sft"):
        raise ModelLoadError(f"{path.name}: only .safetensors weights are loaded (never pickle)")
    try:
        with safe_open(str(path), framework="pt") as checked:  # the library validates the header
            names = set(checked.keys())
        return _read_tensors(path, names, torch.device(device))
    except (SafetensorError, OSError, ValueError, RuntimeError, KeyError) as exc:
        first_line = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
        raise ModelLoadError(f"{path.name} is not a readable safetensors file: {first_line}") from None


def _read_tensors(path: Path, names: set[str], device: torch.device) -> dict[str, torch.Tensor]:
    """The tensors ``names`` of a safetensors file whose header the library validated, each on a private mapping
    of its own bytes. ``safetensors.torch.load_file`` maps the whole file as one storage: every page read stayed
    resident (and counted in the process's RSS) as long as any tensor of the file lived, and a float32 tensor kept
    as it is (a conditioner) kept the whole mapping: loading tts-1.6b (a bfloat16 file of 3.7 GB) with
    ``quantize="int8"`` peaked at 5.96e9 bytes and kept 5.94e9. Now a tensor's pages are read when it is used and
    unmapped when it is freed (a quantized load frees each weight once quantized): peak 2.46e9, 2.27e9 after."""
    with path.open("rb") as file:
        header_size = int.from_bytes(file.read(8), "little")
        header = json.loads(file.read(header_size))
        start = 8 + header_size
        tensors: dict[str, torch.Tensor] = {}
        for name in sorted(names, key=lambda key: header[key]["data_offsets"][0]):
            info = header[name]
            begin, end = info["data_offsets"]
            dtype = _DTYPES[info["dtype"]]
            if end <= begin:
                tensor = torch.empty(info["shape"], dtype=dtype)
            else:  # its own private mapping: pages resident once read, gone when the tensor is freed
                data = numpy.memmap(file, dtype=numpy.uint8, mode="c", offset=start + begin, shape=(end - begin,))
                tensor = torch.from_numpy(data).view(dtype).reshape(info["shape"])
            tensors[name] = tensor if device.type == "cpu" else tensor.to(device)
    return tensors


_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
           "BOOL": torch.bool}
