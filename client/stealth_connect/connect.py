# Why: the knock-and-connect procedure behind both the API and the command. A knock that got no answer
# must cost nothing: it is sent again, same counter, same ISN and source port (by the kernel's own SYN
# retransmissions within one run, and by later runs for PENDING_KNOCK_SECONDS), and a counter is only
# taken once a SYN can really leave with it (privilege, a free source port and a tuple the kernel will
# not rewrite come first). A client that may have fallen past the server's window knocks with the
# recovery token of the current time slot instead, and gets back in by itself. Each failure says which
# case it was: no answer at all, or an RST from the host. Records, not dataclasses, and paths as strings:
# ssh starts this on every login (stealth/core/record.py says why).
from __future__ import annotations

import errno
import socket
import time

from stealth.constants import (
    DEFAULT_CONNECT_TIMEOUT_SECONDS,
    NEXT_ADDRESS_AFTER_SECONDS,
    PENDING_KNOCK_SECONDS,
    RECOVERY_COUNTER_FLAG,
    RECOVERY_SLOT_SECONDS,
    RECOVERY_SLOT_SKEW,
)
from stealth.core.record import Record, set_field
from stealth.core.recovery import recovery_base, recovery_counter, slot_of
from stealth.core.secret import Secret
from stealth.core.token import Knock, derive
from stealth.errors import ClientError
from stealth.profile import Profile
from stealth_connect.counter import CounterState, claim, mark_pending, record_recovery, record_refused
from stealth_connect.profiles import ClientStore, clean_path, load_profile, read_counter, record_success
from stealth_connect.seal import prove
from stealth_connect.syn import PortBusy, bind_source_port, tuple_in_use
from stealth_connect.synsource import SynSource, open_syn_source

TYPE_CHECKING = False  # mypy treats this name as True; typing's import costs ~3.4 ms at start
if TYPE_CHECKING:
    from collections.abc import Callable

    from stealth.store import StrPath

MAX_BUSY_PORT_SKIPS = 8
# Counters used without an answer before the next run knocks with the recovery token instead: each of
# them went unanswered for PENDING_KNOCK_SECONDS, so either the path or the server has been failing for
# minutes, or another device with a copy of this profile is ahead of this one.
RECOVER_AFTER_UNANSWERED = 3
ACCEPTED_BUT_RESET = ("the knock was accepted, but {where} reset the connection before the service said "
                      "anything (is the service behind it running?)")
BUSY_MESSAGE = ("the source ports of this profile's next knocks are all in use on this machine (or their "
                "tuples towards this server are); nothing was spent: try again shortly")
Address = tuple[str, int] | tuple[str, int, int, int]


class Attempt(Record):
    """A knock ready to go: its socket (ISN and source port set), its token, and what kind it is."""

    __slots__ = ("kind", "knock", "slot", "sock")
    sock: socket.socket
    knock: Knock
    kind: str  # "again" (the pending knock), "new" (a fresh counter) or "recovery"
    slot: int  # for a recovery knock

    def __init__(self, sock: socket.socket, knock: Knock, kind: str, slot: int = 0) -> None:
        set_field(self, "sock", sock)
        set_field(self, "knock", knock)
        set_field(self, "kind", kind)
        set_field(self, "slot", slot)


def _idna_free(host: str) -> str | bytes:
    """What getaddrinfo is given for `host`. It encodes every str with the "idna" codec, whose import
    loads re, stringprep and unicodedata (+3.5 ms of every login); for an ASCII name that codec only
    checks label lengths and returns the same bytes, so such a name goes as those bytes. Any other name
    goes as it is, and the codec says what it always said."""
    if host.isascii():
        labels = host.split(".")
        if all(0 < len(label) < 64 for label in labels[:-1]) and len(labels[-1]) < 64:
            return host.encode("ascii")
    return host


