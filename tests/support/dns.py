"""A DNS server on a free UDP port whose A records a test changes, as a Kubernetes headless
Service's change when pods come and go. gRPC reaches it with ``dns://127.0.0.1:<port>/<name>:<p>``
(the DNS server in the target's authority). dnspython comes with pymongo."""

from __future__ import annotations

import socket
import threading

import dns.message
import dns.rdatatype
import dns.rrset


class DnsNames:
    def __init__(self) -> None:
        self.addresses: list[str] = []  # every A record of every name
        self.queries = 0  # A queries answered
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind(("127.0.0.1", 0))
        self.port = int(self._sock.getsockname()[1])
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def target(self, name: str, port: int) -> str:
        return f"dns://127.0.0.1:{self.port}/{name}:{port}"

    def start(self) -> DnsNames:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._sock.close()

    def _serve(self) -> None:
        while True:
            try:
                data, peer = self._sock.recvfrom(4096)
            except OSError:  # closed
                return
            query = dns.message.from_wire(data)
            response = dns.message.make_response(query)
            question = query.question[0]
            if question.rdtype == dns.rdatatype.A and self.addresses:
                self.queries += 1
                response.answer.append(
                    dns.rrset.from_text_list(question.name, 1, "IN", "A", list(self.addresses))
                )
            self._sock.sendto(response.to_wire(), peer)
