"""The KServe v2 / Open Inference Protocol REST codec, with Triton's binary tensor data extension.

A binary message is a JSON header of ``Inference-Header-Content-Length`` bytes, then the raw data
of each tensor whose parameters carry ``binary_data_size``, in order: little-endian, row-major,
and for BYTES each element a 4-byte little-endian length followed by that many bytes.
"""

from __future__ import annotations

import base64
import json
import math
import struct
from collections.abc import Callable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt

HEADER_LENGTH = "Inference-Header-Content-Length"

# Little-endian explicitly: the wire's byte order, whatever the host's.
_DTYPES: dict[str, np.dtype[Any]] = {
    name: np.dtype(code)
    for name, code in [("BOOL", "?")]
    + [(f"UINT{8 * n}", f"<u{n}") for n in (1, 2, 4, 8)]
    + [(f"INT{8 * n}", f"<i{n}") for n in (1, 2, 4, 8)]
    + [(f"FP{8 * n}", f"<f{n}") for n in (2, 4, 8)]
}
# Keyed by kind and size so that a dtype of either byte order finds its datatype.
_DATATYPES = {(dt.kind, dt.itemsize): name for name, dt in _DTYPES.items()}
_U32 = struct.Struct("<I")

BinaryChoice: TypeAlias = Callable[[str], bool] | AbstractSet[str] | bool


class ProtocolError(ValueError):
    """A malformed inference request; the message is meant for the client (HTTP 400)."""


def dtype_of(datatype: str) -> np.dtype[Any]:
    """The numpy dtype of a v2 datatype: little-endian, and object for BYTES."""
    if datatype == "BYTES":
        return np.dtype(object)
    if datatype not in _DTYPES:
        raise ProtocolError(f"unknown datatype {datatype!r}")
    return _DTYPES[datatype]


def datatype_of(dtype: npt.DTypeLike) -> str:
    """The v2 datatype of a numpy dtype; object and ``bytes_`` arrays are BYTES."""
    dt = np.dtype(dtype)
    name = "BYTES" if dt.kind in "OS" else _DATATYPES.get((dt.kind, dt.itemsize))
    if name is None:
        raise ValueError(f"numpy dtype {dt} has no KServe v2 datatype")
    return name


@dataclass
class InputTensor:
    """One request input: ``data`` when it came as JSON, ``raw`` when it came as binary."""

    name: str
    datatype: str
    shape: list[int]
    parameters: dict[str, Any]
    data: list[Any] | None
    raw: bytes | memoryview | None

    def elements_bytes(self) -> list[bytes] | list[memoryview]:
        """The elements of a BYTES tensor, row-major; from binary data, views into the body
        (no copies: an image goes from the request body to the engine as it is)."""
        who, count = f"input {self.name!r}", math.prod(self.shape)
        if self.datatype != "BYTES":
            raise ProtocolError(f"{who} has datatype {self.datatype}, not BYTES")
        if self.raw is not None:
            return _split_prefixed(who, self.raw, count)
        items = _flatten(self.data or [])
        if len(items) != count:
            raise ProtocolError(f"{who} has {len(items)} elements; its shape needs {count}")
        if not all(isinstance(item, str) for item in items):
            raise ProtocolError(f"{who}: BYTES data must be strings")
        try:
            if self.parameters.get("content_type") == "base64":
                return [base64.b64decode(item, validate=True) for item in items]
            return [item.encode() for item in items]
        except ValueError as error:  # binascii.Error and UnicodeEncodeError are ValueErrors
            raise ProtocolError(f"{who}: bad element: {error}") from None

    def as_numpy(self) -> npt.NDArray[Any]:
        """The tensor as an array of its datatype; binary data is viewed in place, read-only."""
        who, count = f"input {self.name!r}", math.prod(self.shape)
        if self.datatype == "BYTES":
            raise ProtocolError(f"{who} is BYTES, not a numeric tensor")
        dtype = dtype_of(self.datatype)
        if self.raw is None:
            return _numbers(who, self.datatype, self.data or [], count).reshape(self.shape)
        _check_binary_size(who, self.datatype, self.shape, memoryview(self.raw).nbytes)
        if self.datatype != "BOOL":
            return np.frombuffer(self.raw, dtype=dtype).reshape(self.shape)
        octets = np.frombuffer(self.raw, dtype=np.uint8)
        # Any other byte would make a numpy bool that is truthy yet unequal to True.
        if octets.size and int(octets.max()) > 1:
            raise ProtocolError(f"{who}: BOOL bytes must be 0 or 1")
        return octets.view(np.bool_).reshape(self.shape)


@dataclass
class RequestedOutput:
    name: str
    binary_data: bool | None
    parameters: dict[str, Any]


@dataclass
class InferRequest:
    id: str | None
    inputs: list[InputTensor]
    outputs: list[RequestedOutput]
    parameters: dict[str, Any]

    @property
    def binary_data_output(self) -> bool:
        """Whether outputs that do not say otherwise should be binary."""
        return self.parameters.get("binary_data_output") is True

    def wants_binary(self, output_name: str) -> bool:
        """The output's own ``binary_data`` if it was requested with one, else the default."""
        for output in self.outputs:
            if output.name == output_name and output.binary_data is not None:
                return output.binary_data
        return self.binary_data_output


