"""Who may associate: the called AE title, the calling AE title, the peer's address.

`require_called_aet`: the Called AE Title must be ours ("called AE title not
recognised" otherwise). An association *matches* the first `[[remote_ae]]`
table with its Calling AE Title whose `host`, if any, is the peer's address
(behind a balancer, the address of its PROXY header). With `accept_any`
false, an association must match a table. A matched table's
`max_associations` caps that peer (server.py holds the slots). Host names are
resolved once, at start.
"""

from __future__ import annotations

import ipaddress
import logging
import socket

from storscp.config import Config, RemoteAE
from storscp.receiver import pdu
from storscp.receiver.acse import Negotiated

log = logging.getLogger(__name__)

# Per [[remote_ae]] table, in order: the table and its addresses (None: any address).
RemoteHosts = list[tuple[RemoteAE, frozenset[str] | None]]


def normalise_address(address: str) -> str:
    """'::ffff:10.0.0.5' and '10.0.0.5' are the same peer."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def resolve_remote_hosts(config: Config) -> RemoteHosts:
    """For each remote AE table, the addresses it may connect from."""
    out: RemoteHosts = []
    for remote in config.remote_ae:
        if remote.host is None:
            out.append((remote, None))
            continue
        try:
            infos = socket.getaddrinfo(remote.host, None, proto=socket.IPPROTO_TCP)
            addresses = frozenset(normalise_address(str(info[4][0])) for info in infos)
        except OSError as exc:
            log.warning("remote_ae %s: cannot resolve host %s: %s", remote.name, remote.host, exc)
            addresses = frozenset()
        out.append((remote, addresses))
    return out


def admission_check(
    config: Config, remotes: RemoteHosts, assoc: Negotiated, peer_host: str
) -> tuple[pdu.Reject | None, int | None]:
    """(the A-ASSOCIATE-RJ to send or None, the index of the matching table or None)."""
    if config.require_called_aet and assoc.called_ae != config.ae_title.strip():
        return pdu.REJECT_CALLED_AE, None
    peer = normalise_address(peer_host)
    titled = [
        (i, hosts)
        for i, (remote, hosts) in enumerate(remotes)
        if remote.ae_title == assoc.calling_ae
    ]
    for index, hosts in titled:
        if hosts is None or peer in hosts:
            return None, index
    if config.accept_any:
        return None, None
    if not titled:
        return pdu.REJECT_CALLING_AE, None
    return pdu.REJECT_CALLING_AE._replace(
        text=f"calling AE title not allowed from {peer_host}"
    ), None
