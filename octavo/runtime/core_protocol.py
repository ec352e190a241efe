"""The messages between the front process and the engine core process (msgspec, msgpack).

Front -> core: AddRequest (prompt token ids, sampling params with their structured-outputs
spec, arrival time), AbortRequest (a request, or some samples of it), ProfileRequest
(start_profile / stop_profile), Shutdown. Core -> front: Ready once the engine is built,
StepOutputs after every step or batch of messages (token ids only, no text: the front
detokenizes), ProfileDone answering a ProfileRequest, Dead when the core failed. The payload
dataclasses (SamplingParams, RequestOutput, EngineStats) cross as they are: msgspec encodes
dataclasses field by field.
"""

from __future__ import annotations

import msgspec

from octavo.runtime.engine import EngineStats
from octavo.runtime.outputs import RequestOutput
from octavo.runtime.sampling_params import SamplingParams


class AddRequest(msgspec.Struct, tag=True):
    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    arrival_time: float


class AbortRequest(msgspec.Struct, tag=True):
    request_id: str
    indices: list[int] | None = None  # samples of an n > 1 request; None: all of it


class Shutdown(msgspec.Struct, tag=True):
    pass


class ProfileRequest(msgspec.Struct, tag=True):
    start: bool  # False: stop


class ProfileDone(msgspec.Struct, tag=True):
    """The core's answer to a ProfileRequest: the traces written so far, or why it failed."""

    traces: list[str]
    error: str | None = None


class Ready(msgspec.Struct, tag=True):
    num_blocks: int
    block_size: int
    num_params: int
    weight_bytes: int


class RequestFailure(msgspec.Struct):
    """Why the core failed one request alone."""

    error: str  # "TypeName: message"
    bad_grammar: bool = False  # its structured-outputs spec did not compile (the request's fault: a 400)
    message: str = ""  # the error's own message (what a 400 says)


class StepOutputs(msgspec.Struct, tag=True):
    outputs: list[RequestOutput]
    stats: EngineStats
    num_running: int  # sequences, as the scheduler holds them after this message's work
    num_waiting: int
    num_adds_taken: int  # AddRequests the core has taken since it started
    num_messages_taken: int  # AddRequests and AbortRequests
    failed: dict[str, RequestFailure]  # request id -> why the core failed it alone
    profile_traces: list[str] = msgspec.field(default_factory=list)  # the profiler's, when one is configured


class Dead(msgspec.Struct, tag=True):
    error: str


ToCore = AddRequest | AbortRequest | ProfileRequest | Shutdown
FromCore = Ready | StepOutputs | ProfileDone | Dead

encoder = msgspec.msgpack.Encoder()
to_core_decoder = msgspec.msgpack.Decoder(ToCore)
from_core_decoder = msgspec.msgpack.Decoder(FromCore)
