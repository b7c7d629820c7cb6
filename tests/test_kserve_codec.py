"""The KServe v2 codec: JSON and binary (Triton extension) requests in, JSON and binary out.

Binary bodies are built by hand the way Triton's HTTP client builds them: a JSON header whose
inputs carry ``parameters.binary_data_size``, then each input's little-endian bytes in input order,
BYTES elements each prefixed with a 4-byte little-endian length.
"""

from __future__ import annotations

import base64
import json
import random
import re
import struct
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from stoker.server._kserve import (
    HEADER_LENGTH,
    InferRequest,
    InputTensor,
    OutputTensor,
    ProtocolError,
    datatype_of,
    dtype_of,
    encode_infer_response,
    parse_infer_request,
)


def _json_request(doc: dict[str, Any]) -> InferRequest:
    return parse_infer_request(json.dumps(doc).encode(), None)


def _prefixed(items: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


def _binary_body(
    header: dict[str, Any], payloads: list[bytes], spaced: bool = True
) -> tuple[bytes, int]:
    """The body and its header length; Triton's client writes JSON with the default separators."""
    text = json.dumps(header) if spaced else json.dumps(header, separators=(",", ":"))
    head = text.encode()
    return head + b"".join(payloads), len(head)


def _bin(name: str, datatype: str, shape: list[int], size: Any) -> dict[str, Any]:
    """An input whose data travels after the JSON header."""
    parameters = {"binary_data_size": size}
    return {"name": name, "datatype": datatype, "shape": shape, "parameters": parameters}


def _doc(**fields: Any) -> bytes:
    return json.dumps({"inputs": []} | fields).encode()


def _jpeg_like(rng: random.Random, size: int) -> bytes:
    # NUL bytes and invalid UTF-8 included, as in any real JPEG.
    body = bytes(rng.getrandbits(8) for _ in range(size))
    return b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + body + b"\xff\xd9"


def _split_response(body: bytes, headers: dict[str, str]) -> tuple[dict[str, Any], bytes]:
    length = int(headers[HEADER_LENGTH]) if HEADER_LENGTH in headers else len(body)
    doc: dict[str, Any] = json.loads(body[:length])
    return doc, body[length:]


def _unprefix(blob: bytes) -> list[bytes]:
    items, offset = [], 0
    while offset < len(blob):
        (length,) = struct.unpack_from("<I", blob, offset)
        items.append(blob[offset + 4 : offset + 4 + length])
        offset += 4 + length
    return items


# ---------------------------------------------------------------------------------------- JSON in


@pytest.mark.parametrize(
    ("datatype", "data", "shape", "expected"),
    [
        ("FP32", [[1.5, 2.0], [3.25, -4.0]], [2, 2], np.array([[1.5, 2], [3.25, -4]], np.float32)),
        ("FP32", [1, 2, 3, 4, 5, 6], [2, 3], np.arange(1, 7, dtype=np.float32).reshape(2, 3)),
        ("FP64", [0.1], [1], np.array([0.1])),
        ("FP16", [0.5, 1e10], [2], np.array([0.5, np.inf], np.float16)),
        ("INT64", [[-(2**63)], [2**63 - 1]], [2, 1], np.array([[-(2**63)], [2**63 - 1]])),
        ("UINT64", [2**64 - 1], [1], np.array([2**64 - 1], np.uint64)),
        ("UINT8", [0, 255], [2], np.array([0, 255], np.uint8)),
        ("INT8", [-128, 127], [1, 2], np.array([[-128, 127]], np.int8)),
        ("BOOL", [True, False, True], [3], np.array([True, False, True])),
        ("INT32", [7], [], np.array(7, np.int32)),
        ("INT16", [], [0, 3], np.zeros((0, 3), np.int16)),
    ],
)
def test_json_numeric_input(
    datatype: str, data: list[Any], shape: list[int], expected: npt.NDArray[Any]
) -> None:
    request = _json_request(
        {"inputs": [{"name": "x", "datatype": datatype, "shape": shape, "data": data}]}
    )
    array = request.inputs[0].as_numpy()
    assert array.dtype == dtype_of(datatype)
    assert array.shape == tuple(shape)
    np.testing.assert_array_equal(array, expected)


def test_json_request_fields() -> None:
    request = _json_request(
        {
            "id": "req-7",
            "parameters": {"binary_data_output": True, "priority": 3},
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1.0]}],
            "outputs": [
                {"name": "scores", "parameters": {"binary_data": False}},
                {"name": "class_ids"},
            ],
        }
    )
    assert request.id == "req-7"
    assert request.parameters["priority"] == 3
    assert request.binary_data_output
    assert [o.name for o in request.outputs] == ["scores", "class_ids"]
    assert [o.binary_data for o in request.outputs] == [False, None]
    assert not request.wants_binary("scores")
    assert request.wants_binary("class_ids")
    assert request.wants_binary("not_listed")
    x = request.inputs[0]
    assert (x.name, x.datatype, x.shape, x.parameters, x.raw) == ("x", "FP32", [1], {}, None)


