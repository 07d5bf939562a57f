# Why: the server's command line (`stealth server …`, `stealth inspect`). Commands parse options, call the
# library and map every StealthError to one line on stderr and exit status 1; they hold no logic of their
# own. Names are a public interface. The `stealth` command itself is stealth_cli, which loads this lazily.
# No command needs a flag to find the server: --state-dir and --config-dir override the standard layout
# (server_state.resolve_layout: /etc/stealth, /var/lib/stealth, or what the environment names).
import functools
import ipaddress
import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO, TypeVar

import click

from stealth.backend import Backend, parse_assignment
from stealth.checks import is_port
from stealth.cliutil import reports_errors, write_units
from stealth.constants import (
    COUNTER_MAX,
    DEFAULT_PORT_HIGH,
    DEFAULT_PORT_LOW,
    DEFAULT_PORT_STEP,
    DEFAULT_PROTECTED_PORT,
    DEFAULT_QUEUE_NUM,
    DEFAULT_ROTATION_OVERLAP_SECONDS,
    DEFAULT_RULES_CONFIRM_SECONDS,
    DEFAULT_SEAL_DEADLINE_MS,
    DEFAULT_SYN_RATE_PER_SECOND,
    DEFAULT_WINDOW,
    MAX_PORT_STEP,
    MAX_QUEUE_NUM,
    MAX_RULES_CONFIRM_SECONDS,
    MAX_SEAL_DEADLINE_MS,
    MAX_SYN_RATE_PER_SECOND,
    MAX_TCP_PORT,
    MAX_WINDOW,
    MAX_WORKERS,
    MIN_SEAL_DEADLINE_MS,
    SYN_BURST_PER_RATE,
)
from stealth.core.token import PortRange, token_bits
from stealth.errors import ConfigError, StealthError
from stealth.profile import Profile
from stealth.server_config import UNAUTH_CHOICES, ServerConfig, UnauthMode
from stealth.server_state import ServerState
from stealth.status import utc

F = TypeVar("F", bound=Callable[..., Any])
STDOUT = Path("-")


