"""{{name}}: a Gust function in Python. It answers every request with a
greeting, taken from the GREETING variable ([env] in gust.toml, or
`gust config set {{name}} GREETING=...`), and the path it was called on.

Build and deploy: `gust deploy` here; while editing: `gust dev`. Read
variables inside the handler: code at the top level runs when the
component is built, not when it is called.
"""

import os

from componentize_py_types import Ok
from wit_world import exports
from wit_world.imports.types import (
    Fields,
    IncomingRequest,
    OutgoingBody,
    OutgoingResponse,
    ResponseOutparam,
)

# A stream takes at most this many bytes per write.
CHUNK = 4096


class IncomingHandler(exports.IncomingHandler):
    def handle(self, request: IncomingRequest, response_out: ResponseOutparam) -> None:
        greeting = os.environ.get("GREETING", "Hello")
        text = f"{greeting} from {{name}}! You asked for {request.path_with_query()}\n"
        response = OutgoingResponse(
            Fields.from_list([("content-type", b"text/plain; charset=utf-8")])
        )
        body = response.body()
        ResponseOutparam.set(response_out, Ok(response))
        data = text.encode()
        with body.write() as stream:
            for start in range(0, len(data), CHUNK):
                stream.blocking_write_and_flush(data[start : start + CHUNK])
        OutgoingBody.finish(body, None)