def test_json_request_defaults() -> None:
    request = _json_request(
        {"inputs": [{"name": "x", "datatype": "BOOL", "shape": [0], "data": []}]}
    )
    assert request.id is None
    assert request.outputs == []
    assert request.parameters == {}
    assert not request.binary_data_output
    assert not request.wants_binary("anything")


def test_json_bytes_input_plain_and_nested() -> None:
    request = _json_request(
        {
            "inputs": [
                {"name": "a", "datatype": "BYTES", "shape": [2], "data": ["hello", "wörld"]},
                {
                    "name": "b",
                    "datatype": "BYTES",
                    "shape": [2, 2],
                    "data": [["w", "x"], ["", "z"]],
                },
            ]
        }
    )
    assert request.inputs[0].elements_bytes() == [b"hello", "wörld".encode()]
    assert request.inputs[1].elements_bytes() == [b"w", b"x", b"", b"z"]


def test_json_bytes_input_base64() -> None:
    blobs = [_jpeg_like(random.Random(1), 300), b"", b"\x00\xff"]
    encoded = [base64.b64encode(blob).decode() for blob in blobs]
    tensor = {
        "name": "image",
        "datatype": "BYTES",
        "shape": [3],
        "parameters": {"content_type": "base64"},
        "data": encoded,
    }
    assert _json_request({"inputs": [tensor]}).inputs[0].elements_bytes() == blobs


def test_deeply_nested_bytes_data_is_flattened_without_recursion() -> None:
    data: list[Any] = ["leaf"]
    for _ in range(900):
        data = [data]
    tensor = InputTensor("deep", "BYTES", [1], {}, data, None)
    assert tensor.elements_bytes() == [b"leaf"]


# -------------------------------------------------------------------------------------- binary in


def test_binary_request_as_tritons_client_builds_it() -> None:
    rng = random.Random(7)
    images = [_jpeg_like(rng, n) for n in (1000, 0, 37)]
    pixels = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    flags = np.array([True, False])
    header = {
        "inputs": [
            _bin("image", "BYTES", [3], len(_prefixed(images))),
            {"name": "scale", "shape": [1], "datatype": "FP64", "data": [0.5]},
            _bin("pixels", "FP32", [2, 3, 4], pixels.nbytes),
            _bin("flags", "BOOL", [2], 2),
        ],
        "outputs": [{"name": "scores", "parameters": {"binary_data": True}}],
    }
    payloads = [_prefixed(images), pixels.astype("<f4").tobytes(), flags.tobytes()]
    body, length = _binary_body(header, payloads)
    request = parse_infer_request(body, length)

    image, scale, pix, flag = request.inputs
    assert image.elements_bytes() == images
    np.testing.assert_array_equal(scale.as_numpy(), [0.5])
    np.testing.assert_array_equal(pix.as_numpy(), pixels)
    np.testing.assert_array_equal(flag.as_numpy(), flags)
    assert request.wants_binary("scores")
    # Zero-copy: every raw is a window on the caller's body, in input order, back to back.
    offset = length
    for tensor, payload in zip((image, pix, flag), payloads, strict=True):
        assert isinstance(tensor.raw, memoryview)
        assert tensor.raw.obj is body
        assert tensor.raw.tobytes() == payload
        assert tensor.raw == memoryview(body)[offset : offset + len(payload)]
        offset += len(payload)
    assert scale.raw is None