def with_state(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--state-dir and --config-dir, both optional, passed on as `state` (a ServerState where they, the
    environment or the defaults put the server's files)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, state_dir: Path | None, config_dir: Path | None, **kwargs: Any) -> Any:
        return fn(*args, state=ServerState.locate(state_dir, config_dir), **kwargs)

    command = click.option(
        "--config-dir", default=None, type=click.Path(file_okay=False, path_type=Path),
        help="Where server.toml lives [default: $STEALTH_CONFIG_DIR, $CONFIGURATION_DIRECTORY, or the state "
        "directory if only that is named, or /etc/stealth].",
    )(reports_errors(wrapper))
    return click.option(
        "--state-dir", default=None, type=click.Path(file_okay=False, path_type=Path),
        help="The server's state directory [default: $STEALTH_STATE_DIR, $STATE_DIRECTORY, "
        "/var/lib/stealth].",
    )(command)


def parse_ports(value: str) -> tuple[int, ...]:
    """A comma-separated port list as a sorted tuple without duplicates; click.BadParameter otherwise."""
    try:
        ports = tuple(sorted({int(p) for p in value.split(",") if p.strip()}))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of ports") from None
    if not ports or not all(is_port(p) for p in ports):
        raise click.BadParameter(f"ports must be 1..{MAX_TCP_PORT}")
    return ports


def ports_callback(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, ...] | None:
    """click callback of a --ports option: parse_ports() of its value, None when it was not given;
    click.BadParameter for a bad list."""
    return None if value is None else parse_ports(value)


def backends_callback(ctx: click.Context, param: click.Parameter,
                      value: tuple[str, ...]) -> tuple[tuple[int, Backend], ...]:
    """click callback of a repeatable PORT=BACKEND option: the (port, backend) pairs sorted by port;
    click.BadParameter for one that does not parse."""
    try:
        return tuple(sorted(parse_assignment(v) for v in value))
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


@click.group()
@click.version_option(package_name="stealth")
def main() -> None:
    """stealth: single-SYN port knocking. The kernel's own SYN carries a one-time token."""


@main.group()
def server() -> None:
    """Run and administer a stealth server."""


@server.command()
@with_state
@click.option("--server-id", required=True, help="This server's identity, bound into every token.")
@click.option("--ports", default=str(DEFAULT_PROTECTED_PORT), callback=ports_callback, show_default=True,
              help="Protected TCP ports.")
@click.option("--window", default=DEFAULT_WINDOW, show_default=True, type=click.IntRange(1, MAX_WINDOW),
              help="Look-ahead window W: future counters accepted per client.")
@click.option("--queue", default=DEFAULT_QUEUE_NUM, show_default=True, type=click.IntRange(0, MAX_QUEUE_NUM),
              help="NFQUEUE number.")
@click.option("--unauth", type=click.Choice(UNAUTH_CHOICES), default=UnauthMode.AUTO.value, show_default=True,
              help="Answer to unauthenticated packets: like this host's unused ports (auto), or force "
              "silence (drop) or the kernel's RST (reset).")
@click.option("--syn-rate", default=DEFAULT_SYN_RATE_PER_SECOND, show_default=True,
              type=click.IntRange(1, MAX_SYN_RATE_PER_SECOND),
              help="SYNs per second per source /24 (/64) queued for checking, for sources that never "
              "knocked successfully; the rest are treated as unauthenticated in the kernel.")
@click.option("--backend", "backends", multiple=True, metavar="PORT=BACKEND", callback=backends_callback,
              help="Where the service behind a protected port listens: HOST:PORT on loopback, or "
              "unix:PATH (repeatable; default 127.0.0.1:PORT).")
@click.option("--seal", "seals", multiple=True, metavar="PORT=BACKEND", callback=backends_callback,
              help="Like --backend, and seal the port: a connection reaches the service only after its "
              "first bytes prove the knock's session key (repeatable).")
@click.option("--seal-deadline-ms", default=DEFAULT_SEAL_DEADLINE_MS, show_default=True,
              type=click.IntRange(MIN_SEAL_DEADLINE_MS, MAX_SEAL_DEADLINE_MS),
              help="How long a sealed connection may take to prove it.")
@reports_errors
def init(state: ServerState, server_id: str, ports: tuple[int, ...], window: int, queue: int, unauth: str,
         syn_rate: int, backends: tuple[tuple[int, Backend], ...], seals: tuple[tuple[int, Backend], ...],
         seal_deadline_ms: int) -> None:
    """Create the server's config (server.toml) and state directory. The services behind protected
    ports must listen on loopback (or a Unix socket): stealth hands them the connections whose knock it
    accepted."""
    config = ServerConfig(server_id, ports, window, queue, unauth=UnauthMode(unauth),
                          syn_rate_per_second=syn_rate, syn_burst=SYN_BURST_PER_RATE * syn_rate,
                          backends=tuple(sorted(dict([*backends, *seals]).items())),
                          sealed=tuple(sorted(p for p, _ in seals)), seal_deadline_ms=seal_deadline_ms)
    state.init(config)
    click.echo(f"initialised {state.config_path} and {state.dir} (server id {server_id!r}, ports "
               f"{','.join(map(str, ports))})")
    for port in ports:
        sealed = " once they prove the session key (sealed)" if port in config.sealed else ""
        click.echo(f"  port {port}: accepted connections go to {config.backend(port)}{sealed}")


def source_port_options(f: F) -> F:
    """--no-port-bits, --port-range, --port-step: how a client's OS picks source ports."""
    f = click.option("--port-step", default=DEFAULT_PORT_STEP, show_default=True,
                     type=click.IntRange(1, MAX_PORT_STEP),
                     help="2 when the client's connect() uses every other port (Linux), else 1.")(f)
    f = click.option("--port-range", default=f"{DEFAULT_PORT_LOW}-{DEFAULT_PORT_HIGH}", show_default=True,
                     help="The client OS's ephemeral port range.")(f)
    return click.option("--no-port-bits", is_flag=True,
                        help="For clients behind NATs that rewrite source ports: the token uses the ISN "
                        "only.")(f)


def parse_port_range(port_range: str, port_step: int) -> PortRange:
    """The PortRange of --port-range LOW-HIGH and --port-step; click.BadParameter when they do not make
    one."""
    try:
        low, high = (int(x) for x in port_range.split("-"))
        return PortRange(low, high, port_step)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


@server.command("add-client")
@click.argument("name")
@click.option("--ports", default=None, callback=ports_callback,
              help="Ports this client may knock on [default: every port the server protects].")
@with_state
@click.option("--profile-out", required=True, type=click.Path(path_type=Path, allow_dash=True),
              help="Where to write the client's profile (mode 0600), or '-' for standard output; with "
              "--devices, a directory for NAME@DEVICE.toml each. Hand them over privately.")
@click.option("--devices", default=None, metavar="DEVICE,DEVICE",
              help="One person, several devices: enroll NAME@DEVICE for each, every one with its own key "
              "and counters (two devices sharing one profile push each other out of the window).")
@click.option("--bind-source", default=None, help="Bind tokens to this client source address.")
@source_port_options
@reports_errors
def add_client(name: str, ports: tuple[int, ...] | None, state: ServerState, profile_out: Path,
               devices: str | None, no_port_bits: bool, bind_source: str | None, port_range: str,
               port_step: int) -> None:
    """Enroll a client: a fresh random key, written to its profile."""
    prange = parse_port_range(port_range, port_step)
    try:
        if bind_source:
            ipaddress.ip_address(bind_source)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None
    names, outs = profile_targets(name, devices, profile_out)
    ports = ports or state.load_config().ports
    profiles = state.add_clients(names, ports, not no_port_bits, bind_source, prange)
    try:
        for profile, out in zip(profiles, outs, strict=True):
            write_profile(profile, out)
    except StealthError:
        state.revoke(*names)
        raise
    for profile, out in zip(profiles, outs, strict=True):
        where = "standard output" if out == STDOUT else str(out)
        click.echo(f"enrolled {profile.name!r} for ports {','.join(map(str, profile.ports))}; profile "
                   f"written to {where} (token {token_bits(profile.binding):.1f} bits)", err=out == STDOUT)


def profile_targets(name: str, devices: str | None, profile_out: Path) -> tuple[list[str], list[Path]]:
    """The clients to enroll and where each one's profile goes (never over an existing file)."""
    from stealth.store import ensure_dir

    if devices is None:
        names, outs = [name], [profile_out]
    else:
        if profile_out == STDOUT:
            raise StealthError("--profile-out -: with --devices each device gets a profile of its own; "
                               "name a directory for them")
        names = [f"{name}@{d.strip()}" for d in devices.split(",") if d.strip()]
        if not names:
            raise click.BadParameter("expected device names, e.g. laptop,desktop", param_hint="--devices")
        ensure_dir(profile_out)
        outs = [profile_out / f"{n}.toml" for n in names]
    taken = [out for out in outs if out != STDOUT and out.exists()]
    if taken:
        raise ConfigError(taken[0], "already exists; refusing to overwrite a profile")
    return names, outs


def write_profile(profile: Profile, out: Path) -> None:
    """A profile to its file (0600, atomically), or to standard output for '-'."""
    from stealth.store import write_toml

    if out != STDOUT:
        write_toml(out, profile.to_doc())
        return
    import tomli_w

    try:
        sys.stdout.write(tomli_w.dumps(profile.to_doc()))
        sys.stdout.flush()
    except OSError as e:
        raise StealthError(f"cannot write the profile to standard output: {e.strerror}") from None


@server.command("add-clients")
@click.option("--names-from", required=True, type=click.File("r"),
              help="A file with one client name per line ('-' for stdin).")
@click.option("--ports", default=None, callback=ports_callback,
              help="Ports these clients may knock on [default: every port the server protects].")
@with_state
@click.option("--profiles-dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory for the profiles, NAME.toml each (mode 0600). Hand them over privately.")
@source_port_options
@reports_errors
def add_clients(names_from: TextIO, ports: tuple[int, ...] | None, state: ServerState, profiles_dir: Path,
                no_port_bits: bool, port_range: str, port_step: int) -> None:
    """Enroll many clients at once (one rewrite of clients.jsonl, not one per client)."""
    from stealth.store import ensure_dir, write_toml

    names = [line.strip() for line in names_from if line.strip()]
    ensure_dir(profiles_dir)
    taken = sorted(n for n in names if (profiles_dir / f"{n}.toml").exists())
    if taken:
        raise ConfigError(profiles_dir / f"{taken[0]}.toml", "already exists; refusing to overwrite profiles")
    prange = parse_port_range(port_range, port_step)
    ports = ports or state.load_config().ports
    profiles = state.add_clients(names, ports, not no_port_bits, None, prange)
    try:
        for profile in profiles:
            write_toml(profiles_dir / f"{profile.name}.toml", profile.to_doc())
    except StealthError:
        state.revoke(*names)
        raise
    click.echo(f"enrolled {len(profiles)} clients for ports {','.join(map(str, ports))}; "
               f"profiles in {profiles_dir}")


@server.command("export-profile")
@click.argument("name")
@with_state
@click.option("--profile-out", required=True, type=click.Path(path_type=Path, allow_dash=True),
              help="Where to write the profile (mode 0600, never over an existing file), or '-' for "
              "standard output.")
@reports_errors
def export_profile(name: str, state: ServerState, profile_out: Path) -> None:
    """Write an enrolled client's profile again (a lost file, a reinstalled machine): the same key and
    options (during a key rotation, the new key). A client that lost its counter file as well gets back
    in by itself with a recovery knock."""
    enrolled = state.load_clients().get(name)
    if enrolled is None:
        raise ConfigError(state.clients_path, f"no enrolled client named {name!r}")
    profile_targets(name, None, profile_out)  # refuses to overwrite
    write_profile(enrolled.newest, profile_out)
    where = "standard output" if profile_out == STDOUT else str(profile_out)
    click.echo(f"profile of {name!r} written to {where}", err=profile_out == STDOUT)


@server.command()
@click.argument("name")
@with_state
@reports_errors
def revoke(name: str, state: ServerState) -> None:
    """Revoke a client. A running server drops its knocks within ~2 s, no restart."""
    state.revoke(name)
    click.echo(f"revoked {name!r}")


def parse_duration(value: str) -> int:
    """Seconds from "90s", "30m", "12h", "7d" or a plain number of seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    text = value.strip().lower()
    scale = units.get(text[-1:], 0)
    digits = text[:-1] if scale else text
    if not digits.isdigit() or int(digits) <= 0:
        raise click.BadParameter(f"{value!r}: expected a duration such as 90s, 30m, 12h or 7d")
    return int(digits) * (scale or 1)


@server.command()
@click.argument("name")
@with_state
@click.option("--overlap", default=f"{DEFAULT_ROTATION_OVERLAP_SECONDS // 86400}d", show_default=True,
              help="How long the old key keeps opening at most (90s, 30m, 12h, 7d); it stops sooner, at "
              "the new key's first accepted knock.")
@click.option("--profile-out", required=True, type=click.Path(path_type=Path, allow_dash=True),
              help="Where to write the profile with the new key (mode 0600, never over an existing file), "
              "or '-' for standard output.")
@reports_errors
def rotate(name: str, state: ServerState, overlap: str, profile_out: Path) -> None:
    """Give a client a new key without locking it out: old and new key both open until the new one is
    first used or the overlap ends. Rotating again before that replaces the unused new key."""
    seconds = parse_duration(overlap)
    profile_targets(name, None, profile_out)  # refuses to overwrite
    now = time.time()
    profile, rotation, previous = state.rotate(name, seconds, now)
    try:
        write_profile(profile, profile_out)
    except StealthError:
        state.undo_rotation(name, rotation, previous)
        raise
    where = "standard output" if profile_out == STDOUT else str(profile_out)
    note = "; the earlier rotation's new key, never used, no longer opens" if previous else ""
    click.echo(f"rotated {name!r}: profile with the new key written to {where}; the old key opens until "
               f"{utc(now + seconds)} or the new key's first login{note}", err=profile_out == STDOUT)


@server.command()
@click.argument("name")
@click.option("--counter", required=True, type=click.IntRange(0, COUNTER_MAX),
              help="The client's last used counter, as its error message reports.")
@with_state
@reports_errors
def resync(name: str, counter: int, state: ServerState) -> None:
    """Move a client's window forward after it lost more than W knocks. Never moves it back."""
    state.resync(name, counter)
    click.echo(f"{name!r}: counters after {counter} are accepted")


@server.command()
@with_state
@click.option("--queue", default=None, type=click.IntRange(0, MAX_QUEUE_NUM),
              help="NFQUEUE number (default: server.toml).")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, MAX_WORKERS),
              help="Worker processes, one NFQUEUE each (--queue-balance); a token still passes only once.")