def resolve(host: str, port: int, family: int = 0) -> list[tuple[int, Address]]:
    """Every address of `host`, in getaddrinfo's order (family 0: both, or AF_INET / AF_INET6)."""
    try:
        infos = socket.getaddrinfo(_idna_free(host), port, family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    except socket.gaierror as e:
        raise ClientError(f"cannot resolve {host!r}: {e.strerror}") from None
    out: list[tuple[int, Address]] = []
    for fam, _, _, _, addr in infos:
        if (fam, addr) not in out:
            out.append((fam, addr))  # type: ignore[arg-type]
    return out


def plain_connect(host: str, port: int, family: int, timeout: float) -> socket.socket:
    """An ordinary connection to a port no profile covers: each address in turn, as ssh would."""
    last = ""
    addresses = resolve(host, port, family)
    for i, (fam, addr) in enumerate(addresses):
        sock = socket.socket(fam, socket.SOCK_STREAM)
        sock.settimeout(timeout if i == len(addresses) - 1 else min(timeout, NEXT_ADDRESS_AFTER_SECONDS))
        try:
            sock.connect(addr)
        except OSError as e:
            sock.close()
            last = f"{addr[0]}: {e.strerror or e}"
            continue
        sock.settimeout(None)
        return sock
    raise ClientError(f"cannot connect to {host}:{port}: {last}")


class Settled(Record):
    """How the knocks towards one address ended: the last attempt, its outcome, the RSTs before it."""

    __slots__ = ("attempt", "detail", "outcome", "refusals")
    attempt: Attempt | None  # None: no knock could leave (all source ports busy)
    outcome: str  # connected, reset, refused, silent, busy or unreachable
    refusals: int
    detail: str  # the kernel's words for "unreachable"

    def __init__(self, attempt: Attempt | None, outcome: str, refusals: int = 0, detail: str = "") -> None:
        set_field(self, "attempt", attempt)
        set_field(self, "outcome", outcome)
        set_field(self, "refusals", refusals)
        set_field(self, "detail", detail)


def connect(
    host: str,
    port: int,
    profile: Profile | StrPath | None = None,
    *,
    timeout: float = DEFAULT_CONNECT_TIMEOUT_SECONDS,
    store: ClientStore | None = None,
    notify: Callable[[str], None] | None = None,
    clock: Callable[[], float] = time.time,
    family: int = 0,
    source: SynSource | None = None,
) -> tuple[socket.socket, Secret]:
    """Knock and return the connected socket and the session key.

    `profile` is a Profile, a profile file, or None for the one imported for `host`. Counters live in
    the client state directory (`store`), one sequence per key, whichever way the profile is given.
    Each address of `host` is tried in order (`family` restricts them); the kernel resends the SYN on
    the same tuple until `timeout` (NEXT_ADDRESS_AFTER_SECONDS for all but the last address); on
    silence the knock stays pending and the next try sends it again. The knock's socket comes from
    `source` (default: this process if it may, else the agent), settled before any counter is taken.
    `notify` gets a line worth showing the user (after a recovery)."""
    store = store or ClientStore()
    if isinstance(profile, Profile):
        prof = profile
    else:
        prof = load_profile(clean_path(profile) if profile is not None else store.locate(host))
    if port not in prof.ports:
        raise ClientError(f"the profile for {host} ({prof.name}) does not cover port {port} (it covers "
                          f"{','.join(map(str, prof.ports))})")
    counter_path = store.counter_file(prof)
    addresses = resolve(host, port, family)
    state = read_counter(counter_path)
    own_source = source is None
    source = source or open_syn_source()
    try:
        for i, (fam, addr) in enumerate(addresses):
            wait = timeout if i == len(addresses) - 1 else min(timeout, NEXT_ADDRESS_AFTER_SECONDS)
            settled = _settle(prof, port, fam, addr, counter_path, source, wait, clock)
            if settled.outcome in ("connected", "reset"):
                break
    finally:
        if own_source:
            source.close()
    return _finish(host, port, prof, counter_path, state, settled, timeout, notify, clock)


def _finish(host: str, port: int, prof: Profile, counter_path: str, before: CounterState, settled: Settled,
            timeout: float, notify: Callable[[str], None] | None,
            clock: Callable[[], float]) -> tuple[socket.socket, Secret]:
    """Record what the last address's knocks did and return the connection, or the one-line error."""
    attempt, outcome = settled.attempt, settled.outcome
    if attempt is None or outcome == "busy":
        raise ClientError(BUSY_MESSAGE)
    if outcome == "refused":
        raise ClientError(_refused(host, port))
    if outcome == "unreachable":
        raise ClientError(f"cannot connect to {host}:{port}: {settled.detail}")
    if outcome == "silent":
        raise ClientError(_silence(host, port, prof, attempt, timeout, clock()))
    if attempt.kind == "recovery":  # taken: the server's counter for this key is now the base
        record_recovery(counter_path, recovery_base(attempt.slot))
    else:
        record_success(counter_path, attempt.knock.counter)
    if outcome == "reset":  # taken, so spent; the service behind the port reset the connection
        raise ClientError(ACCEPTED_BUT_RESET.format(where=f"{host}:{port}"))
    if notify is not None and (attempt.kind == "recovery" or settled.refusals):
        notify(_recovered(prof, before, settled.refusals))
    if port in prof.sealed:
        prove(attempt.sock, attempt.knock.session_key, timeout, f"{host}:{port}")
    return attempt.sock, attempt.knock.session_key


def _settle(prof: Profile, port: int, family: int, addr: Address, counter_path: str, source: SynSource,
            timeout: float, clock: Callable[[], float]) -> Settled:
    """Knock on one address: the first knock that can leave, then what follows each RST."""
    first = _prepare(prof, port, family, addr, counter_path, source,
                     _candidates(prof, read_counter(counter_path), clock()), clock())
    if first is None:
        return Settled(None, "busy")
    return _knock_until_settled(prof, port, family, addr, counter_path, source, first, timeout, clock)


def _knock_until_settled(prof: Profile, port: int, family: int, addr: Address, counter_path: str,
                         source: SynSource, attempt: Attempt, timeout: float,
                         clock: Callable[[], float]) -> Settled:
    """Send `attempt`; after an RST (or a tuple taken meanwhile) send what follows from it, each knock
    at most once."""
    outcome, detail = _knock(attempt, addr, timeout)
    tried = {attempt.knock.counter}
    refusals = 0
    while outcome in ("refused", "busy"):
        if outcome == "refused":
            refusals += 1
            record_refused(counter_path, attempt.knock.counter)
            following = _after_refusal(prof, attempt, read_counter(counter_path), clock())
        else:
            following = _candidates(prof, read_counter(counter_path), clock())
        following = [c for c in following if c[1] not in tried]
        nxt = (_prepare(prof, port, family, addr, counter_path, source, following, clock())
               if following else None)
        if nxt is None:
            break
        attempt = nxt
        tried.add(attempt.knock.counter)
        outcome, detail = _knock(attempt, addr, timeout)
    return Settled(attempt, outcome, refusals, detail)


def _knock(attempt: Attempt, addr: Address, timeout: float) -> tuple[str, str]:
    """connect() the prepared socket: the kernel sends the SYN and resends it on the same tuple until
    `timeout`. "connected" leaves the socket connected and blocking; "refused" (an RST instead of a
    SYN-ACK), "reset" (an RST right after the SYN-ACK), "silent" (a silent knock stays pending) and
    "busy" (the tuple was taken meanwhile) and "unreachable" (with the kernel's words) close it."""
    sock = attempt.sock
    sock.settimeout(timeout)
    try:
        sock.connect(addr)
    except ConnectionRefusedError:
        sock.close()
        return "refused", ""
    except TimeoutError:
        sock.close()
        return "silent", ""
    except ConnectionResetError:
        sock.close()  # the SYN-ACK came (the knock was taken), then an RST before connect() returned
        return "reset", ""
    except OSError as e:
        sock.close()
        if e.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL):  # another run took the tuple just now
            return "busy", ""
        return "unreachable", f"{addr[0]}: {e.strerror or e}"
    sock.settimeout(None)
    return "connected", ""


