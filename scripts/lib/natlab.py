# Why: a client behind a NAT is the case the source-port bits of a token do not survive. This module
# builds that deployment from netlab's and stealthlab's pieces, without changing them: the server (.1,
# real sshd, `stealth server run`) on the 198.51.100.0/24 LAN, a router namespace on that LAN at .254
# that masquerades (with or without --random-fully) for a client on its own 203.0.113.0/24 link, and the
# client (role "cli", so StealthLab.ssh runs there) whose only route is the router. The router has no
# default route: nothing leaves the machine. Every namespace is registered with the Lab, so all of them
# (and the processes in them) are removed on exit, even when building fails half-way.
import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from scripts.lib.netlab import Host, Lab, run
from scripts.lib.stealthlab import StealthLab, prepare

CLIENT_NET = "203.0.113"
ROUTER_LAN_IP = "198.51.100.254"
ROUTER_WAN_IP = f"{CLIENT_NET}.1"
CLIENT_IP = f"{CLIENT_NET}.2"
MASQUERADE_MODES = ("plain", "random-fully")


@dataclass
class RoutedHost(Host):
    """A host whose IPv4 address is not derived from its index on the lab's LAN."""

    addr4: str = ""

    @property
    def ip4(self) -> str:
        return self.addr4


@dataclass
class NatLab:
    sl: StealthLab
    router: Host
    client: Host
    mode: str = ""

    @property
    def srv(self) -> Host:
        return self.sl.srv

    @property
    def lan_iface(self) -> str:
        return "eth0"  # the router's leg on the server LAN (netlab's name)

    def masquerade(self, mode: str) -> None:
        """Replace the router's source NAT: `plain` MASQUERADE (keeps the source port unless it clashes)
        or `random-fully` (a random source port for every connection). Forgets old NAT mappings."""
        if mode not in MASQUERADE_MODES:
            raise ValueError(f"unknown masquerade mode {mode!r}")
        rule = ["POSTROUTING", "-o", self.lan_iface, "-j", "MASQUERADE"]
        if mode == "random-fully":
            rule.append("--random-fully")
        self.router.run(["iptables", "-w", "-t", "nat", "-F", "POSTROUTING"])
        self.router.run(["iptables", "-w", "-t", "nat", "-A", *rule])
        self.router.run(["conntrack", "-F"], check=False)  # exits 1 when the table is already empty
        self.mode = mode


def _add_host(lab: Lab, role: str, index: int, addr4: str = "") -> Host:
    host = RoutedHost(lab, role, f"st{lab.run_id}-{role}", index, addr4)
    lab.hosts[role] = host  # registered before it exists: Lab.close() removes it whatever happens next
    run(["ip", "netns", "add", host.ns])
    host.run(["ip", "link", "set", "lo", "up"])
    return host


def build_nat(lab: Lab, mode: str = "plain") -> tuple[Host, Host]:
    """Turn the lab's `rtr` host into a NAT router for a new client namespace `cli`; returns both."""
    router = lab["rtr"]
    # the router's LAN address becomes .254 (and IPv4 only: the NAT client has no IPv6)
    router.run(["ip", "addr", "flush", "dev", "eth0"])
    router.run(["ip", "addr", "add", f"{ROUTER_LAN_IP}/24", "dev", "eth0"])
    router.run(["sysctl", "-qw", "net.ipv4.ip_forward=1"])
    client = _add_host(lab, "cli", 90, CLIENT_IP)
    run(["ip", "link", "add", "wan0", "netns", router.ns, "type", "veth", "peer", "name", "eth0",
         "netns", client.ns])
    router.run(["ip", "addr", "add", f"{ROUTER_WAN_IP}/24", "dev", "wan0"])
    router.run(["ip", "link", "set", "wan0", "up"])
    router.run(["ethtool", "-K", "wan0", "tx", "off"], check=False)
    client.run(["ip", "addr", "add", f"{CLIENT_IP}/24", "dev", "eth0"])
    client.run(["ip", "link", "set", "eth0", "up"])
    client.run(["ethtool", "-K", "eth0", "tx", "off"], check=False)
    client.run(["ip", "route", "add", "default", "via", ROUTER_WAN_IP])
    return router, client


@contextlib.contextmanager
def nat_lab(server_id: str = "nat", ports: str = "22", mode: str = "plain",
            clients: Sequence[tuple[str, Sequence[str]]] = (("alice", ()),),
            init_args: Sequence[str] = ()) -> Iterator[NatLab]:
    """The server LAN (srv .1, router .254) and a client behind the router's MASQUERADE. `clients` are
    (name, extra add-client options) pairs, each with a profile imported for the server's IPv4 address."""
    with Lab(roles=("srv", "rtr")) as lab:
        router, client = build_nat(lab, mode)
        sl = prepare(lab, server_id, ports, init_args)
        for name, extra in clients:
            sl.enroll(name, ports, extra=extra, hosts=(sl.srv.ip4,))
        nl = NatLab(sl, router, client)
        nl.masquerade(mode)
        try:
            sl.start_server()
            yield nl
        finally:
            sl.stop_server()