def test_binary_input_is_a_view_not_a_copy() -> None:
    values = np.array([1, 2, 3], dtype=np.int32)
    header = {"inputs": [_bin("x", "INT32", [3], 12)]}
    body, length = _binary_body(header, [values.tobytes()], spaced=False)
    buffer = bytearray(body)
    request = parse_infer_request(memoryview(buffer), length)
    array = request.inputs[0].as_numpy()
    assert np.shares_memory(array, np.frombuffer(buffer, np.uint8))
    buffer[length : length + 4] = struct.pack("<i", 99)
    assert request.inputs[0].as_numpy().tolist() == [99, 2, 3]
    assert array.tolist() == [99, 2, 3]


def test_binary_input_of_zero_bytes() -> None:
    body, length = _binary_body({"inputs": [_bin("x", "FP32", [0, 4], 0)]}, [])
    array = parse_infer_request(body, length).inputs[0].as_numpy()
    assert array.shape == (0, 4)
    assert array.dtype == np.float32


# ------------------------------------------------------------------------------------- bad requests


def _one(**fields: Any) -> bytes:
    tensor = {"name": "x", "datatype": "FP32", "shape": [2], "data": [1.0, 2.0]} | fields
    return json.dumps({"inputs": [{k: v for k, v in tensor.items() if v is not None}]}).encode()


def _binary_one(size: Any, payload: bytes, datatype: str = "FP32") -> tuple[bytes, int]:
    return _binary_body({"inputs": [_bin("x", datatype, [2], size)]}, [payload])


_BAD_REQUESTS: list[tuple[str, bytes, int | None, str]] = [
    ("not json", b"{inputs: []}", None, "not valid JSON"),
    ("empty body", b"", None, "not valid JSON"),
    ("not utf-8", b'{"id": "\xff"}', None, "not valid JSON"),
    ("too deep", b"[" * 100_000 + b"]" * 100_000, None, "not valid JSON"),
    ("json list", b"[]", None, "must be a JSON object"),
    ("header longer than body", b"{}", 3, "outside the body"),
    ("header length zero", b'{"inputs": []}', 0, "outside the body"),
    ("header length negative", b'{"inputs": []}', -1, "outside the body"),
    ("no inputs", b'{"outputs": []}', None, "no 'inputs'"),
    ("inputs not a list", b'{"inputs": {}}', None, "no 'inputs'"),
    ("id not a string", b'{"id": 5, "inputs": []}', None, "'id' must be a string"),
    ("parameters not object", b'{"parameters": [], "inputs": []}', None, "must be an object"),
    ("binary_data_output", _doc(parameters={"binary_data_output": 1}), None, "true or false"),
    ("input not object", b'{"inputs": [3]}', None, "inputs[0] must be an object"),
    ("no name", _one(name=None), None, "inputs[0] has no 'name'"),
    ("empty name", _one(name=""), None, "inputs[0] has no 'name'"),
    ("no datatype", _one(datatype=None), None, "no 'datatype'"),
    ("unknown datatype", _one(datatype="FP8"), None, "unknown datatype 'FP8'"),
    ("bf16", _one(datatype="BF16"), None, "unknown datatype 'BF16'"),
    ("no shape", _one(shape=None), None, "no 'shape'"),
    ("shape of floats", _one(shape=[2.0]), None, "must hold integers"),
    ("shape of bools", _one(shape=[True]), None, "must hold integers"),
    ("negative dim", _one(shape=[-1, 2]), None, "negative dimension"),
    ("input parameters", _one(parameters=5), None, "parameters of input 'x' must be an object"),
    ("neither", _one(data=None), None, "neither 'data' nor binary_data_size"),
    ("data not list", _one(data=1.0), None, "'data' must be a list"),
    ("both", _one(parameters={"binary_data_size": 8}), None, "both 'data' and binary_data_size"),
    ("binary, no header", _one(data=None, parameters={"binary_data_size": 8}), None, "no Infer"),
    ("size negative", *_binary_one(-8, b""), "non-negative integer"),
    ("size a string", *_binary_one("8", b""), "non-negative integer"),
    ("size a bool", *_binary_one(True, b""), "non-negative integer"),
    ("size wrong for shape", *_binary_one(4, b"\0" * 4), "4 bytes of data, but FP32 [2] is 8"),
    ("size past the end", *_binary_one(8, b"\0" * 7), "7 bytes are left"),
    ("body too long", *_binary_one(8, b"\0" * 9), "1 bytes of binary data belong to no input"),
    ("bytes past the end", *_binary_one(10, b"\0" * 9, "BYTES"), "9 bytes are left"),
    ("outputs not list", _doc(outputs={}), None, "'outputs' must be a list"),
    ("output not object", _doc(outputs=["a"]), None, "outputs[0] must be an object"),
    ("output no name", _doc(outputs=[{}]), None, "outputs[0] has no 'name'"),
    ("output twice", _doc(outputs=[{"name": "a"}, {"name": "a"}]), None, "requested twice"),
    ("output parameters", _doc(outputs=[{"name": "a", "parameters": 1}]), None, "an object"),
    ("binary_data", _doc(outputs=[{"name": "a", "parameters": {"binary_data": 1}}]), None, "true"),
]


