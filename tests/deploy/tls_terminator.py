"""Accept TLS on a loopback port and relay each connection, in plain TCP, to another loopback port.

    python tls_terminator.py LISTEN_PORT UPSTREAM_PORT CERT_FILE KEY_FILE

Run as a script of its own (standard library only) in front of a redis-server built without TLS,
so that a client speaks TLS to it exactly as to a TLS redis-server. Each connection is closed on
both sides as soon as either side closes it.
"""
from __future__ import annotations

import asyncio
import functools
import ssl
import sys

CHUNK = 64 * 1024


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, ssl.SSLError):
        pass
    finally:
        # Closing this direction's writer ends the other direction's read too: both sides close.
        writer.close()


async def relay(upstream_port: int, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
    try:
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", upstream_port)
    except OSError:
        client_writer.close()
        return
    await asyncio.gather(pipe(client_reader, upstream_writer), pipe(upstream_reader, client_writer))


async def serve(listen_port: int, upstream_port: int, cert: str, key: str) -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    server = await asyncio.start_server(functools.partial(relay, upstream_port), "127.0.0.1", listen_port,
                                        ssl=context)
    async with server:
        await server.serve_forever()


def main(argv: list[str]) -> None:
    listen_port, upstream_port, cert, key = argv
    asyncio.run(serve(int(listen_port), int(upstream_port), cert, key))


if __name__ == "__main__":
    main(sys.argv[1:])