@click.option("--keep-rules-on-exit", is_flag=True, hidden=True,
              help="Accepted for old units; the rules always stay in place on exit now.")
@click.option("-v", "--verbose", count=True, help="-v: debug logging.")
@reports_errors
def run(state: ServerState, queue: int | None, workers: int, keep_rules_on_exit: bool, verbose: int) -> None:
    """Run the server in the foreground. Prints one 'ready' line once its rules are in place. The rules
    stay when it stops, however it stops, so protected ports stay closed; to take them out, stop the
    server and run 'stealth server rules remove'."""
    from stealth import logfmt
    from stealth.firewall import require_privileges
    from stealth.notify import notify
    from stealth.server import Server

    logfmt.configure(logging.DEBUG if verbose else logging.INFO, "stealth: %(message)s", sys.stderr)
    require_privileges()
    srv = Server(state, queue, workers)

    def ready(line: str) -> None:  # called once the rules are in place and the queue(s) bound
        click.echo(f"stealth: {line}")
        sys.stdout.flush()
        notify("READY=1", f"STATUS={line}")

    notify("STATUS=installing rules")
    srv.run(ready)
    notify("STOPPING=1", "STATUS=stopped; the rules stay in place")


@server.group()
def rules() -> None:
    """Change the running rules safely (rolled back unless confirmed)."""


