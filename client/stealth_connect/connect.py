# Why: the knock-and-connect procedure behind both the API and the command: find the profile, reserve a
# counter durably, derive the token, let the kernel send its SYN, and on silence retry with a fresh
# counter. When every attempt is unanswered it tells a lost network from a client that fell out of the
# server's window, and says how to resync.
import errno
import socket
from pathlib import Path

from stealth.constants import DEFAULT_CONNECT_RETRIES, DEFAULT_CONNECT_TIMEOUT_SECONDS
from stealth.core.secret import Secret
from stealth.core.token import derive
from stealth.errors import ClientError
from stealth.profile import Profile
from stealth_connect.profiles import ClientStore, load_profile, read_counter, record_success, take_counter
from stealth_connect.syn import PortBusy, knock_socket

MAX_BUSY_PORT_SKIPS = 8


def resolve(host: str, port: int) -> tuple[int, tuple[str, int] | tuple[str, int, int, int]]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    except socket.gaierror as e:
        raise ClientError(f"cannot resolve {host!r}: {e.strerror}") from None
    family, _, _, _, addr = infos[0]
    return family, addr  # type: ignore[return-value]


def connect(
    host: str,
    port: int,
    profile: Profile | Path | str | None = None,
    *,
    timeout: float = DEFAULT_CONNECT_TIMEOUT_SECONDS,
    retries: int = DEFAULT_CONNECT_RETRIES,
    store: ClientStore | None = None,
) -> tuple[socket.socket, Secret]:
    """Knock with the next counter and return the connected socket and the session key.

    `profile` is a Profile, a profile file, or None for the one imported for `host`. Counters live in
    the client state directory (`store`), one sequence per key, whichever way the profile is given."""
    store = store or ClientStore()
    if isinstance(profile, Profile):
        prof = profile
    else:
        prof = load_profile(Path(profile) if profile is not None else store.find(host))
    if port not in prof.ports:
        raise ClientError(f"the profile for {host} ({prof.name}) does not cover port {port} (it covers "
                          f"{','.join(map(str, prof.ports))})")
    counter_path = store.counter_path(prof)
    family, addr = resolve(host, port)
    binding = prof.binding
    busy = 0
    attempt = 0
    counter = 0
    while attempt <= retries:
        counter = take_counter(counter_path)
        knock = derive(prof.key, binding, port, counter)
        try:
            sock = knock_socket(family, knock.isn, knock.sport)
        except PortBusy:
            busy += 1
            if busy > MAX_BUSY_PORT_SKIPS:
                raise ClientError("the token's source ports are all in use locally") from None
            continue
        sock.settimeout(timeout)
        try:
            sock.connect(addr)
        except (TimeoutError, ConnectionRefusedError, ConnectionResetError):
            sock.close()
            attempt += 1
            continue
        except OSError as e:
            sock.close()
            if e.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL):  # 4-tuple in use: next counter
                busy += 1
                if busy <= MAX_BUSY_PORT_SKIPS:
                    continue
            raise ClientError(f"cannot connect to {host}:{port}: {e.strerror}") from None
        sock.settimeout(None)
        record_success(counter_path, counter)
        return sock, knock.session_key
    raise _silence_error(host, port, prof, counter_path, retries, timeout)


def _silence_error(
    host: str, port: int, prof: Profile, counter_path: Path, retries: int, timeout: float
) -> ClientError:
    state = read_counter(counter_path)
    tries = f"{retries + 1} knock{'s' if retries else ''} of {timeout:g} s each"
    if state.last_used - state.last_ok > prof.window:
        return ClientError(
            f"no answer from {host}:{port} after {tries}; this client has used "
            f"{state.last_used - state.last_ok} counters since its last answered knock, more than the "
            f"server's window of {prof.window}. "
            f"Ask the server's admin to run: stealth server resync {prof.name} --counter {state.last_used}"
        )
    nat = (
        "; if this client is behind a NAT that rewrites source ports, ask for a profile made with "
        "--no-port-bits" if prof.port_bits else ""
    )
    return ClientError(
        f"no answer from {host}:{port} after {tries} (timeout): the host is down or unreachable, "
        f"the stealth server is not running, or this profile was revoked{nat}"
    )