@pytest.mark.parametrize(
    ("body", "header_length", "message"),
    [c[1:] for c in _BAD_REQUESTS],
    ids=[c[0] for c in _BAD_REQUESTS],
)
def test_bad_request(body: bytes, header_length: int | None, message: str) -> None:
    with pytest.raises(ProtocolError, match=re.escape(message)):
        parse_infer_request(body, header_length)


def test_duplicate_input_names() -> None:
    tensor = {"name": "x", "datatype": "FP32", "shape": [1], "data": [1.0]}
    with pytest.raises(ProtocolError, match="input 'x' appears twice"):
        _json_request({"inputs": [tensor, dict(tensor)]})


def test_binary_sizes_must_add_up_over_several_inputs() -> None:
    tensors = [_bin("a", "UINT8", [2], 2), _bin("b", "UINT8", [2], 2)]
    body, length = _binary_body({"inputs": tensors}, [b"\1\2", b"\3"])
    with pytest.raises(ProtocolError, match="input 'b': binary_data_size 2 but 1 bytes are left"):
        parse_infer_request(body, length)
    body, length = _binary_body({"inputs": tensors}, [b"\1\2", b"\3\4"])
    parsed = parse_infer_request(body, length)
    assert [t.as_numpy().tolist() for t in parsed.inputs] == [[1, 2], [3, 4]]


def _bytes_input(raw: bytes, shape: list[int]) -> InputTensor:
    body, length = _binary_body({"inputs": [_bin("s", "BYTES", shape, len(raw))]}, [raw])
    return parse_infer_request(body, length).inputs[0]


@pytest.mark.parametrize(
    ("raw", "shape", "message"),
    [
        (_prefixed([b"ab"]) + b"\1\0", [1], "truncated BYTES length prefix at byte 6"),
        (struct.pack("<I", 5) + b"abc", [1], "element 0 is 5 bytes; 3 left"),
        (_prefixed([b"ab", b"c"]) + struct.pack("<I", 2**32 - 1), [2], "element 2 is 4294967295"),
        (_prefixed([b"ab", b"c"]), [3], "has 2 BYTES elements; its shape needs 3"),
        (
            _prefixed([b"ab", b"c"]) + _prefixed([b""]),
            [2],
            "has 3 BYTES elements; its shape needs 2",
        ),
        (b"", [1], "has 0 BYTES elements"),
    ],
)
def test_bad_binary_bytes(raw: bytes, shape: list[int], message: str) -> None:
    tensor = _bytes_input(raw, shape)
    with pytest.raises(ProtocolError, match=message):
        tensor.elements_bytes()


