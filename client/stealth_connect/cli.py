# Why: `stealth-connect HOST PORT`, the ProxyCommand. argparse rather than click here: ssh starts this
# on every login and click's import alone costs ~25 ms; the admin CLI (`stealth`) uses click. Ports the
# profile does not cover are connected to plainly, so one ssh Host block serves every port of a host.
import argparse
import sys
from pathlib import Path

from stealth.constants import DEFAULT_CONNECT_TIMEOUT_SECONDS
from stealth.errors import StealthError

USAGE_EXAMPLE = "ssh -o ProxyCommand='stealth-connect --name %n %h %p' HOST"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="stealth-connect",
        description=f"Knock with the kernel's own SYN and connect. Use as: {USAGE_EXAMPLE} "
        "(or print a ~/.ssh/config block with: stealth client ssh-config HOST)",
    )
    p.add_argument("host", help="the address or name to dial (ssh's %%h)")
    p.add_argument("port", type=int)
    p.add_argument("--name", help="the name typed (ssh's %%n, e.g. a Host alias): its profile is used "
                   "first, then HOST's")
    p.add_argument("--profile", type=Path, help="profile file (default: the one imported for NAME or HOST)")
    p.add_argument("--state-dir", type=Path, help="client state directory")
    p.add_argument("--fdpass", action="store_true", help="pass the socket to ssh (ProxyUseFdpass yes)")
    p.add_argument("-4", dest="family", action="store_const", const=4, help="IPv4 addresses only")
    p.add_argument("-6", dest="family", action="store_const", const=6, help="IPv6 addresses only")
    p.add_argument("--timeout", type=float, default=DEFAULT_CONNECT_TIMEOUT_SECONDS,
                   help="seconds to wait for the answer while the kernel resends the knock on the same "
                   "tuple (default %(default)s); unanswered, the next run sends the same knock again")
    p.add_argument("--retries", type=int, default=0, help=argparse.SUPPRESS)  # old option: ignored
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    return p


def _version() -> str:
    from stealth import __version__

    return __version__


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    import socket

    from stealth_connect.connect import ACCEPTED_BUT_RESET, connect, plain_connect
    from stealth_connect.profiles import ClientStore, load_profile
    from stealth_connect.relay import pass_fd, relay

    family = {None: 0, 4: socket.AF_INET, 6: socket.AF_INET6}[args.family]
    try:
        if not 0 < args.port < 65536 or args.timeout <= 0:
            raise StealthError("port must be 1..65535 and timeout > 0")
        store = ClientStore(args.state_dir)
        profile = load_profile(args.profile or store.find(args.host, args.name))
        if args.port in profile.ports:
            sock, _session_key = connect(
                args.host, args.port, profile, timeout=args.timeout, store=store, family=family,
                notify=lambda line: print(line, file=sys.stderr),
            )
        else:  # not protected: an ordinary connection, like ssh's own
            sock = plain_connect(args.host, args.port, family, args.timeout)
        if args.fdpass:
            pass_fd(sock)
        elif relay(sock) == "reset":
            raise StealthError(ACCEPTED_BUT_RESET.format(where=f"{args.host}:{args.port}"))
        sock.close()
    except StealthError as e:
        print(f"stealth-connect: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except OSError as e:
        print(f"stealth-connect: {e.strerror or e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
