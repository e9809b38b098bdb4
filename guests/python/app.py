"""A minimal wasi:http 0.2 app for componentize-py.

GET  /anything  -> 200 text, with how many requests this instance has served
POST /echo      -> 200, the request body streamed back chunk by chunk
GET  /raise     -> an uncaught exception (the host answers 500)
"""

from componentize_py_types import Err, Ok
from wit_world import exports
from wit_world.imports.streams import StreamError_Closed
from wit_world.imports.types import (
    Fields,
    IncomingRequest,
    Method_Post,
    OutgoingBody,
    OutgoingResponse,
    ResponseOutparam,
)

# wasi:io output-stream.blocking-write-and-flush takes at most 4096 bytes.
WRITE_MAX = 4096
READ_MAX = 64 * 1024

# Module state lives in the memory image: a fresh instance per request
# always starts from 0, whatever the last instance in its slot left.
served = 0


def respond(out: ResponseOutparam, status: int, content_type: bytes):
    response = OutgoingResponse(Fields.from_list([("content-type", content_type)]))
    response.set_status_code(status)
    body = response.body()
    ResponseOutparam.set(out, Ok(response))
    return body


def write_all(stream, data: bytes) -> None:
    for i in range(0, len(data), WRITE_MAX):
        stream.blocking_write_and_flush(data[i : i + WRITE_MAX])


class IncomingHandler(exports.IncomingHandler):
    def handle(self, request: IncomingRequest, response_out: ResponseOutparam) -> None:
        global served
        served += 1
        path = request.path_with_query() or "/"
        method = request.method()
        if path.startswith("/raise"):
            raise RuntimeError("this route raises on purpose")
        if isinstance(method, Method_Post) and path.startswith("/echo"):
            incoming = request.consume()
            body = respond(response_out, 200, b"application/octet-stream")
            with incoming.stream() as src, body.write() as dst:
                while True:
                    try:
                        chunk = src.blocking_read(READ_MAX)
                    except Err as err:
                        if isinstance(err.value, StreamError_Closed):
                            break
                        raise
                    write_all(dst, chunk)
            OutgoingBody.finish(body, None)
            return
        body = respond(response_out, 200, b"text/plain; charset=utf-8")
        with body.write() as dst:
            write_all(dst, f"hello from Python on {path} (request {served} of this instance)\n".encode())
        OutgoingBody.finish(body, None)
