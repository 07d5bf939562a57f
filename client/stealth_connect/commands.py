# Why: `stealth client …`, the commands a user (and, for the agent, root) types on a client machine.
# They live in the client package so that a client-only install has them; the `stealth` command
# (stealth_cli) loads them lazily beside the server's.
import grp
import os
import shutil
import signal
import sys
from pathlib import Path
from types import FrameType

import click

from stealth.cliutil import reports_errors, write_units
from stealth.constants import AGENT_SOCKET_ENV, DEFAULT_AGENT_GROUP, DEFAULT_AGENT_SOCKET
from stealth.errors import ClientError, ConfigError
from stealth_connect.profiles import ClientStore

state_dir_option = click.option(
    "--state-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
    help="Client state directory (default: $STEALTH_CLIENT_DIR or $XDG_CONFIG_HOME/stealth).")


@click.group()
def client() -> None:
    """Manage this machine's client profiles, and run the agent that lets users knock without root."""


@client.command("import")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path, allow_dash=True))
@click.option("--host", required=True,
              help="The name you give ssh for this server: a Host alias, or its HostName / address.")
@state_dir_option
@reports_errors
def import_profile(file: Path, host: str, state_dir: Path | None) -> None:
    """Store a profile for HOST. FILE '-' reads it from standard input, so it never rests in a file:
    ssh admin@server stealth server export-profile NAME --profile-out - | stealth client import - ..."""
    store = ClientStore(state_dir)
    if str(file) == "-":
        from stealth.profile import Profile
        from stealth.store import parse_toml

        where = "standard input"
        dest = store.save_profile(Profile.from_doc(where, parse_toml(where, sys.stdin.buffer.read())), host)
    else:
        dest = store.import_profile(file, host)
    click.echo(f"profile for {host} stored in {dest}")


@client.command("list")
@state_dir_option
@reports_errors
def list_profiles(state_dir: Path | None) -> None:
    """Show the hosts this machine has profiles for."""
    rows = ClientStore(state_dir).entries()
    if not rows:
        click.echo("no profiles (import one with: stealth client import PROFILE --host NAME)")
    for row in rows:
        sealed = f" sealed={','.join(map(str, row.sealed))}" if row.sealed else ""
        click.echo(f"{row.host}  profile={row.name} ports={','.join(map(str, row.ports))}{sealed} "
                   f"last_counter={row.last_used}")


@client.command("remove")
@click.argument("host")
@state_dir_option
@reports_errors
def remove_profile(host: str, state_dir: Path | None) -> None:
    """Forget the profile stored for HOST (its key is deleted from this machine)."""
    path = ClientStore(state_dir).remove(host)
    click.echo(f"removed {path} (the counter file stays, so the key can never reuse a counter)")


@client.command("ssh-config")
@click.argument("host")
@click.option("--hostname", default=None, help="The server's address or DNS name, if HOST is an alias.")
@click.option("--user", default=None, help="The remote user name.")
@click.option("--relay", is_flag=True,
              help="Relay through stealth-connect instead of handing ssh the socket (ProxyUseFdpass).")
@state_dir_option
@reports_errors
def ssh_config(host: str, hostname: str | None, user: str | None, relay: bool,
               state_dir: Path | None) -> None:
    """Print a ~/.ssh/config block for HOST."""
    found = ClientStore(state_dir).find(hostname or host, host)  # under the alias first, as ssh's %n
    click.echo(ssh_config_block(host, hostname, user, relay, found.stem))


def ssh_config_block(host: str, hostname: str | None, user: str | None, relay: bool, profile: str) -> str:
    """The block: ssh passes %n (the name typed, the alias) and %h (HostName) to stealth-connect, which
    looks the profile up under either. With ProxyUseFdpass ssh gets the socket itself: no relay
    process, and ssh's own IPQoS marks the packets as a direct connection's."""
    exe = shutil.which("stealth-connect") or str(Path(sys.argv[0]).resolve().with_name("stealth-connect"))
    if not Path(exe).exists():
        exe = "stealth-connect"
    lines = [f"# stealth: knock with the profile imported as {profile}", f"Host {host}"]
    if hostname:
        lines.append(f"    HostName {hostname}")
    if user:
        lines.append(f"    User {user}")
    if relay:
        lines.append(f"    ProxyCommand {exe} --name %n %h %p")
    else:
        lines += [f"    ProxyCommand {exe} --fdpass --name %n %h %p", "    ProxyUseFdpass yes"]
    return "\n".join(lines)


@client.command("agent")
@click.option("--socket", "path", default=None,
              help=f"Where to listen (default: ${AGENT_SOCKET_ENV} or {DEFAULT_AGENT_SOCKET}); ignored "
              "under systemd socket activation.")
@click.option("--group", default=DEFAULT_AGENT_GROUP, show_default=True,
              help="The group whose members may use the agent (root always may).")
@reports_errors
def agent(path: str | None, group: str) -> None:
    """Run the agent (as root, in the foreground): it lets users without CAP_NET_ADMIN knock. It only
    makes sockets whose SYN carries a given sequence number; it never sees keys or destinations."""
    from stealth_connect.agent import Agent, bind_listener, inherited_listener, log_stderr
    from stealth_connect.synsource import has_repair_privilege

    gid = _group_id(group)
    if not has_repair_privilege():
        raise ClientError("the agent needs CAP_NET_ADMIN (it sets TCP sequence numbers): run it as root")
    listener = inherited_listener()
    created = None
    if listener is None:
        created = path or os.environ.get(AGENT_SOCKET_ENV) or DEFAULT_AGENT_SOCKET
        try:
            listener = bind_listener(created, gid)
        except OSError as e:
            raise ConfigError(created, f"cannot listen: {e.strerror or e}") from None
    stopping = []

    def stop(signum: int, frame: FrameType | None) -> None:
        stopping.append(signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    where = created or "the socket systemd passed"
    click.echo(f"stealth agent ready on {where} (group {group}, gid {gid})")
    sys.stdout.flush()  # whoever waits for "ready" reads a pipe
    try:
        Agent(listener, gid, log_stderr).run(lambda: bool(stopping))
    finally:
        listener.close()
        if created is not None:
            Path(created).unlink(missing_ok=True)


@client.command("agent-units")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@reports_errors
def agent_units(directory: Path) -> None:
    """Write the agent's systemd socket and service units into DIRECTORY (e.g. /etc/systemd/system)."""
    write_units(sorted(Path(__file__).with_name("systemd").glob("stealth-agent.*")), directory)
    click.echo("then: groupadd --system stealth (once), usermod -aG stealth USER, "
               "systemctl daemon-reload && systemctl enable --now stealth-agent.socket")


def _group_id(group: str) -> int:
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        if group.isdigit():
            return int(group)
        raise ClientError(f"no group {group!r}: create it (groupadd --system {group}) and add the users who "
                          "may knock, or pass --group") from None