@rules.command("apply")
@with_state
@click.option("--confirm-within", default=DEFAULT_RULES_CONFIRM_SECONDS, show_default=True,
              type=click.FloatRange(1, MAX_RULES_CONFIRM_SECONDS),
              help="Seconds to wait for confirmation before rolling back.")
@click.option("--queue", default=None, type=click.IntRange(0, MAX_QUEUE_NUM),
              help="NFQUEUE number (default: server.toml).")
@reports_errors
def rules_apply(state: ServerState, confirm_within: float, queue: int | None) -> None:
    """Install the rules server.toml describes now; roll back unless confirmed in time."""
    from stealth.rules_apply import apply_with_rollback

    if apply_with_rollback(state, confirm_within, queue, click.echo):
        click.echo("confirmed: the new rules stay")
        return
    click.echo(f"stealth: not confirmed within {confirm_within:g} s: the previous rules are back", err=True)
    sys.exit(1)


@rules.command("remove")
@with_state
@reports_errors
def rules_remove(state: ServerState) -> None:
    """Take every stealth rule out (for uninstall). Refused while the server runs. Afterwards knocks no
    longer reach the services behind the protected ports: they listen on loopback only."""
    from stealth.rules_apply import remove_rules

    for line in remove_rules(state):
        click.echo(line)


