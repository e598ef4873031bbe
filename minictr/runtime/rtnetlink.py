"""rtnetlink(7) on the syscall face: links, addresses and routes, as ip(8) sets them.

``Syscalls`` (syscalls.py) inherits these methods, so they are part of the one face the runtime
gets as ``kernel`` and a dry run records them like any other call; they live here to keep
syscalls.py to the system calls of the compiled layer. The netlink messages are made by pyroute2,
which costs ~120 ms to import: only a launcher that connects a bridge imports it (the container's
own process brings ``lo`` up with an ioctl, Syscalls.link_up).
"""
from __future__ import annotations

import errno
import os


def named_error(code: int, call: str) -> OSError:
    """The face's OSError for ``call``: errno ``code``, the call's name in ``err.call``."""
    err = OSError(code, f"{call}: {os.strerror(code)}")
    err.call = call.split("(", 1)[0]
    return err


class Rtnetlink:
    """Mixed into Syscalls. ``netns`` is the network namespace to act in, a path such as
    /proc/PID/ns/net; None is the caller's own. Needs ``self.setns`` and ``self.CLONE_NEWNET``
    from the face."""

    def link_get(self, ifname: str, netns: str | None = None) -> dict | None:
        """RTM_GETLINK: {"index", "kind", "alias", "master", "up"} of ``ifname``, or None."""
        def get(ipr):
            found = ipr.link_lookup(ifname=ifname)
            if not found:
                return None
            link = ipr.get_links(found[0])[0]
            info = link.get_attr("IFLA_LINKINFO")
            return {"index": link["index"], "alias": link.get_attr("IFLA_IFALIAS"),
                    "kind": info.get_attr("IFLA_INFO_KIND") if info else None,
                    "master": link.get_attr("IFLA_MASTER"), "up": bool(link["flags"] & 1)}
        return self._rtnl(netns, f"RTM_GETLINK({ifname!r})", get)

    def link_add(self, ifname: str, kind: str, netns: str | None = None, *,
                 peer: str | None = None, peer_netns_pid: int | None = None,
                 alias: str | None = None) -> None:
        """RTM_NEWLINK (ip-link(8) add): a ``kind`` link; for a veth pair, its other end
        ``peer`` is made directly in the network namespace of ``peer_netns_pid``
        (IFLA_NET_NS_PID), so it never shows in ours."""
        attrs: dict = {"ifname": ifname, "kind": kind}
        if peer is not None:
            attrs["peer"] = {"ifname": peer}
            if peer_netns_pid is not None:
                attrs["peer"]["net_ns_pid"] = peer_netns_pid

        def add(ipr):
            ipr.link("add", **attrs)
            if alias is not None:          # the kernel takes IFLA_IFALIAS on a change only
                ipr.link("set", index=self._index(ipr, ifname), ifalias=alias)
        self._rtnl(netns, f"RTM_NEWLINK({ifname!r}, {kind})", add)

    def link_set(self, ifname: str, netns: str | None = None, *, up: bool | None = None,
                 master: str | None = None) -> None:
        """RTM_NEWLINK on an existing link (ip-link(8) set): up or down, a bridge master."""
        def set_(ipr):
            attrs: dict = {"index": self._index(ipr, ifname)}
            if master is not None:
                attrs["master"] = self._index(ipr, master)
            if up is not None:
                attrs["state"] = "up" if up else "down"
            ipr.link("set", **attrs)
        self._rtnl(netns, f"RTM_NEWLINK({ifname!r})", set_)

    def link_del(self, ifname: str, netns: str | None = None) -> None:
        """RTM_DELLINK (ip-link(8) del); deleting one end of a veth pair deletes both."""
        self._rtnl(netns, f"RTM_DELLINK({ifname!r})",
                   lambda ipr: ipr.link("del", index=self._index(ipr, ifname)))

    def addr_add(self, ifname: str, address: str, prefixlen: int,
                 netns: str | None = None) -> None:
        """RTM_NEWADDR (ip-address(8) add)."""
        self._rtnl(netns, f"RTM_NEWADDR({ifname!r}, {address}/{prefixlen})",
                   lambda ipr: ipr.addr("add", index=self._index(ipr, ifname),
                                        address=address, prefixlen=prefixlen))

    def route_add(self, gateway: str, netns: str | None = None,
                  dst: str = "0.0.0.0/0") -> None:
        """RTM_NEWROUTE (ip-route(8) add): by default the default route."""
        self._rtnl(netns, f"RTM_NEWROUTE({dst} via {gateway})",
                   lambda ipr: ipr.route("add", dst=dst, gateway=gateway))

    @staticmethod
    def _index(ipr, ifname: str) -> int:
        found = ipr.link_lookup(ifname=ifname)
        if not found:
            raise OSError(errno.ENODEV, f"{ifname}: no such network interface")
        return found[0]

    def _rtnl(self, netns: str | None, call: str, action):
        """Run ``action(ipr)`` on an rtnetlink socket of ``netns``; a netlink error becomes the
        OSError the face promises, naming the message."""
        from pyroute2 import IPRoute
        from pyroute2.netlink.exceptions import NetlinkError

        try:
            if netns is None:
                # one socket for the launcher's own namespace, kept for the face's life
                own = self.__dict__.get("_own_rtnl")
                if own is None:
                    own = self.__dict__["_own_rtnl"] = IPRoute()
                return action(own)
            # another namespace's socket is closed at once: it would keep that namespace alive
            sock = self._socket_in_netns(netns)
            try:
                with IPRoute(use_socket=sock) as ipr:
                    return action(ipr)
            finally:
                sock.close()
        except NetlinkError as err:
            raise named_error(err.code, call) from None
        except OSError as err:
            raise named_error(err.errno or errno.EIO, call) from None

    def _socket_in_netns(self, netns: str):
        """An rtnetlink socket of another network namespace: setns(2) there, socket(2), setns
        back. A socket stays in the namespace it was made in (network_namespaces(7)), so the
        launcher never has to leave its own for longer than that. Only safe in a
        single-threaded process (setns changes the calling thread)."""
        import socket

        own = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            target = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
            try:
                self.setns(target, self.CLONE_NEWNET)
                try:
                    return socket.socket(socket.AF_NETLINK,
                                         socket.SOCK_DGRAM | socket.SOCK_CLOEXEC, 0)
                finally:
                    self.setns(own, self.CLONE_NEWNET)
            finally:
                os.close(target)
        finally:
            os.close(own)
