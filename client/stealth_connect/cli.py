# Why: `stealth-connect HOST PORT`, the ProxyCommand. argparse rather than click here: ssh starts this
# on every login and click's import alone costs ~25 ms; the admin CLI (`stealth`) uses click.
import argparse
import sys
from pathlib import Path

from stealth.constants import DEFAULT_CONNECT_TIMEOUT_SECONDS
from stealth.errors import StealthError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="stealth-connect",
        description="Knock with the kernel's own SYN and connect. "
        "Use as: ssh -o ProxyCommand='stealth-connect %%h %%p' HOST",
    )
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("--profile", type=Path, help="profile file (default: the one imported for HOST)")
    parser.add_argument("--state-dir", type=Path, help="client state directory")
    parser.add_argument("--fdpass", action="store_true", help="pass the socket to ssh (ProxyUseFdpass yes)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_CONNECT_TIMEOUT_SECONDS,
                        help="seconds to wait for the answer while the kernel resends the knock on the same "
                        "tuple (default %(default)s); unanswered, the next run sends the same knock again")
    parser.add_argument("--retries", type=int, default=0, help=argparse.SUPPRESS)  # old option: ignored
    args = parser.parse_args(argv)
    from stealth_connect.connect import ACCEPTED_BUT_RESET, connect
    from stealth_connect.profiles import ClientStore
    from stealth_connect.relay import pass_fd, relay

    try:
        if not 0 < args.port < 65536 or args.timeout <= 0:
            raise StealthError("port must be 1..65535 and timeout > 0")
        sock, _session_key = connect(
            args.host, args.port, args.profile, timeout=args.timeout, store=ClientStore(args.state_dir),
            notify=lambda line: print(line, file=sys.stderr),
        )
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