@rules.command("confirm")
@with_state
@reports_errors
def rules_confirm(state: ServerState) -> None:
    """Confirm a pending 'rules apply' (run it from a new session to prove you still get in)."""
    from stealth.rules_apply import confirm

    confirm(state)
    click.echo("confirmed")


@server.command()
@with_state
@click.option("--json", "as_json", is_flag=True,
              help="One JSON object, with the fields of the text (times also as unix seconds).")
@reports_errors
def status(state: ServerState, as_json: bool) -> None:
    """Show the settings, every client with its last counter and last accepted knock (time, source), and
    the daemon: running, stopped, dead or stalled, the address families it protects and their unauth
    mode, drop counts by reason."""
    from stealth.status import render, status_doc

    doc = status_doc(state)
    if as_json:
        click.echo(json.dumps(doc, indent=1))
        return
    for line in render(doc):
        click.echo(line)


@server.command("units")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@reports_errors
def units(directory: Path) -> None:
    """Write the server's systemd unit (stealth.service) into DIRECTORY (e.g. /etc/systemd/system)."""
    write_units([Path(__file__).with_name("systemd") / "stealth.service"], directory)
    click.echo("its ExecStart= is /opt/stealth/bin/stealth (edit it if stealth is installed elsewhere); "
               "then: systemctl daemon-reload && systemctl enable --now stealth.service")


@main.command()
@click.argument("capture", type=click.Path(dir_okay=False, path_type=Path))
@with_state
@click.option("--json", "as_json", is_flag=True, help="One JSON object per packet.")
@reports_errors
def inspect(capture: Path, state: ServerState, as_json: bool) -> None:
    """Verdict and reason for every packet of a capture, through the live gate. Changes no state."""
    from stealth.inspect import inspect_capture

    for row in inspect_capture(state, capture):
        if as_json:
            click.echo(json.dumps(row, sort_keys=True))
        else:
            extra = f" client={row['client']}" if row.get("client") else ""
            line = f"{row['index']:5d} {row['verdict']:6s} {row['reason']:15s} {row['flow']}{extra}"
            click.echo(line)
