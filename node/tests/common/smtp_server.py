"""A real SMTP server for the tests (aiosmtpd): each message received is
written, decoded, to DIR/NNNN.eml (headers, a blank line, the plain-text
body). Prints the port it listens on. With CERT and KEY, STARTTLS is
required before MAIL.

usage: smtp_server.py DIR [CERT KEY]
"""
import asyncio
import email
import email.policy
import os
import ssl
import sys

from aiosmtpd.smtp import SMTP

OUT = sys.argv[1]


class Store:
    count = 0

    async def handle_DATA(self, server, session, envelope):
        Store.count += 1
        msg = email.message_from_bytes(envelope.original_content or envelope.content, policy=email.policy.default)
        body = msg.get_body(("plain",))
        text = "".join(f"{k}: {v}\n" for k, v in msg.items())
        text += f"X-Envelope-To: {','.join(envelope.rcpt_tos)}\n"
        text += f"X-Tls: {'yes' if session.ssl else 'no'}\n\n"
        text += body.get_content() if body is not None else ""
        path = os.path.join(OUT, f"{Store.count:04}.eml")
        with open(path + ".tmp", "w") as f:
            f.write(text)
        os.rename(path + ".tmp", path)
        return "250 Message accepted for delivery"


async def main():
    kwargs = {}
    if len(sys.argv) > 3:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(sys.argv[2], sys.argv[3])
        kwargs = {"tls_context": ctx, "require_starttls": True}
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SMTP(Store(), **kwargs), "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await asyncio.Event().wait()


asyncio.run(main())
