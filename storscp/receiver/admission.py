"""Who may associate: the called AE title, the calling AE title, the peer's address.

`require_called_aet`: the Called AE Title must be ours ("called AE title not
recognised" otherwise). With `accept_any` false, the Calling AE Title must
be one of the `[[remote_ae]]` tables, and where a table gives a `host`, the
peer's address must be that host's. Host names are resolved once, at start.
"""

from __future__ import annotations

import ipaddress
import logging
import socket

from storscp.config import Config
from storscp.receiver import pdu
from storscp.receiver.acse import Negotiated

log = logging.getLogger(__name__)

# ae_title -> allowed peer addresses (None: any address)
AllowedHosts = dict[str, set[str] | None]


def normalise_address(address: str) -> str:
    """'::ffff:10.0.0.5' and '10.0.0.5' are the same peer."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def resolve_remote_hosts(config: Config) -> AllowedHosts:
    """For each remote AE title, the addresses it may connect from."""
    allowed: AllowedHosts = {}
    for remote in config.remote_ae:
        if remote.host is None:
            allowed[remote.ae_title] = None
            continue
        addresses = allowed.get(remote.ae_title, set())
        if addresses is None:
            continue  # another table for this title allows any host
        try:
            infos = socket.getaddrinfo(remote.host, None, proto=socket.IPPROTO_TCP)
            addresses |= {normalise_address(str(info[4][0])) for info in infos}
        except OSError as exc:
            log.warning("remote_ae %s: cannot resolve host %s: %s", remote.name, remote.host, exc)
        allowed[remote.ae_title] = addresses
    return allowed


def admission_check(
    config: Config, allowed: AllowedHosts, assoc: Negotiated, peer_host: str
) -> pdu.Reject | None:
    """None if the association may proceed, else the A-ASSOCIATE-RJ to send."""
    if config.require_called_aet and assoc.called_ae != config.ae_title.strip():
        return pdu.REJECT_CALLED_AE
    if not config.accept_any:
        if assoc.calling_ae not in allowed:
            return pdu.REJECT_CALLING_AE
        hosts = allowed[assoc.calling_ae]
        if hosts is not None and normalise_address(peer_host) not in hosts:
            return pdu.REJECT_CALLING_AE._replace(
                text=f"calling AE title not allowed from {peer_host}"
            )
    return None