@pytest.mark.parametrize(
    ("datatype", "data", "parameters", "message"),
    [
        ("BYTES", ["a"], {}, "has 1 elements; its shape needs 2"),
        ("BYTES", ["a", 1], {}, "BYTES data must be strings"),
        ("BYTES", ["a", "\ud800"], {}, "bad element"),
        ("BYTES", ["aGk=", "not base64!"], {"content_type": "base64"}, "bad element"),
        ("BYTES", ["aGk=", "é"], {"content_type": "base64"}, "bad element"),
        ("FP32", ["1.0", "2.0"], {}, "FP32 data must be numbers"),
        ("FP32", [1.0, None], {}, "FP32 data must be numbers"),
        ("FP32", [[1.0, 2.0], [3.0]], {}, "not a regular array"),
        ("FP32", [1.0, 2.0, 3.0], {}, "has 3 elements; its shape needs 2"),
        ("FP32", [True, False], {}, "FP32 data must be numbers"),
        ("INT32", [1.5, 2], {}, "INT32 data must be integers"),
        ("INT32", [1, 2**31], {}, "out of range for INT32"),
        ("UINT8", [-1, 0], {}, "out of range for UINT8"),
        ("UINT64", [0, 2**64], {}, "UINT64 data must be integers"),
        ("BOOL", [1, 0], {}, "BOOL data must be true or false"),
    ],
)
def test_bad_json_elements(
    datatype: str, data: list[Any], parameters: dict[str, Any], message: str
) -> None:
    body = _one(datatype=datatype, data=data, parameters=parameters or None)
    tensor = parse_infer_request(body, None).inputs[0]
    with pytest.raises(ProtocolError, match=message):
        if datatype == "BYTES":
            tensor.elements_bytes()
        else:
            tensor.as_numpy()


def test_wrong_accessor_for_datatype() -> None:
    numeric = parse_infer_request(_one(), None).inputs[0]
    with pytest.raises(ProtocolError, match="has datatype FP32, not BYTES"):
        numeric.elements_bytes()
    text = parse_infer_request(_one(datatype="BYTES", data=["a", "b"]), None).inputs[0]
    with pytest.raises(ProtocolError, match="is BYTES, not a numeric tensor"):
        text.as_numpy()


def test_binary_bool_must_be_zero_or_one() -> None:
    body, length = _binary_one(2, b"\x01\x02", "BOOL")
    with pytest.raises(ProtocolError, match="BOOL bytes must be 0 or 1"):
        parse_infer_request(body, length).inputs[0].as_numpy()


def test_constructed_tensor_with_wrong_raw_size() -> None:
    tensor = InputTensor("x", "INT16", [3], {}, None, b"\0" * 5)
    with pytest.raises(ProtocolError, match="5 bytes of data, but INT16 \\[3\\] is 6"):
        tensor.as_numpy()


# ------------------------------------------------------------------------------------------- out


def test_json_response() -> None:
    outputs = [
        OutputTensor("scores", "FP32", [2, 2], np.array([[0.5, 0.25], [1.0, -2.0]], np.float32)),
        OutputTensor("ids", "INT64", [2], np.array([3, 2**40])),
        OutputTensor("ok", "BOOL", [1, 1], np.array([[True]])),
        OutputTensor("labels", "BYTES", [2], [b"cat", "chien \u00e9".encode()]),
        OutputTensor("blobs", "BYTES", [2], [b"\xff\xd8", b"ascii"]),
    ]
    body, headers = encode_infer_response("resnet", "3", "req-1", outputs, binary=False)
    assert headers == {"content-type": "application/json"}
    assert b" " not in body.replace(b"chien ", b"")  # compact separators
    doc = json.loads(body)
    assert doc["model_name"] == "resnet"
    assert doc["model_version"] == "3"
    assert doc["id"] == "req-1"
    by_name = {out["name"]: out for out in doc["outputs"]}
    assert [out["name"] for out in doc["outputs"]] == ["scores", "ids", "ok", "labels", "blobs"]
    assert by_name["scores"] == {
        "name": "scores",
        "datatype": "FP32",
        "shape": [2, 2],
        "data": [0.5, 0.25, 1.0, -2.0],
    }
    assert by_name["ids"]["data"] == [3, 2**40]
    assert by_name["ok"]["data"] == [True]
    assert by_name["labels"]["data"] == ["cat", "chien \u00e9"]
    assert "parameters" not in by_name["labels"]
    assert by_name["blobs"]["parameters"] == {"content_type": "base64"}
    assert [base64.b64decode(s) for s in by_name["blobs"]["data"]] == [b"\xff\xd8", b"ascii"]