@dataclass
class OutputTensor:
    name: str
    datatype: str
    shape: list[int]
    data: npt.NDArray[Any] | list[bytes]


def parse_infer_request(body: bytes | memoryview, header_length: int | None) -> InferRequest:
    """Parses an infer request; binary inputs get ``raw`` as a slice of ``body``, not a copy."""
    view = memoryview(body).cast("B")
    end = len(view) if header_length is None else header_length
    if header_length is not None and not 0 < end <= len(view):
        raise ProtocolError(f"{HEADER_LENGTH} {end} is outside the body's {len(view)} bytes")
    try:
        doc = json.loads(bytes(view[:end]))
    except (ValueError, RecursionError) as error:
        raise ProtocolError(f"the request is not valid JSON: {error}") from None
    if not isinstance(doc, dict):
        raise ProtocolError("the request must be a JSON object")
    if not isinstance(doc.get("id"), str | None):
        raise ProtocolError("'id' must be a string")
    parameters = _parameters(doc, "the request")
    if not isinstance(parameters.get("binary_data_output", False), bool):
        raise ProtocolError("parameter 'binary_data_output' must be true or false")
    if not isinstance(doc.get("inputs"), list):
        raise ProtocolError("the request has no 'inputs' list")
    inputs: list[InputTensor] = []
    for index, item in enumerate(doc["inputs"]):
        tensor, size = _parse_input(index, item)
        who = f"input {tensor.name!r}"
        if any(tensor.name == seen.name for seen in inputs):
            raise ProtocolError(f"{who} appears twice")
        if size is not None:
            if header_length is None:
                raise ProtocolError(f"{who} has binary_data_size but there is no {HEADER_LENGTH}")
            if size > len(view) - end:
                left = len(view) - end
                raise ProtocolError(f"{who}: binary_data_size {size} but {left} bytes are left")
            tensor.raw = view[end : end + size]
            end += size
        inputs.append(tensor)
    if end != len(view):
        raise ProtocolError(f"{len(view) - end} bytes of binary data belong to no input")
    return InferRequest(doc.get("id"), inputs, _parse_outputs(doc.get("outputs")), parameters)


def encode_infer_response(
    model_name: str,
    model_version: str | None,
    request_id: str | None,
    outputs: Sequence[OutputTensor],
    binary: BinaryChoice,
) -> tuple[bytes, dict[str, str]]:
    """The response body and its headers: ``content-type``, and the header length if binary."""
    if isinstance(binary, bool):
        binary = {out.name for out in outputs} if binary else set()
    wants_binary = binary.__contains__ if isinstance(binary, AbstractSet) else binary
    entries: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for out in outputs:
        entry: dict[str, Any] = dict(name=out.name, datatype=out.datatype, shape=out.shape)
        as_binary = wants_binary(out.name)
        count = len(out.data) if isinstance(out.data, list) else np.size(out.data)
        if count != math.prod(out.shape):  # the server's bug, not the client's: no ProtocolError
            raise ValueError(f"output {out.name!r}: {count} elements for shape {out.shape}")
        if out.datatype == "BYTES":
            if not isinstance(out.data, list):
                raise TypeError(f"output {out.name!r}: BYTES data must be a list of bytes")
            if as_binary:
                parts = [part for item in out.data for part in (_U32.pack(len(item)), item)]
                chunk = b"".join(parts)
            else:
                entry.update(_bytes_json(out.data))
        else:
            array = np.asarray(out.data).astype(dtype_of(out.datatype), copy=False)
            if as_binary:
                chunk = array.tobytes()
            else:
                entry["data"] = array.ravel().tolist()
        if as_binary:
            entry["parameters"] = {"binary_data_size": len(chunk)}
            chunks.append(chunk)
        entries.append(entry)
    doc: dict[str, Any] = {
        "model_name": model_name,
        "model_version": model_version,
        "id": request_id,
    }
    doc = {key: value for key, value in doc.items() if value is not None} | {"outputs": entries}
    header = json.dumps(doc, separators=(",", ":")).encode()
    if not chunks:
        return header, {"content-type": "application/json"}
    headers = {"content-type": "application/octet-stream", HEADER_LENGTH: str(len(header))}
    return b"".join([header, *chunks]), headers


