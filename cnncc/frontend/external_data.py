"""Reading tensors stored outside the .onnx file, confined to the model's own folder.

A model is untrusted input: its ``location`` strings could point anywhere on disk. We accept only
relative paths that resolve (after following symlinks) to a regular file inside the model folder,
and offsets/lengths that lie within that file and match the tensor's declared size.
"""
from __future__ import annotations

import os

import onnx

from cnncc.ir import CompileError


def read_external(tensor: onnx.TensorProto, model_dir: str | None, nbytes: int) -> bytes:
    """The raw bytes of an externally stored ``tensor`` (exactly ``nbytes`` of them)."""
    name = tensor.name
    info = {e.key: e.value for e in tensor.external_data}
    if model_dir is None:
        raise CompileError(f"initializer '{name}' uses external data, which needs the model "
                           "loaded from a path (the folder holding its data files)")
    location = info.get("location", "")
    if not location:
        raise CompileError(f"initializer '{name}': external data without a 'location'")
    if "\0" in location or os.path.isabs(location) or location.startswith(("/", "\\")) \
            or os.path.splitdrive(location)[0]:
        raise CompileError(f"initializer '{name}': external data location '{location}' is an "
                           "absolute path; only files inside the model folder are read")
    parts = location.replace("\\", "/").split("/")
    if ".." in parts:
        raise CompileError(f"initializer '{name}': external data location '{location}' leaves "
                           "the model folder ('..' is refused)")
    root = os.path.realpath(model_dir)
    path = os.path.realpath(os.path.join(root, location))
    if os.path.commonpath([root, path]) != root:
        raise CompileError(f"initializer '{name}': external data location '{location}' resolves "
                           "outside the model folder (symlink?); refused")
    if not os.path.isfile(path):
        raise CompileError(f"initializer '{name}': external data file '{location}' does not "
                           "exist in the model folder")
    offset = _int_field(name, info, "offset", 0)
    size = os.path.getsize(path)
    length = _int_field(name, info, "length", size - offset)
    if offset > size or offset + length > size:
        raise CompileError(f"initializer '{name}': external data range offset={offset} "
                           f"length={length} exceeds the size of '{location}' ({size} bytes)")
    if length != nbytes:
        raise CompileError(f"initializer '{name}': external data length {length} does not match "
                           f"its dims and type ({nbytes} bytes)")
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read(length)
    except OSError as e:
        raise CompileError(f"initializer '{name}': cannot read '{location}': "
                           f"{e.strerror or e}") from None
    if len(data) != length:
        raise CompileError(f"initializer '{name}': '{location}' ended early")
    return data


def _int_field(name: str, info: dict[str, str], key: str, default: int) -> int:
    if key not in info:
        return default
    try:
        value = int(info[key])
    except ValueError:
        raise CompileError(f"initializer '{name}': external data {key} '{info[key]}' is not "
                           "an integer") from None
    if value < 0:
        raise CompileError(f"initializer '{name}': external data {key} {value} is negative")
    return value