def test_json_response_omits_missing_version_and_id() -> None:
    body, _ = encode_infer_response("m", None, None, [], binary=True)
    assert json.loads(body) == {"model_name": "m", "outputs": []}


def test_binary_response_decoded_by_hand() -> None:
    rng = random.Random(3)
    scores = np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)
    half = np.array([1.5, -2.0], np.float16)
    images = [_jpeg_like(rng, 50), b"", b"xyz"]
    outputs = [
        OutputTensor(
            "scores", "FP32", [3, 4], scores.T.copy().T
        ),  # Fortran order: rows still go out
        OutputTensor("ids", "INT32", [2], np.array([7, -1], np.int64)),  # cast to the datatype
        OutputTensor("half", "FP16", [2], half),
        OutputTensor("images", "BYTES", [3], images),
    ]
    body, headers = encode_infer_response(
        "m", None, "r", outputs, binary={"scores", "half", "images"}
    )
    assert headers["content-type"] == "application/octet-stream"
    doc, rest = _split_response(body, headers)
    entries = {out["name"]: out for out in doc["outputs"]}
    assert entries["ids"]["data"] == [7, -1]
    assert "parameters" not in entries["ids"]
    chunks: dict[str, bytes] = {}
    for out in doc["outputs"]:  # binary data follows in output order
        if "parameters" in out:
            assert "data" not in out
            size = out["parameters"]["binary_data_size"]
            chunks[out["name"]], rest = rest[:size], rest[size:]
    assert rest == b""
    assert list(chunks) == ["scores", "half", "images"]
    np.testing.assert_array_equal(np.frombuffer(chunks["scores"], "<f4").reshape(3, 4), scores)
    np.testing.assert_array_equal(np.frombuffer(chunks["half"], "<f2"), half)
    assert _unprefix(chunks["images"]) == images
    assert chunks["images"] == _prefixed(images)


def test_binary_choice_as_callable_and_bool() -> None:
    outputs = [
        OutputTensor("a", "UINT8", [2], np.array([1, 2], np.uint8)),
        OutputTensor("b", "UINT8", [1], np.array([3], np.uint8)),
    ]
    seen: list[str] = []

    def only_b(name: str) -> bool:
        seen.append(name)
        return name == "b"

    body, headers = encode_infer_response("m", None, None, outputs, only_b)
    assert seen == ["a", "b"]
    doc, rest = _split_response(body, headers)
    assert doc["outputs"][0]["data"] == [1, 2]
    assert doc["outputs"][1]["parameters"] == {"binary_data_size": 1}
    assert rest == b"\x03"
    body, headers = encode_infer_response("m", None, None, outputs, True)
    doc, rest = _split_response(body, headers)
    assert rest == b"\x01\x02\x03"
    assert int(headers[HEADER_LENGTH]) == len(body) - 3


def test_response_round_trips_through_the_request_parser() -> None:
    """What we write as binary, our own parser (and so Triton's format) reads back."""
    array = np.arange(6, dtype=np.int16).reshape(2, 3)
    body, headers = encode_infer_response(
        "m", "1", None, [OutputTensor("x", "INT16", [2, 3], array)], binary=True
    )
    doc, _ = _split_response(body, headers)
    doc["inputs"] = doc.pop("outputs")
    header = json.dumps(doc).encode()
    rest = body[int(headers[HEADER_LENGTH]) :]
    parsed = parse_infer_request(header + rest, len(header))
    np.testing.assert_array_equal(parsed.inputs[0].as_numpy(), array)