def _candidates(prof: Profile, state: CounterState, now: float) -> list[tuple[str, int]]:
    """Knocks to try, in order (a run sends the first one that can leave).

    Within the window as far as this client can know (fewer than RECOVER_AFTER_UNANSWERED counters, and
    fewer than W, used since the last answered one): the pending knock while it is young, then new
    counters, then (all their ports busy) the current slot's recovery token. Past it: the recovery
    token (it is always safe: accepted, it moves the counter forward); and once that went unanswered in
    this slot, one probe with the first counter after the slot's base, which gets in at once if the
    server did accept the recovery knock and only its answer was lost."""
    slot = slot_of(now)
    recovery = ("recovery", recovery_counter(slot))
    # a counter claimed in the last PENDING_KNOCK_SECONDS may still be on its way (this run's earlier
    # knock, or another run's now): counters in flight are not unanswered ones
    in_flight = (0 < state.pending < RECOVERY_COUNTER_FLAG
                 and 0 <= now - state.pending_since < PENDING_KNOCK_SECONDS)
    if state.last_used - state.last_ok >= min(prof.window, RECOVER_AFTER_UNANSWERED) and not in_flight:
        if state.pending == recovery[1] and state.last_used <= recovery_base(slot):
            return [("new", recovery_base(slot) + 1), recovery]
        return [recovery]
    out: list[tuple[str, int]] = []
    if in_flight:
        out.append(("again", state.pending))
    top = min(state.last_ok + prof.window, state.last_used + MAX_BUSY_PORT_SKIPS)
    return [*out, *(("new", c) for c in range(state.last_used + 1, top + 1)), recovery]


