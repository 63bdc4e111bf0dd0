"""An SMTP server for Mercato's tests: aiosmtpd (an SMTP implementation
independent of Mercato's client) that writes every message it accepts, as
received, to `<dir>/<n>.eml`.

Usage: smtp_sink.py <dir>. Prints `PORT <n>` once it listens.
"""

import asyncio
import itertools
import os
import socket
import sys

from aiosmtpd.controller import Controller

directory = sys.argv[1]
os.makedirs(directory, exist_ok=True)
counter = itertools.count()


class Sink:
    async def handle_DATA(self, server, session, envelope):
        n = next(counter)
        path = os.path.join(directory, f"{n:06}.eml")
        with open(path + ".part", "wb") as f:
            f.write(envelope.original_content or envelope.content)
        os.rename(path + ".part", path)
        return "250 Message accepted for delivery"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


port = free_port()
controller = Controller(Sink(), hostname="127.0.0.1", port=port)
controller.start()
print(f"PORT {port}", flush=True)
try:
    asyncio.new_event_loop().run_forever()
finally:
    controller.stop()
