"""The wire protocol, without IO: framing, control-message codec, data serialization."""

from conveyor.protocol.codec import decode, encode
from conveyor.protocol.errors import ProtocolError
from conveyor.protocol.families import (
    register_generic,
    register_serialization_family,
    register_type,
)
from conveyor.protocol.framing import FrameDecoder, encode_frames
from conveyor.protocol.runspec import CallChunk, FunctionStore, build_task, unpickle_call
from conveyor.protocol.serialize import (
    Serialized,
    dumps,
    dumps_function,
    dumps_spec,
    loads,
    loads_function,
    pickle_bytes,
    unpickle_bytes,
)
from conveyor.protocol.tracebacks import pack_exception, unpack_traceback

__all__ = [
    "CallChunk",
    "FrameDecoder",
    "FunctionStore",
    "ProtocolError",
    "Serialized",
    "build_task",
    "decode",
    "dumps",
    "dumps_function",
    "dumps_spec",
    "encode",
    "encode_frames",
    "loads",
    "loads_function",
    "pack_exception",
    "pickle_bytes",
    "register_generic",
    "register_serialization_family",
    "register_type",
    "unpack_traceback",
    "unpickle_bytes",
    "unpickle_call",
]