def test_large_float_output_encodes() -> None:
    logits = np.random.default_rng(0).standard_normal((256, 1000), dtype=np.float32)
    out = [OutputTensor("logits", "FP32", [256, 1000], logits)]
    body, headers = encode_infer_response("m", None, None, out, binary=False)
    decoded = np.asarray(json.loads(body)["outputs"][0]["data"], np.float32)
    np.testing.assert_array_equal(decoded.reshape(256, 1000), logits)
    body, headers = encode_infer_response("m", None, None, out, binary=True)
    doc, rest = _split_response(body, headers)
    assert doc["outputs"][0]["parameters"] == {"binary_data_size": logits.nbytes}
    np.testing.assert_array_equal(np.frombuffer(rest, "<f4").reshape(256, 1000), logits)


def test_encoder_rejects_server_mistakes() -> None:
    with pytest.raises(ValueError, match="3 elements for shape \\[2\\]"):
        encode_infer_response("m", None, None, [OutputTensor("x", "FP32", [2], np.ones(3))], False)
    with pytest.raises(TypeError, match="BYTES data must be a list"):
        encode_infer_response("m", None, None, [OutputTensor("x", "BYTES", [1], np.ones(1))], False)
    with pytest.raises(ProtocolError, match="unknown datatype"):
        encode_infer_response("m", None, None, [OutputTensor("x", "FP8", [1], np.ones(1))], False)


# -------------------------------------------------------------------------------------- datatypes


@pytest.mark.parametrize(
    ("dtype", "datatype"),
    [
        (np.bool_, "BOOL"),
        (np.uint8, "UINT8"),
        (np.uint16, "UINT16"),
        (np.uint32, "UINT32"),
        (np.uint64, "UINT64"),
        (np.int8, "INT8"),
        (np.int16, "INT16"),
        (np.int32, "INT32"),
        (np.int64, "INT64"),
        (np.float16, "FP16"),
        (np.float32, "FP32"),
        (np.float64, "FP64"),
    ],
)
def test_datatype_mapping(dtype: type[np.generic], datatype: str) -> None:
    assert datatype_of(dtype) == datatype
    assert datatype_of(np.dtype(dtype).newbyteorder(">")) == datatype
    assert dtype_of(datatype) == np.dtype(dtype).newbyteorder("<")


def test_bytes_and_unknown_datatypes() -> None:
    assert datatype_of(object) == "BYTES"
    assert datatype_of("S5") == "BYTES"
    assert dtype_of("BYTES") == np.dtype(object)
    for unsupported in ("complex64", "U3", "datetime64[s]"):
        with pytest.raises(ValueError, match="no KServe v2 datatype"):
            datatype_of(unsupported)
    with pytest.raises(ProtocolError, match="unknown datatype 'BF16'"):
        dtype_of("BF16")


# ----------------------------------------------------------------------------------- tritonclient


def test_request_from_tritonclient() -> None:
    httpclient: Any = pytest.importorskip("tritonclient.http")
    images = np.array([_jpeg_like(random.Random(5), 64), b"\x00"], dtype=np.object_)
    pixels = np.random.default_rng(1).standard_normal((2, 3), dtype=np.float32)
    image_input = httpclient.InferInput("image", [2], "BYTES")
    image_input.set_data_from_numpy(images, binary_data=True)
    pixel_input = httpclient.InferInput("pixels", [2, 3], "FP32")
    pixel_input.set_data_from_numpy(pixels, binary_data=True)
    output = httpclient.InferRequestedOutput("scores", binary_data=True)
    body, json_size = httpclient.InferenceServerClient.generate_request_body(
        [image_input, pixel_input], outputs=[output], request_id="7"
    )
    parsed = parse_infer_request(body, json_size)
    assert parsed.id == "7"
    assert parsed.inputs[0].elements_bytes() == list(images)
    np.testing.assert_array_equal(parsed.inputs[1].as_numpy(), pixels)
    assert parsed.wants_binary("scores")
