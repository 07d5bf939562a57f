# Why: `stealth-connect HOST PORT`, the ProxyCommand. ssh starts it on every login, so its start time is
# every login's: click's import alone costs ~25 ms, argparse's ~3 ms. The command line ssh writes (HOST
# PORT with exact options) is read by parse_fast; anything else (-h, --version, abbreviations, a value
# that looks like an option, a bad number, a missing or extra argument) goes to the argparse parser,
# which says the same as it always did. Ports the profile does not cover are connected to plainly, so
# one ssh Host block serves every port of a host.
from __future__ import annotations

import sys

from stealth.checks import is_port
from stealth.constants import DEFAULT_CONNECT_TIMEOUT_SECONDS
from stealth.errors import StealthError

TYPE_CHECKING = False  # mypy treats this name as True; typing's import costs ~3.4 ms at start
if TYPE_CHECKING:
    import argparse

USAGE_EXAMPLE = "ssh -o ProxyCommand='stealth-connect --name %n %h %p' HOST"


def parser() -> argparse.ArgumentParser:
    """The argparse parser of stealth-connect: the reference for every option, which parse_fast() must read
    the same way."""
    import argparse

    p = argparse.ArgumentParser(
        prog="stealth-connect",
        description=f"Knock with the kernel's own SYN and connect. Use as: {USAGE_EXAMPLE} "
        "(or print a ~/.ssh/config block with: stealth client ssh-config HOST)",
    )
    p.add_argument("host", help="the address or name to dial (ssh's %%h)")
    p.add_argument("port", type=int)
    p.add_argument("--name", help="the name typed (ssh's %%n, e.g. a Host alias): its profile is used "
                   "first, then HOST's")
    p.add_argument("--profile", help="profile file (default: the one imported for NAME or HOST)")
    p.add_argument("--state-dir", help="client state directory")
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


class Options:
    """The parsed command line: parser()'s namespace, whichever parser read it."""

    def __init__(self, host: str, port: int, name: str | None = None, profile: str | None = None,
                 state_dir: str | None = None, fdpass: bool = False, family: int | None = None,
                 timeout: float = DEFAULT_CONNECT_TIMEOUT_SECONDS, retries: int = 0) -> None:
        self.host, self.port, self.name, self.profile, self.state_dir = host, port, name, profile, state_dir
        self.fdpass, self.family, self.timeout, self.retries = fdpass, family, timeout, retries

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Options) and vars(self) == vars(other)

    def __repr__(self) -> str:
        return f"Options({', '.join(f'{k}={v!r}' for k, v in vars(self).items())})"


_FLAGS = {"--fdpass": ("fdpass", True), "-4": ("family", 4), "-6": ("family", 6)}
_VALUED: dict[str, tuple[str, type[str] | type[int] | type[float]]] = {
    "--name": ("name", str), "--profile": ("profile", str), "--state-dir": ("state_dir", str),
    "--timeout": ("timeout", float), "--retries": ("retries", int),
}


def parse_fast(argv: list[str]) -> Options | None:
    """What parser() makes of `argv`, for exactly spelled options whose values do not start with "-",
    and exactly two positional arguments with an integer port; None for anything else."""
    values: dict[str, object] = {}
    positional: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if not arg.startswith("-"):
            positional.append(arg)
            continue
        option, eq, value = arg.partition("=")
        if option in _FLAGS and not eq:
            dest, const = _FLAGS[option]
            values[dest] = const
            continue
        if option not in _VALUED:
            return None
        if not eq:
            if i == len(argv):
                return None
            value = argv[i]
            i += 1
        if value.startswith("-"):
            return None
        dest, kind = _VALUED[option]
        try:
            values[dest] = kind(value)
        except ValueError:
            return None
    if len(positional) != 2:
        return None
    try:
        port = int(positional[1])
    except ValueError:
        return None
    return Options(positional[0], port, **values)  # type: ignore[arg-type]


def parse(argv: list[str]) -> Options:
    """parse_fast, else argparse (which prints help, the version or the error, and exits)."""
    fast = parse_fast(argv)
    return fast if fast is not None else Options(**vars(parser().parse_args(argv)))


def main(argv: list[str] | None = None) -> int:
    """stealth-connect: knock (or connect plainly to a port the profile does not cover), then hand ssh the
    socket (--fdpass) or relay stdin/stdout until the session ends. Returns the exit status: 0; 1 with one
    line on stderr; 130 on ^C."""
    args = parse(sys.argv[1:] if argv is None else argv)
    import socket

    from stealth_connect.connect import ACCEPTED_BUT_RESET, connect, plain_connect
    from stealth_connect.profiles import ClientStore, clean_path, load_profile
    from stealth_connect.relay import pass_fd, relay

    family = {None: 0, 4: socket.AF_INET, 6: socket.AF_INET6}[args.family]
    try:
        if not is_port(args.port) or args.timeout <= 0:
            raise StealthError("port must be 1..65535 and timeout > 0")
        store = ClientStore(args.state_dir)
        profile = load_profile(clean_path(args.profile) if args.profile is not None
                               else store.locate(args.host, args.name))
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