def _parse_input(index: int, item: Any) -> tuple[InputTensor, int | None]:
    if not isinstance(item, dict):
        raise ProtocolError(f"inputs[{index}] must be an object")
    name, datatype, shape = item.get("name"), item.get("datatype"), item.get("shape")
    if not isinstance(name, str) or not name:
        raise ProtocolError(f"inputs[{index}] has no 'name' (a non-empty string)")
    who = f"input {name!r}"
    if not isinstance(datatype, str):
        raise ProtocolError(f"{who} has no 'datatype' (a string)")
    if datatype != "BYTES" and datatype not in _DTYPES:
        raise ProtocolError(f"{who} has unknown datatype {datatype!r}")
    if not isinstance(shape, list):
        raise ProtocolError(f"{who} has no 'shape' (a list of integers)")
    if not all(isinstance(dim, int) and not isinstance(dim, bool) for dim in shape):
        raise ProtocolError(f"{who}: shape {shape} must hold integers")
    if any(dim < 0 for dim in shape):
        raise ProtocolError(f"{who}: shape {shape} has a negative dimension")
    parameters = _parameters(item, who)
    data, size = item.get("data"), parameters.get("binary_data_size")
    if size is None:
        if data is None:
            raise ProtocolError(f"{who} has neither 'data' nor binary_data_size")
        if not isinstance(data, list):
            raise ProtocolError(f"{who}: 'data' must be a list")
        return InputTensor(name, datatype, shape, parameters, data, None), None
    if data is not None:
        raise ProtocolError(f"{who} has both 'data' and binary_data_size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ProtocolError(f"{who}: binary_data_size must be a non-negative integer")
    if datatype != "BYTES":
        _check_binary_size(who, datatype, shape, size)
    return InputTensor(name, datatype, shape, parameters, None, None), size


def _parse_outputs(items: Any) -> list[RequestedOutput]:
    if not isinstance(items, list | None):
        raise ProtocolError("'outputs' must be a list")
    outputs: list[RequestedOutput] = []
    for index, item in enumerate(items or []):
        if not isinstance(item, dict):
            raise ProtocolError(f"outputs[{index}] must be an object")
        name = item.get("name")
        if not isinstance(name, str) or not name:
            raise ProtocolError(f"outputs[{index}] has no 'name' (a non-empty string)")
        if any(name == seen.name for seen in outputs):
            raise ProtocolError(f"output {name!r} is requested twice")
        parameters = _parameters(item, f"output {name!r}")
        binary_data = parameters.get("binary_data")
        if not isinstance(binary_data, bool | None):
            raise ProtocolError(f"output {name!r}: binary_data must be true or false")
        outputs.append(RequestedOutput(name, binary_data, parameters))
    return outputs


def _parameters(owner: dict[str, Any], who: str) -> dict[str, Any]:
    value = owner.get("parameters")
    if not isinstance(value, dict | None):
        raise ProtocolError(f"the parameters of {who} must be an object")
    return value or {}


def _check_binary_size(who: str, datatype: str, shape: list[int], size: int) -> None:
    expected = math.prod(shape) * _DTYPES[datatype].itemsize
    if size != expected:
        raise ProtocolError(f"{who}: {size} bytes of data, but {datatype} {shape} is {expected}")


def _split_prefixed(who: str, raw: bytes | memoryview, count: int) -> list[memoryview]:
    items: list[memoryview] = []
    view = memoryview(raw)
    offset, end = 0, view.nbytes
    while offset < end:
        if end - offset < 4:
            raise ProtocolError(f"{who}: truncated BYTES length prefix at byte {offset}")
        (length,) = _U32.unpack_from(raw, offset)
        offset += 4
        if length > end - offset:
            left = end - offset
            raise ProtocolError(f"{who}: BYTES element {len(items)} is {length} bytes; {left} left")
        items.append(view[offset : offset + length])
        offset += length
    if len(items) != count:
        raise ProtocolError(f"{who} has {len(items)} BYTES elements; its shape needs {count}")
    return items


def _flatten(data: list[Any]) -> list[Any]:
    # An explicit stack: JSON nested as deep as the parser allows must not overflow Python's.
    flat: list[Any] = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            flat.append(item)
        else:
            stack.pop()
    return flat


def _numbers(who: str, datatype: str, data: list[Any], count: int) -> npt.NDArray[Any]:
    dtype = _DTYPES[datatype]
    try:
        parsed = np.asarray(data)
    except (ValueError, TypeError, OverflowError, RecursionError):
        raise ProtocolError(f"{who}: 'data' is not a regular array of numbers") from None
    if parsed.size != count:
        raise ProtocolError(f"{who} has {parsed.size} elements; its shape needs {count}")
    if count == 0:
        return np.zeros(0, dtype)
    # Refuse rather than coerce: numpy would read "1.5" as a number and truncate 1.5 to an int.
    kinds, what = {"b": ("b", "true or false"), "f": ("iuf", "numbers")}.get(
        dtype.kind, ("iu", "integers")
    )
    if parsed.dtype.kind not in kinds:
        raise ProtocolError(f"{who}: {datatype} data must be {what}")
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        if parsed.min() < info.min or parsed.max() > info.max:
            raise ProtocolError(f"{who}: a value is out of range for {datatype}")
    with np.errstate(over="ignore"):  # too large for FP16 or FP32 becomes inf, as IEEE rounds it
        return parsed.ravel().astype(dtype)


def _bytes_json(items: list[bytes]) -> dict[str, Any]:
    try:
        return {"data": [item.decode() for item in items]}
    except UnicodeDecodeError:
        encoded = [base64.b64encode(item).decode("ascii") for item in items]
        return {"parameters": {"content_type": "base64"}, "data": encoded}