def _after_refusal(prof: Profile, refused: Attempt, state: CounterState, now: float) -> list[tuple[str, int]]:
    """What to send after an RST, which comes at once (the server saw the knock and did not take it).
    A knock sent again was most likely taken before, its answer lost (a crash between accept and
    answer): a new counter. A new counter refused is spent already (a copy of this profile elsewhere)
    or revoked: the recovery token tells which. A recovery token refused may have been taken before in
    this slot, its answer lost: the first counter after its base."""
    if refused.kind == "again":
        return _candidates(prof, state, now)
    if refused.kind == "new":
        return [("recovery", recovery_counter(slot_of(now)))]
    base = recovery_base(refused.slot)
    return [("new", base + 1)] if state.last_used <= base else []


def _prepare(prof: Profile, port: int, family: int, addr: Address, counter_path: str, source: SynSource,
             candidates: list[tuple[str, int]], now: float) -> Attempt | None:
    """The first candidate whose SYN can leave: its port free and its tuple not in use here (another
    run's knock, a connection, TIME_WAIT), then (for a counter) claimed durably. Nothing is spent on a
    candidate that cannot be sent; None when no candidate can leave."""
    for kind, counter in candidates:
        knock = derive(prof.key, prof.binding, port, counter)
        if knock.sport is not None and tuple_in_use(family, addr[0], port, knock.sport):
            continue
        try:
            sock = knock_socket(source, family, knock.isn, knock.sport)
        except PortBusy:
            continue
        if kind == "recovery":
            mark_pending(counter_path, counter, now)
        elif not claim(counter_path, counter, now, PENDING_KNOCK_SECONDS):
            sock.close()  # another run took it meanwhile
            continue
        return Attempt(sock, knock, kind, slot_of(now) if kind == "recovery" else 0)
    return None


def knock_socket(source: SynSource, family: int, isn: int, sport: int | None) -> socket.socket:
    """The knock's socket from `source`, bound to its source port (PortBusy if taken here)."""
    return bind_source_port(source.socket_for(family, isn), family, sport)


def _silence(host: str, port: int, prof: Profile, attempt: Attempt, timeout: float, now: float) -> str:
    nat = ("; if this client is behind a NAT that rewrites source ports, ask for a profile made with "
           "--no-port-bits") if prof.port_bits else ""
    if attempt.kind == "recovery":
        clock = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(now))
        minutes = RECOVERY_SLOT_SKEW * RECOVERY_SLOT_SECONDS // 60
        return (f"no answer from {host}:{port} within {timeout:g} s to a recovery knock: the host or its "
                f"stealth server is down or unreachable, or this profile was revoked{nat}. A recovery knock "
                f"needs this machine's clock within {minutes} minutes of the server's; it says {clock}")
    return (f"no answer from {host}:{port} within {timeout:g} s: the host or its stealth server is down or "
            f"unreachable, or this profile was revoked{nat}. Nothing is lost: the next attempt sends the "
            f"same knock again (for {PENDING_KNOCK_SECONDS:g} s)")


def _refused(host: str, port: int) -> str:
    return (f"{host}:{port} refused the knock and a recovery knock (RSTs, as from a port where nothing "
            "listens): this profile is revoked, the host does not run stealth on this port, or another "
            f"device with a copy of this profile recovered in this {RECOVERY_SLOT_SECONDS // 60}-minute "
            "slot already (then each device needs its own profile)")


def _recovered(prof: Profile, before: CounterState, refusals: int) -> str:
    lost = before.last_used - before.last_ok
    why = (f"{refusals} knock{'s' if refusals > 1 else ''} refused as already used" if refusals else
           f"{lost} knocks since the last answered one not accepted")
    return (f"stealth-connect: got back in with a recovery knock ({prof.name}) after {why}. If this profile "
            "is also used on another device, the two push each other out: give each device its own "
            f"profile (stealth server add-client {prof.name} --devices NAME,NAME)")
